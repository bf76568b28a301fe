"""Every RPC of every service, called with random and malformed values: never INTERNAL or UNKNOWN.

The five gRPC services start as real processes (the session's nats-server, one filesystem object
store), the way `flywheel up` starts them. For each RPC of each service contract, hypothesis
builds request messages from the generated descriptors: any subset of the fields set, random
numbers with their extremes (negative sizes, int32/int64 limits, NaN and infinities), enum
numbers outside the enum, empty, odd and megabyte strings, ids that look real but name nothing,
nested messages a few levels deep. Each call has a deadline; a server stream is read for a few
messages and then cancelled. Whatever the request, the answer must be OK or a status that names
the problem (INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION …), never INTERNAL or UNKNOWN (an
unexpected exception in the service), and the service must still answer its health check.

Calls that could start real work (Execute, RunTests, CreateRun …) are safe to fuzz: nearly every
random request is refused before any work starts, and what does start is small (a random snippet
in the sandbox, a run on a suite whose model the stand-in gateway address cannot serve).

Bounded: EXAMPLES calls per RPC (47 RPCs; 470 calls, about 10 s here); FLYWHEEL_FUZZ_EXAMPLES sets
another number for a longer hunt, FLYWHEEL_FUZZ_STATS=1 (with -s) prints the codes each RPC answered.
"""

from __future__ import annotations

import base64
import json
import math
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The contracts: importing the generated modules registers their descriptors.
from flywheel.dataset.v1 import dataset_pb2  # noqa: F401
from flywheel.orchestrator.v1 import orchestrator_pb2  # noqa: F401
from flywheel.sandbox.v1 import sandbox_pb2  # noqa: F401
from flywheel.trainer.v1 import trainer_pb2  # noqa: F401
from flywheel.trajectory.v1 import trajectory_pb2  # noqa: F401
from flywheel_cli.components import COMPONENTS, Component
from flywheel_common import auth
from flywheel_testing.processes import start_module

#: Random requests per RPC.
EXAMPLES = 10
#: Deadline of one call, seconds: generous for a busy machine; DEADLINE_EXCEEDED is an accepted answer.
CALL_TIMEOUT_S = 20.0
#: Messages read from a server stream before the call is cancelled.
STREAM_READS = 3
#: The answers that mean "the service did not expect this".
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
#: How deep nested messages are filled (deeper ones stay empty).
MAX_DEPTH = 3

GRPC_COMPONENTS = [c for c in COMPONENTS if c.protocol == "grpc"]
# Started first, so the orchestrator (last) can be given every other address.
START_ORDER = sorted(GRPC_COMPONENTS, key=lambda c: c.name == "orchestrator")

MEGABYTE = "x" * (1 << 20)
ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "../../etc/passwd",
    "/etc/passwd",
    "a/b/../../..",
    "%s%n{0}",
    "😀\u202e",
    "-p no:cacheprovider",
    "tests/test_x.py::test_f[1]",
    MEGABYTE,
    "9" * 400,
    # Ids and names that look real but name nothing here (or the bundled suite, which exists).
    "run-01J00000000000000000000000",
    "eval-01J00000000000000000000000",
    "loop-01J00000000000000000000000",
    "traj-1",
    "ds-0123456789abcdef",
    "build-01J00000000000000000000000",
    "ft-01J00000000000000000000000",
    "repo-bugs",
    "io-problems",
    "step_sft",
    "gemma-3-270m",
    "ft/demo-agent-v1",
]
INT32_EDGES = [0, 1, -1, 2**31 - 1, -(2**31)]
INT64_EDGES = [0, 1, -1, 2**63 - 1, -(2**63)]
FLOATS = st.one_of(
    st.sampled_from([0.0, -1.0, 1e-9, 1e308, -1e308, math.inf, -math.inf, math.nan]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _ints(lo: int, hi: int, edges: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from([e for e in edges if lo <= e <= hi]), st.integers(lo, hi))


SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_DOUBLE: FLOATS,
    FieldDescriptor.TYPE_FLOAT: FLOATS.map(
        lambda v: v if not math.isfinite(v) or abs(v) < 3e38 else math.inf
    ),
    FieldDescriptor.TYPE_INT32: _ints(-(2**31), 2**31 - 1, INT32_EDGES),
    FieldDescriptor.TYPE_SINT32: _ints(-(2**31), 2**31 - 1, INT32_EDGES),
    FieldDescriptor.TYPE_SFIXED32: _ints(-(2**31), 2**31 - 1, INT32_EDGES),
    FieldDescriptor.TYPE_INT64: _ints(-(2**63), 2**63 - 1, INT64_EDGES),
    FieldDescriptor.TYPE_SINT64: _ints(-(2**63), 2**63 - 1, INT64_EDGES),
    FieldDescriptor.TYPE_SFIXED64: _ints(-(2**63), 2**63 - 1, INT64_EDGES),
    FieldDescriptor.TYPE_UINT32: _ints(0, 2**32 - 1, [0, 1, 2**32 - 1]),
    FieldDescriptor.TYPE_FIXED32: _ints(0, 2**32 - 1, [0, 1, 2**32 - 1]),
    FieldDescriptor.TYPE_UINT64: _ints(0, 2**64 - 1, [0, 1, 2**64 - 1]),
    FieldDescriptor.TYPE_FIXED64: _ints(0, 2**64 - 1, [0, 1, 2**64 - 1]),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=40)),
    FieldDescriptor.TYPE_BYTES: st.one_of(
        st.binary(max_size=64), st.sampled_from([b"", b"\0" * (1 << 20), b"PK\x03\x04broken", b"\x1f\x8b"])
    ),
}


