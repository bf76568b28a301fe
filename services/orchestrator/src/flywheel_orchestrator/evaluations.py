"""Evaluations: the same tasks and settings for every model, one run per model, a report.

An evaluation is persisted as ``orchestrator/evaluations/<id>.json``. Its runs are created with
the request id ``<evaluation id>/<model>``, so a restart in the middle of creating them never
makes a second run for a model; the runs themselves resume (see runs.py), and the evaluation
waits for them again. Metrics are computed from the stored trajectories' summaries, never from
memory alone, so a resumed evaluation reports exactly what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from ulid import ULID

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.events import EventBus
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator import metrics, report
from flywheel_orchestrator.records import Records, fingerprint
from flywheel_orchestrator.runs import PRODUCER, TERMINAL, RunManager, now

log = logging.getLogger("flywheel.orchestrator.evaluations")

PREFIX = "orchestrator/evaluations/"


@dataclass
class EvalState:
    evaluation: epb.Evaluation
    watchers: list[asyncio.Queue] = field(default_factory=list)
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_requested: bool = False

    def notify(self, item: opb.WatchEvaluationResponse) -> None:
        for q in self.watchers:
            q.put_nowait(item)


class EvaluationManager:
    def __init__(
        self,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        runs: RunManager,
    ) -> None:
        self._store = store
        self._bus = bus
        self.runs = runs
        self.records = Records(store, PREFIX, epb.Evaluation, "evaluation", "evaluation_id")
        self.evals: dict[str, EvalState] = {}
        self._by_run: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._stopping = False
        runs.listeners.append(self._on_episode)

    @property
    def store(self) -> ObjectStore:
        return self._store()

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        pending, unannounced = await asyncio.to_thread(self._load)
        for e in unannounced:
            await self._publish(e)
        for e in pending:
            self._launch(self.evals[e.id])

    async def stop(self) -> None:
        self._stopping = True
        tasks = [s.task for s in self.evals.values() if s.task is not None and not s.task.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def _load(self) -> tuple[list[epb.Evaluation], list[epb.Evaluation]]:
        published = self.records.published()
        pending, unannounced = [], []
        for e in self.records.load():
            st = EvalState(e)
            self.evals[e.id] = st
            for m in e.model_metrics:
                if m.run_id:
                    self._by_run[m.run_id] = e.id
            if e.state in TERMINAL:
                st.done.set()
                if e.id not in published:
                    unannounced.append(e)
            else:
                pending.append(e)
        return pending, unannounced

    def _persist(self, e: epb.Evaluation) -> None:
        self.records.save(e)

    # ------------------------------------------------------------------------------ requests

    def _run_template(self, e: epb.Evaluation, model: str) -> run_pb2.Run:
        return run_pb2.Run(
            suite=e.suite,
            split=e.split,
            task_ids=e.task_ids,
            teacher_kind=tpb.TEACHER_KIND_MODEL,
            model=model,
            rollouts_per_task=e.rollouts_per_task,
            protocol=e.protocol,
            test_policy=e.test_policy,
            limits=e.limits,
            sampling=e.sampling,
            concurrency=max(
                1, (e.concurrency or self.runs.settings.default_concurrency) // max(1, len(e.models))
            ),
            labels={**e.labels, "evaluation_id": e.id} if e.id else dict(e.labels),
        )

    def validate(self, e: epb.Evaluation) -> None:
        if not e.models:
            raise InvalidArgument("evaluation.models", "name 1 to 8 gateway model names")
        if len(e.models) > 8:
            raise InvalidArgument("evaluation.models", f"at most 8 models, got {len(e.models)}")
        if len(set(e.models)) != len(e.models):
            raise InvalidArgument("evaluation.models", "model names must be distinct")
        if any(not m for m in e.models):
            raise InvalidArgument("evaluation.models", "a model name is empty")
        if e.baseline_model and e.baseline_model not in e.models:
            raise InvalidArgument(
                "evaluation.baseline_model", f"{e.baseline_model!r} is not one of evaluation.models"
            )
        if not e.baseline_model and len(e.models) > 1:
            raise InvalidArgument("evaluation.baseline_model", "is required with more than one model")
        if e.confidence_level and not 0 < e.confidence_level < 1:
            raise InvalidArgument("evaluation.confidence_level", "must be in (0, 1)")
        if e.concurrency < 0:
            raise InvalidArgument("evaluation.concurrency", "must be >= 0 (0 means the service default)")
        try:
            self.runs.validate(self._run_template(e, e.models[0]))
        except InvalidArgument as err:
            problem = err.message.split(": ", 1)[-1]
            raise InvalidArgument(err.field.replace("run.", "evaluation.", 1), problem) from None

    async def create(self, e: epb.Evaluation, request_id: str = "", *, loop_id: str = "") -> epb.Evaluation:
        self.validate(e)
        clean = epb.Evaluation()
        clean.CopyFrom(e)
        for name in (
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
        ):
            clean.ClearField(name)
        async with self._lock:
            print_ = fingerprint(clean)
            earlier = await self.records.replay(request_id, print_)
            if earlier is not None:
                return self.get(earlier)
            clean.id = f"eval-{ULID()}"
            clean.loop_id = loop_id
            clean.suite_version = self.runs.catalog.get(clean.suite).version
            if not clean.baseline_model:
                clean.baseline_model = clean.models[0]
            clean.state = common_pb2.JOB_STATE_QUEUED
            clean.create_time.CopyFrom(now())
            for model in clean.models:
                clean.model_metrics.append(
                    epb.ModelMetrics(model=model, baseline=model == clean.baseline_model)
                )
            tasks = self.runs.catalog.get(clean.suite).select(clean.split, clean.task_ids)
            clean.progress.episodes_total = len(tasks) * (clean.rollouts_per_task or 1) * len(clean.models)
            await asyncio.to_thread(self._persist, clean)
            await self.records.remember(request_id, clean.id, print_)
            st = EvalState(clean)
            self.evals[clean.id] = st
            self._launch(st)
            return self.snapshot(clean.id)

    def snapshot(self, eval_id: str, *, with_tasks: bool = True) -> epb.Evaluation:
        out = epb.Evaluation()
        out.CopyFrom(self.evals[eval_id].evaluation)
        if not with_tasks:
            out.ClearField("task_results")
        return out

    def get(self, eval_id: str) -> epb.Evaluation:
        if eval_id not in self.evals:
            raise NotFound(f"evaluation {eval_id!r} does not exist")
        return self.snapshot(eval_id)

    def list(self, *, suite: str = "", state: int = 0, loop_id: str = "") -> list[epb.Evaluation]:
        ids = sorted(
            (
                i
                for i, s in self.evals.items()
                if (not suite or s.evaluation.suite == suite)
                and (not state or s.evaluation.state == state)
                and (not loop_id or s.evaluation.loop_id == loop_id)
            ),
            reverse=True,
        )
        return [self.snapshot(i, with_tasks=False) for i in ids]

    async def cancel(self, eval_id: str) -> epb.Evaluation:
        st = self.evals.get(eval_id)
        if st is None:
            raise NotFound(f"evaluation {eval_id!r} does not exist")
        if st.evaluation.state in TERMINAL:
            return self.snapshot(eval_id)
        st.cancel_requested = True
        for m in st.evaluation.model_metrics:
            if m.run_id:
                await self.runs.cancel(m.run_id)
        if st.task is not None and not st.task.done():
            st.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(st.task), timeout=10)
        return self.snapshot(eval_id)

    async def watch(self, eval_id: str) -> AsyncIterator[opb.WatchEvaluationResponse]:
        st = self.evals.get(eval_id)
        if st is None:
            raise NotFound(f"evaluation {eval_id!r} does not exist")
        queue: asyncio.Queue = asyncio.Queue()
        st.watchers.append(queue)
        try:
            yield opb.WatchEvaluationResponse(
                evaluation=self.snapshot(eval_id, with_tasks=st.evaluation.state in TERMINAL)
            )
            if st.evaluation.state in TERMINAL:
                return
            while True:  # until the terminal snapshot, which _finish queues after the last episode
                item = await queue.get()
                yield item
                if item.WhichOneof("update") == "evaluation" and item.evaluation.state in TERMINAL:
                    return
        finally:
            st.watchers.remove(queue)

    # ------------------------------------------------------------------------------ running

    def _launch(self, st: EvalState) -> None:
        st.task = asyncio.create_task(self._execute(st), name=f"evaluation {st.evaluation.id}")

    def _on_episode(self, run: run_pb2.Run, result: run_pb2.EpisodeResult) -> None:
        eval_id = self._by_run.get(run.id)
        st = self.evals.get(eval_id) if eval_id else None
        if st is None:
            return
        e = st.evaluation
        e.progress.episodes_finished = sum(
            self.runs.runs[m.run_id].run.counters.episodes_finished
            for m in e.model_metrics
            if m.run_id in self.runs.runs
        )
        st.notify(opb.WatchEvaluationResponse(episode=result))
        st.notify(opb.WatchEvaluationResponse(evaluation=self.snapshot(e.id, with_tasks=False)))

    async def _execute(self, st: EvalState) -> None:
        e = st.evaluation
        try:
            await self._execute_inner(st)
        except asyncio.CancelledError:
            if self._stopping and not st.cancel_requested:
                raise
            await self._finish(
                st, common_pb2.JOB_STATE_CANCELLED, ("cancelled by request", grpc.StatusCode.CANCELLED)
            )
        except _EvalFailed as err:
            await self._finish(st, common_pb2.JOB_STATE_FAILED, (str(err), err.code))
        except Exception as err:
            log.exception("evaluation %s failed", e.id)
            await self._finish(
                st, common_pb2.JOB_STATE_FAILED, (f"internal error: {err}", grpc.StatusCode.INTERNAL)
            )

    async def _execute_inner(self, st: EvalState) -> None:
        e = st.evaluation
        e.state = common_pb2.JOB_STATE_RUNNING
        if not e.HasField("start_time"):
            e.start_time.CopyFrom(now())
        for m in e.model_metrics:
            if not m.run_id:
                run = await self.runs.create(
                    self._run_template(e, m.model), f"{e.id}/{m.model}", loop_id=e.loop_id
                )
                m.run_id = run.id
                self._by_run[run.id] = e.id
        e.progress.episodes_total = sum(
            self.runs.runs[m.run_id].run.counters.episodes_total for m in e.model_metrics
        )
        await asyncio.to_thread(self._persist, e)
        st.notify(opb.WatchEvaluationResponse(evaluation=self.snapshot(e.id, with_tasks=False)))
        for m in e.model_metrics:
            await self.runs.runs[m.run_id].done.wait()
        for m in e.model_metrics:
            run = self.runs.runs[m.run_id].run
            if run.state == common_pb2.JOB_STATE_CANCELLED:
                raise asyncio.CancelledError
            if run.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise _EvalFailed(
                    f"run {run.id} of model {m.model!r} failed: {run.error.message}", grpc.StatusCode.ABORTED
                )
        level = e.confidence_level or 0.95
        rollouts = e.rollouts_per_task or 1
        per_model: dict[str, list[run_pb2.EpisodeResult]] = {}
        final: list[epb.ModelMetrics] = []
        for m in e.model_metrics:
            results = await self.runs.results(m.run_id)
            per_model[m.model] = results
            mm = metrics.model_metrics(m.model, results, rollouts_per_task=rollouts, level=level)
            mm.baseline, mm.run_id = m.baseline, m.run_id
            run = self.runs.runs[m.run_id].run
            info = await self.runs.policy_info(self.runs.runs[m.run_id])
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
        e.progress.episodes_finished = sum(mm.episodes for mm in final)
        await self._write_report(e)
        await self._finish(st, common_pb2.JOB_STATE_SUCCEEDED)

    async def _write_report(self, e: epb.Evaluation) -> None:
        prefix = f"reports/{e.id}/"
        e.report.json.key = f"{prefix}evaluation.json"
        e.report.markdown.key = f"{prefix}report.md"
        chart = common_pb2.ObjectRef(key=f"{prefix}metrics.png")
        e.report.charts.append(chart)
        md = report.to_markdown(e).encode()
        png = await asyncio.to_thread(report.chart_png, e)
        store = self.store

        def write() -> None:
            store.put(e.report.markdown.key, md, content_type="text/markdown", overwrite=True)
            store.put(chart.key, png, content_type="image/png", overwrite=True)
            store.put(e.report.json.key, report.to_json(e), content_type="application/json", overwrite=True)

        await asyncio.to_thread(write)

    async def _finish(
        self, st: EvalState, final: int, error: tuple[str, grpc.StatusCode] | None = None
    ) -> None:
        e = st.evaluation
        e.state = final
        e.end_time.CopyFrom(now())
        if error is not None:
            e.error.CopyFrom(common_pb2.Error(code=error[1].value[0], message=error[0]))
        await asyncio.to_thread(self._persist, e)
        st.done.set()
        st.notify(opb.WatchEvaluationResponse(evaluation=self.snapshot(e.id)))
        await self._publish(e)

    async def _publish(self, e: epb.Evaluation) -> None:
        bus = self._bus()
        if bus is None:
            return
        meta = events_pb2.EventMeta(
            event_id=f"eval-completed:{e.id}", occurred_at=e.end_time, producer=PRODUCER
        )
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
        try:
            await bus.publish("flywheel.eval.completed", event, msg_id=meta.event_id)
        except Exception:
            log.exception("could not publish eval.completed for %s; retried at the next start", e.id)
            return
        await self.records.mark_published(e.id, meta.event_id)


class _EvalFailed(Exception):
    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code
