"""Converters from foreign agent logs to trajectories.

Three formats (see ``ImportFormat`` in trajectory.proto):

* AIDE ``journal.json``: one JSON document ``{"nodes": [...]}``; each node has ``id``, ``plan``,
  ``code``, ``parent`` (a node id, ``{"id": ...}`` or null), ``is_buggy``, ``term_out`` (text or a
  list of text pieces), ``metric`` (``{"value": x, "maximize": b}``, a number or null) and
  optionally ``step``, ``analysis``, ``exec_time``, ``ctime``; the document may carry ``task_id``
  and ``task_description`` (a USER step before the nodes). The journal becomes ONE
  tree-shaped trajectory: per node an ASSISTANT step (plan + code) and a USER step with its
  terminal output; ``parent_index`` of a node's ASSISTANT step points at its parent's output step.
* SWE-bench-style JSONL: one object per line with ``instance_id``, ``problem_statement``,
  ``patch``, ``attempt``, ``resolved``, ``failure_category`` and ``test_stdout`` (or
  ``test_output``). A line becomes problem (USER) → patch (ASSISTANT) → test output (USER).
* Chat JSONL of tool-protocol runs: one object per line with ``messages`` in OpenAI shape, and
  optionally ``tools``, ``task_id``, ``suite``, ``resolved``, ``model`` (top level or under
  ``metadata``). Native ``tool_calls`` make it a NATIVE-protocol run; otherwise assistant turns
  are read as JSON-protocol tool calls (``{"type": "tool_call", "name": ..., "args": {...}}``) and
  user turns starting with ``[tool_result]`` as tool results.

Every converter is a pure function from a record's bytes to a Trajectory, raising
:class:`RecordError` with a JSON pointer for anything malformed. ``convert`` runs one over a file
and yields trajectories and errors; the caller decides what to store. Ids are derived from a hash
of (format, run id, record bytes), so importing the same file into the same run twice is
idempotent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_trajectory import model

SUITE_DEFAULTS = {
    pb.IMPORT_FORMAT_AIDE_JOURNAL: "aide",
    pb.IMPORT_FORMAT_SWE_JSONL: "swe",
    pb.IMPORT_FORMAT_CHAT_JSONL: "chat",
}
_TASK_UNSAFE = re.compile(r"[^A-Za-z0-9._/-]+")
ROLES = {"system": pb.ROLE_SYSTEM, "user": pb.ROLE_USER, "assistant": pb.ROLE_ASSISTANT, "tool": pb.ROLE_TOOL}
TOOL_RESULT_PREFIX = "[tool_result]"
_TESTS_RE = re.compile(r"\[TESTS (PASS|FAIL)[^\]]*\]")


class RecordError(ValueError):
    """A malformed record: ``pointer`` is a JSON pointer inside it ('' for the whole record)."""

    def __init__(self, pointer: str, message: str) -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message


@dataclass
class Imported:
    """One record converted (``trajectory``) or rejected (``error``), with its location."""

    line: int
    trajectory: pb.Trajectory | None = None
    error: RecordError | None = None


@dataclass(frozen=True)
class ImportContext:
    source: str  #: file name / object key, or 'inline'
    run_id: str
    suite: str  #: '' = the format's default
    labels: dict[str, str]


def default_run_id(content_sha256: str) -> str:
    """The run id of an import when none is given: derived from the file, so re-imports match."""
    return f"imp-{content_sha256[:24]}"


def trajectory_id(fmt: pb.ImportFormat, run_id: str, record: bytes) -> str:
    digest = hashlib.sha256(f"{fmt}\0{run_id}\0".encode() + record).hexdigest()
    return f"imp-{digest[:24]}"


def safe_task_id(value: str, pointer: str) -> str:
    cleaned = _TASK_UNSAFE.sub("-", value).strip("-")[:128]
    if not cleaned:
        raise RecordError(pointer, f"cannot make a task id from {value[:60]!r}")
    return cleaned


# ------------------------------------------------------------------------------- helpers


def _get(
    obj: dict, key: str, kind: type | tuple[type, ...], pointer: str, *, required: bool = False, default=None
):
    if key not in obj or obj[key] is None:
        if required:
            raise RecordError(f"{pointer}/{key}", f"'{key}' is required")
        return default
    value = obj[key]
    # bool is an int in Python; a number field must not accept true/false.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise RecordError(f"{pointer}/{key}", f"'{key}' must be {_kind_name(kind)}, not a boolean")
    if not isinstance(value, kind):
        raise RecordError(
            f"{pointer}/{key}", f"'{key}' must be {_kind_name(kind)}, not {type(value).__name__}"
        )
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        dict: "an object",
        list: "an array",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _base(fmt: pb.ImportFormat, ctx: ImportContext, record: bytes, line: int) -> pb.Trajectory:
    t = pb.Trajectory(
        id=trajectory_id(fmt, ctx.run_id, record),
        run_id=ctx.run_id,
        teacher_kind=pb.TEACHER_KIND_IMPORTED,
        import_origin=pb.ImportOrigin(
            format=fmt, source=ctx.source, line=line, record_sha256=hashlib.sha256(record).hexdigest()
        ),
    )
    t.task.suite = ctx.suite or SUITE_DEFAULTS[fmt]
    t.labels.update(ctx.labels)
    return t


def _load_object(record: bytes) -> dict:
    try:
        value = json.loads(record)
    except UnicodeDecodeError as err:
        raise RecordError("", f"not UTF-8 text: {err}") from None
    except json.JSONDecodeError as err:
        raise RecordError("", f"invalid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(value, dict):
        raise RecordError("", f"expected a JSON object, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------------- AIDE


def convert_aide(record: bytes, ctx: ImportContext) -> pb.Trajectory:
    doc = _load_object(record)
    nodes = _get(doc, "nodes", list, "", required=True)
    if not nodes:
        raise RecordError("/nodes", "the journal has no nodes")
    parsed = []
    for i, node in enumerate(nodes):
        p = f"/nodes/{i}"
        if not isinstance(node, dict):
            raise RecordError(p, f"a node must be an object, not {type(node).__name__}")
        node_id = _get(node, "id", (str, int), p, required=True)
        parent = node.get("parent")
        if isinstance(parent, dict):
            parent = _get(parent, "id", (str, int), f"{p}/parent", required=True)
        elif (parent is not None and not isinstance(parent, str | int)) or isinstance(parent, bool):
            raise RecordError(f"{p}/parent", "'parent' must be a node id, an object with 'id', or null")
        term_out = node.get("term_out", "")
        if isinstance(term_out, list):
            if not all(isinstance(x, str) for x in term_out):
                raise RecordError(f"{p}/term_out", "'term_out' must be text or a list of text")
            term_out = "".join(term_out)
        elif term_out is None:
            term_out = ""
        elif not isinstance(term_out, str):
            raise RecordError(f"{p}/term_out", "'term_out' must be text or a list of text")
        metric = node.get("metric")
        metric_value = None
        maximize = None
        if isinstance(metric, dict):
            metric_value = _get(metric, "value", (int, float), f"{p}/metric")
            maximize = _get(metric, "maximize", bool, f"{p}/metric")
        elif isinstance(metric, int | float) and not isinstance(metric, bool):
            metric_value = metric
        elif metric is not None:
            raise RecordError(f"{p}/metric", "'metric' must be an object with 'value', a number or null")
        parsed.append(
            {
                "id": str(node_id),
                "parent": None if parent is None else str(parent),
                "plan": _get(node, "plan", str, p, default=""),
                "code": _get(node, "code", str, p, required=True),
                "buggy": _get(node, "is_buggy", bool, p, default=False),
                "term_out": term_out,
                "metric": metric_value,
                "maximize": maximize,
                "analysis": _get(node, "analysis", str, p, default=""),
                "exec_time": _get(node, "exec_time", (int, float), p),
                "step": _get(node, "step", int, p, default=i),
                "pointer": p,
            }
        )
    by_id: dict[str, dict] = {}
    for n in parsed:
        if n["id"] in by_id:
            raise RecordError(f"{n['pointer']}/id", f"node id {n['id']!r} appears twice")
        by_id[n["id"]] = n
    for n in parsed:
        if n["parent"] is not None and n["parent"] not in by_id:
            raise RecordError(
                f"{n['pointer']}/parent", f"parent {n['parent']!r} is not a node of this journal"
            )
    # Parents before children: the journal's step order, then a check that it is a tree.
    parsed.sort(key=lambda n: n["step"])
    t = _base(pb.IMPORT_FORMAT_AIDE_JOURNAL, ctx, record, 0)
    t.tool_protocol = common_pb2.TOOL_PROTOCOL_UNSPECIFIED
    t.task.kind = common_pb2.TASK_KIND_ML
    t.task.task_id = safe_task_id(doc.get("task_id") or _stem(ctx.source), "/task_id")
    # Optional (journals Flywheel's ML agent exports): the task as the agent was given it, kept as
    # the USER step before the first node, where ``journal_pairs`` reads the task description.
    description = _get(doc, "task_description", str, "", default="")
    if description:
        t.steps.add(index=0, role=pb.ROLE_USER, content=description)
    output_step: dict[str, int] = {}
    for n in parsed:
        stage = "draft" if n["parent"] is None else ("debug" if by_id[n["parent"]]["buggy"] else "improve")
        assistant = t.steps.add(index=len(t.steps), role=pb.ROLE_ASSISTANT)
        assistant.content = (
            f"{n['plan']}\n\n```python\n{n['code']}\n```" if n["plan"] else f"```python\n{n['code']}\n```"
        )
        if n["parent"] is not None:
            if n["parent"] not in output_step:
                raise RecordError(
                    f"{n['pointer']}/parent", "the parent comes after its child (or the nodes form a cycle)"
                )
            assistant.parent_index = output_step[n["parent"]]
        assistant.attributes.update(
            {"aide.node_id": n["id"], "aide.stage": stage, "aide.buggy": str(n["buggy"]).lower()}
        )
        if n["metric"] is not None:
            assistant.attributes["aide.metric"] = repr(float(n["metric"]))
        if n["maximize"] is not None:
            assistant.attributes["aide.maximize"] = str(n["maximize"]).lower()
        result = t.steps.add(index=len(t.steps), role=pb.ROLE_USER, parent_index=assistant.index)
        result.content = n["term_out"] + (f"\n\n{n['analysis']}" if n["analysis"] else "")
        result.tool_result.status = pb.TOOL_RESULT_STATUS_ERROR if n["buggy"] else pb.TOOL_RESULT_STATUS_OK
        result.attributes["aide.node_id"] = n["id"]
        if n["exec_time"] is not None:
            result.duration.FromNanoseconds(int(float(n["exec_time"]) * 1e9))
        output_step[n["id"]] = result.index
    good = [n for n in parsed if not n["buggy"] and n["metric"] is not None]
    t.outcome.resolved = bool(good)
    if good:
        maximize = good[0]["maximize"] is not False
        best = (max if maximize else min)(good, key=lambda n: n["metric"])
        t.outcome.reward = float(best["metric"])
        t.labels["aide.best_node"] = best["id"][:256]
    else:
        t.outcome.failure_category = pb.FAILURE_CATEGORY_OTHER
        t.outcome.failure_detail = "every node of the journal is buggy or has no metric"
    return t


def _stem(source: str) -> str:
    name = source.rsplit("/", 2)
    # 'logs/house-prices/journal.json' → 'house-prices'; 'x.json' → 'x'.
    if len(name) >= 2 and name[-1].startswith("journal"):
        return name[-2]
    return name[-1].rsplit(".", 1)[0] or "journal"


# ----------------------------------------------------------------------------------- SWE


_SWE_FAILURES = {
    "no_patch": pb.FAILURE_CATEGORY_NO_CHANGE,
    "empty_patch": pb.FAILURE_CATEGORY_NO_CHANGE,
    "tests_failed": pb.FAILURE_CATEGORY_TESTS_FAILED,
    "test_failure": pb.FAILURE_CATEGORY_TESTS_FAILED,
    # SWE-style records say "timeout" for the agent's own time budget; the tests' time limit is
    # its own category.
    "timeout": pb.FAILURE_CATEGORY_TIME_BUDGET,
    "test_timeout": pb.FAILURE_CATEGORY_TIMEOUT,
    "tests_timed_out": pb.FAILURE_CATEGORY_TIMEOUT,
    "parse_error": pb.FAILURE_CATEGORY_PARSE_ERRORS,
}


def convert_swe(record: bytes, ctx: ImportContext, line: int) -> pb.Trajectory:
    obj = _load_object(record)
    instance = _get(obj, "instance_id", str, "", required=True)
    problem = _get(obj, "problem_statement", str, "", required=True)
    patch = _get(obj, "patch", str, "", default="")
    attempt = _get(obj, "attempt", int, "", default=0)
    if attempt < 0:
        raise RecordError("/attempt", f"'attempt' must be >= 0, got {attempt}")
    resolved = _get(obj, "resolved", bool, "", required=True)
    category = _get(obj, "failure_category", str, "", default="")
    tests = _get(obj, "test_stdout", str, "", default=None)
    if tests is None:
        tests = _get(obj, "test_output", str, "", default="")
    t = _base(pb.IMPORT_FORMAT_SWE_JSONL, ctx, record, line)
    t.task.task_id = safe_task_id(instance, "/instance_id")
    t.task.kind = common_pb2.TASK_KIND_REPO
    t.attempt = attempt
    t.policy.model = _get(obj, "model_name_or_path", str, "", default="") or _get(
        obj, "model", str, "", default=""
    )
    repo = _get(obj, "repo", str, "", default="")
    if repo:
        t.labels["swe.repo"] = repo[:256]
    t.steps.add(index=0, role=pb.ROLE_USER, content=problem)
    t.steps.add(index=1, role=pb.ROLE_ASSISTANT, content=patch)
    if tests:
        step = t.steps.add(index=2, role=pb.ROLE_USER, content=tests)
        step.test_run.trigger = pb.TEST_TRIGGER_FINAL
        step.test_run.output = tests
    t.outcome.resolved = resolved
    t.outcome.final_patch = patch
    t.outcome.failure_detail = category
    if not resolved:
        mapped = _SWE_FAILURES.get(category.lower())
        if mapped is None:
            mapped = pb.FAILURE_CATEGORY_NO_CHANGE if not patch.strip() else pb.FAILURE_CATEGORY_OTHER
        t.outcome.failure_category = mapped
    return t


# ---------------------------------------------------------------------------------- chat


def convert_chat(record: bytes, ctx: ImportContext, line: int) -> pb.Trajectory:
    obj = _load_object(record)
    if "preferred_output" in obj or "non_preferred_output" in obj:
        raise RecordError(
            "", "this is a preference (DPO) pair, not a trajectory; import the runs it came from"
        )
    messages = _get(obj, "messages", list, "", required=True)
    if not messages:
        raise RecordError("/messages", "'messages' is empty")
    meta = _get(obj, "metadata", dict, "", default={})
    merged = {**meta, **{k: v for k, v in obj.items() if k not in ("messages", "tools", "metadata")}}
    t = _base(pb.IMPORT_FORMAT_CHAT_JSONL, ctx, record, line)
    t.task.kind = common_pb2.TASK_KIND_REPO
    task_id = merged.get("task_id")
    if task_id is not None and not isinstance(task_id, str):
        raise RecordError("/task_id", "'task_id' must be a string")
    t.task.task_id = safe_task_id(task_id or f"{_stem(ctx.source)}-{line}", "/task_id")
    if isinstance(merged.get("suite"), str) and merged["suite"] and not ctx.suite:
        t.task.suite = merged["suite"]
    if isinstance(merged.get("model"), str):
        t.policy.model = merged["model"]
    resolved = merged.get("resolved")
    if resolved is not None and not isinstance(resolved, bool):
        raise RecordError("/resolved", "'resolved' must be a boolean")
    t.outcome.resolved = bool(resolved)
    for i, tool in enumerate(_get(obj, "tools", list, "", default=[])):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise RecordError(f"/tools/{i}", "a tool must be an object with a 'name' (or 'function.name')")
        t.tools.add(
            name=fn["name"],
            description=str(fn.get("description", "")),
            parameters_json_schema=json.dumps(fn["parameters"])
            if isinstance(fn.get("parameters"), dict)
            else "",
        )
    native = any(isinstance(m, dict) and (m.get("tool_calls") or m.get("role") == "tool") for m in messages)
    t.tool_protocol = common_pb2.TOOL_PROTOCOL_NATIVE if native else common_pb2.TOOL_PROTOCOL_JSON
    last_call_id = ""
    for i, msg in enumerate(messages):
        p = f"/messages/{i}"
        if not isinstance(msg, dict):
            raise RecordError(p, f"a message must be an object, not {type(msg).__name__}")
        role = _get(msg, "role", str, p, required=True)
        if role not in ROLES:
            raise RecordError(f"{p}/role", f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        content = msg.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise RecordError(f"{p}/content", "'content' must be text, a list of parts, or null")
        step = t.steps.add(index=i, role=ROLES[role], content=content)
        if isinstance(msg.get("name"), str):
            step.name = msg["name"]
        if role == "assistant":
            for j, call in enumerate(_get(msg, "tool_calls", list, p, default=[])):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise RecordError(f"{p}/tool_calls/{j}", "a tool call needs 'function' with a 'name'")
                args = fn.get("arguments", "")
                step.tool_calls.add(
                    id=str(call.get("id") or f"call-{i}-{j}"),
                    name=fn["name"],
                    arguments_json=args if isinstance(args, str) else json.dumps(args),
                )
            if not native:
                _parse_json_protocol(step)
            if step.tool_calls:
                last_call_id = step.tool_calls[-1].id
        elif role == "tool":
            step.tool_call_id = _get(msg, "tool_call_id", str, p, default="") or last_call_id
            step.tool_result.tool_call_id = step.tool_call_id
            step.tool_result.status = pb.TOOL_RESULT_STATUS_OK
        elif role == "user" and content.startswith(TOOL_RESULT_PREFIX):
            step.tool_result.tool_call_id = last_call_id
            step.tool_result.status = pb.TOOL_RESULT_STATUS_OK
        if role in ("user", "tool"):
            found = _TESTS_RE.search(content)
            if found:
                step.test_run.trigger = pb.TEST_TRIGGER_AFTER_WRITE
                step.test_run.output = content[found.start() :][:4000]
    return t


def _parse_json_protocol(step: pb.Step) -> None:
    """An assistant turn under the JSON protocol: one tool-call object, or a parse error."""
    text = step.content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    if not text.startswith("{"):
        return  # plain prose (e.g. a final answer): neither a call nor an attempt at one
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        step.parse_error.kind = pb.PARSE_ERROR_KIND_INVALID_JSON
        step.parse_error.message = f"invalid JSON: {err.msg}"
        return
    if (
        not isinstance(value, dict)
        or value.get("type") != "tool_call"
        or not isinstance(value.get("name"), str)
    ):
        step.parse_error.kind = pb.PARSE_ERROR_KIND_BAD_SHAPE
        step.parse_error.message = 'expected {"type": "tool_call", "name": ..., "args": {...}}'
        return
    args = value.get("args", {})
    step.tool_calls.add(id=f"call-{step.index}", name=value["name"], arguments_json=json.dumps(args))


# ------------------------------------------------------------------------------- driver


def convert(fmt: pb.ImportFormat, lines: Iterable[bytes] | bytes, ctx: ImportContext) -> Iterator[Imported]:
    """Convert a source: ``lines`` for JSONL formats, the whole document (bytes) for AIDE.

    Blank lines are skipped silently; every other bad record is yielded as an error with its line.
    Each trajectory is also checked against the store's own rules before it is yielded.
    """
    if fmt == pb.IMPORT_FORMAT_AIDE_JOURNAL:
        document = lines if isinstance(lines, bytes) else b"".join(lines)
        yield _checked(0, lambda: convert_aide(document, ctx))
        return
    if fmt not in (pb.IMPORT_FORMAT_SWE_JSONL, pb.IMPORT_FORMAT_CHAT_JSONL):
        raise ValueError(f"unknown import format {fmt}")
    convert_line = convert_swe if fmt == pb.IMPORT_FORMAT_SWE_JSONL else convert_chat
    source = lines.splitlines() if isinstance(lines, bytes) else lines
    for number, raw in enumerate(source, start=1):
        record = raw.rstrip(b"\r\n")
        if not record.strip():
            continue
        yield _checked(number, lambda r=record, n=number: convert_line(r, ctx, n))


def _checked(line: int, make) -> Imported:
    try:
        t = make()
        model.normalize(t)
    except RecordError as err:
        return Imported(line, error=err)
    except Exception as err:
        return Imported(line, error=RecordError("", str(getattr(err, "message", err))))
    return Imported(line, trajectory=t)
