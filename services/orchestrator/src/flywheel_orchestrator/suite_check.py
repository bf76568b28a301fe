"""Validation of a suite's files that reports every problem at once, for imports and reloads.

The parsers in :mod:`flywheel_orchestrator.suites` stop at the first error, which is right for
loading a suite but slow for the person fixing one: each run shows one mistake. :func:`check_suite`
walks every file and every task and collects all it finds — unknown keys, missing files, test ids
that name no test — then lets the parsers have the last word on a suite with no problems left.

Test ids are checked against the test files without running them: the files are parsed (never
imported, they are untrusted code) and pytest's node ids are rebuilt, parametrised ones included
when the parameters are literals (numbers, strings, ``pytest.param(..., id=...)``, ``ids=[...]``),
following pytest's own id rules (``_pytest.python.IdMaker``). Where the parameters cannot be known
without running the file, the problem says so instead of guessing.
"""

from __future__ import annotations

import ast
import itertools
import json
import posixpath
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flywheel_orchestrator.mltasks import is_ml_task
from flywheel_orchestrator.suites import (
    MAX_FILE_BYTES,
    NAME_RE,
    IoTask,
    Suite,
    SuiteError,
    build_suite,
    is_test_file,
    parse_io_problem,
    parse_repo_task,
    parse_suite_manifest,
    parse_task_folder,
)

