"""Task suites: loading, versioning, the deterministic split, and importers.

The on-disk format is documented in ``SUITES.md`` beside the package. A suite is read whole into
memory (the bundled ones are a few hundred KB): tasks are small by design, and holding them lets
every episode start without touching the disk or the object store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import posixpath
import re
import threading
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import suite_pb2
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator.mltasks import MlTask, MlTaskError, is_ml_task, parse_ml_task

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
BUNDLED_DIR = Path(__file__).parent / "suites"
#: Largest file a task may hold; tasks are read whole into prompts, so they must stay small.
MAX_FILE_BYTES = 256 * 1024


class SuiteError(ValueError):
    """A suite or task is malformed; the message names the file and what is wrong."""


def is_test_file(path: str) -> bool:
    """Test files are read-only for the outcome: the final tests always use the originals."""
    parts = path.split("/")
    base = parts[-1]
    return (
        "tests" in parts[:-1]
        or "test" in parts[:-1]
        or (base.startswith("test_") and base.endswith(".py"))
        or base.endswith("_test.py")
    )


def split_of(task_id: str, *, seed: str, train_ratio: float) -> common_pb2.TaskSplit:
    """TRAIN or TEST for a task: a stable hash of (seed, id) against the ratio (see SUITES.md)."""
    digest = hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()
    position = int(digest[:16], 16) / 2**64
    return common_pb2.TASK_SPLIT_TRAIN if position < train_ratio else common_pb2.TASK_SPLIT_TEST


@dataclass(frozen=True)
class TaskLimits:
    """A task's own limits for its test run (``[limits]`` in task.toml, ``limits`` of an I/O problem).

    For a repo task they bound the whole pytest run; for an I/O problem, each case's run. A field
    left as None takes the orchestrator's default (settings ``test_wall_time_s`` and the like).
    """

    wall_time_s: float | None = None
    cpu_time_s: float | None = None
    memory_mb: int | None = None


#: The sandbox cannot start an interpreter in less memory than this.
MIN_MEMORY_MB = 16
#: The keys of a task's limits, and what each value must be.
LIMIT_KEYS = {
    "wall_time_s": "a number of seconds > 0",
    "cpu_time_s": "a number of seconds > 0",
    "memory_mb": f"a whole number of MiB >= {MIN_MEMORY_MB}",
}


def parse_limits(where: str, value: Any) -> TaskLimits:
    """A task's limits from a TOML table or JSON object; errors name ``where`` and the key."""
    if not isinstance(value, dict):
        raise SuiteError(f"{where}: must be a table of {', '.join(LIMIT_KEYS)}, got {type(value).__name__}")
    unknown = sorted(set(value) - set(LIMIT_KEYS))
    if unknown:
        raise SuiteError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(LIMIT_KEYS)})")
    for key, number in value.items():
        # bool is an int in Python: `wall_time_s = true` must not pass as 1 second.
        ok = isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number)
        if key == "memory_mb":
            ok = ok and isinstance(number, int) and number >= MIN_MEMORY_MB
        else:
            ok = ok and number > 0
        if not ok:
            raise SuiteError(f"{where}.{key}: must be {LIMIT_KEYS[key]}, got {number!r}")
    return TaskLimits(
        wall_time_s=float(value["wall_time_s"]) if "wall_time_s" in value else None,
        cpu_time_s=float(value["cpu_time_s"]) if "cpu_time_s" in value else None,
        memory_mb=int(value["memory_mb"]) if "memory_mb" in value else None,
    )


@dataclass(frozen=True)
class RepoTask:
    """A repository snapshot with a problem statement and the tests that decide the outcome."""

    id: str
    title: str
    problem_statement: str
    files: Mapping[str, str]
    fail_to_pass: tuple[str, ...]
    pass_to_pass: tuple[str, ...]
    test_targets: tuple[str, ...]
    fix: Mapping[str, str]
    tags: tuple[str, ...] = ()
    split: common_pb2.TaskSplit = common_pb2.TASK_SPLIT_UNSPECIFIED
    limits: TaskLimits = field(default_factory=TaskLimits)

    kind = common_pb2.TASK_KIND_REPO

    @property
    def expected_tests(self) -> tuple[str, ...]:
        return self.fail_to_pass + self.pass_to_pass

    @property
    def test_files(self) -> dict[str, str]:
        return {p: c for p, c in self.files.items() if is_test_file(p)}

    @property
    def has_reference(self) -> bool:
        return bool(self.fix)


