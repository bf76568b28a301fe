"""The automated loop end to end, through every real service, with a crash in the middle.

`flywheel_cli.stack.Stack` (what `flywheel up` runs) starts the real nats-server, sandbox
runner, trajectory store, dataset builder, trainer, orchestrator, model server and gateway (with
adapter sync) as processes on one filesystem object store. The base model is a tiny random
Llama built here (so the test needs no download and trains in seconds); everything else is the
product as shipped. A loop on the `mini` fixture suite goes through every stage; the
orchestrator — the process that drives the loop — is SIGKILLed after the fine-tune started and
started again. The test then checks: each stage's artefact exists once, names the loop and the
artefact it came from; the events came in stage order; and the gate's decision is the one its
rule gives on the evaluation's measured metrics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_cli.stack import Stack
from flywheel_common import auth
from flywheel_common.events import Event, EventBus, NatsSettings
from flywheel_orchestrator.loops import decide
from flywheel_testing.stack import address, agent_base_model, running_stack

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "services" / "orchestrator" / "tests" / "fixtures" / "mini"
BASE = "tiny-agent"


def build_base_model(folder: Path) -> Path:
    """The trainer's tiny test model, with a tokenizer trained on the suite's own text."""
    return agent_base_model(folder, MINI)


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_settings: NatsSettings) -> Iterator[Stack]:
    """The whole stack; it depends on nats_settings, which empties the streams first (not after)."""
    with running_stack(
        tmp_path / "state",
        monkeypatch,
        nats_settings.url,
        base=BASE,
        base_folder=build_base_model(tmp_path / "base"),
        suite_dirs=[MINI],
    ) as s:
        yield s


async def record(bus: EventBus) -> list[Event]:
    seen: list[Event] = []

    async def on(event: Event) -> None:
        seen.append(event)

    await bus.subscribe("e2e-all", "flywheel.>", on)
    return seen


@pytest.mark.slow
async def test_loop_runs_every_stage_and_survives_an_orchestrator_crash(
    stack: Stack, nats_settings: NatsSettings
) -> None:
    bus = await EventBus.connect(nats_settings, name="e2e")
    try:
        await bus.ensure_stream()
        events = await record(bus)
        started = time.monotonic()
        loop_id = await run_loop_with_crash(stack)
        elapsed = time.monotonic() - started
        await asyncio.sleep(1.0)
    finally:
        await bus.close()
    print(f"loop finished in {elapsed:.1f} s")
    await check_artefacts(stack, loop_id, events)


async def run_loop_with_crash(stack: Stack) -> str:
    loop = lpb.Loop(
        suite="mini",
        base_model=BASE,
        teacher_kind=tpb.TEACHER_KIND_REFERENCE,
        adapter_name="e2e",
        episode=run_pb2.EpisodeSettings(
            limits=run_pb2.EpisodeLimits(max_iterations=2, max_consecutive_parse_errors=2),
            sampling=common_pb2.SamplingParams(temperature=0, max_tokens=8),
        ),
        dataset_split=dpb.SplitConfig(train_ratio=1.0),
        hyperparameters=trpb.Hyperparameters(
            max_steps=3,
            batch_size=1,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            max_seq_length=1024,
            lora=trpb.LoraConfig(rank=4, alpha=8),
        ),
        gate=lpb.PromotionGate(metric=lpb.GATE_METRIC_PARSE_ERRORS_PER_EPISODE, margin=0.0),
    )
    async with auth.channel(address(stack, "orchestrator")) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        created = (await stub.CreateLoop(opb.CreateLoopRequest(loop=loop, request_id="e2e-1"))).loop
        deadline = time.monotonic() + 180
        while True:
            got = (await stub.GetLoop(opb.GetLoopRequest(loop_id=created.id))).loop
            assert got.state != common_pb2.JOB_STATE_FAILED, got.error
            if got.stage >= lpb.LOOP_STAGE_FINE_TUNE:
                break
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.2)
    stack.restart("orchestrator", kill=True)  # SIGKILL mid-loop, then start it again
    async with auth.channel(address(stack, "orchestrator")) as ch:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        final = None
        async for update in stub.WatchLoop(opb.WatchLoopRequest(loop_id=created.id), timeout=240):
            final = update.loop
        assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final
        again = (await stub.CreateLoop(opb.CreateLoopRequest(loop=loop, request_id="e2e-1"))).loop
        assert again.id == created.id  # the retried create is the same loop
    return created.id


async def check_artefacts(stack: Stack, loop_id: str, events: list[Event]) -> None:
    orch = address(stack, "orchestrator")
    async with (
        auth.channel(orch) as och,
        auth.channel(address(stack, "dataset-svc")) as dch,
        auth.channel(address(stack, "trainer-svc")) as tch,
        auth.channel(address(stack, "trajectory-store")) as sch,
    ):
        o = orchestrator_pb2_grpc.OrchestratorServiceStub(och)
        loop = (await o.GetLoop(opb.GetLoopRequest(loop_id=loop_id))).loop
        stages = [s.stage for s in loop.stages]
        promoted = loop.gate_result.decision == lpb.GATE_DECISION_PROMOTE
        assert stages == [lpb.LOOP_STAGE_ROLLOUTS, lpb.LOOP_STAGE_DATASET, lpb.LOOP_STAGE_FINE_TUNE,
                          lpb.LOOP_STAGE_HOT_LOAD, lpb.LOOP_STAGE_EVALUATION, lpb.LOOP_STAGE_GATE]  + (
            [lpb.LOOP_STAGE_PROMOTION] if promoted else [])  # fmt: skip
        if promoted:  # the loop's alias serves the candidate now
            assert loop.promotion.alias == "agent/e2e"
            assert loop.promotion.outcome == lpb.PROMOTION_OUTCOME_PROMOTED
        assert all(s.state == common_pb2.JOB_STATE_SUCCEEDED for s in loop.stages)

        def art(stage: int, kind: int) -> str:
            return next(a.id for s in loop.stages if s.stage == stage for a in s.artefacts if a.kind == kind)

        run_id = art(lpb.LOOP_STAGE_ROLLOUTS, common_pb2.RESOURCE_KIND_RUN)
        build_id = art(lpb.LOOP_STAGE_DATASET, common_pb2.RESOURCE_KIND_DATASET_BUILD)
        dataset_id = art(lpb.LOOP_STAGE_DATASET, common_pb2.RESOURCE_KIND_DATASET)
        job_id = art(lpb.LOOP_STAGE_FINE_TUNE, common_pb2.RESOURCE_KIND_FINE_TUNE_JOB)
        eval_id = art(lpb.LOOP_STAGE_EVALUATION, common_pb2.RESOURCE_KIND_EVALUATION)

        # exactly one of each, all naming the loop, each naming what it came from
        runs = (await o.ListRuns(opb.ListRunsRequest(loop_id=loop_id))).runs
        rollouts = [r for r in runs if r.teacher_kind == tpb.TEACHER_KIND_REFERENCE]
        assert [r.id for r in rollouts] == [run_id] and len(runs) == 3  # + one run per evaluated model
        ds = dataset_pb2_grpc.DatasetServiceStub(dch)
        builds = (await ds.ListDatasetBuilds(dpb.ListDatasetBuildsRequest(loop_id=loop_id))).builds
        assert [b.id for b in builds] == [build_id] and list(builds[0].source.run_ids) == [run_id]
        assert builds[0].dataset_id == dataset_id
        tr = trainer_pb2_grpc.TrainerServiceStub(tch)
        jobs = (await tr.ListFineTuneJobs(trpb.ListFineTuneJobsRequest(loop_id=loop_id))).jobs
        assert [j.id for j in jobs] == [job_id] and jobs[0].dataset_id == dataset_id
        adapters = (await tr.ListAdapters(trpb.ListAdaptersRequest(name="e2e"))).adapters
        assert [a.version for a in adapters] == [1] and jobs[0].adapter.version == 1
        evals = (await o.ListEvaluations(opb.ListEvaluationsRequest(loop_id=loop_id))).evaluations
        assert [e.id for e in evals] == [eval_id]
        e = (await o.GetEvaluation(opb.GetEvaluationRequest(evaluation_id=eval_id))).evaluation
        assert (
            list(e.models) == [BASE, "ft/e2e-v1"]
            and e.baseline_model == BASE
            and loop.candidate_model == "ft/e2e-v1"
        )
        store = trajectory_pb2_grpc.TrajectoryServiceStub(sch)
        rollout_trajs = (
            await store.ListTrajectories(
                tpb.ListTrajectoriesRequest(filter=tpb.TrajectoryFilter(run_ids=[run_id]))
            )
        ).trajectories
        assert len(rollout_trajs) == 2 and all(t.labels["loop_id"] == loop_id for t in rollout_trajs)
        assert all(t.teacher_kind == tpb.TEACHER_KIND_REFERENCE and t.outcome.resolved for t in rollout_trajs)

        # the gate decided from the measured metrics, by its own rule
        metrics = {m.model: m for m in e.model_metrics}
        expected = decide(loop.gate, metrics[BASE], metrics["ft/e2e-v1"], eval_id)
        assert loop.gate_result.decision == expected.decision and loop.gate_result.reason == expected.reason
        assert loop.gate_result.candidate_value == metrics["ft/e2e-v1"].parse_errors_per_episode
        assert loop.report.key

    # events, in stage order (the stream's order), each stage's exactly once
    def first(subject: str, pred=lambda m: True, cls=None) -> int:
        hits = [
            ev.stream_sequence
            for ev in events
            if ev.subject == subject and pred(ev.parse(cls) if cls else ev)
        ]
        assert hits, f"no {subject} event"
        return hits[0]

    order = [
        first("flywheel.run.completed", lambda m: m.run_id == run_id, events_pb2.RunCompleted),
        first("flywheel.dataset.built", lambda m: m.loop_id == loop_id, events_pb2.DatasetBuilt),
        first("flywheel.adapter.published", lambda m: m.loop_id == loop_id, events_pb2.AdapterPublished),
        first("flywheel.adapter.loaded", lambda m: m.loop_id == loop_id, events_pb2.AdapterLoaded),
        first("flywheel.eval.completed", lambda m: m.loop_id == loop_id, events_pb2.EvaluationCompleted),
    ]
    decision = (
        "flywheel.loop.promoted"
        if loop.gate_result.decision == lpb.GATE_DECISION_PROMOTE
        else "flywheel.loop.rejected"
    )
    order.append(first(decision))
    assert order == sorted(order), order
    stage_events = [
        ev.parse(events_pb2.LoopStageChanged) for ev in events if ev.subject == "flywheel.loop.stage_changed"
    ]
    running = [
        s.stage
        for s in stage_events
        if s.loop_id == loop_id and s.stage_state == common_pb2.JOB_STATE_RUNNING
    ]
    assert running == stages
    assert sum(ev.subject == decision for ev in events) == 1
