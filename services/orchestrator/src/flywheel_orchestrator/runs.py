"""Rollout runs: episodes of one policy over a suite's tasks, stored as they finish.

A run is persisted as ``orchestrator/runs/<id>.json`` on every state change and after every
episode. Trajectory ids are derived from (run, task, attempt), so a restarted service resumes a
RUNNING run by asking the trajectory store which episodes already exist and running only the
others: nothing stored is lost or done twice, and the counters are rebuilt from what the store
holds. ``flywheel.run.completed`` has an id derived from the run id; ``orchestrator/runs/
published/<id>`` records that it went out, and a terminal run without it is announced again
at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from ulid import ULID

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common.errors import FailedPrecondition, InvalidArgument, NotFound
from flywheel_common.events import EventBus
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator import protocol as proto
from flywheel_orchestrator.agent import Episode, EpisodeSpec, EpisodeTimes, Limits, episode_result
from flywheel_orchestrator.metrics import add_to_counters
from flywheel_orchestrator.model import ModelClient
from flywheel_orchestrator.records import Records, fingerprint
from flywheel_orchestrator.reference import REFERENCE_LABEL, ReferencePolicy
from flywheel_orchestrator.sandbox import SandboxClient
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.suites import Suite, SuiteCatalog, SuiteError, Task

log = logging.getLogger("flywheel.orchestrator.runs")

PREFIX = "orchestrator/runs/"
PRODUCER = "orchestrator"
TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
LABEL_KEY = re.compile(r"^[a-z0-9_.-]{1,63}$")
ADAPTER_ROUTE = re.compile(r"^(?:ft/)?(?P<name>[a-z0-9][a-z0-9._-]*)-v(?P<version>[0-9]+)$")
INFRA = (tpb.FAILURE_CATEGORY_MODEL_ERROR, tpb.FAILURE_CATEGORY_SANDBOX_ERROR)


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def trajectory_id(run_id: str, task_id: str, attempt: int) -> str:
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:10]
    return f"traj-{run_id.removeprefix('run-')}-{digest}-{attempt}"


def result_from_basic(traj: tpb.Trajectory) -> run_pb2.EpisodeResult:
    """An EpisodeResult from a stored trajectory's BASIC view (stats and outcome, no steps)."""
    s = traj.stats
    return run_pb2.EpisodeResult(
        model=traj.policy.model,
        task_id=traj.task.task_id,
        attempt=traj.attempt,
        trajectory_id=traj.id,
        resolved=traj.outcome.resolved,
        failure_category=traj.outcome.failure_category,
        steps=s.assistant_turns,
        parse_errors=s.parse_errors,
        loop_detections=s.loop_detections,
        wrote_file=s.wrote_file,
        usage=s.usage,
        wall_time=s.wall_time,
    )


@dataclass
class RunState:
    run: run_pb2.Run
    results: list[run_pb2.EpisodeResult] = field(default_factory=list)
    watchers: list[asyncio.Queue] = field(default_factory=list)
    task: asyncio.Task | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_requested: bool = False
    times: list[EpisodeTimes] = field(default_factory=list)
    policy: tpb.Policy | None = None  #: lineage of the policy, once asked of the gateway

    def notify(self, item: opb.WatchRunResponse) -> None:
        for q in self.watchers:
            q.put_nowait(item)