@dataclass(frozen=True)
class IoTask:
    """An input/output problem in the seed-003 shape."""

    id: str
    title: str
    prompt: str
    question: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    reference_solution: str = ""
    tags: tuple[str, ...] = ()
    split: common_pb2.TaskSplit = common_pb2.TASK_SPLIT_UNSPECIFIED
    limits: TaskLimits = field(default_factory=TaskLimits)

    kind = common_pb2.TASK_KIND_IO

    @property
    def has_reference(self) -> bool:
        return bool(self.reference_solution)


Task = RepoTask | IoTask
#: Any task a suite may hold; ML tasks run through their own agent (mle.py), never the tool loop.
AnyTask = RepoTask | IoTask | MlTask


@dataclass
class Suite:
    name: str
    description: str
    train_ratio: float
    split_seed: str
    version: str
    source: str
    bundled: bool
    tasks: dict[str, AnyTask] = field(default_factory=dict)

    def to_proto(self) -> suite_pb2.Suite:
        kinds = sorted({t.kind for t in self.tasks.values()})
        return suite_pb2.Suite(
            name=self.name,
            description=self.description,
            version=self.version,
            source=self.source,
            bundled=self.bundled,
            kinds=kinds,
            task_count=len(self.tasks),
            train_task_count=sum(t.split == common_pb2.TASK_SPLIT_TRAIN for t in self.tasks.values()),
            test_task_count=sum(t.split == common_pb2.TASK_SPLIT_TEST for t in self.tasks.values()),
            train_ratio=self.train_ratio,
            split_seed=self.split_seed,
        )

    def select(self, split: common_pb2.TaskSplit, task_ids: Iterable[str] = ()) -> list[AnyTask]:
        """Tasks of one side of the split (ALL-like UNSPECIFIED is refused by the caller)."""
        wanted = list(task_ids)
        if wanted:
            missing = [t for t in wanted if t not in self.tasks]
            if missing:
                raise KeyError(missing[0])
            chosen = [self.tasks[t] for t in dict.fromkeys(wanted)]
            wrong = [t.id for t in chosen if t.split != split]
            if wrong:
                raise SuiteError(
                    f"task {wrong[0]!r} is on the {common_pb2.TaskSplit.Name(self.tasks[wrong[0]].split)} "
                    f"side of suite {self.name!r}, not {common_pb2.TaskSplit.Name(split)}"
                )
            return chosen
        return [t for t in sorted(self.tasks.values(), key=lambda t: t.id) if t.split == split]


# ---------------------------------------------------------------------------------- parsing


def _text(where: str, data: bytes) -> str:
    if len(data) > MAX_FILE_BYTES:
        raise SuiteError(f"{where}: {len(data)} bytes, more than the {MAX_FILE_BYTES} a task file may hold")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{where}: not UTF-8 text ({err})") from None


def _toml(where: str, data: bytes) -> dict[str, Any]:
    try:
        return tomllib.loads(_text(where, data))
    except tomllib.TOMLDecodeError as err:
        raise SuiteError(f"{where}: invalid TOML: {err}") from None


def _str(where: str, doc: Mapping[str, Any], key: str, *, required: bool = True, default: str = "") -> str:
    value = doc.get(key, None)
    if value is None:
        if required:
            raise SuiteError(f"{where}: `{key}` is required")
        return default
    if not isinstance(value, str):
        raise SuiteError(f"{where}: `{key}` must be a string, got {type(value).__name__}")
    return value


