"""RunTests: pytest in the sandbox, outcomes from a JUnit report, and integrity cross-checks.

Evidence the runner trusts, strongest first:

1. the test ids it collects *statically* (``ast``) from the authoritative copies of the
   protected test files (and from the other test files of the targets);
2. the side-channel message of its own pytest plugin (``guard_plugin.py``), authenticated with a
   per-run key: pytest's collection, each test's live outcome, and the JUnit XML;
3. the JUnit XML itself, parsed here and cross-checked against 1 and 2.

A protected file that differs or is missing is reported (TEST_EDITED / TEST_DELETED) and then
overwritten with the authoritative copy, so tampering never changes the outcome. A process that
exits before every collected test reported (``exit(0)`` before the asserts) leaves tests
MISSING; a report that does not verify or disagrees is REPORT_FORGED.
"""

from __future__ import annotations

import ast
import asyncio
import enum
import hashlib
import hmac
import json
import posixpath
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources

from flywheel_sandbox.classify import Category, category_for_exception
from flywheel_sandbox.runner import FileSpec, Limits, Runner, RunResult, RunSpec, Status

# The only ini pytest reads (workspace ini files and their addopts are ignored). `pythonpath` puts the
# workspace on sys.path after pytest and the guard plugin are imported, as `python -m pytest` would
# have put the current directory.
PYTEST_INI = b"[pytest]\npythonpath = /workspace\n"
# Environment a RunTests request may not set: they change how Python or pytest start (a workspace
# stdlib via PYTHONHOME, a preloaded library, plugins), i.e. they run code before the guard.
FORBIDDEN_ENV_PREFIXES = ("PYTHON", "PYTEST", "LD_")
_PLUGIN = resources.files("flywheel_sandbox").joinpath("guard_plugin.py").read_bytes()
JUNIT_PATH = "/tmp/.flywheel-junit.xml"
# Options that would change what is collected or reported, or load code: refused in pytest_args.
FORBIDDEN_ARGS = (
    "--junitxml",
    "--junit-xml",
    "--junit-prefix",
    "-p",
    "--rootdir",
    "-c",
    "--config-file",
    "--confcutdir",
    "--noconftest",
    "--pyargs",
    "--override-ini",
    "-o",
    "--basetemp",
    "--import-mode",
    "--collect-only",
    "--co",
    "--deselect",
    "--ignore",
    "--ignore-glob",
    "--continue-on-collection-errors",
    "--help",
    "--version",
    "--fixtures",
    "--trace",
    "--pdb",
    "--pdbcls",
    "--debug",
    "--assert",
    "--setup-only",
    "--setup-plan",
    "--runxfail",
)


class Outcome(enum.Enum):
    """Mirrors ``flywheel.sandbox.v1.TestOutcome``."""

    PASSED = 1
    FAILED = 2
    ERROR = 3
    SKIPPED = 4
    XFAILED = 5
    XPASSED = 6
    MISSING = 7


class Finding(enum.Enum):
    """Mirrors ``flywheel.sandbox.v1.IntegrityFindingKind``."""

    EXIT_BEFORE_ASSERTS = 1
    TEST_EDITED = 2
    TEST_DELETED = 3
    REPORT_FORGED = 4
    REPORT_MISSING = 5
    EXPECTED_TEST_MISSING = 6
    CONFTEST_IGNORED = 7
    PYTEST_TAMPERED = 8
    OUTCOME_FROM_CODE_UNDER_TEST = 9
    COMPARISON_FORGED = 10


@dataclass
class TestResult:
    test_id: str
    outcome: Outcome
    duration_s: float = 0.0
    message: str = ""
    category: Category = Category.UNSPECIFIED


@dataclass
class IntegrityFinding:
    kind: Finding
    subject: str = ""
    detail: str = ""


@dataclass
class TestRunOutcome:
    passed: bool
    tests: list[TestResult]
    findings: list[IntegrityFinding]
    execution: RunResult
    counts: dict[Outcome, int] = field(default_factory=dict)
    timed_out: bool = False


# A target is a test id: a relative path, then optional ``::name`` parts, the last of which may
# carry a parametrization in brackets. Nothing that pytest could read as an option.
_TARGET = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_./-]*(::[A-Za-z_]\w*)*(\[[^\]\n]*\])?$")