#: Keys a suite.toml may hold.
SUITE_KEYS = frozenset({"name", "description", "train_ratio", "split_seed"})
#: Keys a task.toml may hold (``limits`` is a table checked by the task parser).
TASK_KEYS = frozenset(
    {"title", "problem_statement", "fail_to_pass", "pass_to_pass", "test_targets", "tags", "limits"}
)
#: Files allowed at the top of a suite besides tasks/….
TOP_FILES = frozenset({"suite.toml", "problems.jsonl", "README.md"})
#: Most files and bytes one suite may hold (an import travels in one gRPC message).
MAX_FILES = 20_000
MAX_TOTAL_BYTES = 48 * 1024 * 1024
#: Ids shown when a message lists the tests that exist.
MAX_LISTED = 20
#: pytest's default for str/bytes parameters longer than this: the id is ``<argname><index>``.
LONG_STR = 100


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a suite: where (a path inside the suite) and what."""

    path: str
    message: str
    warning: bool = False  #: a warning does not stop an import

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class CheckResult:
    """Every problem found, and the suite when there was no error."""

    problems: list[Problem] = field(default_factory=list)
    suite: Suite | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if not p.warning]


# ------------------------------------------------------------------------------ test ids


@dataclass
class CollectedTest:
    """A test function found in a file: its parametrised ids, if it has any and they are known."""

    params: list[str] | None = None  #: ids inside [...]; None = not parametrised or unknown
    parametrised: bool = False
    unknown_reason: str = ""  #: why the parameters cannot be known statically (when parametrised)


@dataclass
class CollectedFile:
    tests: dict[str, CollectedTest]  #: by node id without parameters (``path::Class::test``)
    #: Names bound in the file that pytest may collect but we cannot see into (imported tests,
    #: classes with base classes); an id under one of them cannot be proved wrong.
    opaque: set[str]


def _ascii_escaped(value: str | bytes) -> str:
    # pytest's compat.ascii_escaped, for the ids of str and bytes parameters.
    text = (
        value.decode("ascii", "backslashreplace")
        if isinstance(value, bytes)
        else value.encode("unicode_escape").decode("ascii")
    )
    return "".join(ch if 32 <= ord(ch) < 127 else f"\\x{ord(ch):02x}" for ch in text)


def _value_id(value: Any, argname: str, index: int) -> str:
    if isinstance(value, str | bytes):
        return _ascii_escaped(value) if len(value) <= LONG_STR else f"{argname}{index}"
    if value is None or isinstance(value, bool | int | float | complex):
        return str(value)
    return f"{argname}{index}"


class _Unknown(Exception):
    """The parameters of a test cannot be known without running its file."""


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise _Unknown(f"a value is not a literal (line {getattr(node, 'lineno', '?')})") from None


def _is_call_to(node: ast.expr, name: str) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return (isinstance(func, ast.Attribute) and func.attr == name) or (
        isinstance(func, ast.Name) and func.id == name
    )


def _unique(ids: list[str]) -> list[str]:
    # pytest's IdMaker.make_unique_parameterset_ids: duplicates get a counter suffix.
    counts = Counter(ids)
    if len(counts) == len(ids):
        return ids
    suffixes: dict[str, int] = defaultdict(int)
    out = list(ids)
    for i, tid in enumerate(ids):
        if counts[tid] > 1:
            sep = "_" if tid and tid[-1].isdigit() else ""
            new = f"{tid}{sep}{suffixes[tid]}"
            while new in set(ids):
                suffixes[tid] += 1
                new = f"{tid}{sep}{suffixes[tid]}"
            out[i] = new
            suffixes[tid] += 1
    return out


def _parametrize_ids(call: ast.Call) -> list[str]:
    """The ids one ``@pytest.mark.parametrize(...)`` gives, or :class:`_Unknown`."""
    args = list(call.args)
    kwargs = {k.arg: k.value for k in call.keywords if k.arg}
    if any(k.arg is None for k in call.keywords):
        raise _Unknown("it passes **kwargs")
    names_node = args[0] if args else kwargs.get("argnames")
    values_node = args[1] if len(args) > 1 else kwargs.get("argvalues")
    if names_node is None or values_node is None:
        raise _Unknown("its argument names or values are missing")
    names = _literal(names_node)
    if isinstance(names, str):
        argnames = [n.strip() for n in names.split(",") if n.strip()]
    elif isinstance(names, list | tuple) and all(isinstance(n, str) for n in names):
        argnames = list(names)
    else:
        raise _Unknown("its argument names are not a literal")
    if not isinstance(values_node, ast.List | ast.Tuple):
        raise _Unknown("its values are not a literal list")
    if not values_node.elts:
        raise _Unknown("its list of values is empty")
    explicit: list[Any] = []
    if "ids" in kwargs:
        ids_value = kwargs["ids"]
        if not isinstance(ids_value, ast.List | ast.Tuple):
            raise _Unknown("its ids come from a function or a variable")
        explicit = [_literal(e) for e in ids_value.elts]
    out = []
    for index, element in enumerate(values_node.elts):
        param_id = None
        if isinstance(element, ast.Call) and _is_call_to(element, "param"):
            pkw = {k.arg: k.value for k in element.keywords if k.arg}
            if "id" in pkw:
                given = _literal(pkw["id"])
                param_id = _ascii_escaped(str(given)) if given is not None else None
            values = [_literal(v) for v in element.args]
        elif len(argnames) == 1:
            values = [_literal(element)]
        else:
            if not isinstance(element, ast.List | ast.Tuple):
                raise _Unknown(f"value {index} is not a literal tuple")
            values = [_literal(v) for v in element.elts]
        if param_id is None and index < len(explicit) and explicit[index] is not None:
            param_id = _ascii_escaped(str(explicit[index]))
        if param_id is None:
            if len(values) != len(argnames):
                raise _Unknown(f"value {index} has {len(values)} items for {len(argnames)} names")
            param_id = "-".join(_value_id(v, n, index) for v, n in zip(values, argnames, strict=True))
        out.append(param_id)
    return _unique(out)


def _parametrize_calls(decorators: Iterable[ast.expr]) -> list[ast.Call]:
    return [d for d in decorators if isinstance(d, ast.Call) and _is_call_to(d, "parametrize")]


def _fixture_params(tree: ast.Module) -> set[str]:
    """Names of the file's fixtures that take ``params=`` (they parametrise every test using them)."""
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for d in node.decorator_list:
                if isinstance(d, ast.Call) and _is_call_to(d, "fixture"):
                    if any(k.arg == "params" for k in d.keywords):
                        names.add(node.name)
    return names


def _collect_function(
    fn: ast.FunctionDef | ast.AsyncFunctionDef, inherited: bool, param_fixtures: set[str]
) -> CollectedTest:
    calls = _parametrize_calls(fn.decorator_list)
    args = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    test = CollectedTest(parametrised=bool(calls or inherited or args & param_fixtures))
    if not test.parametrised:
        return test
    if inherited:
        test.unknown_reason = "its class or module applies parametrize"
        return test
    if args & param_fixtures:
        test.unknown_reason = f"it uses the parametrised fixture {sorted(args & param_fixtures)[0]!r}"
        return test
    try:
        # The decorator nearest the function gives the first part of the id and varies slowest.
        per_call = [_parametrize_ids(c) for c in reversed(calls)]
    except _Unknown as why:
        test.unknown_reason = f"its parametrize cannot be read without running it ({why})"
        return test
    test.params = ["-".join(parts) for parts in itertools.product(*per_call)]
    return test


