"""The services on their real backends, from Docker containers (testcontainers) or local processes.

Each test runs once per provider (``flywheel_testing.containers``): ``containers`` (MinIO,
PostgreSQL, NATS images; skipped only when no Docker daemon is reachable, with that reason) and
``local`` (moto's S3 server, the session's PostgreSQL database and nats-server; always runs).
The bodies are the same for both.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import psycopg

from flywheel.events.v1 import events_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common.events import Event, EventBus, NatsSettings
from flywheel_common.objectstore import open_object_store
from flywheel_testing.nats import delete_flywheel_streams
from flywheel_testing.s3 import S3Endpoint
from flywheel_testing.services import boot_service
from flywheel_trajectory.service import build_app
from flywheel_trajectory.settings import TrajectorySettings


def _channel(address: str) -> grpc.aio.Channel:
    """A channel that carries the service token where the services check one."""
    try:
        from flywheel_common import auth
    except ImportError:  # a tree without service authentication
        return grpc.aio.insecure_channel(address)
    return auth.channel(address)  # type: ignore[no-any-return]


def _trajectory(trajectory_id: str) -> pb.Trajectory:
    t = pb.Trajectory(id=trajectory_id, run_id="run-it", teacher_kind=pb.TEACHER_KIND_MODEL)
    t.task.suite, t.task.task_id = "repo-bugs", "quicksort"
    t.policy.model = "gemma-3-270m"
    t.outcome.resolved = True
    t.steps.add(index=0, role=pb.ROLE_USER, content="Fix quicksort.")
    t.steps.add(index=1, role=pb.ROLE_ASSISTANT, content="done")
    return t


async def test_trajectory_store_round_trip_on_s3_and_postgres(
    s3_backend: S3Endpoint, postgres_backend: str, nats_backend: str, tmp_path: Path
) -> None:
    """Put, get, list and export through the service on S3 + a PostgreSQL index + NATS; then a
    second instance on an empty schema rebuilds the same listing from the S3 objects alone."""
    suffix = uuid.uuid4().hex[:10]
    env = {
        "FLYWHEEL_NATS_URL": nats_backend,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "s3",
        "FLYWHEEL_OBJECT_STORE_ENDPOINT": s3_backend.endpoint,
        "FLYWHEEL_OBJECT_STORE_ACCESS_KEY": s3_backend.access_key,
        "FLYWHEEL_OBJECT_STORE_SECRET_KEY": s3_backend.secret_key,
        "FLYWHEEL_OBJECT_STORE_BUCKET": f"itest-{suffix}",
        "FLYWHEEL_OBJECT_STORE_REGION": s3_backend.region,
        "FLYWHEEL_TRAJECTORY_DATABASE_URL": postgres_backend,
        "FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA": f"itest_{suffix}",
    }
    sent = [_trajectory(f"it-{i}") for i in range(3)]

    async def listing(address: str) -> list[str]:
        async with _channel(address) as channel:
            stub = trajectory_pb2_grpc.TrajectoryServiceStub(channel)
            return [t.id for t in (await stub.ListTrajectories(pb.ListTrajectoriesRequest())).trajectories]

    try:
        async with boot_service(
            build_app, TrajectorySettings, env, index_dir=tmp_path / "idx", write_processes=0
        ) as address:
            async with _channel(address) as channel:
                stub = trajectory_pb2_grpc.TrajectoryServiceStub(channel)
                for t in sent:
                    assert (await stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=t))).created
                got = (await stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="it-1"))).trajectory
                assert got.steps[1].content == "done" and got.object.key == "trajectories/it-1.pb"
                exported = [
                    m.trajectory.id async for m in stub.ExportTrajectories(pb.ExportTrajectoriesRequest())
                ]
                assert exported == ["it-0", "it-1", "it-2"]
            assert await listing(address) == exported
        # The objects are in the bucket, the rows in PostgreSQL.
        objects = open_object_store(s3_backend.settings(f"itest-{suffix}"))
        assert sorted(i.key for i in objects.list("trajectories/")) == [
            f"trajectories/it-{i}.pb" for i in range(3)
        ]
        with psycopg.connect(postgres_backend) as conn:
            rows = conn.execute(f"SELECT id FROM itest_{suffix}.trajectories ORDER BY id").fetchall()
        assert [r[0] for r in rows] == ["it-0", "it-1", "it-2"]
        # A fresh schema: the index is rebuilt from the objects at start, same listing.
        rebuilt = {**env, "FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA": f"itest_{suffix}_r"}
        async with boot_service(
            build_app, TrajectorySettings, rebuilt, index_dir=tmp_path / "idx2", write_processes=0
        ) as address:
            assert await listing(address) == exported
    finally:
        with psycopg.connect(postgres_backend, autocommit=True) as conn:
            for schema in (f"itest_{suffix}", f"itest_{suffix}_r"):
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def test_an_event_through_nats(nats_backend: str) -> None:
    """Publish with a msg id (twice: JetStream keeps one) and consume it with a durable consumer.
    The Flywheel streams are wiped before and after, as the ``nats_settings`` fixture does."""
    subject = "flywheel.trajectory.stored"
    settings = NatsSettings(
        url=nats_backend, stream="FLYWHEEL", subjects=["flywheel.>"], storage="memory", connect_timeout_s=5
    )
    event = events_pb2.TrajectoryStored(trajectory_id="it-1", run_id="run-it")
    await delete_flywheel_streams(nats_backend)
    try:
        async with await EventBus.connect(settings, name="itest") as bus:
            await bus.ensure_stream()
            await bus.publish(subject, event, msg_id="itest:it-1")
            await bus.publish(subject, event, msg_id="itest:it-1")
            got: asyncio.Queue[Event] = asyncio.Queue()

            async def handler(e: Event) -> None:
                await got.put(e)

            sub = await bus.subscribe("itest-consumer", subject, handler)
            received = await asyncio.wait_for(got.get(), timeout=10)
            assert received.parse(events_pb2.TrajectoryStored) == event and received.msg_id == "itest:it-1"
            await asyncio.sleep(0.3)
            assert got.empty()  # the duplicate was dropped by JetStream
            await sub.stop()
    finally:
        await delete_flywheel_streams(nats_backend)