def _enum_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    numbers = [v.number for v in field.enum_type.values]
    outside = st.integers(-(2**31), 2**31 - 1).filter(lambda n: n not in numbers)
    return st.one_of(st.sampled_from(numbers), st.sampled_from([max(numbers) + 1, -1, 2**31 - 1]), outside)


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_values(field)
    return SCALARS[field.type]


def _field(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = field.message_type.fields_by_name["key"]
        value = field.message_type.fields_by_name["value"]
        return st.dictionaries(_value(key, depth), _value(value, depth), max_size=3)
    if field.is_repeated:
        return st.lists(_value(field, depth), max_size=3)
    return _value(field, depth)


def _build(cls: type[Message], values: dict[str, Any]) -> Message:
    msg = cls()
    for name, value in values.items():
        field = msg.DESCRIPTOR.fields_by_name[name]
        target = getattr(msg, name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for k, v in value.items():
                if isinstance(v, Message):
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif field.is_repeated:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                for v in value:
                    target.add().CopyFrom(v)
            else:
                target.extend(value)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


_MESSAGES: dict[tuple[str, int], st.SearchStrategy[Message]] = {}
#: Seconds and nanos of google.protobuf.Timestamp and Duration: valid ones and each way to be invalid.
_SECONDS = st.sampled_from([0, 1, -1, 1_700_000_000, 253402300800, -62135596801, 2**63 - 1, -(2**63)])
_NANOS = st.sampled_from([0, 1, 999_999_999, 1_000_000_000, -1, 2**31 - 1, -(2**31)])
_WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration"}


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Request messages of type ``desc``: any subset of its fields, each with a random value."""
    key = (desc.full_name, depth)
    if key not in _MESSAGES:
        cls = message_factory.GetMessageClass(desc)
        if desc.full_name in _WELL_KNOWN:
            _MESSAGES[key] = st.builds(cls, seconds=_SECONDS, nanos=_NANOS)
        elif depth >= MAX_DEPTH:
            _MESSAGES[key] = st.just(cls())
        else:
            optional = {f.name: st.deferred(lambda f=f: _field(f, depth)) for f in desc.fields}
            # Any subset of the fields, or exactly one (so one bad field meets otherwise empty defaults).
            subsets = st.fixed_dictionaries({}, optional=optional)
            single = [st.fixed_dictionaries({name: value}) for name, value in optional.items()]
            _MESSAGES[key] = st.one_of(subsets, *single).map(lambda d: _build(cls, d))
    return _MESSAGES[key]


# A valid request for the RPCs whose random requests are nearly all refused at the first check:
# one field of it (at any depth) is replaced by a random value, so the checks behind the first
# one and the work behind them are reached too. Each would start only small work: one task, one
# rollout, an empty store.
_CALC = "def add(a, b):\n    return a + b\n"
_TEST = "from calc import add\n\ndef test_add():\n    assert add(1, 2) == 3\n"
_TASK_TOML = 'problem_statement = "add"\nfail_to_pass = ["tests/test_calc.py::test_add"]\n'
BASES: dict[str, dict[str, Any]] = {
    "flywheel.sandbox.v1.SandboxService/Execute": {
        "program": {"source": "print(input())"},
        "stdin": "hi",
        "limits": {"wall_time": "2s"},
    },
    "flywheel.sandbox.v1.SandboxService/ExecuteStream": {"program": {"source": "print(1)"}},
    "flywheel.sandbox.v1.SandboxService/Judge": {
        "program": {"source": "print(input())"},
        "cases": [{"input": "1", "expected_output": "1"}],
    },
    "flywheel.sandbox.v1.SandboxService/RunTests": {
        "files": [{"path": "calc.py", "text": _CALC}, {"path": "tests/test_calc.py", "text": _TEST}],
        "protected_files": [{"path": "tests/test_calc.py", "text": _TEST}],
        "expected_test_ids": ["tests/test_calc.py::test_add"],
    },
    "flywheel.trajectory.v1.TrajectoryService/PutTrajectory": {
        "trajectory": {
            "id": "traj-fuzz-1",
            "run_id": "run-fuzz",
            "task": {"suite": "repo-bugs", "task_id": "quicksort"},
            "policy": {"model": "gemma-3-270m"},
            "teacher_kind": "TEACHER_KIND_MODEL",
            "steps": [{"role": "ROLE_USER", "content": "Fix it."}],
        }
    },
    "flywheel.trajectory.v1.TrajectoryService/ImportTrajectories": {
        "format": "IMPORT_FORMAT_CHAT_JSONL",
        "content": "eyJtZXNzYWdlcyI6IFtdfQo=",  # {"messages": []}
    },
    "flywheel.dataset.v1.DatasetService/CreateDatasetBuild": {
        "build": {"recipe": "step_sft", "source": {"filter": {"suite": "repo-bugs"}}}
    },
    "flywheel.trainer.v1.TrainerService/CreateFineTuneJob": {
        "job": {
            "base_model": "gemma-3-270m",
            "dataset_id": "ds-3f9a1c2b7d4e5f60",
            "method": "FINE_TUNE_METHOD_SFT",
            "adapter_name": "fuzz",
        }
    },
    "flywheel.orchestrator.v1.OrchestratorService/CreateRun": {
        "run": {
            "suite": "repo-bugs",
            "split": "TASK_SPLIT_TRAIN",
            "teacher_kind": "TEACHER_KIND_MODEL",
            "model": "no-such-model",
            "rollouts_per_task": 1,
        }
    },
    "flywheel.orchestrator.v1.OrchestratorService/CreateEvaluation": {
        "evaluation": {"suite": "repo-bugs", "split": "TASK_SPLIT_TEST", "models": ["no-such-model"]}
    },
    "flywheel.orchestrator.v1.OrchestratorService/ImportSuite": {
        "name": "fuzz",
        "validate_only": True,
        "files": [
            {"path": "suite.toml", "content": "bmFtZSA9ICJmdXp6Igo="},  # name = "fuzz"
            {"path": "tasks/t/task.toml", "content": ""},
            {"path": "tasks/t/repo/calc.py", "content": ""},
            {"path": "tasks/t/repo/tests/test_calc.py", "content": ""},
        ],
    },
}


def _base(method: MethodDescriptor) -> Message | None:
    doc = BASES.get(f"{method.containing_service.full_name}/{method.name}")
    if doc is None:
        return None
    doc = json.loads(json.dumps(doc))
    if method.name == "ImportSuite":
        contents = [b'name = "fuzz"\n', _TASK_TOML.encode(), _CALC.encode(), _TEST.encode()]
        for f, content in zip(doc["files"], contents, strict=True):
            f["content"] = base64.b64encode(content).decode()
    return json_format.ParseDict(doc, message_factory.GetMessageClass(method.input_type)())


def _paths(desc: Descriptor, depth: int = 0) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Every field reachable through singular message fields, up to MAX_DEPTH levels."""
    for f in desc.fields:
        yield (f,)
        is_map = f.message_type is not None and f.message_type.GetOptions().map_entry
        if f.message_type is not None and not f.is_repeated and not is_map and depth + 1 < MAX_DEPTH:
            if f.message_type.full_name not in _WELL_KNOWN:
                yield from ((f, *rest) for rest in _paths(f.message_type, depth + 1))


def _replaced(base: Message, path: tuple[FieldDescriptor, ...], value: Any) -> Message:
    msg = type(base)()
    msg.CopyFrom(base)
    target = msg
    for f in path[:-1]:
        target = getattr(target, f.name)
    target.ClearField(path[-1].name)
    target.MergeFrom(_build(type(target), {path[-1].name: value}))
    return msg


def requests_for(method: MethodDescriptor) -> st.SearchStrategy[Message]:
    """Random requests; for an RPC in BASES, also its valid request with one field replaced."""
    random = messages(method.input_type)
    base = _base(method)
    if base is None:
        return random
    paths = list(_paths(method.input_type))
    one_off = st.sampled_from(paths).flatmap(
        lambda path: _field(path[-1], len(path)).map(lambda v: _replaced(base, path, v))
    )
    return st.one_of(random, one_off, one_off)


def _methods() -> list[tuple[Component, MethodDescriptor]]:
    pool = descriptor_pool.Default()
    out = []
    for component in GRPC_COMPONENTS:
        assert component.grpc_service is not None
        service = pool.FindServiceByName(component.grpc_service)
        out.extend((component, m) for m in service.methods)
    return out


METHODS = _methods()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Stack:
    """The five services as processes, with one channel each."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.channels: dict[str, grpc.Channel] = {}

    def log_tail(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def stack(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("fuzz")
    env = {
        "FLYWHEEL_NATS_URL": nats_url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects"),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(root / "index"),
        "FLYWHEEL_TRAINER_STATE_DIR": str(root / "trainer"),
        # Nothing listens here: a run that passes validation fails on its model call, quickly.
        "FLYWHEEL_ORCHESTRATOR_GATEWAY_BASE_URL": "http://127.0.0.1:9/v1",
        "FLYWHEEL_ORCHESTRATOR_MODEL_MAX_RETRIES": "0",
    }
    stack = Stack()
    try:
        for component in START_ORDER:
            proc, info, log = start_module(component.module, component.env_prefix, env, root)
            stack.procs[component.name] = proc
            stack.logs[component.name] = log
            address = f"127.0.0.1:{info['port']}"
            env[component.address_variable] = address
            stack.channels[component.name] = auth.sync_channel(
                address,
                options=[
                    ("grpc.max_send_message_length", 64 << 20),
                    ("grpc.max_receive_message_length", 64 << 20),
                ],
            )
        yield stack
    finally:
        for channel in stack.channels.values():
            channel.close()
        for proc in reversed(list(stack.procs.values())):
            _stop(proc)


def _shown(requests: list[Message]) -> str:
    text = "\n".join(str(r) for r in requests)
    return text if len(text) < 3000 else text[:3000] + f"… ({len(text)} characters)"


def _call(
    stack: Stack, component: Component, method: MethodDescriptor, requests: list[Message]
) -> grpc.StatusCode:
    channel = stack.channels[component.name]
    path = f"/{method.containing_service.full_name}/{method.name}"
    ser = type(requests[0]).SerializeToString
    de = message_factory.GetMessageClass(method.output_type).FromString
    try:
        if method.client_streaming and method.server_streaming:
            raise AssertionError(f"{path}: bidirectional streams are not in any contract yet")
        if method.client_streaming:
            channel.stream_unary(path, ser, de)(iter(requests), timeout=CALL_TIMEOUT_S)
        elif method.server_streaming:
            stream = channel.unary_stream(path, ser, de)(requests[0], timeout=CALL_TIMEOUT_S)
            try:
                for n, _ in enumerate(stream, start=1):
                    if n >= STREAM_READS:
                        break
            finally:
                stream.cancel()
        else:
            channel.unary_unary(path, ser, de)(requests[0], timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call)
        code = err.code()
        if code == grpc.StatusCode.CANCELLED and method.server_streaming:
            return grpc.StatusCode.OK  # our own cancel after STREAM_READS messages
        if code in BAD_CODES:
            pytest.fail(
                f"{path} answered {code.name}: {err.details()}\nrequest:\n{_shown(requests)}\n"
                f"{component.name}'s log:\n{stack.log_tail(component.name)}"
            )
        return code
    return grpc.StatusCode.OK


def _healthy(stack: Stack, component: Component) -> None:
    proc = stack.procs[component.name]
    assert proc.poll() is None, f"{component.name} exited:\n{stack.log_tail(component.name)}"
    health = health_pb2_grpc.HealthStub(stack.channels[component.name])
    reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)  # type: ignore[attr-defined]
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("component", "method"),
    METHODS,
    ids=[f"{c.name}/{m.name}" for c, m in METHODS],
)
def test_rpc_never_answers_internal_or_unknown(
    stack: Stack, component: Component, method: MethodDescriptor
) -> None:
    count = st.integers(1, 3) if method.client_streaming else st.just(1)
    requests = count.flatmap(lambda n: st.lists(requests_for(method), min_size=n, max_size=n))
    codes: Counter[str] = Counter()

    @settings(
        max_examples=int(os.environ.get("FLYWHEEL_FUZZ_EXAMPLES", EXAMPLES)),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(requests)
    def fuzz(batch: list[Message]) -> None:
        codes[_call(stack, component, method, batch).name] += 1

    fuzz()
    _healthy(stack, component)
    if os.environ.get("FLYWHEEL_FUZZ_STATS"):  # with -s: which answers the random requests got
        print(f"\n{component.name}/{method.name}: {dict(codes.most_common())}")