def _module_parametrized(tree: ast.Module) -> bool:
    """Whether ``pytestmark = ...`` at the top of the file holds a parametrize mark."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            if any(isinstance(n, ast.Call) and _is_call_to(n, "parametrize") for n in ast.walk(node.value)):
                return True
    return False


def collect_tests(path: str, source: bytes | str) -> CollectedFile:
    """The tests pytest would collect from a file, by parsing it; SyntaxError if it does not parse."""
    tree = ast.parse(source, filename=path)
    param_fixtures = _fixture_params(tree)
    module_marked = _module_parametrized(tree)
    tests: dict[str, CollectedTest] = {}
    opaque: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            tests[f"{path}::{node.name}"] = _collect_function(node, module_marked, param_fixtures)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            if any(isinstance(n, ast.FunctionDef) and n.name == "__init__" for n in node.body):
                continue  # pytest does not collect a test class with __init__
            if node.bases:
                opaque.add(f"{path}::{node.name}")  # inherited tests cannot be seen here
            class_marked = bool(_parametrize_calls(node.decorator_list)) or module_marked
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and sub.name.startswith("test"):
                    tests[f"{path}::{node.name}::{sub.name}"] = _collect_function(
                        sub, class_marked, param_fixtures
                    )
        elif isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                if bound == "*":
                    opaque.add(path)  # anything may have been imported
                elif bound.startswith(("test", "Test")):
                    opaque.add(f"{path}::{bound}")
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith(("test", "Test")):
                    opaque.add(f"{path}::{target.id}")
    return CollectedFile(tests, opaque)


def _listed(ids: Iterable[str]) -> str:
    ids = list(ids)
    shown = ", ".join(ids[:MAX_LISTED])
    return shown + (f" … ({len(ids)} in all)" if len(ids) > MAX_LISTED else "")


def check_test_id(test_id: str, collected: CollectedFile) -> Problem | None:
    """Whether ``test_id`` names a test of the file; the problem names the ids that exist."""
    base, bracket, rest = test_id.partition("[")
    test = collected.tests.get(base)
    if test is None:
        path = base.split("::", 1)[0]
        if any(base == o or base.startswith(f"{o}::") for o in collected.opaque):
            return None  # imported or inherited: pytest may well collect it
        return Problem(
            "",
            f"test {test_id!r} does not exist in {path}; its tests are: "
            + (_listed(_full_ids(collected)) or "none (no test functions found)"),
        )
    if not bracket:
        if not test.parametrised:
            return None
        if test.params is not None:
            return Problem(
                "",
                f"test {test_id!r} is parametrised, so pytest runs it only under ids with parameters: "
                + _listed(f"{base}[{p}]" for p in test.params),
            )
        return Problem(
            "",
            f"test {test_id!r} is parametrised and {test.unknown_reason}; name each case with its "
            "parameters as `pytest --collect-only -q` prints them (e.g. test_f[1])",
        )
    if not test.parametrised:
        return Problem("", f"test {base!r} is not parametrised; write it as {base!r}, without [{rest}")
    if test.params is not None and rest[:-1] not in test.params:
        return Problem(
            "",
            f"test {test_id!r} does not exist; its ids are: " + _listed(f"{base}[{p}]" for p in test.params),
        )
    return None


def _full_ids(collected: CollectedFile) -> list[str]:
    out: list[str] = []
    for base, test in collected.tests.items():
        if test.params is not None:
            out.extend(f"{base}[{p}]" for p in test.params)
        else:
            out.append(base)
    return out


# ------------------------------------------------------------------------------ the suite


def _decode_toml(where: str, data: bytes, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        problems.append(Problem(where, f"not UTF-8 text ({err})"))
    except tomllib.TOMLDecodeError as err:
        problems.append(Problem(where, f"invalid TOML: {err}"))
    except RecursionError:
        problems.append(Problem(where, "invalid TOML: nested too deeply"))
    return None


def _unknown_keys(where: str, doc: Mapping[str, Any], known: frozenset[str], problems: list[Problem]) -> None:
    for key in sorted(set(doc) - known):
        problems.append(Problem(where, f"unknown key `{key}` (known: {', '.join(sorted(known))})"))


def _check_path(path: str) -> str | None:
    norm = posixpath.normpath(path)
    if (
        not path
        or path.startswith("/")
        or norm.startswith("..")
        or norm == "."
        or "\\" in path
        or "\x00" in path
        or norm != path
    ):
        return f"path {path!r} must be relative, normalised and stay inside the suite"
    return None


def _check_task(task_id: str, files: Mapping[str, bytes], problems: list[Problem]) -> bool:
    """Every problem of one repo task; True if it found none (the parser then has the last word)."""
    where = f"tasks/{task_id}"
    before = len(problems)
    if not NAME_RE.match(task_id):
        problems.append(Problem(where, f"task id {task_id!r} must match {NAME_RE.pattern}"))
    repo: dict[str, bytes] = {}
    for path, data in sorted(files.items()):
        if path == "task.toml":
            continue
        top, _, rest = path.partition("/")
        if top not in ("repo", "fix") or not rest:
            problems.append(Problem(f"{where}/{path}", "unexpected file (only task.toml, repo/… and fix/…)"))
            continue
        if posixpath.basename(rest) == "conftest.py":
            problems.append(Problem(f"{where}/{path}", "conftest.py is not allowed (it could hook pytest)"))
        if top == "fix" and is_test_file(rest):
            problems.append(Problem(f"{where}/{path}", "a reference fix may not change test files"))
        if len(data) > MAX_FILE_BYTES:
            problems.append(
                Problem(f"{where}/{path}", f"{len(data)} bytes; a task file may hold {MAX_FILE_BYTES}")
            )
        if top == "repo":
            repo[rest] = data
    if not repo:
        problems.append(Problem(where, "repo/ is missing or empty"))
    if "task.toml" not in files:
        problems.append(Problem(where, "task.toml is missing"))
        return False
    here = f"{where}/task.toml"
    doc = _decode_toml(here, files["task.toml"], problems)
    if doc is None:
        return False
    _unknown_keys(here, doc, TASK_KEYS, problems)
    if not isinstance(doc.get("problem_statement"), str):
        problems.append(Problem(here, "`problem_statement` is required and must be a string"))
    lists: dict[str, list[str]] = {}
    for key in ("fail_to_pass", "pass_to_pass", "test_targets", "tags"):
        value = doc.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(Problem(here, f"`{key}` must be a list of strings"))
            value = []
        lists[key] = value
    if "fail_to_pass" in doc and not lists["fail_to_pass"] and isinstance(doc["fail_to_pass"], list):
        problems.append(Problem(here, "`fail_to_pass` must name at least one test"))
    elif "fail_to_pass" not in doc:
        problems.append(Problem(here, "`fail_to_pass` is required: the tests the fix must make pass"))
    collected: dict[str, CollectedFile | None] = {}
    for key in ("fail_to_pass", "pass_to_pass"):
        for test_id in lists[key]:
            test_file = test_id.split("::", 1)[0]
            if test_file not in repo:
                problems.append(
                    Problem(here, f"{key}: test {test_id!r} names {test_file!r}, which is not in repo/")
                )
                continue
            if not is_test_file(test_file):
                problems.append(
                    Problem(
                        here, f"{key}: {test_file!r} is not a test file (test_*.py, *_test.py or tests/…)"
                    )
                )
                continue
            if "::" not in test_id:
                continue  # a whole file: every test in it
            if test_file not in collected:
                try:
                    collected[test_file] = collect_tests(test_file, repo[test_file])
                except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
                    problems.append(Problem(f"{where}/repo/{test_file}", f"does not parse as Python: {err}"))
                    collected[test_file] = None
            found = collected[test_file]
            if found is None:
                continue
            problem = check_test_id(test_id, found)
            if problem is not None:
                problems.append(Problem(here, f"{key}: {problem.message}"))
    for target in lists["test_targets"]:
        path = target.split("::", 1)[0].rstrip("/")
        if path in ("", "."):
            continue
        if path not in repo and not any(p.startswith(path + "/") for p in repo):
            problems.append(Problem(here, f"test_targets: {target!r} names nothing in repo/"))
    return len(problems) == before


def _check_problems_jsonl(data: bytes, problems: list[Problem]) -> list[IoTask]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        problems.append(Problem("problems.jsonl", f"not UTF-8 text ({err})"))
        return []
    tasks = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(Problem(f"problems.jsonl:{n}", f"invalid JSON: {err.msg} at column {err.colno}"))
            continue
        except RecursionError:
            problems.append(Problem(f"problems.jsonl:{n}", "invalid JSON: nested too deeply"))
            continue
        try:
            tasks.append(parse_io_problem(f"problems.jsonl:{n}", record))
        except SuiteError as err:
            problems.append(Problem("", str(err)))
    return tasks


def manifest_for(name: str, files: Mapping[str, bytes]) -> bytes | None:
    """A suite.toml naming the suite ``name``: the given one renamed (keeping its split), or a new one.

    None if the given manifest cannot be read (its problems are reported by :func:`check_suite`).
    """
    old = files.get("suite.toml")
    if old is None:
        return _manifest(name, "", 0.7, name)
    try:
        doc = tomllib.loads(old.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None
    if doc.get("name") == name:
        return old
    description, ratio = doc.get("description", ""), doc.get("train_ratio", 0.7)
    # The split hashes the seed, which defaults to the old name: keep it, so no task moves side.
    seed = doc.get("split_seed", doc.get("name", name))
    if not isinstance(description, str) or not isinstance(ratio, int | float) or not isinstance(seed, str):
        return None
    return _manifest(name, description, float(ratio), seed)


def _manifest(name: str, description: str, ratio: float, seed: str) -> bytes:
    # JSON string escapes are valid TOML basic-string escapes.
    return (
        f"name = {json.dumps(name)}\ndescription = {json.dumps(description, ensure_ascii=False)}\n"
        f"train_ratio = {ratio!r}\nsplit_seed = {json.dumps(seed, ensure_ascii=False)}\n"
    ).encode()


def check_suite(files: Mapping[str, bytes], *, name: str, source: str, bundled: bool = False) -> CheckResult:
    """Every problem of a suite given as its files (paths relative to the suite folder)."""
    result = CheckResult()
    problems = result.problems
    if not NAME_RE.match(name):
        problems.append(Problem("", f"suite name {name!r} must match {NAME_RE.pattern}"))
        return result
    if len(files) > MAX_FILES:
        problems.append(Problem("", f"{len(files)} files; a suite may hold {MAX_FILES}"))
        return result
    total = sum(len(d) for d in files.values())
    if total > MAX_TOTAL_BYTES:
        problems.append(Problem("", f"{total} bytes; a suite may hold {MAX_TOTAL_BYTES}"))
        return result
    per_task: dict[str, dict[str, bytes]] = {}
    for path, data in sorted(files.items()):
        bad = _check_path(path)
        if bad:
            problems.append(Problem("", bad))
        elif path.startswith("tasks/"):
            parts = path.split("/", 2)
            if len(parts) < 3:
                problems.append(Problem(path, "files under tasks/ belong in a task folder (tasks/<id>/…)"))
            else:
                per_task.setdefault(parts[1], {})[parts[2]] = data
        elif path not in TOP_FILES:
            problems.append(
                Problem(path, "unexpected file (a suite holds suite.toml, tasks/<id>/…, problems.jsonl)")
            )
    if "suite.toml" not in files:
        problems.append(Problem("suite.toml", "is missing"))
    else:
        doc = _decode_toml("suite.toml", files["suite.toml"], problems)
        if doc is not None:
            _unknown_keys("suite.toml", doc, SUITE_KEYS, problems)
            try:
                parse_suite_manifest("suite.toml", files["suite.toml"], name)
            except SuiteError as err:
                problems.append(Problem("", str(err)))
    ids: list[str] = []
    for task_id, task_files in sorted(per_task.items()):
        if is_ml_task(task_files):  # its own parser checks every key and file (mltasks.py)
            try:
                parse_task_folder(task_id, f"tasks/{task_id}", task_files)
            except SuiteError as err:
                problems.append(Problem("", str(err)))
            ids.append(task_id)
            continue
        if _check_task(task_id, task_files, problems):
            try:
                parse_repo_task(task_id, f"tasks/{task_id}", task_files)
            except SuiteError as err:
                problems.append(Problem("", str(err)))
        ids.append(task_id)
    if "problems.jsonl" in files:
        ids.extend(t.id for t in _check_problems_jsonl(files["problems.jsonl"], problems))
    if not per_task and "problems.jsonl" not in files:
        problems.append(Problem("", "the suite has no tasks (no tasks/<id>/ folder and no problems.jsonl)"))
    for task_id, count in Counter(ids).items():
        if count > 1:
            problems.append(Problem("", f"task id {task_id!r} appears {count} times"))
    if not result.errors:
        try:
            result.suite = build_suite(files, folder_name=name, source=source, bundled=bundled)
        except SuiteError as err:  # anything the checks above do not know about yet
            problems.append(Problem("", str(err)))
    return result
