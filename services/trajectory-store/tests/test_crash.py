"""A trajectory store SIGKILLed in the middle of batch puts: nothing partial, nothing acknowledged lost.

The service runs as a real process (``python -m flywheel_trajectory``) so it can be killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc

from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.events import EventBus
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_trajectory import model
from flywheel_trajectory.index import SqliteIndex
from flywheel_trajectory.service import INDEX_FILE
from flywheel_trajectory.store import rebuild_index

from .conftest import full_trajectory, stored_events


@contextlib.contextmanager
def service_process(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    ready = tmp_path / f"ready-{time.monotonic_ns()}.json"
    proc_env = {
        **os.environ,
        **env,
        "FLYWHEEL_TRAJECTORY_HOST": "127.0.0.1",
        "FLYWHEEL_TRAJECTORY_PORT": "0",
        "FLYWHEEL_TRAJECTORY_READY_FILE": str(ready),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(tmp_path / "idx"),
        "FLYWHEEL_TRAJECTORY_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trajectory"], env=proc_env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, f"the service exited with {proc.returncode}"
            assert time.monotonic() < deadline, "the service did not become ready in 30 s"
            time.sleep(0.05)
        yield proc, f"127.0.0.1:{json.loads(ready.read_text())['port']}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _batch_of(start: int, n: int) -> list[pb.Trajectory]:
    return [full_trajectory(f"k-{i:05d}", run_id="run-kill", pad=4000) for i in range(start, start + n)]


async def _put_until_killed(address: str, proc: subprocess.Popen, kill_after_s: float) -> set[str]:
    """Stream batches of 25; SIGKILL the server mid-batch; return the ids of acknowledged batches."""
    acked: set[str] = set()
    start = 0
    async with auth.channel(address) as channel:
        stub = trajectory_pb2_grpc.TrajectoryServiceStub(channel)
        began = time.monotonic()
        while True:
            batch = _batch_of(start, 25)

            async def gen(items=batch):
                for t in items:
                    yield pb.BatchPutTrajectoriesRequest(trajectory=t)

            call = stub.BatchPutTrajectories(gen())
            if time.monotonic() - began > kill_after_s:
                await asyncio.sleep(0.02)  # the batch is being written
                os.kill(proc.pid, signal.SIGKILL)
            try:
                reply = await call
            except grpc.aio.AioRpcError:
                return acked
            assert not reply.errors
            acked.update(t.id for t in batch)
            start += 25


async def test_sigkill_mid_write_loses_nothing_acknowledged(
    service_env: dict[str, str], tmp_path: Path, event_bus: EventBus, nats_url: str
) -> None:
    root = Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"])
    objects = FilesystemObjectStore(root)
    with service_process(service_env, tmp_path) as (proc, address):
        acked = await _put_until_killed(address, proc, kill_after_s=0.6)
    assert proc.returncode == -signal.SIGKILL and len(acked) >= 25

    # Nothing partial is visible: every trajectory object parses and holds exactly what was sent.
    sent = {t.id: t for t in _batch_of(0, max(len(acked) + 100, 200))}
    stored = {}
    for info in objects.list(model.OBJECT_PREFIX):
        t = model.parse_stored(info.key, objects.get_bytes(info.key))
        assert model.content_sha256(t) == model.content_sha256(model.normalize(sent[t.id]))
        stored[t.id] = t
    assert acked <= set(stored)
    journal = SqliteIndex(tmp_path / "idx" / INDEX_FILE).pending()
    print(f"acked {len(acked)}, objects {len(stored)}, journal {len(journal)}")

    # After a restart every acknowledged trajectory is readable and listed, and so is every one
    # whose object was written before the kill (the journal finishes them, events included).
    with service_process(service_env, tmp_path) as (_, address):
        async with auth.channel(address) as channel:
            stub = trajectory_pb2_grpc.TrajectoryServiceStub(channel)
            for trajectory_id in sorted(acked)[:: max(1, len(acked) // 20)]:
                got = await stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id=trajectory_id))
                assert got.trajectory.id == trajectory_id
            listed = [
                m.trajectory.id
                async for m in stub.ExportTrajectories(
                    pb.ExportTrajectoriesRequest(
                        filter=pb.TrajectoryFilter(run_ids=["run-kill"]), view=pb.TRAJECTORY_VIEW_BASIC
                    )
                )
            ]
            assert sorted(listed) == sorted(stored)
            # The retry of the interrupted batch completes it.
            retry = _batch_of(len(acked), 25)

            async def gen():
                for t in retry:
                    yield pb.BatchPutTrajectoriesRequest(trajectory=t)

            reply = await stub.BatchPutTrajectories(gen())
            assert not reply.errors and reply.created_count + reply.unchanged_count == 25
    expected = set(stored) | {t.id for t in retry}
    rebuilt = tmp_path / "rebuilt.sqlite"
    rebuild_index(objects, rebuilt, {})
    assert list(SqliteIndex(tmp_path / "idx" / INDEX_FILE).dump()) == list(SqliteIndex(rebuilt).dump())
    assert {row[0] for row in SqliteIndex(rebuilt).dump()} == expected
    events = await stored_events(nats_url)
    assert {e.trajectory_id for _, e in events} == expected  # one event each, none missing
    assert len(events) == len(expected)