def target_problem(target: str, workspace_paths: Sequence[str]) -> str | None:
    """Why ``target`` is not a test id naming something in the workspace (None if it is)."""
    if not target or target.startswith("-"):
        return f"{target!r:.120} is not a test id (targets are paths or node ids, never options)"
    if not _TARGET.match(target):
        return f"{target!r:.120} is not a test id like `tests/test_x.py::test_name[param]`"
    path = target.split("::", 1)[0].rstrip("/")
    parts = path.split("/")
    if any(p in ("", "..") for p in parts) and path not in (".",):
        return f"{target!r:.120}: the path must be relative, without `..` or empty parts"
    if path == "." or any(p == path or p.startswith(path + "/") for p in workspace_paths):
        return None
    return f"{target!r:.120}: no file or folder {path!r} in the workspace"


def is_bytecode(path: str) -> bool:
    """Compiled files are never taken from a request: a planted .pyc could replace a test."""
    return path.endswith((".pyc", ".pyo")) or "__pycache__" in path.split("/")


def forbidden_arg(arg: str) -> bool:
    """Whether a pytest argument is one that changes collection or reporting (``-pX`` forms too)."""
    if arg.split("=", 1)[0] in FORBIDDEN_ARGS:
        return True
    return any(arg.startswith(short) and len(arg) > 2 for short in ("-p", "-c", "-o"))


def is_test_file(path: str) -> bool:
    base = posixpath.basename(path)
    return base.endswith(".py") and (base.startswith("test_") or base.endswith("_test.py"))


def static_test_ids(path: str, source: bytes) -> list[str] | None:
    """pytest node ids (without parametrization) of a test file, by parsing it; None if it does not parse."""
    try:
        tree = ast.parse(source, filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None  # pytest will report the module as a collection error
    ids = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            ids.append(f"{path}::{node.name}")
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            has_init = any(isinstance(n, ast.FunctionDef) and n.name == "__init__" for n in node.body)
            if has_init:
                continue
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef) and sub.name.startswith("test"):
                    ids.append(f"{path}::{node.name}::{sub.name}")
    return ids


def _base(test_id: str) -> str:
    return test_id.split("[", 1)[0]


def _in_targets(path: str, targets: Sequence[str]) -> bool:
    if not targets:
        return True
    for target in targets:
        t = target.split("::", 1)[0].rstrip("/")
        if t in ("", ".") or path == t or path.startswith(t + "/"):
            return True
    return False


def _selected(test_id: str, targets: Sequence[str]) -> bool:
    """Whether a statically found test is one the targets select (node-id targets select less)."""
    if not targets:
        return True
    for target in targets:
        if "::" not in target:
            t = target.rstrip("/")
            if t in ("", ".") or test_id.startswith(t + "/") or test_id.startswith(t + "::"):
                return True
            continue
        base = _base(target)
        if test_id == base or test_id.startswith(base + "::"):
            return True
    return False


def _junit_id(case: ET.Element, collected_by_junit: dict[tuple[str, str], str]) -> str | None:
    key = (case.get("classname", ""), case.get("name", ""))
    return collected_by_junit.get(key)


def _junit_key(node_id: str) -> tuple[str, str]:
    # pytest's JUnit naming: classname = path with "/" -> "." and ".py" dropped, plus class names;
    # name = the function name with its parametrization.
    parts = node_id.split("::")
    path = parts[0][:-3] if parts[0].endswith(".py") else parts[0]
    classname = ".".join([path.replace("/", "."), *parts[1:-1]])
    return classname, parts[-1]


def _parse_junit(xml: str) -> ET.Element:
    # Python's expat (>= 2.4.1) refuses entity-expansion bombs; the size is capped by the plugin.
    return ET.fromstring(xml)


def _first_lines(text: str, limit: int = 2000) -> str:
    return text.strip()[:limit]


_E_LINE = re.compile(r"^E\s+([A-Za-z_][\w.]*)(?::|$)", re.M)
_EXC_NAME = re.compile(r"\b([A-Z]\w*(?:Error|Exception|Exit))\b")


def _category_of(message: str, outcome: Outcome) -> Category:
    """Category of a failed test: the exception pytest printed last (``E   KeyError: ...``)."""
    names = [n.rsplit(".", 1)[-1] for n in _E_LINE.findall(message)]
    names += _EXC_NAME.findall(message.split("\n", 1)[0])
    for name in names:
        if name.endswith(("Error", "Exception", "Exit")):
            return category_for_exception(name)
    return Category.ASSERTION_ERROR if outcome is Outcome.FAILED else Category.OTHER


