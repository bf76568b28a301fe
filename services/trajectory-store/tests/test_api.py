"""The TrajectoryService over real gRPC, on the filesystem backend and on S3 (moto), with the
SQLite index and with the PostgreSQL one (``index_env``)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import grpc
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common.events import EventBus
from flywheel_common.objectstore import open_object_store
from flywheel_trajectory.index import SqliteIndex
from flywheel_trajectory.pg_index import PostgresIndex
from flywheel_trajectory.service import INDEX_FILE
from flywheel_trajectory.settings import TrajectorySettings
from flywheel_trajectory.store import rebuild_index

from .conftest import UNKNOWN_FIELD, full_trajectory, running, stored_events


def _clear_output_only(t: pb.Trajectory) -> pb.Trajectory:
    c = pb.Trajectory()
    c.CopyFrom(t)
    for name in ("stats", "create_time", "object"):
        c.ClearField(name)
    return c


async def _batch(stub, trajectories):
    async def gen():
        for t in trajectories:
            yield pb.BatchPutTrajectoriesRequest(trajectory=t)

    return await stub.BatchPutTrajectories(gen())


def _rebuilt_equals_live(env: dict[str, str], index_dir: Path, tmp_path: Path) -> tuple[list, list]:
    """The live index's rows, and those of an index rebuilt from the objects alone (a fresh SQLite
    file, or a fresh schema beside the live one on PostgreSQL)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        store_settings = TrajectorySettings().object_store
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    objects = open_object_store(store_settings)
    url = env.get("FLYWHEEL_TRAJECTORY_DATABASE_URL")
    if url:
        schema = env["FLYWHEEL_TRAJECTORY_DATABASE_SCHEMA"]
        live_index, fresh = PostgresIndex(url, schema), PostgresIndex(url, f"{schema}_rebuilt")
        try:
            rebuild_index(objects, fresh, {})
            return list(live_index.dump()), list(fresh.dump())
        finally:
            fresh.drop_schema()
            live_index.close()
            fresh.close()
    rebuilt_path = tmp_path / "rebuilt.sqlite"
    rebuild_index(objects, rebuilt_path, {})
    live = list(SqliteIndex(index_dir / INDEX_FILE).dump())
    rebuilt = list(SqliteIndex(rebuilt_path).dump())
    return live, rebuilt


async def test_round_trip_every_field_and_unknown_fields(
    backend_env: dict[str, str], index_env: dict[str, str], tmp_path: Path, event_bus: EventBus, nats_url: str
) -> None:
    sent = full_trajectory("traj-1")
    async with running({**backend_env, **index_env}, tmp_path / "idx") as svc:
        reply = await svc.stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=sent))
        assert reply.created
        assert not reply.trajectory.steps and reply.trajectory.id == "traj-1"  # BASIC view
        got = (await svc.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="traj-1"))).trajectory
        # Every field the client sent comes back as sent, byte for byte, unknown field included.
        assert _clear_output_only(got) == sent
        assert _clear_output_only(got).SerializeToString().endswith(UNKNOWN_FIELD)
        # OUTPUT_ONLY fields were filled in by the store.
        assert got.stats.step_count == 4 and got.stats.assistant_turns == 1 and got.stats.tool_calls == 1
        assert got.stats.parse_errors == 1 and got.stats.loop_detections == 1 and got.stats.wrote_file
        assert got.stats.usage.prompt_tokens == 100 and got.stats.wall_time.seconds == 60
        assert got.create_time.seconds > 1_700_000_000
        assert got.object.key == "trajectories/traj-1.pb" and len(got.object.sha256) == 64
        basic = (
            await svc.stub.GetTrajectory(
                pb.GetTrajectoryRequest(trajectory_id="traj-1", view=pb.TRAJECTORY_VIEW_BASIC)
            )
        ).trajectory
        assert not basic.steps and not basic.tools and basic.outcome == sent.outcome
        listed = (
            await svc.stub.ListTrajectories(pb.ListTrajectoriesRequest(view=pb.TRAJECTORY_VIEW_FULL))
        ).trajectories
        assert [_clear_output_only(t) for t in listed] == [sent]
        exported = [m.trajectory async for m in svc.stub.ExportTrajectories(pb.ExportTrajectoriesRequest())]
        assert exported == [got]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "nope" in err.value.details()
    events = await stored_events(nats_url)
    assert len(events) == 1
    msg_id, event = events[0]
    assert msg_id.startswith("trajectory-stored:traj-1:") and event.meta.event_id == msg_id
    assert event.trajectory_id == "traj-1" and event.run_id == "run-a" and event.resolved
    assert event.model == "ft/repo-agent-v3" and event.object == got.object