def _str_list(where: str, doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SuiteError(f"{where}: `{key}` must be a list of strings")
    return tuple(value)


def _check_rel_path(where: str, path: str) -> str:
    norm = posixpath.normpath(path)
    if path.startswith("/") or norm.startswith("..") or "\\" in path or "\x00" in path or norm == ".":
        raise SuiteError(f"{where}: path {path!r} must be relative and stay inside the task")
    return norm


def parse_suite_manifest(where: str, data: bytes, folder_name: str) -> dict[str, Any]:
    doc = _toml(where, data)
    name = _str(where, doc, "name")
    if not NAME_RE.match(name):
        raise SuiteError(f"{where}: name {name!r} must match {NAME_RE.pattern}")
    if folder_name and name != folder_name:
        raise SuiteError(f"{where}: name {name!r} differs from its folder {folder_name!r}")
    ratio = doc.get("train_ratio", 0.7)
    if not isinstance(ratio, (int, float)) or not 0 < float(ratio) < 1:
        raise SuiteError(f"{where}: train_ratio must be a number in (0, 1), got {ratio!r}")
    return {
        "name": name,
        "description": _str(where, doc, "description", required=False),
        "train_ratio": float(ratio),
        "split_seed": _str(where, doc, "split_seed", required=False, default=name),
    }


def parse_task_folder(task_id: str, where: str, files: Mapping[str, bytes]) -> RepoTask | MlTask:
    """A task folder: an ML task when its task.toml says ``kind = "ml"`` (mltasks.py), else a repo task."""
    if not is_ml_task(files):
        return parse_repo_task(task_id, where, files)
    if not NAME_RE.match(task_id):
        raise SuiteError(f"{where}: task id {task_id!r} must match {NAME_RE.pattern}")
    doc = _toml(f"{where}/task.toml", files["task.toml"])
    limits = parse_limits(f"{where}/task.toml: [limits]", doc["limits"]) if "limits" in doc else TaskLimits()
    try:
        return parse_ml_task(task_id, where, files, limits=limits)
    except MlTaskError as err:
        raise SuiteError(str(err)) from None


def parse_repo_task(task_id: str, where: str, files: Mapping[str, bytes]) -> RepoTask:
    """A repo task from its folder's files (paths relative to the task folder)."""
    if not NAME_RE.match(task_id):
        raise SuiteError(f"{where}: task id {task_id!r} must match {NAME_RE.pattern}")
    if "task.toml" not in files:
        raise SuiteError(f"{where}: task.toml is missing")
    doc = _toml(f"{where}/task.toml", files["task.toml"])
    here = f"{where}/task.toml"
    repo: dict[str, str] = {}
    fix: dict[str, str] = {}
    for path, data in sorted(files.items()):
        if path == "task.toml":
            continue
        top, _, rest = path.partition("/")
        if top not in ("repo", "fix") or not rest:
            raise SuiteError(f"{where}/{path}: unexpected file (only task.toml, repo/… and fix/…)")
        rel = _check_rel_path(f"{where}/{path}", rest)
        if posixpath.basename(rel) == "conftest.py":
            raise SuiteError(f"{where}/{path}: conftest.py is not allowed (it could hook pytest)")
        (repo if top == "repo" else fix)[rel] = _text(f"{where}/{path}", data)
    if not repo:
        raise SuiteError(f"{where}: repo/ is empty")
    for rel in fix:
        if is_test_file(rel):
            raise SuiteError(f"{where}/fix/{rel}: a reference fix may not change test files")
    f2p = _str_list(here, doc, "fail_to_pass")
    p2p = _str_list(here, doc, "pass_to_pass")
    if not f2p:
        raise SuiteError(f"{here}: fail_to_pass must name at least one test")
    for test_id in f2p + p2p:
        test_file = test_id.split("::", 1)[0]
        if test_file not in repo:
            raise SuiteError(f"{here}: test {test_id!r} names {test_file!r}, which is not in repo/")
        if not is_test_file(test_file):
            raise SuiteError(f"{here}: {test_file!r} is not a test file (test_*.py, *_test.py or tests/…)")
    targets = _str_list(here, doc, "test_targets") or tuple(
        dict.fromkeys(t.split("::", 1)[0] for t in f2p + p2p)
    )
    return RepoTask(
        id=task_id,
        title=_str(here, doc, "title", required=False, default=task_id),
        problem_statement=_str(here, doc, "problem_statement").strip(),
        files=repo,
        fail_to_pass=f2p,
        pass_to_pass=p2p,
        test_targets=targets,
        fix=fix,
        tags=_str_list(here, doc, "tags"),
        limits=parse_limits(f"{here}: [limits]", doc["limits"]) if "limits" in doc else TaskLimits(),
    )


def parse_io_problem(where: str, record: Any) -> IoTask:
    """One seed-003 record (``query_id``, ``question``, ``input_output``…)."""
    if not isinstance(record, dict):
        raise SuiteError(f"{where}: a problem must be a JSON object")
    task_id = record.get("query_id")
    if isinstance(task_id, int):
        task_id = str(task_id)
    if not isinstance(task_id, str) or not TASK_ID_RE.match(task_id):
        raise SuiteError(f"{where}: query_id {task_id!r} must be 1-128 characters of [A-Za-z0-9._/-]")
    io = record.get("input_output")
    if isinstance(io, str):  # some dumps store it as JSON text
        try:
            io = json.loads(io)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{where}: input_output is text but not JSON: {err}") from None
    if not isinstance(io, dict):
        raise SuiteError(f"{where}: input_output must be an object with `inputs` and `outputs`")
    inputs, outputs = io.get("inputs"), io.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise SuiteError(f"{where}: input_output.inputs and .outputs must be lists")
    if len(inputs) != len(outputs):
        raise SuiteError(f"{where}: {len(inputs)} inputs but {len(outputs)} outputs")
    if not inputs:
        raise SuiteError(f"{where}: input_output has no cases")
    if not all(isinstance(v, str) for v in inputs + outputs):
        raise SuiteError(f"{where}: every input and output must be a string")
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise SuiteError(f"{where}: question must be a non-empty string")
    for key in ("prompt", "reference_solution", "title"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise SuiteError(f"{where}: {key} must be a string")
    tags = record.get("tags") or []
    limits = parse_limits(f"{where}: limits", record["limits"]) if record.get("limits") is not None else None
    return IoTask(
        id=task_id,
        title=record.get("title") or task_id,
        prompt=record.get("prompt") or "",
        question=question.strip(),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        reference_solution=record.get("reference_solution") or "",
        tags=tuple(str(t) for t in tags),
        limits=limits or TaskLimits(),
    )


def parse_problems_jsonl(where: str, data: bytes) -> list[IoTask]:
    out = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{where}: not UTF-8 text ({err})") from None
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SuiteError(f"{where}:{n}: invalid JSON: {err.msg} at column {err.colno}") from None
        out.append(parse_io_problem(f"{where}:{n}", record))
    return out


def build_suite(files: Mapping[str, bytes], *, folder_name: str, source: str, bundled: bool) -> Suite:
    """A suite from every file of its folder (paths relative to the suite folder)."""
    if "suite.toml" not in files:
        raise SuiteError(f"{source}: suite.toml is missing")
    meta = parse_suite_manifest(f"{source}/suite.toml", files["suite.toml"], folder_name)
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    suite = Suite(version=digest.hexdigest()[:16], source=source, bundled=bundled, tasks={}, **meta)
    per_task: dict[str, dict[str, bytes]] = {}
    for path, data in files.items():
        if path.startswith("tasks/"):
            parts = path.split("/", 2)
            if len(parts) < 3:
                raise SuiteError(f"{source}/{path}: files under tasks/ belong in a task folder")
            per_task.setdefault(parts[1], {})[parts[2]] = data
        elif path not in ("suite.toml", "problems.jsonl", "README.md"):
            raise SuiteError(f"{source}/{path}: unexpected file (see SUITES.md)")
    tasks: list[AnyTask] = [
        parse_task_folder(tid, f"{source}/tasks/{tid}", tfiles) for tid, tfiles in sorted(per_task.items())
    ]
    if "problems.jsonl" in files:
        tasks.extend(parse_problems_jsonl(f"{source}/problems.jsonl", files["problems.jsonl"]))
    if not tasks:
        raise SuiteError(f"{source}: the suite has no tasks (no tasks/ folder and no problems.jsonl)")
    for task in tasks:
        if task.id in suite.tasks:
            raise SuiteError(f"{source}: task id {task.id!r} appears twice")
        split = split_of(task.id, seed=suite.split_seed, train_ratio=suite.train_ratio)
        suite.tasks[task.id] = _with_split(task, split)
    return suite


def _with_split(task: AnyTask, split: common_pb2.TaskSplit) -> AnyTask:
    return replace(task, split=split)


def read_folder(folder: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    return files


def load_folder(folder: Path, *, bundled: bool = False) -> Suite:
    if not (folder / "suite.toml").is_file():
        raise SuiteError(f"{folder}: no suite.toml")
    return build_suite(read_folder(folder), folder_name=folder.name, source=str(folder), bundled=bundled)


def read_object_store(store: ObjectStore, name: str) -> dict[str, bytes]:
    """Every file of the suite ``name`` in the object store (paths relative to ``suites/<name>/``)."""
    prefix = f"suites/{name}/"
    return {info.key[len(prefix) :]: store.get_bytes(info.key) for info in store.list(prefix)}


def load_object_store(store: ObjectStore, name: str) -> Suite:
    files = read_object_store(store, name)
    if not files:
        raise SuiteError(f"object store: nothing under suites/{name}/")
    return build_suite(files, folder_name=name, source=f"suites/{name}/", bundled=False)


def write_object_store(store: ObjectStore, name: str, files: Mapping[str, bytes]) -> None:
    """Store a checked suite under ``suites/<name>/``, replacing whatever was there.

    ``suite.toml`` goes last, and a catalog only sees a suite with a ``suite.toml``, so a new
    suite appears whole; files of an earlier version that the new one lacks are removed after.
    """
    prefix = f"suites/{name}/"
    stale = {info.key for info in store.list(prefix)} - {prefix + p for p in files}
    for path in sorted(files, key=lambda p: p == "suite.toml"):
        store.put(prefix + path, files[path], overwrite=True)
    for key in sorted(stale):
        store.delete(key)


@dataclass(frozen=True)
class SuiteFailure:
    """A suite that did not load: its name (the folder's), where it was, and every problem found."""

    name: str
    source: str
    error: str
    bundled: bool = False

    def to_proto(self) -> suite_pb2.Suite:
        return suite_pb2.Suite(
            name=self.name, source=self.source, bundled=self.bundled, load_error=self.error
        )


class SuiteCatalog:
    """Every suite the orchestrator knows: bundled, extra folders, and the object store.

    Later sources win on a name clash, so an operator can replace a bundled suite. Loaded at
    start-up, by ``reload()``, and by ``refresh()`` when a listing of the extra folders and of
    ``suites/`` in the object store changed since the last load (one directory walk and one
    object listing; the bundled suites ship with the code and are read again only by
    ``reload()``). A suite that fails to load does not take the service down: it is kept in
    ``failures`` with every problem found (``flywheel_orchestrator.suite_check``), and shown by
    ListSuites and ``flywheel suites``. Safe to call from several threads.
    """

    def __init__(self, folders: Iterable[Path] = (), store: ObjectStore | None = None) -> None:
        self.folders = list(folders)
        self.store = store
        self.suites: dict[str, Suite] = {}
        self.failures: dict[str, SuiteFailure] = {}  #: by source
        self._fingerprint: tuple[Any, ...] | None = None
        self._lock = threading.Lock()

    @property
    def errors(self) -> dict[str, str]:
        """Source → error of each suite that failed to load."""
        return {source: f.error for source, f in self.failures.items()}

    def fingerprint(self) -> tuple[Any, ...]:
        """What changes when a suite in an extra folder or the object store changes."""
        seen: list[Any] = []
        for root in self.folders:
            if root.is_dir():
                for path in sorted(root.rglob("*")):
                    with contextlib.suppress(OSError):
                        st = path.stat()
                        seen.append((str(path), st.st_mtime_ns, st.st_size))
            else:
                seen.append((str(root), None, None))
        if self.store is not None:
            for info in self.store.list("suites/"):
                seen.append((info.key, info.size, info.etag or info.last_modified.isoformat()))
        return tuple(seen)

    def refresh(self) -> bool:
        """Load again if anything changed since the last load; True if it did."""
        if self._fingerprint is not None and self.fingerprint() == self._fingerprint:
            return False
        self.reload()
        return True

    def reload(self) -> None:
        from flywheel_orchestrator.suite_check import check_suite  # it imports this module

        with self._lock:
            fingerprint = self.fingerprint()
            suites: dict[str, Suite] = {}
            failures: dict[str, SuiteFailure] = {}

            def load(name: str, files: dict[str, bytes], source: str, bundled: bool) -> None:
                try:
                    result = check_suite(files, name=name, source=source, bundled=bundled)
                except Exception as err:  # a bug in the checks must not hide every other suite
                    failures[source] = SuiteFailure(name, source, f"could not be checked: {err!r}", bundled)
                    return
                if result.suite is None:
                    error = "; ".join(str(p) for p in result.errors) or "the suite did not load"
                    failures[source] = SuiteFailure(name, source, error, bundled)
                else:
                    suites[result.suite.name] = result.suite

            def scan(root: Path, bundled: bool) -> None:
                if (root / "suite.toml").is_file():
                    candidates = [root]
                else:
                    candidates = (
                        sorted(p for p in root.iterdir() if (p / "suite.toml").is_file())
                        if root.is_dir()
                        else []
                    )
                for folder in candidates:
                    try:
                        files = read_folder(folder)
                    except OSError as err:
                        failures[str(folder)] = SuiteFailure(
                            folder.name, str(folder), f"cannot read: {err}", bundled
                        )
                        continue
                    load(folder.name, files, str(folder), bundled)

            scan(BUNDLED_DIR, True)
            for folder in self.folders:
                scan(folder, False)
            if self.store is not None:
                names = set()
                for info in self.store.list("suites/"):
                    rest = info.key[len("suites/") :]
                    if rest.count("/") >= 1 and rest.split("/", 1)[1] == "suite.toml":
                        names.add(rest.split("/", 1)[0])
                for name in sorted(names):
                    load(name, read_object_store(self.store, name), f"suites/{name}/", False)
            self.suites = suites
            self.failures = failures
            self._fingerprint = fingerprint

    def get(self, name: str) -> Suite | None:
        return self.suites.get(name)

    def failure(self, name: str) -> SuiteFailure | None:
        """The last failure of a suite called ``name`` (when no source of that name loaded)."""
        found = [f for f in self.failures.values() if f.name == name]
        return found[-1] if found else None


# ---------------------------------------------------------------------------------- importers


def import_repo_tasks(
    source: Path, dest: Path, *, name: str, description: str = "", train_ratio: float = 0.7
) -> Suite:
    """Turn a directory of task folders (each with ``task.toml``, ``repo/``, optional ``fix/``)
    into a suite folder at ``dest``; every task is validated first, so nothing is half-written."""
    if not NAME_RE.match(name):
        raise SuiteError(f"suite name {name!r} must match {NAME_RE.pattern}")
    tasks = sorted(p for p in source.iterdir() if (p / "task.toml").is_file()) if source.is_dir() else []
    if not tasks:
        raise SuiteError(f"{source}: no task folders (folders with a task.toml)")
    files: dict[str, bytes] = {"suite.toml": _manifest(name, description, train_ratio)}
    for folder in tasks:
        for rel, data in read_folder(folder).items():
            files[f"tasks/{folder.name}/{rel}"] = data
    suite = build_suite(files, folder_name=name, source=str(dest), bundled=False)
    _write_folder(dest, files)
    return suite


def import_io_problems(
    source: Path, dest: Path, *, name: str, description: str = "", train_ratio: float = 0.7
) -> Suite:
    """Turn a JSONL or Parquet file of seed-003 problems into a suite folder at ``dest``."""
    if not NAME_RE.match(name):
        raise SuiteError(f"suite name {name!r} must match {NAME_RE.pattern}")
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq  # only needed for this importer

        rows = pq.read_table(source).to_pylist()
        lines = []
        for n, row in enumerate(rows, start=1):
            parse_io_problem(f"{source}:row {n}", row)
            lines.append(json.dumps(row, ensure_ascii=False, default=str))
        body = ("\n".join(lines) + "\n").encode()
    else:
        body = source.read_bytes()
        parse_problems_jsonl(str(source), body)
    files = {"suite.toml": _manifest(name, description, train_ratio), "problems.jsonl": body}
    suite = build_suite(files, folder_name=name, source=str(dest), bundled=False)
    _write_folder(dest, files)
    return suite


def _manifest(name: str, description: str, train_ratio: float) -> bytes:
    desc = description.replace('"""', "'''")
    return (
        f'name = "{name}"\ndescription = """{desc}"""\ntrain_ratio = {train_ratio}\nsplit_seed = "{name}"\n'
    ).encode()


def _write_folder(dest: Path, files: Mapping[str, bytes]) -> None:
    if dest.exists() and any(dest.iterdir()):
        raise SuiteError(f"{dest}: exists and is not empty")
    tmp = dest.with_name(dest.name + ".partial")
    for rel, data in files.items():
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
