"""Evaluations: the same tasks and settings for every model, one run per model, a report.

An evaluation lives in the job core (``flywheel_common.jobs``) under ``orchestrator/evaluations/``
and is announced once by ``flywheel.eval.completed``. Its runs are created with
the request id ``<evaluation id>/<model>``, so a restart in the middle of creating them never
makes a second run for a model; the runs themselves resume (see runs.py), and the evaluation
waits for them again. Metrics are computed from the stored trajectories' summaries, never from
memory alone, so a resumed evaluation reports exactly what happened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import grpc

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import mle_pb2, run_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import InvalidArgument
from flywheel_common.events import EventBus
from flywheel_common.jobs import TERMINAL, Announcement, Job, JobFailed, JobTable
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator import metrics, mle_eval, report
from flywheel_orchestrator import validation as check
from flywheel_orchestrator.runs import PRODUCER, RunManager

log = logging.getLogger("flywheel.orchestrator.evaluations")

PREFIX = "orchestrator/evaluations/"


#: Fields of an Evaluation the service sets; cleared from a request before it is fingerprinted.
OUTPUT_ONLY = (
    "id",
    "suite_version",
    "loop_id",
    "state",
    "error",
    "progress",
    "model_metrics",
    "task_results",
    "report",
    "create_time",
    "start_time",
    "end_time",
    "ml_metrics",
)


def completed_event(e: epb.Evaluation) -> list[Announcement]:
    """``flywheel.eval.completed``, the evaluation's one terminal event."""
    meta = events_pb2.EventMeta(event_id=f"eval-completed:{e.id}", occurred_at=e.end_time, producer=PRODUCER)
    event = events_pb2.EvaluationCompleted(
        meta=meta,
        evaluation_id=e.id,
        suite=e.suite,
        suite_version=e.suite_version,
        split=e.split,
        state=e.state,
        error=e.error,
        baseline_model=e.baseline_model,
        loop_id=e.loop_id,
    )
    if e.state == common_pb2.JOB_STATE_SUCCEEDED:
        event.model_metrics.extend(e.model_metrics)
        event.report.CopyFrom(e.report)
    return [Announcement("flywheel.eval.completed", event, meta.event_id)]


def without_tasks(job: Job[epb.Evaluation]) -> epb.Evaluation:
    """The listing view: the per-task table left out (it grows with the suite)."""
    out = epb.Evaluation()
    out.CopyFrom(job.resource)
    out.ClearField("task_results")
    return out