async def run_tests(
    runner: Runner,
    *,
    files: list[FileSpec],
    protected: list[FileSpec],
    targets: list[str],
    expected_ids: list[str],
    allow_conftest: bool,
    pytest_args: list[str],
    limits: Limits,
    env: dict[str, str],
) -> TestRunOutcome:
    findings: list[IntegrityFinding] = []
    workspace = {f.path: f for f in files}
    for auth in protected:
        have = workspace.get(auth.path)
        if have is None:
            findings.append(
                IntegrityFinding(Finding.TEST_DELETED, auth.path, "protected test file was missing")
            )
        elif have.data != auth.data:
            findings.append(
                IntegrityFinding(
                    Finding.TEST_EDITED, auth.path, "protected test file differed from its authoritative copy"
                )
            )
        workspace[auth.path] = auth
    conftests = sorted(p for p in workspace if posixpath.basename(p) == "conftest.py")
    if conftests and not allow_conftest:
        for p in conftests:
            findings.append(
                IntegrityFinding(Finding.CONFTEST_IGNORED, p, "conftest.py ignored (allow_conftest is off)")
            )

    for path in [p for p in workspace if is_bytecode(p)]:
        del workspace[path]

    def collect_statically() -> list[str]:
        found: list[str] = []
        for path in sorted(workspace):
            if is_test_file(path) and _in_targets(path, targets):
                ids = static_test_ids(path, workspace[path].data)
                found.extend(t for t in ids or [] if _selected(t, targets))
        return found

    # Parsing and evaluating are CPU work proportional to the request: off the event loop, so a
    # huge test file or report never stalls health checks or other calls.
    static = await asyncio.to_thread(collect_statically)
    tests_doc = {
        "authoritative": sorted(f.path for f in protected),
        "sha256": {f.path: hashlib.sha256(f.data).hexdigest() for f in protected},
        "test_files": sorted(p for p in workspace if is_test_file(p)),
    }
    key = secrets.token_hex(32).encode()
    argv = [
        "python3",
        "-B",
        "-P",  # no current directory on sys.path: a workspace `pytest.py` cannot replace pytest
        "-m",
        "pytest",
        "-p",
        "flywheel_guard",
        "-p",
        "no:cacheprovider",
        "-c",
        "/.flywheel/pytest.ini",
        "--rootdir=/workspace",
        f"--junitxml={JUNIT_PATH}",
        "-o",
        "junit_family=xunit1",
        "-q",
    ]
    if not allow_conftest:
        argv.append("--noconftest")
    # Targets come after `--`: whatever they look like, pytest reads them as paths or node ids.
    argv += [*pytest_args, "--", *targets]
    run_env = dict(env)
    run_env.update(
        {"PYTHONPATH": "/.flywheel", "PYTHONDONTWRITEBYTECODE": "1", "FLYWHEEL_SANDBOX_GUARD": "1"}
    )
    if not allow_conftest:
        run_env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    spec = RunSpec(
        files=list(workspace.values()),
        limits=limits,
        argv=argv,
        env=run_env,
        stdin=key + b"\n",
        extra_data={
            "flywheel_guard.py": _PLUGIN,
            "pytest.ini": PYTEST_INI,
            "tests.json": json.dumps(tests_doc).encode(),
        },
        pass_pipe=True,
    )
    result = await runner.execute(spec)
    return await asyncio.to_thread(evaluate, result, key, static, expected_ids, findings)


_LIMIT_STATUSES = {
    Status.WALL_TIMEOUT: "the test run timed out (wall-clock limit)",
    Status.CPU_TIMEOUT: "the test run used up its CPU time",
    Status.MEMORY_LIMIT: "the test run hit its memory limit",
    Status.OUTPUT_LIMIT: "the test run hit its output limit",
    Status.PROCESS_LIMIT: "the test run hit its process limit",
    Status.FILE_SIZE_LIMIT: "the test run hit its file size limit",
}
_VOIDING = frozenset(
    {
        Finding.REPORT_FORGED,
        Finding.PYTEST_TAMPERED,
        Finding.COMPARISON_FORGED,
        Finding.OUTCOME_FROM_CODE_UNDER_TEST,
    }
)
_TAMPER_KINDS = {
    "PYTEST_TAMPERED": Finding.PYTEST_TAMPERED,
    "OUTCOME_FROM_CODE_UNDER_TEST": Finding.OUTCOME_FROM_CODE_UNDER_TEST,
    "COMPARISON_FORGED": Finding.COMPARISON_FORGED,
}


