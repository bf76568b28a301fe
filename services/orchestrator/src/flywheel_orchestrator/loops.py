"""The automated loop: rollouts → dataset → fine-tune → hot-load → evaluation → promotion gate.

Events drive it. The orchestrator consumes ``flywheel.run.completed``, ``flywheel.dataset.*``,
``flywheel.finetune.*``, ``flywheel.adapter.*`` and ``flywheel.eval.completed`` through durable
JetStream consumers; an event that names a loop (``loop_id``) makes that loop look at its current
stage and move on when the stage's artefact is finished. The artefact's own service is the
source of truth (the run and evaluation here, ``GetDatasetBuild``, ``GetFineTuneJob``, the
gateway's model list for the hot-load), so a duplicate or late event is harmless, and a loop
re-checks its stage at start-up and every ``loop_reconcile_s``, so a lost event is too.

The stages are a table (:attr:`LoopManager.handlers`): one handler per stage looks at the stage's
artefact and either starts the next stage (True) or waits (False). Each stage may have a timeout
(``loop_<stage>_timeout_s``). Every retry — a dependency that was down, the hot-load poll, the
reconcile sweep — goes through :meth:`LoopManager.advance`, under the loop's lock.

Every stage's job is created with the request id ``<loop id>-<stage>`` (the trainer allows only
``[A-Za-z0-9_-]`` in request ids): a restart between creating a job and recording it gets the
same job back, never a second one. The loop itself lives in the job core
(``flywheel_common.jobs``) under ``orchestrator/loops/``; its stage changes and its terminal
events (``flywheel.loop.promoted`` or ``flywheel.loop.rejected`` when the gate decided, and the
last ``flywheel.loop.stage_changed``) go through the core's outbox, so a gate that decides while
NATS is down still ends the loop SUCCEEDED, and the events go out when NATS returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import grpc
from google.protobuf.message import Message

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as spb
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common import aliases as alias_table
from flywheel_common import auth
from flywheel_common.errors import FailedPrecondition, FlywheelError, InvalidArgument, Unavailable
from flywheel_common.events import Event, EventBus
from flywheel_common.jobs import (
    CANCELLED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Announcement,
    Job,
    JobFailed,
    JobTable,
    now,
    state_name,
)
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator import joint
from flywheel_orchestrator import validation as check
from flywheel_orchestrator.aliases import ENDS_CANARY, AliasManager, default_alias, validate_policy
from flywheel_orchestrator.evaluations import EvaluationManager
from flywheel_orchestrator.gate import decide, validate_gate
from flywheel_orchestrator.model import ModelClient
from flywheel_orchestrator.report import (
    alias_history_markdown,
    loop_markdown,
    promotion_markdown,
    rl_markdown,
    rl_plot,
    rounds_markdown,
    rounds_plot,
)
from flywheel_orchestrator.rl import RlStages
from flywheel_orchestrator.rl import validate as validate_rl
from flywheel_orchestrator.runs import PRODUCER, RunManager
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.skillopt import SkillOptManager

log = logging.getLogger("flywheel.orchestrator.loops")

PREFIX = "orchestrator/loops/"
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
S = lpb  # stage and gate enums
OUTPUT_ONLY = (
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
    "iterations",
    "parent_loop_id",
    "round",
    "round_results",
    "promotion",
    "joint_steps",
    "joint_arms",
    "candidate_skill_id",
)
MAX_ROUNDS = 100
#: GPUs a loop's fine-tune jobs may ask for (the trainer's own limit, one node's GPUs).
MAX_TRAIN_GPUS = 16
INIT_ADAPTER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}/v[1-9][0-9]*$")

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


def stage_name(stage: int) -> str:
    return lpb.LoopStage.Name(stage).removeprefix("LOOP_STAGE_").lower().replace("_", "-")


class LoopJob(Job[lpb.Loop]):
    """A loop and what the service keeps beside it: its lock and its pending retry."""

    def __init__(self, loop: lpb.Loop) -> None:
        super().__init__(loop)
        self.lock = asyncio.Lock()
        self.retry: asyncio.Task[None] | None = None


def current(loop: lpb.Loop) -> lpb.LoopStageStatus | None:
    return loop.stages[-1] if loop.stages else None


def artefact(status: lpb.LoopStageStatus, kind: common_pb2.ResourceKind) -> str:
    return next((a.id for a in status.artefacts if a.kind == kind), "")


def stage_event(loop: lpb.Loop, status: lpb.LoopStageStatus) -> Announcement:
    """``flywheel.loop.stage_changed`` for one stage status."""
    event_id = f"loop-stage:{loop.id}:{stage_name(status.stage)}:{state_name(status.state)}"
    msg = events_pb2.LoopStageChanged(
        meta=events_pb2.EventMeta(event_id=event_id, occurred_at=now(), producer=PRODUCER),
        loop_id=loop.id,
        stage=status.stage,
        stage_state=status.state,
        artefacts=status.artefacts,
        error=status.error,
    )
    return Announcement("flywheel.loop.stage_changed", msg, event_id)


def terminal_events(loop: lpb.Loop) -> list[Announcement]:
    """A finished loop's events: the gate's decision (when it decided), then its last stage."""
    out = []
    if loop.state == SUCCEEDED and loop.HasField("gate_result"):
        gate = loop.gate_result
        # The candidate's hot-load (an RL loop has one per iteration; the newest is the candidate's
        # unless its last iteration trained nothing).
        loads = [
            artefact(s, common_pb2.RESOURCE_KIND_ADAPTER)
            for s in loop.stages
            if s.stage == S.LOOP_STAGE_HOT_LOAD
        ]
        chosen = next(
            (a for a in reversed(loads) if loop.candidate_model.endswith(a.replace("/", "-v"))),
            loads[-1] if loads else "",  # a joint loop's hot-loads are its children's
        )
        name, _, version = chosen.partition("/")
        adapter = trpb.AdapterRef(
            name=name, version=int(version or 0), object_prefix=f"adapters/{name}/v{version}/"
        )
        meta = events_pb2.EventMeta(occurred_at=loop.end_time, producer=PRODUCER)
        if (
            gate.decision == S.GATE_DECISION_PROMOTE
            and loop.promotion.outcome != S.PROMOTION_OUTCOME_ROLLED_BACK
        ):
            meta.event_id = f"loop-promoted:{loop.id}"
            promoted = events_pb2.LoopPromoted(
                meta=meta,
                loop_id=loop.id,
                promoted_model=loop.candidate_model,
                previous_model=loop.incumbent_model,
                adapter=adapter,
                gate=gate,
            )
            out.append(Announcement("flywheel.loop.promoted", promoted, meta.event_id))
        else:
            meta.event_id = f"loop-rejected:{loop.id}"
            rejected = events_pb2.LoopRejected(
                meta=meta,
                loop_id=loop.id,
                candidate_model=loop.candidate_model,
                incumbent_model=loop.incumbent_model,
                adapter=adapter,
                gate=gate,
            )
            out.append(Announcement("flywheel.loop.rejected", rejected, meta.event_id))
    # The last stage as it ended; a loop that ended before its first stage is announced as
    # stage UNSPECIFIED, so every loop's end has an event.
    last = lpb.LoopStageStatus(stage=S.LOOP_STAGE_UNSPECIFIED, state=loop.state, error=loop.error)
    cur = current(loop)
    if cur is not None:
        last.CopyFrom(cur)
        if last.state not in TERMINAL:
            last.state = loop.state
    out.append(stage_event(loop, last))
    return out


Handler = Callable[[LoopJob, lpb.LoopStageStatus | None, object | None], Awaitable[bool]]


class LoopManager:
    def __init__(
        self,
        settings: OrchestratorSettings,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        runs: RunManager,
        evaluations: EvaluationManager,
        models: ModelClient,
        aliases: AliasManager,
        skillopts: SkillOptManager | None = None,
    ) -> None:
        self.settings = settings
        #: The skill optimisations joint loops run (``joint.py``); None refuses joint loops.
        self.skillopts = skillopts
        self.aliases = aliases
        self._store = store
        self._bus = bus
        self.runs = runs
        self.evaluations = evaluations
        self.models = models
        self.table: JobTable[lpb.Loop, LoopJob] = JobTable(
            store=store,
            bus=bus,
            prefix=PREFIX,
            message_class=lpb.Loop,
            kind="loop",
            id_prefix="loop",
            announce=terminal_events,
            make_job=LoopJob,
            on_cancel=self._cancel,
        )
        #: The stage table: what to do when a loop is at a stage (0: not started yet).
        self.handlers: dict[int, Handler] = {
            S.LOOP_STAGE_UNSPECIFIED: self._start_rollouts,
            S.LOOP_STAGE_ROLLOUTS: self._after_rollouts,
            S.LOOP_STAGE_DATASET: self._after_dataset,
            S.LOOP_STAGE_FINE_TUNE: self._after_fine_tune,
            S.LOOP_STAGE_HOT_LOAD: self._after_hot_load,
            S.LOOP_STAGE_EVALUATION: self._after_evaluation,
            S.LOOP_STAGE_GATE: self._gate,
            S.LOOP_STAGE_PROMOTION: self._promotion,
        }
        #: The stage table of a loop of several rounds: each round is a child loop.
        self.round_handlers: dict[int, Handler] = {
            S.LOOP_STAGE_UNSPECIFIED: self._start_rounds,
            S.LOOP_STAGE_ROUND: self._after_round,
        }
        #: The stage table of RL loops (``rl.py``): the same stages, repeated per iteration.
        self.rl = RlStages(self)
        #: The stage table of joint loops (``joint.py``): a skill optimisation and LoRA rounds.
        self.joint = joint.JointStages(self)
        #: Seconds a stage may last (0: no limit), from the settings.
        self.timeouts: dict[int, float] = {
            S.LOOP_STAGE_ROLLOUTS: settings.loop_rollouts_timeout_s,
            S.LOOP_STAGE_DATASET: settings.loop_dataset_timeout_s,
            S.LOOP_STAGE_FINE_TUNE: settings.loop_fine_tune_timeout_s,
            S.LOOP_STAGE_HOT_LOAD: settings.loop_hot_load_timeout_s,
            S.LOOP_STAGE_EVALUATION: settings.loop_evaluation_timeout_s,
        }
        self._channels: list[grpc.aio.Channel] = []  # made in start(), inside the event loop
        self._subs: list[Any] = []
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> ObjectStore:
        return self._store()

    @property
    def loops(self) -> dict[str, LoopJob]:
        return self.table.jobs

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._channels = [
            auth.channel(self.settings.dataset_address, token=self.settings.auth.token()),
            auth.channel(self.settings.trainer_address, token=self.settings.auth.token()),
        ]
        self.datasets = dataset_pb2_grpc.DatasetServiceStub(self._channels[0])
        self.trainer = trainer_pb2_grpc.TrainerServiceStub(self._channels[1])
        resumed: list[str] = []
        await self.table.start(lambda job: resumed.append(job.id))
        bus = self._bus()
        if bus is not None:
            for durable, subject in SUBSCRIPTIONS:
                self._subs.append(await bus.subscribe(durable, subject, self._on_event))
        for loop_id in resumed:
            log.info("resuming loop %s at stage %s", loop_id, stage_name(self.loops[loop_id].resource.stage))
            self._spawn(self.advance(loop_id))
        self._spawn(self._reconcile())

    async def _reconcile(self) -> None:
        """Events move loops; this only catches what a lost event would leave waiting."""
        while not self._stopping:
            await asyncio.sleep(self.settings.loop_reconcile_s)
            for loop_id, job in list(self.loops.items()):
                if not job.terminal and not job.lock.locked():
                    await self.advance(loop_id)

    async def stop(self) -> None:
        self._stopping = True
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.stop(grace_s=2.0)
        for job in self.loops.values():
            if job.retry is not None:
                job.retry.cancel()
        for task in list(self._background):
            task.cancel()
        await self.table.stop()
        for channel in self._channels:
            await channel.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------------------ requests

    def validate(self, loop: lpb.Loop) -> None:
        path = "loop"
        suite = check.suite(self.runs.catalog, loop.suite, path)
        info = suite.to_proto()
        if not info.train_task_count or not info.test_task_count:
            raise FailedPrecondition(f"suite {loop.suite!r} needs tasks on both sides of its split")
        if not loop.base_model:
            raise InvalidArgument(
                f"{path}.base_model", "is required (a trainer base-model name, e.g. gemma-3-270m)"
            )
        if not ADAPTER_NAME.match(loop.adapter_name):
            raise InvalidArgument(
                f"{path}.adapter_name", f"is required and must match {ADAPTER_NAME.pattern}"
            )
        train = check.tasks(suite, common_pb2.TASK_SPLIT_TRAIN, loop.train_task_ids, path, "train_task_ids")
        test = check.tasks(suite, common_pb2.TASK_SPLIT_TEST, loop.test_task_ids, path, "test_task_ids")
        if loop.kind not in (0, S.LOOP_KIND_IMITATION, S.LOOP_KIND_RL, *joint.KINDS):
            raise InvalidArgument(f"{path}.kind", f"unknown loop kind {loop.kind}")
        if loop.kind in joint.KINDS:
            if self.skillopts is None:
                raise FailedPrecondition("this orchestrator runs no skill optimisations: joint loops are off")
            joint.validate(loop, path)
            sample = spb.SkillOptimization()
            sample.CopyFrom(loop.joint.skill_optimization)
            sample.suite, sample.target_model = loop.suite, loop.incumbent_model or loop.base_model
            sample.test_task_ids[:] = [t.id for t in test]
            try:
                self.skillopts.validate(sample)
            except InvalidArgument as err:
                raise InvalidArgument(f"{path}.joint.skill_optimization", str(err)) from None
        elif loop.HasField("joint"):
            raise InvalidArgument(
                f"{path}.joint", "only for loops of kind SKILL_THEN_LORA or LORA_THEN_SKILL"
            )
        if loop.kind == S.LOOP_KIND_RL:
            validate_rl(loop, self.settings.max_rollouts_per_task, path)
            if loop.teacher_model or loop.teacher_kind not in (0, tpb.TEACHER_KIND_MODEL):
                raise InvalidArgument(
                    f"{path}.teacher_model",
                    "an RL loop rolls out its own policy (the base, rl.init_adapter or the warm start): "
                    "leave teacher_kind and teacher_model unset",
                )
            if loop.rl.sft_task_ids and not loop.rl.sft_warm_start:
                raise InvalidArgument(f"{path}.rl.sft_task_ids", "only with rl.sft_warm_start")
            if loop.rl.sft_warm_start:
                warm = train
                if loop.rl.sft_task_ids:
                    warm = check.tasks(
                        suite, common_pb2.TASK_SPLIT_TRAIN, loop.rl.sft_task_ids, path, "rl.sft_task_ids"
                    )
                check.teacher(tpb.TEACHER_KIND_REFERENCE, "", warm, path, "rl.sft_warm_start")
        else:
            if loop.HasField("rl"):
                raise InvalidArgument(f"{path}.rl", "only for loops of kind RL")
            check.teacher(loop.teacher_kind, loop.teacher_model, train, path, "teacher_model")
        check.counts(
            path,
            rollouts_per_task=loop.rollouts_per_task,
            max_rollouts=self.settings.max_rollouts_per_task,
            concurrency=loop.concurrency,
        )
        check.episode(loop.episode, train + test, path)
        validate_gate(loop.gate, f"{path}.gate")
        if not 0 <= loop.eval_rollouts_per_task <= self.settings.max_rollouts_per_task:
            raise InvalidArgument(
                f"{path}.eval_rollouts_per_task",
                f"must be between 0 and {self.settings.max_rollouts_per_task}",
            )
        check.labels(loop.labels, path)
        self._validate_turning(loop, path)

    def _validate_turning(self, loop: lpb.Loop, path: str) -> None:
        """The fields of promotion into an alias, rounds and extra data."""
        if loop.alias:
            try:
                alias_table.validate_name(loop.alias)
            except ValueError as err:
                raise InvalidArgument(f"{path}.alias", str(err)) from None
        if loop.HasField("canary"):
            validate_policy(loop.canary, f"{path}.canary")
        if not 0 <= loop.rounds <= MAX_ROUNDS:
            raise InvalidArgument(f"{path}.rounds", f"must be between 0 and {MAX_ROUNDS} (0 means 1)")
        if loop.rounds > 1 and loop.kind == S.LOOP_KIND_RL:
            raise InvalidArgument(
                f"{path}.rounds", "RL loops improve over rl.iterations; rounds are for imitation loops"
            )
        if not 0 <= loop.train_gpus <= MAX_TRAIN_GPUS:
            raise InvalidArgument(
                f"{path}.train_gpus", f"must be between 0 (one) and {MAX_TRAIN_GPUS}, got {loop.train_gpus}"
            )
        if loop.stop_after_rejections < 0:
            raise InvalidArgument(f"{path}.stop_after_rejections", "must be >= 0 (0 means never stop early)")
        if loop.round_start not in (0, S.ROUND_START_CONTINUE, S.ROUND_START_FROM_BASE):
            raise InvalidArgument(f"{path}.round_start", f"unknown value {loop.round_start}")
        if loop.init_adapter:
            if loop.kind == S.LOOP_KIND_RL:
                raise InvalidArgument(f"{path}.init_adapter", "RL loops take rl.init_adapter")
            if not INIT_ADAPTER.match(loop.init_adapter):
                raise InvalidArgument(
                    f"{path}.init_adapter", "must be <adapter name>/v<version>, e.g. coder/v3"
                )
        for i, run_id in enumerate(loop.extra_run_ids):
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id):
                raise InvalidArgument(f"{path}.extra_run_ids[{i}]", f"{run_id[:40]!r} is not a run id")
        for i, captured in enumerate(loop.captured_traffic):
            try:
                alias_table.validate_name(captured.alias)
            except ValueError as err:
                raise InvalidArgument(f"{path}.captured_traffic[{i}].alias", str(err)) from None

    async def create(self, loop: lpb.Loop, request_id: str = "") -> lpb.Loop:
        self.validate(loop)
        clean = lpb.Loop()
        clean.CopyFrom(loop)
        for name in OUTPUT_ONLY:
            clean.ClearField(name)
        if clean.alias:  # found now, not when the loop has trained and wants to promote
            try:
                await self.aliases.check_free(clean.alias)
            except InvalidArgument as err:
                raise InvalidArgument("loop.alias", str(err).removeprefix("name: ")) from None
        if clean.episode.HasField("skill"):  # inline text stored now; the loop's runs name it by id
            clean.episode.skill.skill_id = await self.runs.resolve_skill(
                clean.episode.skill, "loop.episode.skill"
            )
        if clean.kind in joint.KINDS:  # the starting skill S0, stored now and named by id
            start = clean.joint.skill_optimization.initial_skill
            start.skill_id = await self.runs.resolve_skill(
                start, "loop.joint.skill_optimization.initial_skill"
            )
        return await self._create(clean, request_id)

    async def _create(self, clean: lpb.Loop, request_id: str) -> lpb.Loop:
        if not clean.teacher_kind:
            clean.teacher_kind = tpb.TEACHER_KIND_MODEL
        clean.alias = clean.alias or default_alias(clean.adapter_name)
        if not clean.incumbent_model:
            # The alias's target is what callers get today: that is what a candidate must beat.
            served = await self.aliases.current(clean.alias)
            if served is not None and served.change != apb.ALIAS_CHANGE_DELETED and served.target.model:
                clean.incumbent_model = served.target.model
            else:
                clean.incumbent_model = clean.base_model
        job, created = await self.table.create(clean, request_id)
        if created:
            self._spawn(self.advance(job.id))
        return self.table.snapshot(job)

    def get(self, loop_id: str) -> lpb.Loop:
        return self.table.get(loop_id)

    def page(self, request: opb.ListLoopsRequest) -> tuple[list[lpb.Loop], str]:
        """One page of loops (of one state if the request names it), newest first."""
        state = request.state
        return self.table.page(lambda r: not state or r.state == state, request.page_size, request.page_token)

    async def cancel(self, loop_id: str) -> lpb.Loop:
        return await self.table.cancel(loop_id)

    async def _cancel(self, job: LoopJob) -> None:
        async with job.lock:
            if job.terminal:
                return
            cur = current(job.resource)
            if cur is not None:
                await self._cancel_artefacts(cur)
            await self._end(job, CANCELLED, "cancelled by request", grpc.StatusCode.CANCELLED)

    async def watch(self, loop_id: str) -> AsyncIterator[opb.WatchLoopResponse]:
        async for snap in self.table.watch(loop_id):
            yield opb.WatchLoopResponse(loop=snap)

    # ------------------------------------------------------------------------------ events

    async def _on_event(self, event: Event) -> None:
        cls: type[Message] | None = EVENT_TYPES.get(event.subject)
        if cls is None:
            if not event.subject.startswith("flywheel.finetune."):
                return
            cls = events_pb2.FineTuneStateChanged
        message: Message = event.parse(cls)
        loop_id = getattr(message, "loop_id", "")
        if not loop_id or loop_id not in self.loops:
            return
        await self.advance(loop_id, message)

    # ------------------------------------------------------------------------------ the stages

    async def advance(self, loop_id: str, event: object | None = None) -> None:
        """Look at the loop's current stage and move on as far as its artefacts allow.

        The one path of every transition and every retry. A dependency that is down (gRPC
        UNAVAILABLE, a deadline) keeps the loop where it is and retries after ``loop_retry_s``;
        NOT_FOUND of an artefact, a stage's own failure, or its timeout ends the loop FAILED.
        """
        job = self.loops[loop_id]
        async with job.lock:
            if job.terminal or self._stopping:
                return
            if job.resource.rounds > 1:
                handlers = self.round_handlers
            elif job.resource.kind == S.LOOP_KIND_RL:
                handlers = self.rl.handlers
            elif job.resource.kind in joint.KINDS:
                handlers = self.joint.handlers
            else:
                handlers = self.handlers
            try:
                for _ in range(2 * len(handlers)):  # a few passes at most (RL: into the next iteration)
                    cur = current(job.resource)
                    handler = handlers[cur.stage if cur is not None else S.LOOP_STAGE_UNSPECIFIED]
                    if not await handler(job, cur, event):
                        self._check_timeout(job)
                        break
                    event = None
            except JobFailed as err:
                await self._end(job, FAILED, str(err), err.code)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    await self._end(
                        job,
                        FAILED,
                        f"{stage_name(job.resource.stage)}: {err.details()}",
                        grpc.StatusCode.NOT_FOUND,
                    )
                    return
                log.warning("loop %s waits: %s %s", loop_id, err.code().name, err.details())
                self.retry_later(job, self.settings.loop_retry_s)
            except Exception as err:
                log.exception("loop %s failed", loop_id)
                await self._end(job, FAILED, f"internal error: {err}", grpc.StatusCode.INTERNAL)

    def _check_timeout(self, job: LoopJob) -> None:
        cur = current(job.resource)
        limit = self.timeouts.get(cur.stage, 0.0) if cur is not None else 0.0
        if cur is None or not limit:
            return
        if time.time() - cur.start_time.ToNanoseconds() / 1e9 > limit:
            hint = " (is adapter sync running?)" if cur.stage == S.LOOP_STAGE_HOT_LOAD else ""
            raise JobFailed(
                f"{stage_name(cur.stage)}: not finished within {limit:.0f} s{hint}",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )

    def retry_later(self, job: LoopJob, delay: float) -> None:
        """Advance the loop again after ``delay`` seconds (one pending retry per loop)."""
        if job.retry is not None and not job.retry.done():
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            job.retry = None
            await self.advance(job.id)

        job.retry = asyncio.create_task(later())

    async def _begin(
        self, job: LoopJob, stage: lpb.LoopStage, artefacts: list[common_pb2.ResourceRef]
    ) -> None:
        loop = job.resource
        prev = current(loop)
        if prev is not None and prev.state not in TERMINAL:
            prev.state = SUCCEEDED
            prev.end_time.CopyFrom(now())
        status = lpb.LoopStageStatus(stage=stage, state=RUNNING, artefacts=artefacts, start_time=now())
        loop.stages.append(status)
        loop.stage = stage
        announced = [stage_event(loop, status)]  # kept before the record: see JobTable.save
        if loop.state != RUNNING:
            await self.table.set_running(job, events=announced)
        else:
            await self.table.save(job, events=announced)

    async def _end(
        self,
        job: LoopJob,
        state: common_pb2.JobState,
        message: str = "",
        code: grpc.StatusCode | None = None,
    ) -> None:
        cur = current(job.resource)
        if cur is not None and cur.state not in TERMINAL:
            cur.state = state
            cur.end_time.CopyFrom(now())
            if message and code is not None:
                cur.error.CopyFrom(common_pb2.Error(code=code.value[0], message=message))
        await self.table.finish(job, state, message, code)
        parent = job.resource.parent_loop_id
        if parent and parent in self.loops and not self._stopping:
            self._spawn(self.advance(parent))

    @staticmethod
    def _ref(kind: common_pb2.ResourceKind, ref_id: str) -> list[common_pb2.ResourceRef]:
        return [common_pb2.ResourceRef(kind=kind, id=ref_id)]

    async def _start_rollouts(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        loop = job.resource
        run = await self.runs.create(self._rollout_run(loop), f"{loop.id}-rollouts", loop_id=loop.id)
        refs = self._ref(common_pb2.RESOURCE_KIND_RUN, run.id)
        if loop.incumbent_rollouts and loop.incumbent_model != loop.base_model:
            own = self._rollout_run(loop)
            own.teacher_kind, own.model = tpb.TEACHER_KIND_MODEL, loop.incumbent_model
            own_run = await self.runs.create(own, f"{loop.id}-incumbent-rollouts", loop_id=loop.id)
            refs += self._ref(common_pb2.RESOURCE_KIND_RUN, own_run.id)
        await self._begin(job, S.LOOP_STAGE_ROLLOUTS, refs)
        return False

    async def _after_rollouts(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        assert cur is not None
        loop = job.resource
        run_ids = [a.id for a in cur.artefacts if a.kind == common_pb2.RESOURCE_KIND_RUN]
        for run_id in run_ids:
            run = self.runs.get(run_id)
            if run.state not in TERMINAL:
                return False
            if run.state != SUCCEEDED:
                raise JobFailed(
                    f"rollouts: run {run_id} ended {common_pb2.JobState.Name(run.state)}: {run.error.message}"
                )
        build = await self._dataset_build(loop, run_ids)
        await self._begin(
            job, S.LOOP_STAGE_DATASET, self._ref(common_pb2.RESOURCE_KIND_DATASET_BUILD, build.id)
        )
        return True

    async def _after_dataset(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        assert cur is not None
        loop = job.resource
        build_id = artefact(cur, common_pb2.RESOURCE_KIND_DATASET_BUILD)
        build = (
            await self.datasets.GetDatasetBuild(dpb.GetDatasetBuildRequest(build_id=build_id), timeout=30)
        ).build
        if build.state not in TERMINAL:
            return False
        if build.state != SUCCEEDED:
            raise JobFailed(
                f"dataset: build {build_id} ended {common_pb2.JobState.Name(build.state)}: {build.error.message}"
            )
        cur.artefacts.append(
            common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_DATASET, id=build.dataset_id)
        )
        ft = await self._fine_tune(loop, build.dataset_id)
        await self._begin(
            job, S.LOOP_STAGE_FINE_TUNE, self._ref(common_pb2.RESOURCE_KIND_FINE_TUNE_JOB, ft.id)
        )
        return True

    async def _after_fine_tune(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        assert cur is not None
        loop = job.resource
        job_id = artefact(cur, common_pb2.RESOURCE_KIND_FINE_TUNE_JOB)
        ft = (await self.trainer.GetFineTuneJob(trpb.GetFineTuneJobRequest(job_id=job_id), timeout=30)).job
        if ft.state not in TERMINAL:
            return False
        if ft.state != SUCCEEDED or not ft.adapter.name:
            raise JobFailed(
                f"fine-tune: job {job_id} ended {common_pb2.JobState.Name(ft.state)}: {ft.error.message}"
            )
        adapter = f"{ft.adapter.name}/{ft.adapter.version}"
        cur.artefacts.append(common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_ADAPTER, id=adapter))
        loop.candidate_model = f"{self.settings.adapter_route_prefix}{ft.adapter.name}-v{ft.adapter.version}"
        await self._begin(job, S.LOOP_STAGE_HOT_LOAD, self._ref(common_pb2.RESOURCE_KIND_ADAPTER, adapter))
        return True

    async def _after_hot_load(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        """Adapter sync normally answers with adapter.loaded; without it (not running, a lost
        event) the gateway's model list is polled every ``loop_hot_load_poll_s``."""
        assert cur is not None
        loop = job.resource
        if not await self._loaded(job, cur, event):
            return False
        evaluation = await self.evaluations.create(
            self._evaluation(loop), f"{loop.id}-evaluation", loop_id=loop.id
        )
        await self._begin(
            job, S.LOOP_STAGE_EVALUATION, self._ref(common_pb2.RESOURCE_KIND_EVALUATION, evaluation.id)
        )
        return True

    async def _loaded(self, job: LoopJob, cur: lpb.LoopStageStatus, event: object | None) -> bool:
        """Whether the hot-load stage's adapter is served; polls again later when not yet."""
        loop = job.resource
        name, _, version = artefact(cur, common_pb2.RESOURCE_KIND_ADAPTER).partition("/")
        if (
            isinstance(event, events_pb2.AdapterLoadFailed)
            and event.name == name
            and str(event.version) == version
        ):
            raise JobFailed(
                f"hot-load: adapter {name}/{version} failed to load on {event.replica}: {event.error.message}"
            )
        # Adapter sync announces each replica; the stage ends when one says every replica is ready.
        loaded = (
            isinstance(event, events_pb2.AdapterLoaded)
            and event.name == name
            and str(event.version) == version
            and event.ready_replicas >= event.total_replicas
        )
        if loaded and isinstance(event, events_pb2.AdapterLoaded) and event.served_model_name:
            loop.candidate_model = event.served_model_name
        if not loaded:
            loaded = bool(await self.models.describe(loop.candidate_model))
        if not loaded:
            self.retry_later(job, self.settings.loop_hot_load_poll_s)
            return False
        return True

    async def _after_evaluation(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        assert cur is not None
        eval_id = artefact(cur, common_pb2.RESOURCE_KIND_EVALUATION)
        e = self.evaluations.get(eval_id)
        if e.state not in TERMINAL:
            return False
        if e.state != SUCCEEDED:
            raise JobFailed(
                f"evaluation: {eval_id} ended {common_pb2.JobState.Name(e.state)}: {e.error.message}"
            )
        await self._begin(job, S.LOOP_STAGE_GATE, self._ref(common_pb2.RESOURCE_KIND_EVALUATION, eval_id))
        return True

    async def _gate(self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None) -> bool:
        """Decide, write the report, end the loop SUCCEEDED; its events follow through the outbox."""
        assert cur is not None
        loop = job.resource
        eval_id = artefact(cur, common_pb2.RESOURCE_KIND_EVALUATION)
        e = self.evaluations.get(eval_id)
        by_model = {m.model: m for m in e.model_metrics}
        loop.gate_result.CopyFrom(
            decide(loop.gate, by_model[loop.incumbent_model], by_model[loop.candidate_model], eval_id)
        )
        if loop.gate_result.decision == S.GATE_DECISION_PROMOTE and not self._joint_child(loop):
            await self._begin(
                job,
                S.LOOP_STAGE_PROMOTION,
                [common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_EVALUATION, id=eval_id)],
            )
            return True
        await self._write_report(loop, e)
        await self._end(job, SUCCEEDED)
        return False

    def _joint_child(self, loop: lpb.Loop) -> bool:
        """A LoRA round of a joint loop: its parent decides what is promoted, after comparing."""
        parent = self.loops.get(loop.parent_loop_id) if loop.parent_loop_id else None
        return parent is not None and parent.resource.kind in joint.KINDS

    async def _promotion(self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None) -> bool:
        """Move the loop's alias to the promoted candidate: at once, or through a canary whose
        decision (by the canary controller, ``aliases.py``) this stage waits for. The candidate is
        loaded and its digest verified on every replica by then (the HOT_LOAD stage)."""
        assert cur is not None
        loop = job.resource
        promo = loop.promotion
        name = loop.alias or default_alias(loop.adapter_name)
        try:
            if not promo.revision:
                started = await self._move_alias(loop, name)
                promo.alias, promo.revision = name, started.revision
                if started.change != apb.ALIAS_CHANGE_CANARY_STARTED:
                    promo.final_revision = started.revision
                    promo.outcome = S.PROMOTION_OUTCOME_PROMOTED
                    promo.reason = (
                        f"alias {name} moved to {loop.candidate_model} (revision {started.revision})"
                    )
                await self.table.save(job)
            if not promo.outcome:
                history = await self.aliases.history(name)
        except Unavailable as err:
            log.warning("loop %s: promotion waits: %s", loop.id, err)
            self.retry_later(job, self.settings.loop_retry_s)
            return False
        except FlywheelError as err:
            raise JobFailed(f"promotion: alias {name}: {err}", err.code) from None
        if not promo.outcome:
            end = next(
                (r for r in reversed(history) if r.revision > promo.revision and r.change in ENDS_CANARY),
                None,
            )
            if end is None:
                self.retry_later(job, self.settings.loop_promotion_poll_s)
                return False
            promo.final_revision = end.revision
            promoted = end.change != apb.ALIAS_CHANGE_DELETED and end.target.model == loop.candidate_model
            promo.outcome = S.PROMOTION_OUTCOME_PROMOTED if promoted else S.PROMOTION_OUTCOME_ROLLED_BACK
            what = apb.AliasChange.Name(end.change).removeprefix("ALIAS_CHANGE_").lower().replace("_", " ")
            promo.reason = f"{what} by {end.actor or 'api'} (revision {end.revision}): {end.reason}"
            del promo.canary_stats[:]
            promo.canary_stats.extend(end.canary_stats)
        e = self.evaluations.get(artefact(cur, common_pb2.RESOURCE_KIND_EVALUATION))
        await self._write_report(loop, e)
        await self._end(job, SUCCEEDED)
        return False

    async def _move_alias(self, loop: lpb.Loop, name: str) -> apb.AliasRevision:
        """The revision that moves ``name`` to the candidate (or starts its canary); the one this
        loop already wrote when a restart repeats the stage."""
        candidate = loop.candidate_model
        history = await self.aliases.history(name)
        for rev in history:
            if rev.loop_id == loop.id and (
                (rev.change == apb.ALIAS_CHANGE_SET and rev.target.model == candidate)
                or (rev.change == apb.ALIAS_CHANGE_CANARY_STARTED and rev.canary.candidate.model == candidate)
            ):
                return rev
        actor, gate = f"loop/{loop.id}", loop.gate_result
        await self._check_served_digest(loop)
        served = history[0] if history and history[0].change != apb.ALIAS_CHANGE_DELETED else None
        if loop.HasField("canary") and served is None:
            # A canary compares against what the alias serves: serve the incumbent first.
            await self.aliases.set(
                apb.SetAliasRequest(
                    name=name,
                    target=apb.AliasTarget(model=loop.incumbent_model),
                    actor=actor,
                    reason="the loop's incumbent, served before the candidate's canary",
                ),
                loop_id=loop.id,
            )
        request = apb.SetAliasRequest(
            name=name,
            target=apb.AliasTarget(model=candidate),
            actor=actor,
            reason=f"gate: {gate.reason}",
            evaluation_id=gate.evaluation_id,
        )
        if loop.HasField("canary"):
            request.canary.CopyFrom(loop.canary)
        alias = await self.aliases.set(request, loop_id=loop.id)
        return alias.current

    async def _check_served_digest(self, loop: lpb.Loop) -> None:
        """The gateway must serve the candidate's published weights: its listed digest (the model
        server's, of the files it loaded) equals the trainer's. vLLM lists none; adapter sync
        verified those replicas by log-prob fingerprint before announcing them (HOT_LOAD)."""
        target = await self.aliases.resolve_target(loop.candidate_model, "candidate_model")
        listed = target.adapter.digest
        if not listed or not target.adapter.name:
            return
        published = (
            await self.trainer.GetAdapter(
                trpb.GetAdapterRequest(name=target.adapter.name, version=target.adapter.version), timeout=30
            )
        ).adapter.content_digest
        if published and published != listed:
            raise JobFailed(
                f"promotion: the gateway serves {loop.candidate_model} with digest {listed}, but the "
                f"published adapter's digest is {published}; the alias was not moved",
                grpc.StatusCode.FAILED_PRECONDITION,
            )

    # ------------------------------------------------------------------------------ rounds

    async def _start_rounds(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        await self._start_round(job, 1)
        return False

    async def _start_round(self, job: LoopJob, index: int) -> None:
        parent = job.resource
        child = self._round_loop(parent, index)
        if index > 1:
            # What the alias serves after the earlier rounds is the incumbent; continued training
            # starts from it when it is an adapter.
            served = await self.aliases.current(parent.alias)
            if served is not None and served.change != apb.ALIAS_CHANGE_DELETED and served.target.model:
                child.incumbent_model = served.target.model
            else:
                child.incumbent_model = parent.incumbent_model
            adapter = served.target.adapter if served is not None else None
            if parent.round_start != S.ROUND_START_FROM_BASE and adapter is not None and adapter.name:
                child.init_adapter = f"{adapter.name}/v{adapter.version}"
        child = await self._create(child, f"{parent.id}-round-{index}")
        await self._begin(job, S.LOOP_STAGE_ROUND, self._ref(common_pb2.RESOURCE_KIND_LOOP, child.id))

    def _round_loop(self, parent: lpb.Loop, index: int) -> lpb.Loop:
        """Round ``index``'s loop: the parent's settings; from round 2 on, the alias's target is
        the incumbent (``_create`` reads it), continued training starts from it, and the earlier
        rounds' rollouts join the data."""
        child = lpb.Loop()
        child.CopyFrom(parent)
        for name in (*OUTPUT_ONLY, "rounds", "stop_after_rejections", "round_start", "incumbent_rollouts"):
            child.ClearField(name)
        child.parent_loop_id, child.round = parent.id, index
        child.labels["parent_loop_id"] = parent.id
        child.labels["round"] = str(index)
        if index == 1:
            return child
        child.incumbent_rollouts = parent.incumbent_rollouts
        child.init_adapter = ""
        earlier = [self.table.get(r.loop_id) for r in parent.round_results if r.loop_id in self.loops]
        for prev in earlier:
            for status in prev.stages:
                if status.stage == S.LOOP_STAGE_ROLLOUTS:
                    child.extra_run_ids.extend(
                        a.id for a in status.artefacts if a.kind == common_pb2.RESOURCE_KIND_RUN
                    )
        return child

    async def _after_round(self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None) -> bool:
        assert cur is not None
        parent = job.resource
        child_id = artefact(cur, common_pb2.RESOURCE_KIND_LOOP)
        child = self.table.get(child_id)
        if child.state not in TERMINAL:
            return False
        if child.state != SUCCEEDED:
            raise JobFailed(
                f"round {child.round}: loop {child_id} ended {common_pb2.JobState.Name(child.state)}: "
                f"{child.error.message}"
            )
        if not any(r.index == child.round for r in parent.round_results):
            parent.round_results.append(self._round_result(child))
            await self.table.save(job)
        rejected = 0
        for r in reversed(parent.round_results):
            if r.promotion.outcome == S.PROMOTION_OUTCOME_PROMOTED:
                break
            rejected += 1
        rounds = parent.rounds
        done = child.round >= rounds or (
            parent.stop_after_rejections and rejected >= parent.stop_after_rejections
        )
        if not done:
            await self._start_round(job, child.round + 1)
            return False
        served = await self.aliases.current(parent.alias)
        if served is not None and served.target.model:
            parent.candidate_model = served.target.model
        await self._write_rounds_report(parent)
        await self._end(job, SUCCEEDED)
        return False

    def _round_result(self, child: lpb.Loop) -> lpb.LoopRound:
        result = lpb.LoopRound(
            index=child.round,
            loop_id=child.id,
            state=child.state,
            incumbent_model=child.incumbent_model,
            init_adapter=child.init_adapter,
            candidate_model=child.candidate_model,
            gate_result=child.gate_result,
            promotion=child.promotion,
            report=child.report,
        )
        for status in child.stages:
            if status.stage == S.LOOP_STAGE_ROLLOUTS:
                result.run_ids.extend(
                    a.id for a in status.artefacts if a.kind == common_pb2.RESOURCE_KIND_RUN
                )
            if status.stage == S.LOOP_STAGE_DATASET:
                result.dataset_id = artefact(status, common_pb2.RESOURCE_KIND_DATASET)
        result.run_ids[:0] = list(child.extra_run_ids)
        return result

    async def _write_rounds_report(self, parent: lpb.Loop) -> None:
        history = await self.aliases.history(parent.alias)
        evaluations = {}
        for r in parent.round_results:
            if r.gate_result.evaluation_id:
                with contextlib.suppress(Exception):
                    evaluations[r.index] = self.evaluations.get(r.gate_result.evaluation_id)
        png = await asyncio.to_thread(rounds_plot, parent, evaluations)
        if png:
            await asyncio.to_thread(
                self.store.put,
                f"reports/{parent.id}/rounds.png",
                png,
                content_type="image/png",
                overwrite=True,
            )
        text = rounds_markdown(parent, evaluations, history, with_plot=bool(png))
        parent.report.key = f"reports/{parent.id}/loop.md"
        await asyncio.to_thread(
            self.store.put, parent.report.key, text.encode(), content_type="text/markdown", overwrite=True
        )

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
            episode=loop.episode,
            concurrency=loop.concurrency,
            labels=dict(loop.labels),
        )

    async def _dataset_build(self, loop: lpb.Loop, run_ids: list[str]) -> dpb.DatasetBuild:
        """The stage's runs, earlier rounds' runs (``extra_run_ids``) and captured traffic."""
        method = loop.method or trpb.FINE_TUNE_METHOD_SFT
        recipe = loop.recipe or ("dpo_steps" if method == trpb.FINE_TUNE_METHOD_DPO else "step_sft")
        every_run = list(dict.fromkeys([*loop.extra_run_ids, *run_ids]))
        build = dpb.DatasetBuild(
            source=dpb.DatasetSource(run_ids=every_run, captured_traffic=loop.captured_traffic),
            recipe=recipe,
            parameters=dict(loop.recipe_parameters),
            split=loop.dataset_split,
            target_base_model=loop.base_model,
            loop_id=loop.id,
            labels=self._labels(loop),
        )
        reply: dpb.CreateDatasetBuildResponse = await self.datasets.CreateDatasetBuild(
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
            init_adapter=loop.init_adapter,
            gpus=loop.train_gpus,
        )
        return await self.create_fine_tune(job, f"{loop.id}-fine-tune", "fine-tune")

    async def create_fine_tune(self, job: trpb.FineTuneJob, request_id: str, what: str) -> trpb.FineTuneJob:
        """Create a stage's fine-tune job; a refusal (bad request, precondition, unknown input) ends
        the loop FAILED naming ``what``, anything else (the trainer down) is retried later."""
        try:
            reply: trpb.CreateFineTuneJobResponse = await self.trainer.CreateFineTuneJob(
                trpb.CreateFineTuneJobRequest(job=job, request_id=request_id), timeout=60
            )
        except grpc.aio.AioRpcError as err:
            if err.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND,
            ):
                raise JobFailed(f"{what}: the trainer refused the job: {err.details()}", err.code()) from None
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
            episode=loop.episode,
            concurrency=loop.concurrency,
            labels=self._labels(loop),
        )

    async def _write_report(self, loop: lpb.Loop, e: epb.Evaluation) -> None:
        key = f"reports/{loop.id}/loop.md"
        loop.report.key = key
        text = loop_markdown(loop, e)
        if loop.promotion.alias:
            text += "\n" + promotion_markdown(loop, await self.aliases.history(loop.promotion.alias))
        elif loop.alias:
            history = await self.aliases.history(loop.alias)
            if history:  # kept: what the alias serves and how it got there
                text += "\n## Served alias (unchanged)\n\n" + alias_history_markdown(loop.alias, history)
        if loop.kind == S.LOOP_KIND_RL:
            png = await asyncio.to_thread(rl_plot, loop)
            if png:
                await asyncio.to_thread(
                    self.store.put, f"reports/{loop.id}/rl.png", png, content_type="image/png", overwrite=True
                )
            text += "\n" + rl_markdown(loop, with_plot=bool(png))
        await asyncio.to_thread(
            self.store.put, key, text.encode(), content_type="text/markdown", overwrite=True
        )

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
                elif ref.kind == common_pb2.RESOURCE_KIND_LOOP:
                    await self.cancel(ref.id)
                elif ref.kind == common_pb2.RESOURCE_KIND_SKILL_OPTIMIZATION:
                    await self.joint.cancel_child(ref)