class RunManager:
    def __init__(
        self,
        settings: OrchestratorSettings,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        catalog: SuiteCatalog,
        models: ModelClient,
        sandbox: SandboxClient,
    ) -> None:
        self.settings = settings
        self._store = store
        self._bus = bus
        self.catalog = catalog
        self.models = models
        self.sandbox = sandbox
        # gRPC aio channels belong to the event loop they are made in: made in start().
        self._channel: grpc.aio.Channel | None = None
        self.trajectories: trajectory_pb2_grpc.TrajectoryServiceStub | None = None  # type: ignore[assignment]
        self.records = Records(store, PREFIX, run_pb2.Run, "run", "run_id")
        self.runs: dict[str, RunState] = {}
        self._lock = asyncio.Lock()
        self._stopping = False
        #: Called with (run, episode result) after every stored episode (evaluations listen).
        self.listeners: list[Callable[[run_pb2.Run, run_pb2.EpisodeResult], None]] = []

    @property
    def store(self) -> ObjectStore:
        return self._store()

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.settings.trajectory_address)
        self.trajectories = trajectory_pb2_grpc.TrajectoryServiceStub(self._channel)
        pending, unannounced = await asyncio.to_thread(self._load)
        for run in unannounced:
            await self._publish(run)
        for run in pending:
            log.info("resuming run %s (was %s)", run.id, common_pb2.JobState.Name(run.state))
            self._launch(self.runs[run.id])

    async def stop(self) -> None:
        """Stop where we are: running runs stay RUNNING and resume at the next start."""
        self._stopping = True
        tasks = [s.task for s in self.runs.values() if s.task is not None and not s.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._channel is not None:
            await self._channel.close()

    def _load(self) -> tuple[list[run_pb2.Run], list[run_pb2.Run]]:
        published = self.records.published()
        pending, unannounced = [], []
        for run in self.records.load():
            state = RunState(run)
            self.runs[run.id] = state
            if run.state in TERMINAL:
                state.done.set()
                if run.id not in published:
                    unannounced.append(run)
            else:
                pending.append(run)
        pending.sort(key=lambda r: r.create_time.ToNanoseconds())
        return pending, unannounced

    def _persist(self, run: run_pb2.Run) -> None:
        self.records.save(run)

    # ------------------------------------------------------------------------------ requests

    def validate(self, run: run_pb2.Run) -> tuple[Suite, list[Task]]:
        """Check a run request; raise the gRPC error that names what is wrong."""
        s = self.settings
        if not run.suite:
            raise InvalidArgument("run.suite", "is required")
        suite = self.catalog.get(run.suite)
        if suite is None:
            known = ", ".join(sorted(self.catalog.suites)) or "none"
            raise NotFound(f"suite {run.suite!r} does not exist (known: {known})")
        if run.split not in (common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST):
            raise InvalidArgument("run.split", "must be TASK_SPLIT_TRAIN or TASK_SPLIT_TEST")
        try:
            tasks = suite.select(run.split, run.task_ids)
        except KeyError as err:
            raise NotFound(f"run.task_ids: suite {suite.name!r} has no task {err.args[0]!r}") from None
        except SuiteError as err:
            raise InvalidArgument("run.task_ids", str(err)) from None
        if not tasks:
            raise FailedPrecondition(
                f"suite {suite.name!r} has no task on the {common_pb2.TaskSplit.Name(run.split)} side"
            )
        kind = run.teacher_kind or tpb.TEACHER_KIND_MODEL
        if kind == tpb.TEACHER_KIND_MODEL:
            if not run.model:
                raise InvalidArgument(
                    "run.model", "is required for a MODEL teacher (a model name the gateway serves)"
                )
        elif kind == tpb.TEACHER_KIND_REFERENCE:
            if run.model:
                raise InvalidArgument("run.model", "must be empty for the REFERENCE teacher")
            missing = [t.id for t in tasks if not t.has_reference]
            if missing:
                raise FailedPrecondition(
                    f"the REFERENCE teacher needs a reference solution; task {missing[0]!r} has none"
                    + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                )
        else:
            raise InvalidArgument("run.teacher_kind", "must be TEACHER_KIND_MODEL or TEACHER_KIND_REFERENCE")
        if not 0 <= run.rollouts_per_task <= s.max_rollouts_per_task:
            raise InvalidArgument("run.rollouts_per_task", f"must be between 0 and {s.max_rollouts_per_task}")
        for task in tasks:
            problem = proto.check_protocol(task, run.protocol)
            if problem:
                raise InvalidArgument("run.protocol", problem)
        if run.test_policy not in run_pb2.TestPolicy.values():
            raise InvalidArgument("run.test_policy", f"unknown value {run.test_policy}")
        lim = run.limits
        for name in ("max_iterations", "max_tokens", "max_consecutive_parse_errors"):
            if getattr(lim, name) < 0:
                raise InvalidArgument(f"run.limits.{name}", "must be >= 0 (0 means the default)")
        if lim.max_wall_time.ToNanoseconds() < 0:
            raise InvalidArgument("run.limits.max_wall_time", "must be >= 0 (0 means the default)")
        sp = run.sampling
        if sp.HasField("temperature") and not 0 <= sp.temperature <= 2:
            raise InvalidArgument("run.sampling.temperature", "must be between 0 and 2")
        if sp.HasField("top_p") and not 0 < sp.top_p <= 1:
            raise InvalidArgument("run.sampling.top_p", "must be in (0, 1]")
        if sp.HasField("max_tokens") and sp.max_tokens < 1:
            raise InvalidArgument("run.sampling.max_tokens", "must be at least 1")
        if run.concurrency < 0:
            raise InvalidArgument("run.concurrency", "must be >= 0 (0 means the service default)")
        for key, value in run.labels.items():
            if not LABEL_KEY.match(key):
                raise InvalidArgument(f"run.labels[{key!r}]", "keys are 1-63 characters of [a-z0-9_.-]")
            if len(value) > 256:
                raise InvalidArgument(f"run.labels[{key!r}]", "values are at most 256 characters")
        return suite, tasks

    async def create(self, run: run_pb2.Run, request_id: str = "", *, loop_id: str = "") -> run_pb2.Run:
        suite, tasks = self.validate(run)
        clean = run_pb2.Run()
        clean.CopyFrom(run)
        for name in (
            "id",
            "suite_version",
            "loop_id",
            "prompt_sha256",
            "state",
            "error",
            "counters",
            "create_time",
            "start_time",
            "end_time",
        ):
            clean.ClearField(name)
        if not clean.teacher_kind:
            clean.teacher_kind = tpb.TEACHER_KIND_MODEL
        async with self._lock:
            print_ = fingerprint(clean)
            earlier = await self.records.replay(request_id, print_)
            if earlier is not None:
                return self.get(earlier)
            clean.id = f"run-{ULID()}"
            clean.suite_version = suite.version
            clean.loop_id = loop_id
            clean.prompt_sha256 = proto.prompt_sha256(
                tasks[0], proto.effective_protocol(tasks[0], clean.protocol)
            )
            clean.state = common_pb2.JOB_STATE_QUEUED
            clean.create_time.CopyFrom(now())
            rollouts = clean.rollouts_per_task or 1
            clean.counters.tasks = len(tasks)
            clean.counters.episodes_total = len(tasks) * rollouts
            await asyncio.to_thread(self._persist, clean)
            await self.records.remember(request_id, clean.id, print_)
            state = RunState(clean)
            self.runs[clean.id] = state
            self._launch(state)
            return self.snapshot(clean.id)

    def snapshot(self, run_id: str) -> run_pb2.Run:
        out = run_pb2.Run()
        out.CopyFrom(self.runs[run_id].run)
        return out

    def get(self, run_id: str) -> run_pb2.Run:
        if run_id not in self.runs:
            raise NotFound(f"run {run_id!r} does not exist")
        return self.snapshot(run_id)

    def list(
        self, *, suite: str = "", model: str = "", state: int = 0, loop_id: str = ""
    ) -> list[run_pb2.Run]:
        runs = [
            s.run
            for s in self.runs.values()
            if (not suite or s.run.suite == suite)
            and (not model or s.run.model == model)
            and (not state or s.run.state == state)
            and (not loop_id or s.run.loop_id == loop_id)
        ]
        runs.sort(key=lambda r: r.id, reverse=True)  # ULIDs sort by creation time
        return [self.snapshot(r.id) for r in runs]

    async def cancel(self, run_id: str) -> run_pb2.Run:
        state = self.runs.get(run_id)
        if state is None:
            raise NotFound(f"run {run_id!r} does not exist")
        if state.run.state in TERMINAL:
            return self.snapshot(run_id)
        state.cancel_requested = True
        if state.task is not None and not state.task.done():
            state.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(state.task), timeout=10)
        return self.snapshot(run_id)

    async def watch(self, run_id: str) -> AsyncIterator[opb.WatchRunResponse]:
        state = self.runs.get(run_id)
        if state is None:
            raise NotFound(f"run {run_id!r} does not exist")
        queue: asyncio.Queue = asyncio.Queue()
        state.watchers.append(queue)
        try:
            yield opb.WatchRunResponse(run=self.snapshot(run_id))
            if state.run.state in TERMINAL:
                return
            while True:  # until the terminal snapshot, which _finish queues after the last episode
                item = await queue.get()
                yield item
                if item.WhichOneof("update") == "run" and item.run.state in TERMINAL:
                    return
        finally:
            state.watchers.remove(queue)

    async def results(self, run_id: str) -> list[run_pb2.EpisodeResult]:
        """Every finished episode of a run (rebuilt from the trajectory store after a restart)."""
        state = self.runs[run_id]
        if len(state.results) < state.run.counters.episodes_finished:
            state.results = [result_from_basic(t) for t in await self._stored(run_id)]
        return sorted(state.results, key=lambda r: (r.task_id, r.attempt))

    # ------------------------------------------------------------------------------ running

    def _launch(self, state: RunState) -> None:
        state.task = asyncio.create_task(self._execute(state), name=f"run {state.run.id}")

    async def _stored(self, run_id: str) -> list[tpb.Trajectory]:
        out: list[tpb.Trajectory] = []
        token = ""
        while True:
            reply = await self.trajectories.ListTrajectories(
                tpb.ListTrajectoriesRequest(
                    filter=tpb.TrajectoryFilter(run_ids=[run_id]),
                    view=tpb.TRAJECTORY_VIEW_BASIC,
                    page_size=500,
                    page_token=token,
                ),
                timeout=self.settings.trajectory_timeout_s,
            )
            out.extend(reply.trajectories)
            token = reply.next_page_token
            if not token:
                return out

    def _limits(self, run: run_pb2.Run) -> Limits:
        s, lim = self.settings, run.limits
        wall = lim.max_wall_time.ToNanoseconds() / 1e9
        return Limits(
            max_iterations=lim.max_iterations or s.max_iterations,
            max_tokens=lim.max_tokens or s.max_tokens,
            max_wall_time_s=wall or s.max_wall_time_s,
            max_consecutive_parse_errors=lim.max_consecutive_parse_errors or s.max_consecutive_parse_errors,
            max_loop_detections=s.max_loop_detections,
            model_timeout_s=s.model_timeout_s,
            max_tool_output_chars=s.max_tool_output_chars,
        )

    async def policy_info(self, state: RunState) -> tpb.Policy:
        """The run's policy lineage, asked of the gateway once per run (kept on the state)."""
        if state.policy is not None:
            return state.policy
        state.policy = await self._describe(state.run)
        return state.policy

    async def _describe(self, run: run_pb2.Run) -> tpb.Policy:
        info = tpb.Policy(model=run.model, sampling=run.sampling, prompt_sha256=run.prompt_sha256)
        if run.teacher_kind != tpb.TEACHER_KIND_MODEL:
            return info
        described = await self.models.describe(run.model)
        root = described.get("root") or ""
        parent = described.get("parent") or ""
        match = ADAPTER_ROUTE.match(run.model)
        if parent or (match and run.model.startswith("ft/")):
            info.base_model = parent or root
            if match:
                info.adapter_name = match["name"]
                info.adapter_version = int(match["version"])
        else:
            info.base_model = root or run.model
        return info

    async def _execute(self, state: RunState) -> None:
        run = state.run
        try:
            await self._execute_inner(state)
        except asyncio.CancelledError:
            if self._stopping and not state.cancel_requested:
                raise  # shutdown: stays RUNNING, resumed at the next start
            await self._finish(
                state,
                common_pb2.JOB_STATE_CANCELLED,
                error=("cancelled by request", grpc.StatusCode.CANCELLED),
            )
        except _RunFailed as err:
            await self._finish(state, common_pb2.JOB_STATE_FAILED, error=(str(err), err.code))
        except Exception as err:
            log.exception("run %s failed", run.id)
            await self._finish(
                state, common_pb2.JOB_STATE_FAILED, error=(f"internal error: {err}", grpc.StatusCode.INTERNAL)
            )

    async def _execute_inner(self, state: RunState) -> None:
        run = state.run
        suite = self.catalog.get(run.suite)
        if suite is None:
            raise _RunFailed(f"suite {run.suite!r} is no longer known", grpc.StatusCode.FAILED_PRECONDITION)
        if suite.version != run.suite_version:
            raise _RunFailed(
                f"suite {run.suite!r} changed from version {run.suite_version} to {suite.version} "
                "while the run was interrupted; start a new run",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        tasks = suite.select(run.split, run.task_ids)
        rollouts = run.rollouts_per_task or 1
        # What is already stored (a resumed run): count it, do not run it again.
        try:
            stored = await self._stored(run.id)
        except grpc.aio.AioRpcError as err:
            raise _RunFailed(
                f"trajectory store unreachable: {err.details()}", grpc.StatusCode.UNAVAILABLE
            ) from None
        done_ids = {t.id for t in stored}
        run.counters.CopyFrom(run_pb2.RunCounters(tasks=len(tasks), episodes_total=len(tasks) * rollouts))
        state.results = []
        for t in stored:
            r = result_from_basic(t)
            state.results.append(r)
            add_to_counters(run.counters, r, errored=r.failure_category in INFRA)
        run.state = common_pb2.JOB_STATE_RUNNING
        if not run.HasField("start_time"):
            run.start_time.CopyFrom(now())
        await asyncio.to_thread(self._persist, run)
        state.notify(opb.WatchRunResponse(run=self.snapshot(run.id)))
        policy_info = await self.policy_info(state)
        limits = self._limits(run)
        labels = dict(run.labels)
        if run.loop_id:
            labels["loop_id"] = run.loop_id
        if run.teacher_kind == tpb.TEACHER_KIND_REFERENCE:
            labels[REFERENCE_LABEL[0]] = REFERENCE_LABEL[1]
        concurrency = min(run.concurrency or self.settings.default_concurrency, self.settings.max_concurrency)
        plan = [
            (task, attempt)
            for attempt in range(rollouts)
            for task in tasks
            if trajectory_id(run.id, task.id, attempt) not in done_ids
        ]
        queue: asyncio.Queue = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                try:
                    task, attempt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await self._episode(state, task, attempt, policy_info, limits, labels)

        workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(plan)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            for w in workers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w
        await self._finish(state, common_pb2.JOB_STATE_SUCCEEDED)

    async def _episode(
        self,
        state: RunState,
        task: Task,
        attempt: int,
        policy_info: tpb.Policy,
        limits: Limits,
        labels: dict[str, str],
    ) -> None:
        run = state.run
        protocol = proto.effective_protocol(task, run.protocol)
        spec = EpisodeSpec(
            trajectory_id=trajectory_id(run.id, task.id, attempt),
            run_id=run.id,
            attempt=attempt,
            suite=run.suite,
            suite_version=run.suite_version,
            task=task,
            protocol=protocol,
            test_policy=run.test_policy or run_pb2.TEST_POLICY_END,
            limits=limits,
            sampling=run.sampling,
            teacher_kind=run.teacher_kind,
            policy_info=policy_info,
            labels=labels,
        )
        if run.teacher_kind == tpb.TEACHER_KIND_REFERENCE:
            policy = ReferencePolicy(task, protocol)
            # The reference script has a known length; a budget meant for models (e.g. a loop's
            # short evaluation episodes) must not cut a demonstration short.
            if limits.max_iterations < policy.turns:
                spec.limits = replace(limits, max_iterations=policy.turns)
        else:
            policy = self.models.policy(run.model)
        episode = Episode(spec, policy, self.sandbox)
        traj = await episode.run()
        await self._put(traj)
        result = episode_result(traj)
        state.results.append(result)
        state.times.append(episode.times)
        add_to_counters(run.counters, result, errored=result.failure_category in INFRA)
        await asyncio.to_thread(self._persist, run)
        state.notify(opb.WatchRunResponse(episode=result))
        state.notify(opb.WatchRunResponse(run=self.snapshot(run.id)))
        for listener in self.listeners:
            listener(run, result)

    async def _put(self, traj: tpb.Trajectory) -> None:
        delay = 0.2
        for attempt in range(6):
            try:
                await self.trajectories.PutTrajectory(
                    tpb.PutTrajectoryRequest(trajectory=traj), timeout=self.settings.trajectory_timeout_s
                )
                return
            except grpc.aio.AioRpcError as err:
                if (
                    err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                    and attempt < 5
                ):
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                raise _RunFailed(
                    f"could not store trajectory {traj.id}: {err.code().name}: {err.details()}",
                    grpc.StatusCode.UNAVAILABLE
                    if err.code() == grpc.StatusCode.UNAVAILABLE
                    else grpc.StatusCode.INTERNAL,
                ) from None

    async def _finish(
        self, state: RunState, final: int, *, error: tuple[str, grpc.StatusCode] | None = None
    ) -> None:
        run = state.run
        run.state = final
        run.end_time.CopyFrom(now())
        if error is not None:
            run.error.CopyFrom(common_pb2.Error(code=error[1].value[0], message=error[0]))
        await asyncio.to_thread(self._persist, run)
        state.done.set()
        state.notify(opb.WatchRunResponse(run=self.snapshot(run.id)))
        await self._publish(run)

    async def _publish(self, run: run_pb2.Run) -> None:
        bus = self._bus()
        if bus is None:
            return
        meta = events_pb2.EventMeta(
            event_id=f"run-completed:{run.id}", occurred_at=run.end_time, producer=PRODUCER
        )
        event = events_pb2.RunCompleted(
            meta=meta,
            run_id=run.id,
            suite=run.suite,
            suite_version=run.suite_version,
            split=run.split,
            model=run.model,
            teacher_kind=run.teacher_kind,
            state=run.state,
            error=run.error,
            counters=run.counters,
            loop_id=run.loop_id,
            start_time=run.start_time,
            end_time=run.end_time,
        )
        try:
            await bus.publish("flywheel.run.completed", event, msg_id=meta.event_id)
        except Exception:
            log.exception("could not publish run.completed for %s; retried at the next start", run.id)
            return
        await self.records.mark_published(run.id, meta.event_id)


class _RunFailed(Exception):
    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code
