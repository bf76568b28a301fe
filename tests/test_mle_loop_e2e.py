"""The imitation loop on the bundled `ml-tasks` suite, end to end, through every real service.

`flywheel_cli.stack.Stack` starts the real nats-server, sandbox runner, trajectory store, dataset
builder, trainer, orchestrator, model server and gateway as processes on one filesystem object
store. The base model is a tiny random Llama built here (no download; it trains in seconds) with
a tokenizer trained on the ML agent's own prompts and the tasks' reference solutions. Nothing is
mocked: there is no hosted API in this test.

The loop: the REFERENCE teacher solves two TRAIN ML tasks (one draft node each, run in the real
sandbox and scored by the judge) → `step_sft` turns each node into (its recorded prompt → the
node) → a LoRA fine-tune → the adapter is hot-loaded → an evaluation of base and candidate on a
TEST ML task with `ml_metrics` and the search trees in its report → the gate. Then the rollouts'
journals are exported, imported through the trajectory store's AIDE importer, and `journal_pairs`
builds a dataset from them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_cli.stack import Stack
from flywheel_common import auth
from flywheel_common.events import NatsSettings
from flywheel_common.journal import export_journal
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_orchestrator.loops import decide
from flywheel_orchestrator.mle import MleSettings, draft_prompt
from flywheel_orchestrator.mltasks import MlTask
from flywheel_orchestrator.suites import BUNDLED_DIR, load_folder
from flywheel_testing.stack import address, long_context, running_stack

T = TypeVar("T")
BASE = "tiny-mle"
SUITE = load_folder(BUNDLED_DIR / "ml-tasks", bundled=True)
TRAIN = ["flower-species", "wine-quality"]  # TRAIN side of ml-tasks; references run in ~1 s each
TEST = ["two-moons"]  # TEST side


def _task(task_id: str) -> MlTask:
    task = SUITE.tasks[task_id]
    assert isinstance(task, MlTask)
    return task


def build_base_model(folder: Path) -> Path:
    """The tiny model, its tokenizer trained on what it will read and write here."""
    from flywheel_testing.trainer import build_tiny_model

    corpus: list[str] = []
    for task_id in TRAIN + TEST:
        task = _task(task_id)
        corpus += [m["content"] for m in draft_prompt(task, [], MleSettings())]
        corpus.append(task.reference_solution)
    build_tiny_model(folder, corpus * 4, with_template=True)
    long_context(folder)
    return folder


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_settings: NatsSettings) -> Iterator[Stack]:
    with running_stack(
        tmp_path / "state",
        monkeypatch,
        nats_settings.url,
        base=BASE,
        base_folder=build_base_model(tmp_path / "base"),
        suite_dirs=[],
        # The evaluated models search one node per episode: what is measured here is the loop.
        extra_env={"FLYWHEEL_ORCHESTRATOR_MLE_MAX_NODES": "1", "FLYWHEEL_ORCHESTRATOR_MLE_NUM_DRAFTS": "1"},
    ) as s:
        yield s


LOOP = lpb.Loop(
    suite="ml-tasks",
    base_model=BASE,
    teacher_kind=tpb.TEACHER_KIND_REFERENCE,
    adapter_name="mle",
    train_task_ids=TRAIN,
    test_task_ids=TEST,
    episode=run_pb2.EpisodeSettings(sampling=common_pb2.SamplingParams(temperature=0, max_tokens=16)),
    dataset_split=dpb.SplitConfig(train_ratio=1.0),
    hyperparameters=trpb.Hyperparameters(
        max_steps=3,
        batch_size=1,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        max_seq_length=4096,  # a whole draft prompt and its solution: the target is at the end
        lora=trpb.LoraConfig(rank=4, alpha=8),
    ),
    gate=lpb.PromotionGate(metric=lpb.GATE_METRIC_PASS_RATE, margin=0.0),
)


async def poll(
    fetch: Callable[[], Awaitable[T]], done: Callable[[T], bool], what: str, timeout_s: float
) -> T:
    """Call ``fetch`` until ``done(value)``; fails after ``timeout_s`` with the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not done in {timeout_s} s: {value}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_imitation_loop_on_ml_tasks(stack: Stack) -> None:
    async with (
        auth.channel(address(stack, "orchestrator")) as och,
        auth.channel(address(stack, "dataset-svc")) as dch,
        auth.channel(address(stack, "trajectory-store")) as sch,
        auth.channel(address(stack, "trainer-svc")) as tch,
    ):
        o = orchestrator_pb2_grpc.OrchestratorServiceStub(och)
        ds = dataset_pb2_grpc.DatasetServiceStub(dch)
        store = trajectory_pb2_grpc.TrajectoryServiceStub(sch)
        tr = trainer_pb2_grpc.TrainerServiceStub(tch)
        started = time.monotonic()
        created = (await o.CreateLoop(opb.CreateLoopRequest(loop=LOOP, request_id="mle-loop"))).loop
        loop = None
        async for update in o.WatchLoop(opb.WatchLoopRequest(loop_id=created.id), timeout=300):
            loop = update.loop
        assert loop is not None and loop.state == common_pb2.JOB_STATE_SUCCEEDED, loop
        print(
            f"ML loop finished in {time.monotonic() - started:.1f} s; gate: "
            f"{lpb.GateDecision.Name(loop.gate_result.decision)} ({loop.gate_result.reason})"
        )

        def art(stage: int, kind: int) -> str:
            return next(a.id for s in loop.stages if s.stage == stage for a in s.artefacts if a.kind == kind)

        # Rollouts: the reference teacher solved each TRAIN task with one node, scored by the judge.
        run_id = art(lpb.LOOP_STAGE_ROLLOUTS, common_pb2.RESOURCE_KIND_RUN)
        listed = await store.ListTrajectories(
            tpb.ListTrajectoriesRequest(filter=tpb.TrajectoryFilter(run_ids=[run_id]))
        )
        rollouts = [
            (await store.GetTrajectory(tpb.GetTrajectoryRequest(trajectory_id=t.id))).trajectory
            for t in listed.trajectories
        ]
        assert sorted(t.task.task_id for t in rollouts) == TRAIN
        for t in rollouts:
            assert t.task.kind == common_pb2.TASK_KIND_ML and t.outcome.resolved, t.outcome
            # The documented reference score, within 5% of the reference-baseline margin (as
            # test_ml_tasks.py): lbfgs on unscaled features ends a little differently on another
            # CPU or BLAS build, and one of wine-quality's 200 held-out predictions flipped on one
            # CI machine (0.695 against 0.69). A judge that scored the wrong file would be far off.
            task = _task(t.task.task_id)
            assert task.reference_score is not None and task.baseline_score is not None
            margin = abs(task.reference_score - task.baseline_score)
            best = float(t.labels["mle.best_heldout"])
            assert abs(best - task.reference_score) <= 0.05 * margin, (task.id, best, task.reference_score)

        # Dataset: step_sft made one example per node: the node's recorded prompt → the node.
        dataset_id = art(lpb.LOOP_STAGE_DATASET, common_pb2.RESOURCE_KIND_DATASET)
        dataset = (await ds.GetDataset(dpb.GetDatasetRequest(dataset_id=dataset_id))).dataset
        assert dataset.recipe == "step_sft" and dataset.trajectory_count == 2
        train = next(s for s in dataset.splits if s.split == dpb.DATASET_SPLIT_TRAIN)
        assert (train.example_count, train.task_count) == (2, 2), dataset
        preview = await ds.PreviewDataset(
            dpb.PreviewDatasetRequest(dataset_id=dataset_id, split=dpb.DATASET_SPLIT_TRAIN, count=5)
        )
        examples = [json.loads(text)["messages"] for text in preview.examples]
        assert all([m["role"] for m in messages] == ["user", "assistant"] for messages in examples)
        for task_id in TRAIN:
            task = _task(task_id)
            [messages] = [m for m in examples if f"# {task.title}\n" in m[0]["content"]]
            assert messages[0]["content"] == draft_prompt(task, [], MleSettings())[0]["content"]
            assert task.reference_solution.strip() in messages[1]["content"]

        # Every example fits the fine-tune's sequence length (the target, at the end, is trained on).
        stats = dataset.token_stats
        assert stats.over_max_length == 0 and 0 < stats.max <= LOOP.hyperparameters.max_seq_length, stats
        # Fine-tune: it trained on the examples (a finite, positive loss) and published the adapter.
        job_id = art(lpb.LOOP_STAGE_FINE_TUNE, common_pb2.RESOURCE_KIND_FINE_TUNE_JOB)
        job = (await tr.GetFineTuneJob(trpb.GetFineTuneJobRequest(job_id=job_id))).job
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED and job.dataset_id == dataset_id
        assert 0 < job.latest_metrics.loss < float("inf") and job.adapter.version == 1, job.latest_metrics

        # Adapter → evaluation of both models on the TEST task, with ML figures.
        eval_id = art(lpb.LOOP_STAGE_EVALUATION, common_pb2.RESOURCE_KIND_EVALUATION)
        e = (await o.GetEvaluation(opb.GetEvaluationRequest(evaluation_id=eval_id))).evaluation
        assert list(e.models) == [BASE, "ft/mle-v1"]
        assert [(m.model, m.episodes, m.mean_nodes) for m in e.ml_metrics] == [
            (BASE, 1, 1.0),
            ("ft/mle-v1", 1, 1.0),
        ]
        assert all([t.task_id for t in m.tasks] == TEST for m in e.ml_metrics)
        report = (
            open_object_store(ObjectStoreSettings(backend="fs", root=stack.state_dir / "objects"))
            .get_bytes(e.report.markdown.key)
            .decode()
        )
        assert "## ML-engineering tasks" in report and "### Search trees" in report
        assert f"#### {BASE} · two-moons #0 — 1 nodes" in report
        assert "#### ft/mle-v1 · two-moons #0 — 1 nodes" in report

        # The gate decided from the measured metrics by its own rule.
        metrics = {m.model: m for m in e.model_metrics}
        expected = decide(loop.gate, metrics[BASE], metrics["ft/mle-v1"], eval_id)
        assert loop.gate_result.decision == expected.decision and loop.gate_result.reason == expected.reason

        # The rollouts' journals, exported and imported as AIDE journals, make journal_pairs.
        imported_run = "run-journals-mle"
        for t in rollouts:
            reply = await store.ImportTrajectories(
                tpb.ImportTrajectoriesRequest(
                    format=tpb.IMPORT_FORMAT_AIDE_JOURNAL,
                    content=export_journal(t),
                    suite="ml-tasks",
                    run_id=imported_run,
                    source_name=f"{t.task.task_id}/journal.json",
                )
            )
            assert reply.created_count == 1 and not reply.errors, reply
        build = (
            await ds.CreateDatasetBuild(
                dpb.CreateDatasetBuildRequest(
                    build=dpb.DatasetBuild(
                        recipe="journal_pairs",
                        source=dpb.DatasetSource(run_ids=[imported_run]),
                        split=dpb.SplitConfig(train_ratio=1.0),
                    )
                )
            )
        ).build
        build = await poll(
            lambda: _get_build(ds, build.id),
            lambda b: b.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED),
            "journal_pairs build",
            120,
        )
        assert build.state == common_pb2.JOB_STATE_SUCCEEDED, build.error
        pairs = (await ds.GetDataset(dpb.GetDatasetRequest(dataset_id=build.dataset_id))).dataset
        assert pairs.recipe == "journal_pairs" and pairs.trajectory_count == 2
        assert sum(s.example_count for s in pairs.splits) == 2, pairs  # one draft pair per journal


async def _get_build(ds: dataset_pb2_grpc.DatasetServiceStub, build_id: str) -> dpb.DatasetBuild:
    return (await ds.GetDatasetBuild(dpb.GetDatasetBuildRequest(build_id=build_id))).build
