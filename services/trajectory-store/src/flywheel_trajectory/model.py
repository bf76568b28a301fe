"""Plain functions on trajectories: validation, normalisation, content hash, stats, index rows.

Everything the store derives from a trajectory is derived here, from the stored bytes alone, so the
live index and an index rebuilt from the objects are equal by construction (``index_row``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common.errors import InvalidArgument, check_timestamp

#: Prefix of every trajectory object key.
OBJECT_PREFIX = "trajectories/"
OBJECT_SUFFIX = ".pb"
CONTENT_TYPE = "application/x-protobuf; messageType=flywheel.trajectory.v1.Trajectory"

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TASK_ID_RE = re.compile(r"[A-Za-z0-9._/-]{1,128}")
LABEL_KEY_RE = re.compile(r"[a-z0-9_.-]{1,63}")
MAX_LABEL_VALUE = 256

#: Fields the store sets; a client's values are ignored (cleared before hashing and storing).
OUTPUT_ONLY = ("stats", "create_time", "object")


def object_key(trajectory_id: str) -> str:
    return f"{OBJECT_PREFIX}{trajectory_id}{OBJECT_SUFFIX}"


def id_from_key(key: str) -> str | None:
    """The trajectory id of an object key, or None for keys that are not trajectory objects."""
    if not key.startswith(OBJECT_PREFIX) or not key.endswith(OBJECT_SUFFIX):
        return None
    candidate = key[len(OBJECT_PREFIX) : -len(OBJECT_SUFFIX)]
    return candidate if ID_RE.fullmatch(candidate) else None


def validate_id(field: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field, "is required")
    if not ID_RE.fullmatch(value):
        raise InvalidArgument(
            field,
            f"{value[:80]!r} must be 1-128 characters of [A-Za-z0-9._-], starting with a letter or digit",
        )
    return value


def normalize(
    trajectory: pb.Trajectory, field: str = "trajectory", *, in_place: bool = False
) -> pb.Trajectory:
    """A validated copy (or the message itself) with OUTPUT_ONLY fields cleared and step indices set.

    Raises InvalidArgument naming the first bad field. Unknown fields are kept as they are.
    """
    if in_place:
        t = trajectory
    else:
        t = pb.Trajectory()
        t.CopyFrom(trajectory)
    for name in OUTPUT_ONLY:
        t.ClearField(name)
    validate_id(f"{field}.id", t.id)
    if t.run_id:
        validate_id(f"{field}.run_id", t.run_id)
    if t.task.task_id and not TASK_ID_RE.fullmatch(t.task.task_id):
        raise InvalidArgument(f"{field}.task.task_id", "must be 1-128 characters of [A-Za-z0-9._/-]")
    if t.attempt < 0:
        raise InvalidArgument(f"{field}.attempt", f"must be >= 0, got {t.attempt}")
    if t.policy.adapter_version < 0:
        raise InvalidArgument(f"{field}.policy.adapter_version", "must be >= 0")
    for key, value in t.labels.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"{field}.labels", f"key {key[:80]!r} must be 1-63 characters of [a-z0-9_.-]"
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(f"{field}.labels[{key}]", f"value is {len(value)} characters; at most 256")
    for name in ("start_time", "end_time"):
        if t.HasField(name):
            check_timestamp(f"{field}.{name}", getattr(t, name))
    if t.HasField("start_time") and t.HasField("end_time"):
        if t.end_time.ToNanoseconds() < t.start_time.ToNanoseconds():
            raise InvalidArgument(f"{field}.end_time", "is before start_time")
    for i, tool in enumerate(t.tools):
        if not tool.name:
            raise InvalidArgument(f"{field}.tools[{i}].name", "is required")
        if tool.parameters_json_schema:
            try:
                schema = json.loads(tool.parameters_json_schema)
            except ValueError as err:
                raise InvalidArgument(
                    f"{field}.tools[{i}].parameters_json_schema", f"is not JSON: {err}"
                ) from None
            if not isinstance(schema, dict):
                raise InvalidArgument(f"{field}.tools[{i}].parameters_json_schema", "must be a JSON object")
    # Step indices are positions: a producer may leave them all 0 and let the store number them.
    unnumbered = all(step.index == 0 for step in t.steps)
    for i, step in enumerate(t.steps):
        if unnumbered:
            step.index = i
        elif step.index != i:
            raise InvalidArgument(
                f"{field}.steps[{i}].index", f"is {step.index}; it must equal the position {i}"
            )
        if step.HasField("parent_index") and not 0 <= step.parent_index < i:
            raise InvalidArgument(
                f"{field}.steps[{i}].parent_index",
                f"is {step.parent_index}; it must point to an earlier step",
            )
    return t


def content_sha256(t: pb.Trajectory) -> str:
    """Hash of what the client sent: two puts are "the same" iff their hashes are equal.

    The deterministic serialisation (map entries sorted, unknown fields kept) of the trajectory
    without its OUTPUT_ONLY fields. ``t`` is not modified.
    """
    if any(t.HasField(name) for name in OUTPUT_ONLY):
        probe = pb.Trajectory()
        probe.CopyFrom(t)
        for name in OUTPUT_ONLY:
            probe.ClearField(name)
        t = probe
    return hashlib.sha256(t.SerializeToString(deterministic=True)).hexdigest()


def compute_stats(t: pb.Trajectory) -> pb.TrajectoryStats:
    stats = pb.TrajectoryStats(step_count=len(t.steps))
    prompt = completion = 0
    assistant_turns = tool_calls = parse_errors = loops = 0
    wrote = False
    assistant = pb.ROLE_ASSISTANT
    for step in t.steps:
        if step.role == assistant:
            assistant_turns += 1
            if step.HasField("parse_error"):
                parse_errors += 1
            if step.loop_detected:
                loops += 1
            tool_calls += len(step.tool_calls)
            if step.HasField("usage"):
                prompt += step.usage.prompt_tokens
                completion += step.usage.completion_tokens
        elif step.HasField("tool_result") and step.tool_result.written_paths:
            wrote = True
    stats.assistant_turns = assistant_turns
    stats.tool_calls = tool_calls
    stats.parse_errors = parse_errors
    stats.loop_detections = loops
    stats.wrote_file = wrote
    stats.usage.prompt_tokens = prompt
    stats.usage.completion_tokens = completion
    if t.HasField("start_time") and t.HasField("end_time"):
        stats.wall_time.FromNanoseconds(t.end_time.ToNanoseconds() - t.start_time.ToNanoseconds())
    return stats


def seal(normalized: pb.Trajectory, create_time_us: int) -> bytes:
    """Add the store's fields to ``normalized`` (in place) and return the bytes to store.

    ``object`` is not stored (an object cannot hold its own hash); readers fill it in.
    """
    normalized.stats.CopyFrom(compute_stats(normalized))
    normalized.create_time.FromMicroseconds(create_time_us)
    return normalized.SerializeToString(deterministic=True)


def object_ref(key: str, data: bytes) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(key=key, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def parse_stored(key: str, data: bytes) -> pb.Trajectory:
    """A stored object as a Trajectory with ``object`` filled in from the bytes themselves."""
    t = pb.Trajectory.FromString(data)
    t.object.CopyFrom(object_ref(key, data))
    return t


def basic_bytes(data: bytes) -> bytes:
    """The BASIC view (no steps, no tools) of stored bytes, unknown fields kept."""
    b = pb.Trajectory.FromString(data)
    del b.steps[:]
    del b.tools[:]
    return b.SerializeToString(deterministic=True)


def basic_view(t: pb.Trajectory) -> pb.Trajectory:
    b = pb.Trajectory()
    b.CopyFrom(t)
    del b.steps[:]
    del b.tools[:]
    return b


@dataclass(frozen=True)
class IndexRow:
    """One row of the listing index; everything in it comes from the stored object's bytes."""

    id: str
    create_time_us: int
    run_id: str
    suite: str
    task_id: str
    split: int
    model: str
    adapter_name: str
    adapter_version: int
    resolved: int
    teacher_kind: int
    labels_json: str
    object_key: str
    size_bytes: int
    sha256: str
    content_sha256: str
    basic: bytes


def index_row(key: str, data: bytes, t: pb.Trajectory | None = None, content_hash: str = "") -> IndexRow:
    """The index row of a stored object; ``t`` (its parsed form) and its content hash when known."""
    if t is None:
        t = pb.Trajectory.FromString(data)
    return IndexRow(
        id=t.id,
        create_time_us=t.create_time.ToMicroseconds(),
        run_id=t.run_id,
        suite=t.task.suite,
        task_id=t.task.task_id,
        split=int(t.task.split),
        model=t.policy.model,
        adapter_name=t.policy.adapter_name,
        adapter_version=t.policy.adapter_version,
        resolved=int(t.outcome.resolved),
        teacher_kind=int(t.teacher_kind),
        labels_json=json.dumps(dict(sorted(t.labels.items())), separators=(",", ":")),
        object_key=key,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_sha256=content_hash or content_sha256(t),
        basic=basic_bytes(data),
    )
