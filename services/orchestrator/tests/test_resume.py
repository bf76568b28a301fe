"""A run interrupted by a restart resumes where it stopped: nothing stored twice, nothing lost.

Scripted model (a stand-in for a hosted one, which cannot run here); real sandbox, trajectory
store and NATS.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common import auth
from flywheel_testing.scripted_model import Delay, json_call, text

from .conftest import Backends, orchestrator
from .test_runs import stored


def slow(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
    n = sum(m["role"] == "assistant" for m in messages)
    if n == 0:
        return Delay(0.3, json_call("list_files", {}))
    return Delay(0.3, text('{"type":"final","answer":"done"}'))


async def test_run_resumes_after_a_restart_without_duplicates(
    backends: Backends, service_env: dict[str, str]
) -> None:
    run = run_pb2.Run(
        suite="mini", model="scripted", split=common_pb2.TASK_SPLIT_TRAIN, rollouts_per_task=4, concurrency=2
    )
    async with orchestrator(backends, service_env, slow) as h:
        created = (await h.stub.CreateRun(opb.CreateRunRequest(run=run))).run
        for _ in range(100):
            got = (await h.stub.GetRun(opb.GetRunRequest(run_id=created.id))).run
            if got.counters.episodes_finished >= 2:
                break
            await asyncio.sleep(0.1)
        assert 2 <= got.counters.episodes_finished < 8
    # the first orchestrator is gone mid-run; a new one on the same object store takes over
    async with orchestrator(backends, service_env, slow) as h2:
        first = (await h2.stub.GetRun(opb.GetRunRequest(run_id=created.id))).run
        assert first.state in (common_pb2.JOB_STATE_RUNNING, common_pb2.JOB_STATE_QUEUED)
        final = None
        async for update in h2.stub.WatchRun(opb.WatchRunRequest(run_id=created.id), timeout=120):
            if update.WhichOneof("update") == "run":
                final = update.run
        assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final
        assert final.counters.episodes_finished == 8 == final.counters.trajectories_stored
    trajectories = await stored(backends, created.id)
    assert len(trajectories) == 8
    assert sorted((t.task.task_id, t.attempt) for t in trajectories) == sorted(
        (task, a) for task in ("add-bug", "double") for a in range(4)
    )


async def test_terminal_runs_survive_a_restart(backends: Backends, service_env: dict[str, str]) -> None:
    run = run_pb2.Run(
        suite="mini", split=common_pb2.TASK_SPLIT_TRAIN, teacher_kind=tpb.TEACHER_KIND_REFERENCE
    )
    async with orchestrator(backends, service_env, slow) as h:
        created = (await h.stub.CreateRun(opb.CreateRunRequest(run=run))).run
        async for _ in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.id), timeout=60):
            pass
    async with orchestrator(backends, service_env, slow) as h2:
        again = (await h2.stub.GetRun(opb.GetRunRequest(run_id=created.id))).run
        assert again.state == common_pb2.JOB_STATE_SUCCEEDED and again.counters.episodes_resolved == 2
        # cancelling a finished run changes nothing
        after = (await h2.stub.CancelRun(opb.CancelRunRequest(run_id=created.id))).run
        assert after.state == common_pb2.JOB_STATE_SUCCEEDED


async def test_an_episode_an_earlier_process_stored_is_kept_not_failed(
    backends: Backends, service_env: dict[str, str]
) -> None:
    """A crash while an episode's trajectory was on its way to the store: the restarted run does not
    see it yet, plays the episode again and meets the stored one under the same id. The run goes on
    and counts the record that was stored first (the episode exists once)."""

    from flywheel.trajectory.v1 import trajectory_pb2_grpc
    from flywheel_orchestrator.runs import trajectory_id

    run = run_pb2.Run(
        suite="mini", model="scripted", split=common_pb2.TASK_SPLIT_TRAIN, rollouts_per_task=4, concurrency=2
    )
    async with orchestrator(backends, service_env, slow) as h:
        created = (await h.stub.CreateRun(opb.CreateRunRequest(run=run))).run
        late = trajectory_id(created.id, "double", 3)  # the last episode to start (2 at a time)
        earlier = tpb.Trajectory(
            id=late,
            run_id=created.id,
            attempt=3,
            task=tpb.TaskRef(suite="mini", task_id="double", split=common_pb2.TASK_SPLIT_TRAIN),
            teacher_kind=tpb.TEACHER_KIND_MODEL,
            policy=tpb.Policy(model="scripted"),
            labels={"written_by": "the-earlier-process"},
            outcome=tpb.Outcome(resolved=True),
        )
        async with auth.channel(backends.trajectory) as ch:
            await trajectory_pb2_grpc.TrajectoryServiceStub(ch).PutTrajectory(
                tpb.PutTrajectoryRequest(trajectory=earlier)
            )
        final = None
        async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.id), timeout=120):
            if update.WhichOneof("update") == "run":
                final = update.run
    assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    assert final.counters.episodes_finished == 8
    kept = {t.id: t for t in await stored(backends, created.id)}
    assert len(kept) == 8 and kept[late].labels["written_by"] == "the-earlier-process"