async def test_idempotent_put_and_conflict(
    service_env: dict[str, str], index_env: dict[str, str], tmp_path: Path, event_bus: EventBus, nats_url: str
) -> None:
    t = full_trajectory("traj-2")
    async with running({**service_env, **index_env}, tmp_path / "idx") as svc:
        first = await svc.stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=t))
        again = await svc.stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=t))
        assert first.created and not again.created
        assert again.trajectory.create_time == first.trajectory.create_time  # the stored one, untouched
        # OUTPUT_ONLY fields a client sends are ignored: still the same content.
        noisy = pb.Trajectory()
        noisy.CopyFrom(t)
        noisy.stats.step_count = 99
        assert not (await svc.stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=noisy))).created
        changed = pb.Trajectory()
        changed.CopyFrom(t)
        changed.outcome.reward = 0.5
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=changed))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "traj-2" in err.value.details()
        got = (await svc.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="traj-2"))).trajectory
        assert got.outcome.reward == 1.0  # the original survived
        for bad, field in [
            (pb.Trajectory(), "trajectory.id"),
            (pb.Trajectory(id="../x"), "trajectory.id"),
            (pb.Trajectory(id="ok", labels={"Bad Key": "v"}), "trajectory.labels"),
            (pb.Trajectory(id="ok", steps=[pb.Step(index=1), pb.Step(index=1)]), "trajectory.steps[0].index"),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc.stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field in err.value.details()
        reply = await _batch(svc.stub, [t, full_trajectory("traj-3"), changed, pb.Trajectory(id="")])
        assert (reply.created_count, reply.unchanged_count) == (1, 1)
        assert [(e.index, e.error.code) for e in reply.errors] == [
            (2, grpc.StatusCode.ALREADY_EXISTS.value[0]),
            (3, grpc.StatusCode.INVALID_ARGUMENT.value[0]),
        ]
    events = await stored_events(nats_url)
    assert sorted(e.trajectory_id for _, e in events) == ["traj-2", "traj-3"]  # one per stored trajectory


async def test_concurrent_writers(
    service_env: dict[str, str], index_env: dict[str, str], tmp_path: Path, event_bus: EventBus, nats_url: str
) -> None:
    """Eight writers at once: overlapping identical puts are stored once; of conflicting ones one wins.

    With the default writer processes, so two processes race on the same ids."""
    async with running(
        {**service_env, **index_env}, tmp_path / "idx", write_processes=2, batch_chunk=16
    ) as svc:
        shared = [full_trajectory(f"shared-{i}", run_id="run-c") for i in range(20)]
        racers = []
        for w in range(8):
            own = [full_trajectory(f"w{w}-{i}", run_id="run-c") for i in range(15)]
            contested = full_trajectory("contested", run_id="run-c")
            contested.outcome.reward = float(w)
            racers.append(_batch(svc.stub, shared + own + [contested]))
        replies = await asyncio.gather(*racers)
        assert sum(r.created_count for r in replies) == 20 + 8 * 15 + 1
        assert sum(r.unchanged_count for r in replies) == 7 * 20
        conflicts = [e for r in replies for e in r.errors]
        assert len(conflicts) == 7 and all(e.trajectory_id == "contested" for e in conflicts)
        ids = [t.id async for t in _all_ids(svc.stub, pb.TrajectoryFilter(run_ids=["run-c"]))]
        assert len(ids) == len(set(ids)) == 20 + 8 * 15 + 1
        live, rebuilt = _rebuilt_equals_live(svc.env, svc.index_dir, tmp_path)
        assert live == rebuilt and len(live) == 141
    events = await stored_events(nats_url)
    assert len(events) == 141 and len({e.trajectory_id for _, e in events}) == 141


async def _all_ids(stub, flt: pb.TrajectoryFilter, page_size: int = 7):
    token = ""
    while True:
        page = await stub.ListTrajectories(
            pb.ListTrajectoriesRequest(filter=flt, page_size=page_size, page_token=token)
        )
        for t in page.trajectories:
            yield t
        token = page.next_page_token
        if not token:
            return


async def test_filters_pagination_under_concurrent_writes_and_rebuild(
    backend_env: dict[str, str], index_env: dict[str, str], tmp_path: Path
) -> None:
    async with running({**backend_env, **index_env}, tmp_path / "idx") as svc:
        base = []
        for i in range(30):
            t = full_trajectory(f"p-{i:02d}", run_id="run-p" if i % 2 else "run-q", resolved=i % 3 == 0)
            if i % 5 == 0:
                t.policy.model = "gemma-3-270m"
                t.policy.adapter_name = ""
                t.policy.adapter_version = 0
            t.labels["parity"] = str(i % 2)
            base.append(t)
        assert (await _batch(svc.stub, base)).created_count == 30

        # Page through everything while a writer adds more: no duplicates, nothing that existed
        # before the listing started is missed, and new ones only ever appear after old ones.
        async def writer() -> None:
            for i in range(30):
                await svc.stub.PutTrajectory(
                    pb.PutTrajectoryRequest(trajectory=full_trajectory(f"z-{i:02d}", run_id="run-p"))
                )

        task = asyncio.create_task(writer())
        seen = [t async for t in _all_ids(svc.stub, pb.TrajectoryFilter(), page_size=4)]
        await task
        ids = [t.id for t in seen]
        assert len(ids) == len(set(ids))
        assert {t.id for t in base} <= set(ids)
        times = [(t.create_time.ToMicroseconds(), t.id) for t in seen]
        assert times == sorted(times)

        async def ids_for(**kw) -> set[str]:
            return {t.id async for t in _all_ids(svc.stub, pb.TrajectoryFilter(**kw))}

        assert await ids_for(run_ids=["run-q"]) == {f"p-{i:02d}" for i in range(0, 30, 2)}
        assert await ids_for(run_ids=["run-q"], outcome=pb.OUTCOME_FILTER_RESOLVED) == {
            f"p-{i:02d}" for i in range(0, 30, 6)
        }
        assert await ids_for(model="gemma-3-270m") == {f"p-{i:02d}" for i in range(0, 30, 5)}
        assert len(await ids_for(adapter_name="repo-agent", adapter_version=3)) == 24 + 30
        assert await ids_for(adapter_name="repo-agent", adapter_version=4) == set()
        assert await ids_for(labels={"parity": "0"}) == {f"p-{i:02d}" for i in range(0, 30, 2)}
        assert await ids_for(suite="other") == set()
        assert (
            len(
                await ids_for(
                    suite="repo-bugs", task_ids=["quixbugs/quicksort"], split=common_pb2.TASK_SPLIT_TRAIN
                )
            )
            == 60
        )
        assert len(await ids_for(teacher_kinds=[pb.TEACHER_KIND_MODEL])) == 60
        cut = seen[10].create_time
        assert len(await ids_for(create_time_range=common_pb2.TimeRange(end_time=cut))) == 10
        assert len(await ids_for(create_time_range=common_pb2.TimeRange(start_time=cut))) == 50

        first = await svc.stub.ListTrajectories(pb.ListTrajectoriesRequest(page_size=2))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.ListTrajectories(
                pb.ListTrajectoriesRequest(
                    page_size=2, page_token=first.next_page_token, filter=pb.TrajectoryFilter(suite="x")
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.ListTrajectories(pb.ListTrajectoriesRequest(page_token="garbage"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        exported = [
            m.trajectory.id
            async for m in svc.stub.ExportTrajectories(
                pb.ExportTrajectoriesRequest(filter=pb.TrajectoryFilter(run_ids=["run-p"]))
            )
        ]
        everything = [t async for t in _all_ids(svc.stub, pb.TrajectoryFilter(), page_size=1000)]
        assert len(everything) == 60 and [t.id for t in everything[: len(seen)]] == ids
        assert exported == [t.id for t in everything if t.run_id == "run-p"]

        live, rebuilt = _rebuilt_equals_live(svc.env, svc.index_dir, tmp_path)
        assert len(live) == 60 and live == rebuilt


async def test_delete_run_is_explicit_and_audited(
    service_env: dict[str, str], index_env: dict[str, str], tmp_path: Path
) -> None:
    async with running({**service_env, **index_env}, tmp_path / "idx") as svc:
        await _batch(
            svc.stub,
            [full_trajectory(f"d-{i}", run_id="run-del") for i in range(5)]
            + [full_trajectory("keep", run_id="run-keep")],
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.DeleteRun(pb.DeleteRunRequest(run_id="run-del"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "reason" in err.value.details()
        dry = await svc.stub.DeleteRun(
            pb.DeleteRunRequest(run_id="run-del", reason="test", validate_only=True)
        )
        assert dry.deleted_count == 5 and not dry.HasField("audit_record")
        assert (
            await svc.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="d-0"))
        ).trajectory.id == "d-0"
        reply = await svc.stub.DeleteRun(
            pb.DeleteRunRequest(run_id="run-del", reason="leaked secrets in tool output"),
            metadata=[("x-flywheel-user", "alice")],
        )
        assert reply.deleted_count == 5 and reply.audit_record.key.startswith("audit/")
        audit = json.loads(
            (Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]) / reply.audit_record.key).read_text()
        )
        assert audit["reason"] == "leaked secrets in tool output" and audit["caller"]["user"] == "alice"
        assert sorted(audit["trajectory_ids"]) == [f"d-{i}" for i in range(5)]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await svc.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="d-0"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        remaining = [
            t.id for t in (await svc.stub.ListTrajectories(pb.ListTrajectoriesRequest())).trajectories
        ]
        assert remaining == ["keep"]
        live, rebuilt = _rebuilt_equals_live(svc.env, svc.index_dir, tmp_path)
        assert live == rebuilt and len(live) == 1


async def test_restart_rebuilds_a_missing_index(service_env: dict[str, str], tmp_path: Path) -> None:
    async with running(service_env, tmp_path / "idx") as svc:
        await _batch(svc.stub, [full_trajectory(f"r-{i}") for i in range(4)])
    (tmp_path / "idx" / INDEX_FILE).unlink()
    async with running(service_env, tmp_path / "idx") as svc:
        ids = [t.id for t in (await svc.stub.ListTrajectories(pb.ListTrajectoriesRequest())).trajectories]
        assert ids == [f"r-{i}" for i in range(4)]


async def test_an_export_cancelled_by_the_client_leaves_the_service_working(
    service_env: dict[str, str], index_env: dict[str, str], tmp_path: Path
) -> None:
    async with running({**service_env, **index_env}, tmp_path / "idx") as svc:
        await _batch(svc.stub, [full_trajectory(f"c-{i:03d}") for i in range(150)])
        call = svc.stub.ExportTrajectories(pb.ExportTrajectoriesRequest())
        first = await call.read()
        assert first.trajectory.id == "c-000"
        call.cancel()
        await asyncio.sleep(0.2)
        exported = [
            m.trajectory.id async for m in svc.stub.ExportTrajectories(pb.ExportTrajectoriesRequest())
        ]
        assert exported == [f"c-{i:03d}" for i in range(150)]


async def test_out_of_range_view_and_bad_filters_are_invalid_argument(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    accepted = "TRAJECTORY_VIEW_BASIC, TRAJECTORY_VIEW_FULL"
    async with running(service_env, tmp_path / "idx") as svc:
        await svc.stub.PutTrajectory(pb.PutTrajectoryRequest(trajectory=full_trajectory("traj-v")))
        for view in (3, 999, -1, 2**31 - 1):
            for call, default in (
                (svc.stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id="traj-v", view=view)), "FULL"),
                (svc.stub.ListTrajectories(pb.ListTrajectoriesRequest(view=view)), "BASIC"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                expected = f"view: {view} is not one of {accepted} (or unset for TRAJECTORY_VIEW_{default})"
                assert err.value.details() == expected
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in svc.stub.ExportTrajectories(pb.ExportTrajectoriesRequest(view=view)):
                    pytest.fail("an export with a bad view must send nothing")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(f"view: {view} is not one of {accepted}")
        # Values that would break the index query: refused naming the field, never INTERNAL.
        bad_filters = [
            pb.TrajectoryFilter(labels={'a"b': "x"}),
            pb.TrajectoryFilter(labels={"\0": ""}),
            pb.TrajectoryFilter(create_time_range={"start_time": {"seconds": 253402300800}}),
            pb.TrajectoryFilter(create_time_range={"end_time": {"nanos": -1}}),
        ]
        for flt in bad_filters:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc.stub.ListTrajectories(pb.ListTrajectoriesRequest(filter=flt))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith("filter."), err.value.details()