def evaluate(
    result: RunResult,
    key: bytes,
    static: list[str],
    expected_ids: list[str],
    findings: list[IntegrityFinding],
) -> TestRunOutcome:
    """Turns the run's evidence into per-test outcomes and findings (pure; unit-tested directly).

    A run stopped by one of its limits (time, memory, output, processes) is not evidence of
    tampering: tests without a result are MISSING with the limit as their message, and no
    REPORT_MISSING / EXIT_BEFORE_ASSERTS finding is raised for it.
    """
    limit_hit = _LIMIT_STATUSES.get(result.status)
    timed_out = result.status in (Status.WALL_TIMEOUT, Status.CPU_TIMEOUT)
    record = None
    mac, _, body = result.side.partition(b"\n")
    if not result.side:
        if limit_hit is None:
            findings.append(
                IntegrityFinding(
                    Finding.REPORT_MISSING, "", "pytest produced no report (it exited early or was killed)"
                )
            )
    elif not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).hexdigest().encode()):
        findings.append(
            IntegrityFinding(Finding.REPORT_FORGED, "", "the report was not written by the runner's plugin")
        )
    else:
        try:
            record = json.loads(body)
        except ValueError:
            findings.append(IntegrityFinding(Finding.REPORT_FORGED, "", "the report does not parse"))
    if record is not None and not isinstance(record, dict):
        findings.append(IntegrityFinding(Finding.REPORT_FORGED, "", "the report has the wrong shape"))
        record = None

    results: dict[str, TestResult] = {}
    collected: list[str] = []
    raw: dict[str, str] = {}
    xfail_marked: set[str] = set()
    if record is not None:
        collected = list(record.get("collected", []))
        live: dict[str, str] = record.get("outcomes", {})
        raw = dict(record.get("raw", {}))
        xfail_marked = set(record.get("xfail_marked", []))
        for entry in record.get("tamper", []):
            kind, subject, detail = [*list(entry), "", "", ""][:3]
            findings.append(
                IntegrityFinding(_TAMPER_KINDS.get(kind, Finding.PYTEST_TAMPERED), subject, detail)
            )
        by_key = {_junit_key(t): t for t in collected}
        junit_seen: set[str] = set()
        xml = record.get("junit") or ""
        if not xml:
            if limit_hit is None:
                findings.append(IntegrityFinding(Finding.REPORT_MISSING, "", "the JUnit report is empty"))
        else:
            try:
                root = _parse_junit(xml)
            except ET.ParseError as err:
                root = None
                findings.append(
                    IntegrityFinding(Finding.REPORT_FORGED, "", f"the JUnit report does not parse: {err}")
                )
            for case in root.iter("testcase") if root is not None else []:
                tid = _junit_id(case, by_key)
                if tid is None and _collection_error(case):
                    continue  # a module that failed to import: its tests are reported missing
                if tid is None:
                    findings.append(
                        IntegrityFinding(
                            Finding.REPORT_FORGED,
                            f"{case.get('classname')}::{case.get('name')}",
                            "JUnit lists a test pytest never collected",
                        )
                    )
                    continue
                junit_seen.add(tid)
                outcome, message = _junit_outcome(case)
                want = live.get(tid)
                if outcome is Outcome.SKIPPED and want == "xfailed":
                    outcome = Outcome.XFAILED
                if want == "xpassed":
                    outcome = Outcome.XPASSED
                if (
                    want is not None
                    and _LIVE.get(want) not in (outcome, None)
                    and not (want == "failed" and outcome is Outcome.ERROR)
                ):
                    findings.append(
                        IntegrityFinding(
                            Finding.REPORT_FORGED,
                            tid,
                            f"JUnit says {outcome.name.lower()} but pytest reported {want}",
                        )
                    )
                    outcome = _LIVE.get(want, outcome)
                results[tid] = TestResult(
                    tid,
                    outcome,
                    float(case.get("time", "0") or 0),
                    _first_lines(message),
                    _category_of(message, outcome)
                    if outcome in (Outcome.FAILED, Outcome.ERROR)
                    else Category.UNSPECIFIED,
                )
        for tid in collected:
            if tid not in results and tid in live and xml:
                findings.append(
                    IntegrityFinding(Finding.REPORT_FORGED, tid, "pytest ran the test but JUnit omits it")
                )
                results[tid] = TestResult(tid, _LIVE.get(live[tid], Outcome.ERROR))
        # The guard's own record of what each test raised, taken before any report object
        # existed, outranks pytest's reports: a "pass" it did not see is a forged pass.
        for tid, res in results.items():
            seen = raw.get(tid)
            if res.outcome in (Outcome.PASSED, Outcome.XPASSED) and seen != "passed":
                findings.append(
                    IntegrityFinding(
                        Finding.REPORT_FORGED,
                        tid,
                        f"reported {res.outcome.name.lower()} but the guard saw "
                        + (f"the test end as {seen!r}" if seen else "no call of the test complete"),
                    )
                )
                res.outcome = Outcome.FAILED if seen in (None, "failed", "setup-ok") else Outcome.ERROR
            elif res.outcome is Outcome.XFAILED and tid not in xfail_marked and seen != "xfailed":
                findings.append(
                    IntegrityFinding(
                        Finding.REPORT_FORGED, tid, "reported xfailed but the test carries no xfail marker"
                    )
                )
                res.outcome = Outcome.FAILED

    # Ordering: pytest's collection order, then statically known tests it never collected.
    order: list[str] = list(collected)
    collected_bases = {_base(t) for t in collected}
    for tid in static:
        if tid not in collected_bases:
            order.append(tid)
    for tid in expected_ids:
        if tid not in order and _base(tid) not in collected_bases:
            order.append(tid)
    tests: list[TestResult] = []
    missing_ran = False
    for tid in order:
        got = results.get(tid)
        if got is None:
            got = TestResult(
                tid,
                Outcome.MISSING,
                message=f"not reached: {limit_hit}" if limit_hit else "no result reported for this test",
            )
            if tid in collected or record is None:
                missing_ran = True
        tests.append(got)
    if limit_hit is None and (missing_ran or (record is None and static)):
        findings.append(
            IntegrityFinding(
                Finding.EXIT_BEFORE_ASSERTS,
                "",
                "the process ended before every collected test reported a result",
            )
        )
    for tid in expected_ids:
        if tid not in collected and not (record is None and _base(tid) in static):
            if record is None and limit_hit is not None:
                continue
            findings.append(
                IntegrityFinding(Finding.EXPECTED_TEST_MISSING, tid, "expected test was not collected")
            )
    if record is not None:
        collected_set = set(collected_bases)
        for tid in static:
            if tid not in collected_set:
                findings.append(
                    IntegrityFinding(
                        Finding.EXPECTED_TEST_MISSING,
                        tid,
                        "defined in a test file but not collected by pytest",
                    )
                )

    # Once the process's machinery was tampered with, none of its passes can be believed.
    distrust = [f for f in findings if f.kind in _VOIDING]
    if distrust:
        why = f"not trusted: {distrust[0].kind.name} ({distrust[0].subject or 'the run'})"
        for t in tests:
            if t.outcome in (Outcome.PASSED, Outcome.XPASSED, Outcome.XFAILED):
                t.outcome, t.message = Outcome.FAILED, why
    counts = {o: 0 for o in Outcome}
    for t in tests:
        counts[t.outcome] += 1
    by_id = {t.test_id: t for t in tests}
    expected_ok = all(
        (by_id.get(t) or TestResult(t, Outcome.MISSING)).outcome in (Outcome.PASSED, Outcome.XFAILED)
        for t in expected_ids
    )
    bad = counts[Outcome.FAILED] + counts[Outcome.XPASSED] + counts[Outcome.ERROR] + counts[Outcome.MISSING]
    serious = [f for f in findings if f.kind is not Finding.CONFTEST_IGNORED]
    passed = expected_ok and bad == 0 and not serious and bool(tests) and limit_hit is None
    return TestRunOutcome(passed, tests, _dedupe(findings), result, counts, timed_out)


