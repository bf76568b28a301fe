"""Helpers for the trajectory store's tests: a trajectory with every field set, a booted service."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_testing.services import boot_service
from flywheel_trajectory.service import build_app
from flywheel_trajectory.settings import TrajectorySettings

#: A field number no Trajectory version defines: written as raw bytes, it must survive round trips.
UNKNOWN_FIELD = bytes([0xF8, 0x3E]) + bytes([42])  # field 999, varint 42


def full_trajectory(
    trajectory_id: str, run_id: str = "run-a", *, resolved: bool = True, pad: int = 0
) -> pb.Trajectory:
    """A trajectory with every field of the schema set (and one unknown field)."""
    t = pb.Trajectory(
        id=trajectory_id,
        task=pb.TaskRef(
            suite="repo-bugs",
            suite_version="sha-1234",
            task_id="quixbugs/quicksort",
            split=common_pb2.TASK_SPLIT_TRAIN,
            kind=common_pb2.TASK_KIND_REPO,
        ),
        policy=pb.Policy(
            model="ft/repo-agent-v3",
            base_model="gemma-3-270m",
            adapter_name="repo-agent",
            adapter_version=3,
            sampling=common_pb2.SamplingParams(
                temperature=0.2, top_p=0.9, max_tokens=512, seed=7, stop=["</s>"]
            ),
            prompt_sha256="ab" * 32,
        ),
        teacher_kind=pb.TEACHER_KIND_MODEL,
        tool_protocol=common_pb2.TOOL_PROTOCOL_JSON,
        tools=[
            pb.ToolDefinition(
                name="read_file", description="Read a file", parameters_json_schema='{"type": "object"}'
            )
        ],
        outcome=pb.Outcome(
            resolved=resolved,
            tests_passed=3 if resolved else 1,
            tests_total=3,
            reward=1.0 if resolved else 0.0,
            failure_category=pb.FAILURE_CATEGORY_UNSPECIFIED
            if resolved
            else pb.FAILURE_CATEGORY_TESTS_FAILED,
            failure_detail="" if resolved else "1 of 3 failed",
            final_patch="--- a/x.py\n+++ b/x.py\n",
        ),
        run_id=run_id,
        attempt=2,
        sandbox=pb.SandboxRef(backend="bubblewrap", image="sha256:abc", runner_version="0.1.0"),
        labels={"loop_id": "loop-1", "team": "a"},
        import_origin=pb.ImportOrigin(
            format=pb.IMPORT_FORMAT_CHAT_JSONL, source="x.jsonl", line=3, record_sha256="cd" * 32
        ),
    )
    t.start_time.FromSeconds(1_700_000_000)
    t.end_time.FromSeconds(1_700_000_060)
    t.steps.add(index=0, role=pb.ROLE_SYSTEM, content="You are a repo agent." + "x" * pad)
    t.steps.add(index=1, role=pb.ROLE_USER, content="Fix quicksort.")
    a = t.steps.add(
        index=2,
        role=pb.ROLE_ASSISTANT,
        content='{"type":"tool_call","name":"write_file","args":{"path":"q.py"}}',
        name="agent",
        loop_detected=True,
        finish_reason="stop",
        parse_error=pb.ParseError(kind=pb.PARSE_ERROR_KIND_BAD_ARGUMENTS, message="bad path"),
        usage=common_pb2.TokenUsage(prompt_tokens=100, completion_tokens=20),
        attributes={"k": "v"},
    )
    a.tool_calls.add(id="call-2", name="write_file", arguments_json='{"path":"q.py"}')
    a.start_time.FromSeconds(1_700_000_001)
    a.duration.FromMilliseconds(1500)
    r = t.steps.add(
        index=3, role=pb.ROLE_TOOL, content="[tool_result] ok", tool_call_id="call-2", parent_index=2
    )
    r.tool_result.CopyFrom(
        pb.ToolResult(
            tool_call_id="call-2",
            tool_name="write_file",
            status=pb.TOOL_RESULT_STATUS_OK,
            error="",
            output_truncated=True,
            written_paths=["q.py"],
            error_category=common_pb2.ERROR_CATEGORY_UNSPECIFIED,
        )
    )
    r.test_run.CopyFrom(
        pb.DriverTestRun(
            trigger=pb.TEST_TRIGGER_AFTER_WRITE,
            passed=1,
            total=3,
            failed_ids=["test_q.py::test_a"],
            error_category=common_pb2.ERROR_CATEGORY_VALUE_ERROR,
            debug_hint="check pivot",
            integrity_findings=["INTEGRITY_FINDING_KIND_TEST_EDITED"],
            output="1 passed, 2 failed",
        )
    )
    r.test_run.duration.FromSeconds(2)
    # An unknown field, as a newer writer would send it.
    return pb.Trajectory.FromString(t.SerializeToString() + UNKNOWN_FIELD)


@dataclass
class Service:
    address: str
    stub: trajectory_pb2_grpc.TrajectoryServiceStub
    channel: grpc.aio.Channel
    index_dir: Path
    env: dict[str, str]


@contextlib.asynccontextmanager
async def running(env: dict[str, str], index_dir: Path, **overrides: object) -> AsyncIterator[Service]:
    """The service in this process. Writers run on threads unless ``write_processes`` is given:
    spawning writer processes costs seconds per boot here; the tests that need them ask."""
    overrides.setdefault("write_processes", 0)
    async with boot_service(build_app, TrajectorySettings, env, index_dir=index_dir, **overrides) as address:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with auth.channel(address, options=options) as channel:
            yield Service(
                address, trajectory_pb2_grpc.TrajectoryServiceStub(channel), channel, index_dir, env
            )


@pytest.fixture(params=["fs", "s3"])
def backend_env(
    request: pytest.FixtureRequest, service_env: dict[str, str], tmp_path: Path
) -> dict[str, str]:
    """The service's environment on the filesystem backend, or on S3 (moto) with a fresh bucket."""
    if request.param == "fs":
        return service_env
    s3 = request.getfixturevalue("s3_endpoint")
    bucket = f"traj-{tmp_path.name.lower().replace('_', '-')[-40:]}".strip("-")
    return {
        **service_env,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "s3",
        "FLYWHEEL_OBJECT_STORE_ENDPOINT": s3.endpoint,
        "FLYWHEEL_OBJECT_STORE_ACCESS_KEY": s3.access_key,
        "FLYWHEEL_OBJECT_STORE_SECRET_KEY": s3.secret_key,
        "FLYWHEEL_OBJECT_STORE_BUCKET": bucket,
        "FLYWHEEL_OBJECT_STORE_REGION": s3.region,
    }


@pytest.fixture(params=["sqlite", "postgres"])
def index_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The listing index: SQLite (no extra variables) or PostgreSQL on a fresh schema of the
    session's test database (``flywheel_testing.postgres``; fails, never skips, without one)."""
    if request.param == "sqlite":
        return {}
    return {
        "FLYWHEEL_TRAJECTORY_DATABASE_URL": request.getfixturevalue("postgres_database"),
        "FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA": request.getfixturevalue("postgres_schema"),
    }


async def stored_events(nats_url: str, wait_s: float = 1.0) -> list[tuple[str, events_pb2.TrajectoryStored]]:
    """Every `flywheel.trajectory.stored` message in the stream: (msg id, payload)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe("flywheel.trajectory.stored", stream="FLYWHEEL")
        found = []
        while True:
            try:
                msgs = await sub.fetch(100, timeout=wait_s)
            except (nats.errors.TimeoutError, TimeoutError):
                break
            for msg in msgs:
                found.append(
                    (msg.headers.get("Nats-Msg-Id", ""), events_pb2.TrajectoryStored.FromString(msg.data))
                )
                await msg.ack()
        return found
    finally:
        await nc.close()