class EvaluationManager:
    def __init__(
        self,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        runs: RunManager,
    ) -> None:
        self._store = store
        self.runs = runs
        self.table: JobTable[epb.Evaluation, Job[epb.Evaluation]] = JobTable(
            store=store,
            bus=bus,
            prefix=PREFIX,
            message_class=epb.Evaluation,
            kind="evaluation",
            id_prefix="eval",
            announce=completed_event,
            make_job=Job,
            on_cancel=self._cancel,
        )
        self._by_run: dict[str, str] = {}
        runs.listeners.append(self._on_episode)
        runs.node_listeners.append(self._on_ml_node)

    @property
    def store(self) -> ObjectStore:
        return self._store()

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.table.start(self._resume)

    def _resume(self, job: Job[epb.Evaluation]) -> None:
        for m in job.resource.model_metrics:
            if m.run_id:
                self._by_run[m.run_id] = job.id
        self._launch(job)

    async def stop(self) -> None:
        await self.table.stop()

    # ------------------------------------------------------------------------------ requests

    def _run_template(self, e: epb.Evaluation, model: str) -> run_pb2.Run:
        return run_pb2.Run(
            suite=e.suite,
            split=e.split,
            task_ids=e.task_ids,
            teacher_kind=tpb.TEACHER_KIND_MODEL,
            model=model,
            rollouts_per_task=e.rollouts_per_task,
            episode=e.episode,
            concurrency=max(
                1, (e.concurrency or self.runs.settings.default_concurrency) // max(1, len(e.models))
            ),
            labels={**e.labels, "evaluation_id": e.id} if e.id else dict(e.labels),
        )

    def validate(self, e: epb.Evaluation) -> None:
        path = "evaluation"
        if not e.models:
            raise InvalidArgument(f"{path}.models", "name 1 to 8 gateway model names")
        if len(e.models) > 8:
            raise InvalidArgument(f"{path}.models", f"at most 8 models, got {len(e.models)}")
        if len(set(e.models)) != len(e.models):
            raise InvalidArgument(f"{path}.models", "model names must be distinct")
        if any(not m for m in e.models):
            raise InvalidArgument(f"{path}.models", "a model name is empty")
        if e.baseline_model and e.baseline_model not in e.models:
            raise InvalidArgument(
                f"{path}.baseline_model", f"{e.baseline_model!r} is not one of {path}.models"
            )
        if not e.baseline_model and len(e.models) > 1:
            raise InvalidArgument(f"{path}.baseline_model", "is required with more than one model")
        if e.confidence_level and not 0 < e.confidence_level < 1:
            raise InvalidArgument(f"{path}.confidence_level", "must be in (0, 1)")
        suite = check.suite(self.runs.catalog, e.suite, path)
        tasks = check.tasks(suite, e.split, e.task_ids, path)
        check.counts(
            path,
            rollouts_per_task=e.rollouts_per_task,
            max_rollouts=self.runs.settings.max_rollouts_per_task,
            concurrency=e.concurrency,
        )
        check.episode(e.episode, tasks, path)
        check.labels(e.labels, path)

    async def create(self, e: epb.Evaluation, request_id: str = "", *, loop_id: str = "") -> epb.Evaluation:
        self.validate(e)
        clean = epb.Evaluation()
        clean.CopyFrom(e)
        for name in OUTPUT_ONLY:
            clean.ClearField(name)
        if clean.episode.HasField("skill"):  # inline text stored now; every model's run names it by id
            clean.episode.skill.skill_id = await self.runs.resolve_skill(
                clean.episode.skill, "evaluation.episode.skill"
            )
        suite = self.runs.catalog.get(clean.suite)
        assert suite is not None  # validated

        def prepare(new: epb.Evaluation) -> None:
            new.loop_id = loop_id
            new.suite_version = suite.version
            if not new.baseline_model:
                new.baseline_model = new.models[0]
            for model in new.models:
                new.model_metrics.append(epb.ModelMetrics(model=model, baseline=model == new.baseline_model))
            tasks = suite.select(new.split, list(new.task_ids))
            new.progress.episodes_total = len(tasks) * (new.rollouts_per_task or 1) * len(new.models)

        job, created = await self.table.create(clean, request_id, prepare=prepare)
        if created:
            self._launch(job)
        return self.table.snapshot(job)

    def get(self, eval_id: str) -> epb.Evaluation:
        return self.table.get(eval_id)

    def page(self, request: opb.ListEvaluationsRequest) -> tuple[list[epb.Evaluation], str]:
        """One page of evaluations matching the request's filters, newest first, without their
        per-task tables."""

        def keep(e: epb.Evaluation) -> bool:
            return (
                (not request.suite or e.suite == request.suite)
                and (not request.state or e.state == request.state)
                and (not request.loop_id or e.loop_id == request.loop_id)
            )

        return self.table.page(keep, request.page_size, request.page_token, view=without_tasks)

    async def cancel(self, eval_id: str) -> epb.Evaluation:
        return await self.table.cancel(eval_id)

    async def _cancel(self, job: Job[epb.Evaluation]) -> None:
        for m in job.resource.model_metrics:
            if m.run_id:
                await self.runs.cancel(m.run_id)
        await self.table.cancel_task(job)

    async def watch(self, eval_id: str) -> AsyncIterator[opb.WatchEvaluationResponse]:
        first = True
        async for item in self.table.watch(eval_id):
            if isinstance(item, epb.Evaluation):
                if first and item.state not in TERMINAL:
                    item.ClearField("task_results")
                yield opb.WatchEvaluationResponse(evaluation=item)
            elif isinstance(item, mle_pb2.MlNodeProgress):
                yield opb.WatchEvaluationResponse(ml_node=item)
            else:
                yield opb.WatchEvaluationResponse(episode=item)
            first = False

    # ------------------------------------------------------------------------------ running

    def _launch(self, job: Job[epb.Evaluation]) -> None:
        self.table.launch(job, self._execute)

    def _on_episode(self, run: run_pb2.Run, result: run_pb2.EpisodeResult) -> None:
        eval_id = self._by_run.get(run.id)
        job = self.table.jobs.get(eval_id) if eval_id else None
        if job is None:
            return
        e = job.resource
        e.progress.episodes_finished = sum(
            self.runs.job(m.run_id).resource.counters.episodes_finished
            for m in e.model_metrics
            if m.run_id in self.runs.table.jobs
        )
        self.table.notify(job, result)
        self.table.notify(job, without_tasks(job))

    def _on_ml_node(self, run: run_pb2.Run, progress: mle_pb2.MlNodeProgress) -> None:
        eval_id = self._by_run.get(run.id)
        job = self.table.jobs.get(eval_id) if eval_id else None
        if job is not None:
            self.table.notify(job, progress)

    async def _execute(self, job: Job[epb.Evaluation]) -> None:
        """The evaluation's work; the job core turns its end (or failure) into the terminal state."""
        e = job.resource
        await self.table.set_running(job)
        for m in e.model_metrics:
            if not m.run_id:
                run = await self.runs.create(
                    self._run_template(e, m.model), f"{e.id}/{m.model}", loop_id=e.loop_id
                )
                m.run_id = run.id
                self._by_run[run.id] = e.id
        e.progress.episodes_total = sum(
            self.runs.job(m.run_id).resource.counters.episodes_total for m in e.model_metrics
        )
        await self.table.save(job, notify=False)
        self.table.notify(job, without_tasks(job))
        for m in e.model_metrics:
            await self.runs.job(m.run_id).done.wait()
        for m in e.model_metrics:
            run = self.runs.get(m.run_id)
            if run.state == common_pb2.JOB_STATE_CANCELLED:
                raise asyncio.CancelledError
            if run.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise JobFailed(
                    f"run {run.id} of model {m.model!r} failed: {run.error.message}", grpc.StatusCode.ABORTED
                )
        level = e.confidence_level or 0.95
        rollouts = e.rollouts_per_task or 1
        per_model: dict[str, Sequence[run_pb2.EpisodeResult]] = {}
        final: list[epb.ModelMetrics] = []
        for m in e.model_metrics:
            results = await self.runs.results(m.run_id)
            per_model[m.model] = results
            mm = metrics.model_metrics(m.model, results, rollouts_per_task=rollouts, level=level)
            mm.baseline, mm.run_id = m.baseline, m.run_id
            info = await self.runs.policy_info(self.runs.job(m.run_id))
            mm.base_model, mm.adapter_name, mm.adapter_version = (
                info.base_model,
                info.adapter_name,
                info.adapter_version,
            )
            final.append(mm)
        base = next(mm for mm in final if mm.baseline)
        for mm in final:
            if not mm.baseline:
                mm.delta_vs_baseline.CopyFrom(metrics.deltas(mm, base))
        del e.model_metrics[:]
        e.model_metrics.extend(final)
        e.task_results.extend(metrics.task_table(list(e.models), per_model))
        e.ml_metrics.extend(await mle_eval.evaluation_metrics(self.runs, e))
        e.progress.episodes_finished = sum(mm.episodes for mm in final)
        await self._write_report(e)

    async def _write_report(self, e: epb.Evaluation) -> None:
        prefix = f"reports/{e.id}/"
        e.report.json.key = f"{prefix}evaluation.json"
        e.report.markdown.key = f"{prefix}report.md"
        chart = common_pb2.ObjectRef(key=f"{prefix}metrics.png")
        e.report.charts.append(chart)
        ml_md, ml_png = await mle_eval.search_report(self.runs, e)
        md = (report.to_markdown(e) + mle_eval.markdown(e) + ml_md).encode()
        png = await asyncio.to_thread(report.chart_png, e)
        ml_chart = common_pb2.ObjectRef(key=f"{prefix}{mle_eval.CHART_NAME}")
        if ml_png is not None:
            e.report.charts.append(ml_chart)
        store = self.store

        def write() -> None:
            store.put(e.report.markdown.key, md, content_type="text/markdown", overwrite=True)
            store.put(chart.key, png, content_type="image/png", overwrite=True)
            if ml_png is not None:
                store.put(ml_chart.key, ml_png, content_type="image/png", overwrite=True)
            store.put(e.report.json.key, report.to_json(e), content_type="application/json", overwrite=True)

        await asyncio.to_thread(write)