_LIVE = {
    "passed": Outcome.PASSED,
    "failed": Outcome.FAILED,
    "error": Outcome.ERROR,
    "skipped": Outcome.SKIPPED,
    "xfailed": Outcome.XFAILED,
    "xpassed": Outcome.XPASSED,
}


def _collection_error(case: ET.Element) -> bool:
    """pytest's JUnit entry for a module that could not be collected (e.g. a syntax error)."""
    error = case.find("error")
    return (
        case.get("classname", "") == "" and error is not None and error.get("message") == "collection failure"
    )


def _junit_outcome(case: ET.Element) -> tuple[Outcome, str]:
    for tag, outcome in (("failure", Outcome.FAILED), ("error", Outcome.ERROR), ("skipped", Outcome.SKIPPED)):
        el = case.find(tag)
        if el is not None:
            return outcome, (el.get("message") or "") + ("\n" + el.text if el.text else "")
    return Outcome.PASSED, ""


def _dedupe(findings: list[IntegrityFinding]) -> list[IntegrityFinding]:
    seen, out = set(), []
    for f in findings:
        k = (f.kind, f.subject)
        if k not in seen:
            seen.add(k)
            out.append(f)
    return out


def with_limits(spec: RunSpec, limits: Limits) -> RunSpec:
    return replace(spec, limits=limits)
