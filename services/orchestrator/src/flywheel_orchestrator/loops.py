"""The automated loop: rollouts → dataset → fine-tune → hot-load → evaluation → promotion gate.

Events drive it. The orchestrator consumes ``flywheel.run.completed``, ``flywheel.dataset.*``,
``flywheel.finetune.*``, ``flywheel.adapter.*`` and ``flywheel.eval.completed`` through durable
JetStream consumers; an event that names a loop (``loop_id``) makes that loop look at its current
stage and move on when the stage's artefact is finished. The artefact's own service is the
source of truth (the run and evaluation here, ``GetDatasetBuild``, ``GetFineTuneJob``, the
gateway's model list for the hot-load), so a duplicate or late event is harmless, and a loop
re-checks its stage at start-up, so an event missed while the orchestrator was down is too.

Every stage's job is created with the request id ``<loop id>-<stage>`` (the trainer allows only ``[A-Za-z0-9_-]`` in request ids): a restart between
creating a job and recording it gets the same job back, never a second one. The loop is
persisted as ``orchestrator/loops/<id>.json`` after every transition, and every artefact names
the loop (``loop_id``) and the artefacts it came from (the dataset its runs, the job its
dataset, the evaluation its models).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from ulid import ULID

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel_common.events import Event, EventBus
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator.evaluations import EvaluationManager
from flywheel_orchestrator.model import ModelClient
from flywheel_orchestrator.records import Records, fingerprint
from flywheel_orchestrator.runs import LABEL_KEY, PRODUCER, TERMINAL, RunManager, now
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.suites import SuiteError

log = logging.getLogger("flywheel.orchestrator.loops")

PREFIX = "orchestrator/loops/"
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
S = lpb  # stage and gate enums
SUCCEEDED, FAILED, CANCELLED = (
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
)
RUNNING, QUEUED = common_pb2.JOB_STATE_RUNNING, common_pb2.JOB_STATE_QUEUED

#: (durable consumer, subject filter) of the events that move loops.
SUBSCRIPTIONS = (
    ("orchestrator-loops-runs", "flywheel.run.completed"),
    ("orchestrator-loops-datasets", "flywheel.dataset.*"),
    ("orchestrator-loops-finetune", "flywheel.finetune.*"),
    ("orchestrator-loops-adapters", "flywheel.adapter.*"),
    ("orchestrator-loops-evals", "flywheel.eval.completed"),
)
EVENT_TYPES = {
    "flywheel.run.completed": events_pb2.RunCompleted,
    "flywheel.dataset.built": events_pb2.DatasetBuilt,
    "flywheel.dataset.failed": events_pb2.DatasetBuildFailed,
    "flywheel.adapter.published": events_pb2.AdapterPublished,
    "flywheel.adapter.loaded": events_pb2.AdapterLoaded,
    "flywheel.adapter.load_failed": events_pb2.AdapterLoadFailed,
    "flywheel.eval.completed": events_pb2.EvaluationCompleted,
}
HIGHER_IS_BETTER = {
    S.GATE_METRIC_PASS_RATE: ("pass_rate", "pass rate", True),
    S.GATE_METRIC_PARSE_ERRORS_PER_EPISODE: ("parse_errors_per_episode", "parse errors per episode", False),
    S.GATE_METRIC_WRITE_RATE: ("write_rate", "write rate", True),
    S.GATE_METRIC_LOOP_DETECTIONS_PER_EPISODE: (
        "loop_detections_per_episode",
        "loop detections per episode",
        False,
    ),
}


def stage_name(stage: int) -> str:
    return lpb.LoopStage.Name(stage).removeprefix("LOOP_STAGE_").lower().replace("_", "-")


def decide(
    gate: lpb.PromotionGate, incumbent: epb.ModelMetrics, candidate: epb.ModelMetrics, evaluation_id: str
) -> lpb.GateResult:
    """The gate: promote only if the candidate beats the incumbent by strictly more than the margin."""
    metric = gate.metric or S.GATE_METRIC_PASS_RATE
    fld, label, higher = HIGHER_IS_BETTER[metric]
    inc, cand = getattr(incumbent, fld), getattr(candidate, fld)
    improvement = (cand - inc) if higher else (inc - cand)
    promote = improvement > gate.margin + 1e-12
    sign = ">" if promote else "<="
    return lpb.GateResult(
        metric=metric,
        margin=gate.margin,
        incumbent_value=inc,
        candidate_value=cand,
        improvement=improvement,
        decision=S.GATE_DECISION_PROMOTE if promote else S.GATE_DECISION_REJECT,
        reason=f"{label} {cand:.3f} (candidate) vs {inc:.3f} (incumbent): improvement {improvement:+.3f} {sign} margin {gate.margin:.3f}",
        evaluation_id=evaluation_id,
    )


class _LoopFailed(Exception):
    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.ABORTED) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class LoopState:
    loop: lpb.Loop
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watchers: list[asyncio.Queue] = field(default_factory=list)
    poller: asyncio.Task | None = None

    def notify(self) -> None:
        snap = lpb.Loop()
        snap.CopyFrom(self.loop)
        for q in self.watchers:
            q.put_nowait(snap)


class LoopManager:
    def __init__(
        self,
        settings: OrchestratorSettings,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        runs: RunManager,
        evaluations: EvaluationManager,
        models: ModelClient,
    ) -> None:
        self.settings = settings
        self._store = store
        self._bus = bus
        self.runs = runs
        self.evaluations = evaluations
        self.models = models
        self.records = Records(store, PREFIX, lpb.Loop, "loop", "loop_id")
        self.loops: dict[str, LoopState] = {}
        self._lock = asyncio.Lock()
        self._channels: list[grpc.aio.Channel] = []  # made in start(), inside the event loop
        self._subs: list = []
        self._stopping = False
        self._background: set[asyncio.Task] = set()

    @property
    def store(self) -> ObjectStore:
        return self._store()

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._channels = [
            grpc.aio.insecure_channel(self.settings.dataset_address),
            grpc.aio.insecure_channel(self.settings.trainer_address),
        ]
        self.datasets = dataset_pb2_grpc.DatasetServiceStub(self._channels[0])
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self._channels[1])
        for loop in await asyncio.to_thread(self.records.load):
            self.loops[loop.id] = LoopState(loop)
        bus = self._bus()
        if bus is not None:
            for durable, subject in SUBSCRIPTIONS:
                self._subs.append(await bus.subscribe(durable, subject, self._on_event))
        for st in list(self.loops.values()):
            if st.loop.state not in TERMINAL:
                log.info("resuming loop %s at stage %s", st.loop.id, stage_name(st.loop.stage))
                self._spawn(self.advance(st.loop.id))
        self._spawn(self._reconcile())

    async def _reconcile(self) -> None:
        """Events move loops; this only catches what a lost event would leave waiting."""
        while not self._stopping:
            await asyncio.sleep(self.settings.loop_reconcile_s)
            for loop_id, st in list(self.loops.items()):
                if st.loop.state not in TERMINAL and not st.lock.locked():
                    await self.advance(loop_id)

    async def stop(self) -> None:
        self._stopping = True
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.stop(grace_s=2.0)
        for st in self.loops.values():
            if st.poller is not None:
                st.poller.cancel()
        for task in list(self._background):
            task.cancel()
        for channel in self._channels:
            await channel.close()

    def _persist(self, loop: lpb.Loop) -> None:
        self.records.save(loop)

    # ------------------------------------------------------------------------------ requests

    def validate(self, loop: lpb.Loop) -> None:
        if not loop.suite:
            raise InvalidArgument("loop.suite", "is required")
        suite = self.runs.catalog.get(loop.suite)
        if suite is None:
            raise NotFound(
                f"suite {loop.suite!r} does not exist (known: {', '.join(sorted(self.runs.catalog.suites))})"
            )
        proto = suite.to_proto()
        if not proto.train_task_count or not proto.test_task_count:
            raise FailedPrecondition(f"suite {loop.suite!r} needs tasks on both sides of its split")
        if not loop.base_model:
            raise InvalidArgument(
                "loop.base_model", "is required (a trainer base-model name, e.g. gemma-3-270m)"
            )
        if not ADAPTER_NAME.match(loop.adapter_name):
            raise InvalidArgument("loop.adapter_name", f"is required and must match {ADAPTER_NAME.pattern}")
        kind = loop.teacher_kind or tpb.TEACHER_KIND_MODEL
        run = run_pb2.Run(
            suite=loop.suite,
            split=common_pb2.TASK_SPLIT_TRAIN,
            task_ids=loop.train_task_ids,
            teacher_kind=kind,
            model=loop.teacher_model,
            rollouts_per_task=loop.rollouts_per_task,
            protocol=loop.protocol,
            test_policy=loop.test_policy,
            limits=loop.limits,
            sampling=loop.sampling,
            concurrency=loop.concurrency,
        )
        try:
            self.runs.validate(run)
        except InvalidArgument as err:
            field_name = err.field.replace("run.model", "loop.teacher_model").replace("run.", "loop.", 1)
            raise InvalidArgument(field_name, err.message.split(": ", 1)[-1]) from None
        try:
            suite.select(common_pb2.TASK_SPLIT_TEST, loop.test_task_ids)
        except KeyError as err:
            raise NotFound(f"loop.test_task_ids: suite {suite.name!r} has no task {err.args[0]!r}") from None
        except SuiteError as err:
            raise InvalidArgument("loop.test_task_ids", str(err)) from None
        if loop.gate.margin < 0:
            raise InvalidArgument("loop.gate.margin", "must be >= 0")
        if loop.gate.metric not in (0, *HIGHER_IS_BETTER):
            raise InvalidArgument("loop.gate.metric", f"unknown metric {loop.gate.metric}")
        if loop.eval_rollouts_per_task < 0:
            raise InvalidArgument("loop.eval_rollouts_per_task", "must be >= 0")
        for key in loop.labels:
            if not LABEL_KEY.match(key):
                raise InvalidArgument(f"loop.labels[{key!r}]", "keys are 1-63 characters of [a-z0-9_.-]")

    async def create(self, loop: lpb.Loop, request_id: str = "") -> lpb.Loop:
        self.validate(loop)
        clean = lpb.Loop()
        clean.CopyFrom(loop)
        for name in (
            "id",
            "state",
            "error",
            "stage",
            "stages",
            "candidate_model",
            "gate_result",
            "report",
            "create_time",
            "start_time",
            "end_time",
        ):
            clean.ClearField(name)
        if not clean.teacher_kind:
            clean.teacher_kind = tpb.TEACHER_KIND_MODEL
        if not clean.incumbent_model:
            clean.incumbent_model = clean.base_model
        async with self._lock:
            print_ = fingerprint(clean)
            earlier = await self.records.replay(request_id, print_)
            if earlier is not None:
                return self.get(earlier)
            clean.id = f"loop-{ULID()}"
            clean.state = QUEUED
            clean.create_time.CopyFrom(now())
            await asyncio.to_thread(self._persist, clean)
            await self.records.remember(request_id, clean.id, print_)
            self.loops[clean.id] = LoopState(clean)
        self._spawn(self.advance(clean.id))
        return self.get(clean.id)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def get(self, loop_id: str) -> lpb.Loop:
        st = self.loops.get(loop_id)
        if st is None:
            raise NotFound(f"loop {loop_id!r} does not exist")
        out = lpb.Loop()
        out.CopyFrom(st.loop)
        return out

    def list(self, state: int = 0) -> list[lpb.Loop]:
        return [
            self.get(i)
            for i in sorted(self.loops, reverse=True)
            if not state or self.loops[i].loop.state == state
        ]

    async def cancel(self, loop_id: str) -> lpb.Loop:
        st = self.loops.get(loop_id)
        if st is None:
            raise NotFound(f"loop {loop_id!r} does not exist")
        async with st.lock:
            loop = st.loop
            if loop.state in TERMINAL:
                return self.get(loop_id)
            current = self._current(loop)
            if current is not None:
                await self._cancel_artefacts(current)
            await self._end(st, CANCELLED, "cancelled by request", grpc.StatusCode.CANCELLED)
        return self.get(loop_id)

    async def watch(self, loop_id: str) -> AsyncIterator[opb.WatchLoopResponse]:
        st = self.loops.get(loop_id)
        if st is None:
            raise NotFound(f"loop {loop_id!r} does not exist")
        queue: asyncio.Queue = asyncio.Queue()
        st.watchers.append(queue)
        try:
            yield opb.WatchLoopResponse(loop=self.get(loop_id))
            if st.loop.state in TERMINAL:
                return
            while True:
                snap = await queue.get()
                yield opb.WatchLoopResponse(loop=snap)
                if snap.state in TERMINAL:
                    return
        finally:
            st.watchers.remove(queue)

    # ------------------------------------------------------------------------------ events

    async def _on_event(self, event: Event) -> None:
        cls = EVENT_TYPES.get(event.subject)
        if cls is None:
            if not event.subject.startswith("flywheel.finetune."):
                return
            cls = events_pb2.FineTuneStateChanged
        message = event.parse(cls)
        loop_id = getattr(message, "loop_id", "")
        if not loop_id or loop_id not in self.loops:
            return
        await self.advance(loop_id, message)

    # ------------------------------------------------------------------------------ the stages

    def _current(self, loop: lpb.Loop) -> lpb.LoopStageStatus | None:
        return loop.stages[-1] if loop.stages else None

    def _artefact(self, status: lpb.LoopStageStatus, kind: int) -> str:
        return next((a.id for a in status.artefacts if a.kind == kind), "")

    async def advance(self, loop_id: str, event: object | None = None) -> None:
        """Look at the loop's current stage and move on as far as its artefacts allow."""
        st = self.loops[loop_id]
        async with st.lock:
            if st.loop.state in TERMINAL or self._stopping:
                return
            try:
                for _ in range(len(lpb.LoopStage.values())):  # at most one pass per stage
                    if not await self._step(st, event):
                        break
                    event = None
            except _LoopFailed as err:
                await self._end(st, FAILED, str(err), err.code)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    await self._end(
                        st, FAILED, f"{stage_name(st.loop.stage)}: {err.details()}", grpc.StatusCode.NOT_FOUND
                    )
                    return
                # A dependency is down: keep the loop where it is; the next event or start retries.
                log.warning("loop %s waits: %s %s", loop_id, err.code().name, err.details())
                self._schedule_retry(st)
            except Exception as err:
                log.exception("loop %s failed", loop_id)
                await self._end(st, FAILED, f"internal error: {err}", grpc.StatusCode.INTERNAL)

    def _schedule_retry(self, st: LoopState, delay: float = 5.0) -> None:
        if st.poller is not None and not st.poller.done():
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            st.poller = None
            await self.advance(st.loop.id)

        st.poller = asyncio.create_task(later())

    async def _begin(self, st: LoopState, stage: int, artefacts: list[common_pb2.ResourceRef]) -> None:
        loop = st.loop
        if loop.stages:
            prev = loop.stages[-1]
            if prev.state not in TERMINAL:
                prev.state = SUCCEEDED
                prev.end_time.CopyFrom(now())
        status = lpb.LoopStageStatus(stage=stage, state=RUNNING, artefacts=artefacts, start_time=now())
        loop.stages.append(status)
        loop.stage = stage
        loop.state = RUNNING
        if not loop.HasField("start_time"):
            loop.start_time.CopyFrom(now())
        await self._save(st)
        await self._stage_event(loop, status)

    async def _save(self, st: LoopState) -> None:
        await asyncio.to_thread(self._persist, st.loop)
        st.notify()

    async def _step(self, st: LoopState, event: object | None) -> bool:
        """One transition; True when the loop moved (and may move again)."""
        loop = st.loop
        cur = self._current(loop)
        if cur is None:
            run = await self.runs.create(self._rollout_run(loop), f"{loop.id}-rollouts", loop_id=loop.id)
            await self._begin(
                st,
                S.LOOP_STAGE_ROLLOUTS,
                [common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_RUN, id=run.id)],
            )
            return False
        if cur.stage == S.LOOP_STAGE_ROLLOUTS:
            run_id = self._artefact(cur, common_pb2.RESOURCE_KIND_RUN)
            run = self.runs.get(run_id)
            if run.state not in TERMINAL:
                return False
            if run.state != SUCCEEDED:
                raise _LoopFailed(
                    f"rollouts: run {run_id} ended {common_pb2.JobState.Name(run.state)}: {run.error.message}"
                )
            build = await self._dataset_build(loop, run_id)
            await self._begin(
                st,
                S.LOOP_STAGE_DATASET,
                [common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_DATASET_BUILD, id=build.id)],
            )
            return True
        if cur.stage == S.LOOP_STAGE_DATASET:
            build_id = self._artefact(cur, common_pb2.RESOURCE_KIND_DATASET_BUILD)
            build = (
                await self.datasets.GetDatasetBuild(dpb.GetDatasetBuildRequest(build_id=build_id), timeout=30)
            ).build
            if build.state not in TERMINAL:
                return False
            if build.state != SUCCEEDED:
                raise _LoopFailed(
                    f"dataset: build {build_id} ended {common_pb2.JobState.Name(build.state)}: {build.error.message}"
                )
            cur.artefacts.append(
                common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_DATASET, id=build.dataset_id)
            )
            job = await self._fine_tune(loop, build.dataset_id)
            await self._begin(
                st,
                S.LOOP_STAGE_FINE_TUNE,
                [common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_FINE_TUNE_JOB, id=job.id)],
            )
            return True
        if cur.stage == S.LOOP_STAGE_FINE_TUNE:
            job_id = self._artefact(cur, common_pb2.RESOURCE_KIND_FINE_TUNE_JOB)
            job = (
                await self.trainer.GetFineTuneJob(trpb.GetFineTuneJobRequest(job_id=job_id), timeout=30)
            ).job
            if job.state not in TERMINAL:
                return False
            if job.state != SUCCEEDED or not job.adapter.name:
                raise _LoopFailed(
                    f"fine-tune: job {job_id} ended {common_pb2.JobState.Name(job.state)}: {job.error.message}"
                )
            adapter = f"{job.adapter.name}/{job.adapter.version}"
            cur.artefacts.append(common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_ADAPTER, id=adapter))
            loop.candidate_model = (
                f"{self.settings.adapter_route_prefix}{job.adapter.name}-v{job.adapter.version}"
            )
            await self._begin(
                st,
                S.LOOP_STAGE_HOT_LOAD,
                [common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_ADAPTER, id=adapter)],
            )
            return True
        if cur.stage == S.LOOP_STAGE_HOT_LOAD:
            name, _, version = self._artefact(cur, common_pb2.RESOURCE_KIND_ADAPTER).partition("/")
            if (
                isinstance(event, events_pb2.AdapterLoadFailed)
                and event.name == name
                and str(event.version) == version
            ):
                raise _LoopFailed(
                    f"hot-load: adapter {name}/{version} failed to load on {event.replica}: {event.error.message}"
                )
            loaded = (
                isinstance(event, events_pb2.AdapterLoaded)
                and event.name == name
                and str(event.version) == version
            )
            if loaded and event.served_model_name:  # type: ignore[union-attr]
                loop.candidate_model = event.served_model_name  # type: ignore[union-attr]
            if not loaded:
                loaded = bool(await self.models.describe(loop.candidate_model))
            if not loaded:
                self._hot_load_watchdog(st)
                return False
            evaluation = await self.evaluations.create(
                self._evaluation(loop), f"{loop.id}-evaluation", loop_id=loop.id
            )
            await self._begin(
                st,
                S.LOOP_STAGE_EVALUATION,
                [common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_EVALUATION, id=evaluation.id)],
            )
            return True
        if cur.stage == S.LOOP_STAGE_EVALUATION:
            eval_id = self._artefact(cur, common_pb2.RESOURCE_KIND_EVALUATION)
            e = self.evaluations.get(eval_id)
            if e.state not in TERMINAL:
                return False
            if e.state != SUCCEEDED:
                raise _LoopFailed(
                    f"evaluation: {eval_id} ended {common_pb2.JobState.Name(e.state)}: {e.error.message}"
                )
            await self._begin(
                st,
                S.LOOP_STAGE_GATE,
                [common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_EVALUATION, id=eval_id)],
            )
            return True
        if cur.stage == S.LOOP_STAGE_GATE:
            await self._gate(st)
            return False
        return False

    def _hot_load_watchdog(self, st: LoopState) -> None:
        """Adapter sync normally answers with adapter.loaded; if it never does (not running, a
        lost event), poll the gateway's model list, and fail after the configured wait."""
        if st.poller is not None and not st.poller.done():
            return
        cur = self._current(st.loop)
        started = cur.start_time.ToNanoseconds() / 1e9 if cur is not None else 0.0

        async def poll() -> None:
            while True:
                await asyncio.sleep(self.settings.loop_hot_load_poll_s)
                if st.loop.state in TERMINAL or st.loop.stage != S.LOOP_STAGE_HOT_LOAD:
                    return
                if await self.models.describe(st.loop.candidate_model):
                    st.poller = None
                    await self.advance(st.loop.id)
                    return
                if time.time() - started > self.settings.loop_hot_load_timeout_s:
                    async with st.lock:
                        if st.loop.stage == S.LOOP_STAGE_HOT_LOAD and st.loop.state not in TERMINAL:
                            await self._end(
                                st,
                                FAILED,
                                f"hot-load: {st.loop.candidate_model} was not served by the gateway within "
                                f"{self.settings.loop_hot_load_timeout_s:.0f} s (is adapter sync running?)",
                                grpc.StatusCode.DEADLINE_EXCEEDED,
                            )
                    return

        st.poller = asyncio.create_task(poll())

    # ------------------------------------------------------------------------------ stage jobs

    def _labels(self, loop: lpb.Loop) -> dict[str, str]:
        return {**loop.labels, "loop_id": loop.id}

    def _rollout_run(self, loop: lpb.Loop) -> run_pb2.Run:
        return run_pb2.Run(
            suite=loop.suite,
            split=common_pb2.TASK_SPLIT_TRAIN,
            task_ids=loop.train_task_ids,
            teacher_kind=loop.teacher_kind,
            model=loop.teacher_model,
            rollouts_per_task=loop.rollouts_per_task,
            protocol=loop.protocol,
            test_policy=loop.test_policy,
            limits=loop.limits,
            sampling=loop.sampling,
            concurrency=loop.concurrency,
            labels=dict(loop.labels),
        )

    async def _dataset_build(self, loop: lpb.Loop, run_id: str) -> dpb.DatasetBuild:
        method = loop.method or trpb.FINE_TUNE_METHOD_SFT
        recipe = loop.recipe or ("dpo_steps" if method == trpb.FINE_TUNE_METHOD_DPO else "step_sft")
        build = dpb.DatasetBuild(
            source=dpb.DatasetSource(run_ids=[run_id]),
            recipe=recipe,
            parameters=dict(loop.recipe_parameters),
            split=loop.dataset_split,
            target_base_model=loop.base_model,
            loop_id=loop.id,
            labels=self._labels(loop),
        )
        reply = await self.datasets.CreateDatasetBuild(
            dpb.CreateDatasetBuildRequest(build=build, request_id=f"{loop.id}-dataset"), timeout=60
        )
        return reply.build

    async def _fine_tune(self, loop: lpb.Loop, dataset_id: str) -> trpb.FineTuneJob:
        job = trpb.FineTuneJob(
            base_model=loop.base_model,
            dataset_id=dataset_id,
            method=loop.method or trpb.FINE_TUNE_METHOD_SFT,
            hyperparameters=loop.hyperparameters,
            adapter_name=loop.adapter_name,
            loop_id=loop.id,
            labels=self._labels(loop),
        )
        try:
            reply = await self.trainer.CreateFineTuneJob(
                trpb.CreateFineTuneJobRequest(job=job, request_id=f"{loop.id}-fine-tune"), timeout=60
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
            ):
                raise _LoopFailed(
                    f"fine-tune: the trainer refused the job: {err.details()}", err.code()
                ) from None
            raise
        return reply.job

    def _evaluation(self, loop: lpb.Loop) -> epb.Evaluation:
        return epb.Evaluation(
            suite=loop.suite,
            split=common_pb2.TASK_SPLIT_TEST,
            task_ids=loop.test_task_ids,
            models=[loop.incumbent_model, loop.candidate_model],
            baseline_model=loop.incumbent_model,
            rollouts_per_task=loop.eval_rollouts_per_task,
            protocol=loop.protocol,
            test_policy=loop.test_policy,
            limits=loop.limits,
            sampling=loop.sampling,
            concurrency=loop.concurrency,
            labels=self._labels(loop),
        )

    async def _gate(self, st: LoopState) -> None:
        loop = st.loop
        cur = self._current(loop)
        assert cur is not None
        eval_id = self._artefact(cur, common_pb2.RESOURCE_KIND_EVALUATION)
        e = self.evaluations.get(eval_id)
        by_model = {m.model: m for m in e.model_metrics}
        result = decide(loop.gate, by_model[loop.incumbent_model], by_model[loop.candidate_model], eval_id)
        loop.gate_result.CopyFrom(result)
        await self._write_report(loop, e)
        name, _, version = self._artefact(
            self._stage(loop, S.LOOP_STAGE_HOT_LOAD), common_pb2.RESOURCE_KIND_ADAPTER
        ).partition("/")
        adapter = trpb.AdapterRef(
            name=name, version=int(version or 0), object_prefix=f"adapters/{name}/v{version}/"
        )
        bus = self._bus()
        if bus is not None:
            meta = events_pb2.EventMeta(occurred_at=now(), producer=PRODUCER)
            if result.decision == S.GATE_DECISION_PROMOTE:
                meta.event_id = f"loop-promoted:{loop.id}"
                msg = events_pb2.LoopPromoted(
                    meta=meta,
                    loop_id=loop.id,
                    promoted_model=loop.candidate_model,
                    previous_model=loop.incumbent_model,
                    adapter=adapter,
                    gate=result,
                )
                await bus.publish("flywheel.loop.promoted", msg, msg_id=meta.event_id)
            else:
                meta.event_id = f"loop-rejected:{loop.id}"
                msg = events_pb2.LoopRejected(
                    meta=meta,
                    loop_id=loop.id,
                    candidate_model=loop.candidate_model,
                    incumbent_model=loop.incumbent_model,
                    adapter=adapter,
                    gate=result,
                )
                await bus.publish("flywheel.loop.rejected", msg, msg_id=meta.event_id)
        await self._end(st, SUCCEEDED)

    def _stage(self, loop: lpb.Loop, stage: int) -> lpb.LoopStageStatus:
        return next(s for s in loop.stages if s.stage == stage)

    async def _write_report(self, loop: lpb.Loop, e: epb.Evaluation) -> None:
        from flywheel_orchestrator.report import loop_markdown

        key = f"reports/{loop.id}/loop.md"
        loop.report.key = key
        text = loop_markdown(loop, e).encode()
        await asyncio.to_thread(self.store.put, key, text, content_type="text/markdown", overwrite=True)

    async def _cancel_artefacts(self, status: lpb.LoopStageStatus) -> None:
        for ref in status.artefacts:
            with contextlib.suppress(Exception):
                if ref.kind == common_pb2.RESOURCE_KIND_RUN:
                    await self.runs.cancel(ref.id)
                elif ref.kind == common_pb2.RESOURCE_KIND_DATASET_BUILD:
                    await self.datasets.CancelDatasetBuild(
                        dpb.CancelDatasetBuildRequest(build_id=ref.id), timeout=10
                    )
                elif ref.kind == common_pb2.RESOURCE_KIND_FINE_TUNE_JOB:
                    await self.trainer.CancelFineTuneJob(
                        trpb.CancelFineTuneJobRequest(job_id=ref.id), timeout=10
                    )
                elif ref.kind == common_pb2.RESOURCE_KIND_EVALUATION:
                    await self.evaluations.cancel(ref.id)

    async def _end(
        self, st: LoopState, state: int, message: str = "", code: grpc.StatusCode | None = None
    ) -> None:
        loop = st.loop
        cur = self._current(loop)
        if cur is not None and cur.state not in TERMINAL:
            cur.state = state
            cur.end_time.CopyFrom(now())
            if message and code is not None:
                cur.error.CopyFrom(common_pb2.Error(code=code.value[0], message=message))
        loop.state = state
        loop.end_time.CopyFrom(now())
        if message and code is not None:
            loop.error.CopyFrom(common_pb2.Error(code=code.value[0], message=message))
        await self._save(st)
        if cur is not None:
            await self._stage_event(loop, cur)

    async def _stage_event(self, loop: lpb.Loop, status: lpb.LoopStageStatus) -> None:
        bus = self._bus()
        if bus is None:
            return
        state = common_pb2.JobState.Name(status.state).removeprefix("JOB_STATE_").lower()
        event_id = f"loop-stage:{loop.id}:{stage_name(status.stage)}:{state}"
        msg = events_pb2.LoopStageChanged(
            meta=events_pb2.EventMeta(event_id=event_id, occurred_at=now(), producer=PRODUCER),
            loop_id=loop.id,
            stage=status.stage,
            stage_state=status.state,
            artefacts=status.artefacts,
            error=status.error,
        )
        try:
            await bus.publish("flywheel.loop.stage_changed", msg, msg_id=event_id)
        except Exception:
            log.exception("could not publish %s", event_id)
