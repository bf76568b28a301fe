"""Rollout runs: episodes of one policy over a suite's tasks, stored as they finish.

A run lives in the job core (``flywheel_common.jobs``) under ``orchestrator/runs/``: persisted on
every state change and after every episode, created idempotently, watched, cancelled, resumed,
announced once by ``flywheel.run.completed`` (event id ``run-completed:<run id>``). Trajectory
ids are derived from (run, task, attempt), so a restarted service resumes a RUNNING run by
asking the trajectory store which episodes already exist and running only the others: nothing
stored is lost or done twice, and the counters are rebuilt from what the store holds.

Rewards: every episode's ``Outcome.reward_detail`` (rule ``flywheel-reward/v1``, rewards.py) is
summed into the counters ``episodes_rewarded``, ``reward_sum`` and ``reward_sq_sum`` — masked
episodes (infrastructure errors) left out — live and again when a resumed run rebuilds them from
the stored trajectories' outcomes.

Adapter pinning: a MODEL run whose model is an adapter stores the identity the gateway lists when
the run starts (``Run.adapter``, persisted, kept by a resumed run); every episode's policy checks
its turns against it (model.py), so a run never mixes adapter versions.

Skills: ``episode.skill`` names a stored skill or carries inline text, which is stored by its
content hash when the run is created (the run then names it by id, skills.py). Every episode's
system prompt is the protocol's followed by the skill; its trajectory records the exact prompt's
SHA-256 (``Policy.prompt_sha256``) and the skill's (label ``skill_sha256``, and ``skill_id``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import grpc

from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import mle_pb2, run_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.events import EventBus
from flywheel_common.jobs import Announcement, Job, JobFailed, JobTable
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator import protocol as proto
from flywheel_orchestrator import skills as skill_docs
from flywheel_orchestrator import validation as check
from flywheel_orchestrator.agent import Episode, EpisodeSpec, EpisodeTimes, Limits, episode_result
from flywheel_orchestrator.metrics import add_to_counters
from flywheel_orchestrator.mle_runs import mle_prompt_sha256, play_ml_episode
from flywheel_orchestrator.mltasks import MlTask
from flywheel_orchestrator.model import ModelClient, Policy
from flywheel_orchestrator.reference import REFERENCE_LABEL, ReferencePolicy
from flywheel_orchestrator.rewards import INFRA
from flywheel_orchestrator.sandbox import SandboxClient
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_orchestrator.suites import AnyTask, Suite, SuiteCatalog, Task

log = logging.getLogger("flywheel.orchestrator.runs")

PREFIX = "orchestrator/runs/"
PRODUCER = "orchestrator"
ADAPTER_ROUTE = re.compile(r"^(?:ft/)?(?P<name>[a-z0-9][a-z0-9._-]*)-v(?P<version>[0-9]+)$")
#: Fields of a Run the service sets; cleared from a request before it is fingerprinted.
OUTPUT_ONLY = (
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
    "adapter",
    "skill_sha256",
)


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
        reward=traj.outcome.reward,
        reward_masked=traj.outcome.reward_detail.masked,
    )


def count_result(counters: run_pb2.RunCounters, r: run_pb2.EpisodeResult) -> None:
    """Add one finished episode to a run's counters, its reward unless it is masked."""
    add_to_counters(counters, r, errored=r.failure_category in INFRA)
    if not r.reward_masked:
        counters.episodes_rewarded += 1
        counters.reward_sum += r.reward
        counters.reward_sq_sum += r.reward * r.reward


class RunJob(Job[run_pb2.Run]):
    """A run and what the service keeps beside it while it lives."""

    def __init__(self, run: run_pb2.Run) -> None:
        super().__init__(run)
        self.results: list[run_pb2.EpisodeResult] = []
        self.times: list[EpisodeTimes] = []
        self.policy: tpb.Policy | None = None  #: lineage of the policy, once asked of the gateway
        self.skill = ""  #: the skill document's text, read when the run starts ("" for none)


def completed_event(run: run_pb2.Run) -> list[Announcement]:
    """``flywheel.run.completed``, the run's one terminal event."""
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
    return [Announcement("flywheel.run.completed", event, meta.event_id)]


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
        self.catalog = catalog
        self.models = models
        self.sandbox = sandbox
        # gRPC aio channels belong to the event loop they are made in: made in start().
        self._channel: grpc.aio.Channel | None = None
        self._trajectories: trajectory_pb2_grpc.TrajectoryServiceStub | None = None
        self.table: JobTable[run_pb2.Run, RunJob] = JobTable(
            store=store,
            bus=bus,
            prefix=PREFIX,
            message_class=run_pb2.Run,
            kind="run",
            id_prefix="run",
            announce=completed_event,
            make_job=RunJob,
        )
        #: Called with (run, episode result) after every stored episode (evaluations listen).
        self.listeners: list[Callable[[run_pb2.Run, run_pb2.EpisodeResult], None]] = []
        #: Called with (run, node) for every node an ML episode's search adds (mle_runs.py).
        self.node_listeners: list[Callable[[run_pb2.Run, mle_pb2.MlNodeProgress], None]] = []
        #: The skill an alias serves with its model ("" for none; set by the service, aliases.py).
        self.alias_skill: Callable[[str], Awaitable[str]] | None = None

    @property
    def skills(self) -> skill_docs.SkillStore:
        return skill_docs.SkillStore(self._store())

    async def resolve_skill(self, source: run_pb2.SkillSource, path: str) -> str:
        """The id of the skill ``source`` names, stored first when it is inline text; "" for none.

        INVALID_ARGUMENT naming ``path`` for a bad text or an unknown id."""
        which = source.WhichOneof("source")
        if which == "text":
            skill_docs.check_text(source.text, f"{path}.text")
            skill, _ = await asyncio.to_thread(self.skills.put, source.text)
            return skill.id
        if which == "skill_id":
            try:
                skill = await asyncio.to_thread(self.skills.get, source.skill_id)
            except NotFound as err:
                raise InvalidArgument(f"{path}.skill_id", str(err)) from None
            return skill.id
        return ""

    @property
    def trajectories(self) -> trajectory_pb2_grpc.TrajectoryServiceStub:
        if self._trajectories is None:
            raise RuntimeError("the run manager is not started")
        return self._trajectories

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._channel = auth.channel(self.settings.trajectory_address, token=self.settings.auth.token())
        self._trajectories = trajectory_pb2_grpc.TrajectoryServiceStub(self._channel)
        await self.table.start(self._launch)

    async def stop(self) -> None:
        """Stop where we are: running runs stay RUNNING and resume at the next start."""
        await self.table.stop()
        if self._channel is not None:
            await self._channel.close()

    # ------------------------------------------------------------------------------ requests

    def validate(self, run: run_pb2.Run, path: str = "run") -> tuple[Suite, list[AnyTask]]:
        """Check a run request; raise the gRPC error that names what is wrong (under ``path``)."""
        suite = check.suite(self.catalog, run.suite, path)
        tasks = check.tasks(suite, run.split, run.task_ids, path)
        check.teacher(run.teacher_kind, run.model, tasks, path)
        check.counts(
            path,
            rollouts_per_task=run.rollouts_per_task,
            max_rollouts=self.settings.max_rollouts_per_task,
            concurrency=run.concurrency,
        )
        check.episode(run.episode, tasks, path)
        check.labels(run.labels, path)
        return suite, tasks

    async def create(self, run: run_pb2.Run, request_id: str = "", *, loop_id: str = "") -> run_pb2.Run:
        suite, tasks = self.validate(run)
        clean = run_pb2.Run()
        clean.CopyFrom(run)
        for name in OUTPUT_ONLY:
            clean.ClearField(name)
        skill_text = ""
        if clean.episode.HasField("skill"):
            sid = await self.resolve_skill(clean.episode.skill, "run.episode.skill")
            skill_text = (await asyncio.to_thread(self.skills.get, sid)).text
            clean.episode.skill.skill_id = sid  # inline text is now stored: name it by id
        elif clean.model and self.alias_skill is not None and (sid := await self.alias_skill(clean.model)):
            # The model is an alias serving a skill with its model (a pair): play with that skill.
            clean.episode.skill.skill_id = sid
            skill_text = (await asyncio.to_thread(self.skills.get, sid)).text
        if not clean.teacher_kind:
            clean.teacher_kind = tpb.TEACHER_KIND_MODEL

        def prepare(new: run_pb2.Run) -> None:
            new.suite_version = suite.version
            new.loop_id = loop_id
            first = tasks[0]
            if isinstance(first, MlTask):  # the ML agent's prompts (mle.py)
                new.prompt_sha256 = mle_prompt_sha256()
            else:
                new.prompt_sha256 = proto.prompt_sha256(
                    first, proto.effective_protocol(first, new.episode.protocol), skill_text
                )
            if skill_text:
                new.skill_sha256 = skill_docs.sha256(skill_text)
            new.counters.tasks = len(tasks)
            new.counters.episodes_total = len(tasks) * (new.rollouts_per_task or 1)

        job, created = await self.table.create(clean, request_id, prepare=prepare)
        if created:
            self._launch(job)
        return self.table.snapshot(job)

    def get(self, run_id: str) -> run_pb2.Run:
        return self.table.get(run_id)

    def job(self, run_id: str) -> RunJob:
        return self.table.job(run_id)

    def page(self, request: opb.ListRunsRequest) -> tuple[list[run_pb2.Run], str]:
        """One page of runs matching the request's filters, newest first."""

        def keep(r: run_pb2.Run) -> bool:
            return (
                (not request.suite or r.suite == request.suite)
                and (not request.model or r.model == request.model)
                and (not request.state or r.state == request.state)
                and (not request.loop_id or r.loop_id == request.loop_id)
            )

        return self.table.page(keep, request.page_size, request.page_token)

    async def cancel(self, run_id: str) -> run_pb2.Run:
        return await self.table.cancel(run_id)

    async def watch(self, run_id: str) -> AsyncIterator[opb.WatchRunResponse]:
        async for item in self.table.watch(run_id):
            if isinstance(item, run_pb2.Run):
                yield opb.WatchRunResponse(run=item)
            elif isinstance(item, run_pb2.EpisodeResult):
                yield opb.WatchRunResponse(episode=item)
            else:  # a node an ML episode's search just added (mle_runs.py)
                yield opb.WatchRunResponse(ml_node=item)

    async def results(self, run_id: str) -> list[run_pb2.EpisodeResult]:
        """Every finished episode of a run (rebuilt from the trajectory store after a restart)."""
        state = self.table.job(run_id)
        if len(state.results) < state.resource.counters.episodes_finished:
            state.results = [result_from_basic(t) for t in await self._stored(run_id)]
        return sorted(state.results, key=lambda r: (r.task_id, r.attempt))

    # ------------------------------------------------------------------------------ running

    def _launch(self, job: RunJob) -> None:
        self.table.launch(job, self._execute)

    async def _stored(
        self, run_id: str, view: tpb.TrajectoryView = tpb.TRAJECTORY_VIEW_BASIC
    ) -> list[tpb.Trajectory]:
        """Every stored trajectory of the run, all pages (FULL pages are kept smaller)."""
        out: list[tpb.Trajectory] = []
        token = ""
        while True:
            reply = await self.trajectories.ListTrajectories(
                tpb.ListTrajectoriesRequest(
                    filter=tpb.TrajectoryFilter(run_ids=[run_id]),
                    view=view,
                    page_size=100 if view == tpb.TRAJECTORY_VIEW_FULL else 500,
                    page_token=token,
                ),
                timeout=self.settings.trajectory_timeout_s,
            )
            out.extend(reply.trajectories)
            token = reply.next_page_token
            if not token:
                return out

    def _limits(self, run: run_pb2.Run) -> Limits:
        s, lim = self.settings, run.episode.limits
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

    async def policy_info(self, state: RunJob) -> tpb.Policy:
        """The run's policy lineage, asked of the gateway once per run (kept on the state)."""
        if state.policy is not None:
            return state.policy
        state.policy = await self._describe(state.resource)
        return state.policy

    async def _describe(self, run: run_pb2.Run) -> tpb.Policy:
        info = tpb.Policy(model=run.model, sampling=run.episode.sampling, prompt_sha256=run.prompt_sha256)
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

    async def _execute(self, state: RunJob) -> None:
        """The run's work; the job core turns its end (or failure) into the terminal state."""
        run = state.resource
        suite = self.catalog.get(run.suite)
        if suite is None:
            raise JobFailed(f"suite {run.suite!r} is no longer known", grpc.StatusCode.FAILED_PRECONDITION)
        if suite.version != run.suite_version:
            raise JobFailed(
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
            raise JobFailed(
                f"trajectory store unreachable: {err.details()}", grpc.StatusCode.UNAVAILABLE
            ) from None
        done_ids = {t.id for t in stored}
        run.counters.CopyFrom(run_pb2.RunCounters(tasks=len(tasks), episodes_total=len(tasks) * rollouts))
        state.results = []
        for t in stored:
            r = result_from_basic(t)
            state.results.append(r)
            count_result(run.counters, r)
        if run.teacher_kind == tpb.TEACHER_KIND_MODEL and not run.HasField("adapter"):
            # Pinned once, when the run first starts; a resumed run keeps what it pinned.
            identity = await self.models.identity(run.model)
            if identity is not None:
                run.adapter.CopyFrom(identity)
        if run.episode.skill.skill_id:
            try:
                skill = await asyncio.to_thread(self.skills.get, run.episode.skill.skill_id)
            except NotFound:
                raise JobFailed(
                    f"skill {run.episode.skill.skill_id!r} is gone from the object store",
                    grpc.StatusCode.FAILED_PRECONDITION,
                ) from None
            state.skill = skill.text
        await self.table.set_running(state)
        policy_info = await self.policy_info(state)
        limits = self._limits(run)
        labels = dict(run.labels)
        if state.skill:
            labels["skill_sha256"] = skill_docs.sha256(state.skill)
            labels["skill_id"] = skill_docs.skill_id(state.skill)
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
        queue: asyncio.Queue[tuple[AnyTask, int]] = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)

        async def worker() -> None:
            while True:
                try:
                    task, attempt = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if isinstance(task, MlTask):  # the ML agent's search, not the tool loop
                    await play_ml_episode(self, state, task, attempt, policy_info, labels)
                    continue
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

    async def _episode(
        self,
        state: RunJob,
        task: Task,
        attempt: int,
        base_policy: tpb.Policy,
        limits: Limits,
        labels: dict[str, str],
    ) -> None:
        run = state.resource
        protocol = proto.effective_protocol(task, run.episode.protocol)
        # The lineage names the exact system prompt of this episode (it depends on the task's kind).
        policy_info = tpb.Policy()
        policy_info.CopyFrom(base_policy)
        policy_info.prompt_sha256 = proto.prompt_sha256(task, protocol, state.skill)
        spec = EpisodeSpec(
            trajectory_id=trajectory_id(run.id, task.id, attempt),
            run_id=run.id,
            attempt=attempt,
            suite=run.suite,
            suite_version=run.suite_version,
            task=task,
            protocol=protocol,
            test_policy=run.episode.test_policy or run_pb2.TEST_POLICY_END,
            limits=limits,
            sampling=run.episode.sampling,
            teacher_kind=run.teacher_kind,
            policy_info=policy_info,
            labels=labels,
            reward=run.episode.reward,
            skill=state.skill,
        )
        policy: Policy
        if run.teacher_kind == tpb.TEACHER_KIND_REFERENCE:
            reference = ReferencePolicy(task, protocol)
            # The reference script has a known length; a budget meant for models (e.g. a loop's
            # short evaluation episodes) must not cut a demonstration short.
            if limits.max_iterations < reference.turns:
                spec.limits = replace(limits, max_iterations=reference.turns)
            policy = reference
        else:
            policy = self.models.policy(
                run.model,
                record_tokens=run.episode.record_tokens,
                pinned=run.adapter if run.HasField("adapter") else None,
            )
        episode = Episode(spec, policy, self.sandbox)
        traj = await self._put(await episode.run())
        result = episode_result(traj)
        state.results.append(result)
        state.times.append(episode.times)
        count_result(run.counters, result)
        await self.table.save(state, notify=False)
        self.table.notify(state, result)
        self.table.notify(state)
        for listener in self.listeners:
            listener(run, result)

    async def _put(self, traj: tpb.Trajectory) -> tpb.Trajectory:
        """Store the episode; returns the trajectory on record for its id.

        That is ``traj``, except when an earlier process already stored this episode under the same
        id: a crash while its put was in flight, so the restarted run did not see it and played the
        episode again. The first record stands (the episode is done once, never twice) and is what
        the run counts."""
        delay = 0.2
        for attempt in range(6):
            try:
                await self.trajectories.PutTrajectory(
                    tpb.PutTrajectoryRequest(trajectory=traj), timeout=self.settings.trajectory_timeout_s
                )
                return traj
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.ALREADY_EXISTS:
                    stored = await self.trajectories.GetTrajectory(
                        tpb.GetTrajectoryRequest(trajectory_id=traj.id),
                        timeout=self.settings.trajectory_timeout_s,
                    )
                    log.info("trajectory %s was stored by an earlier attempt; that record stands", traj.id)
                    first: tpb.Trajectory = stored.trajectory
                    return first
                if (
                    err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                    and attempt < 5
                ):
                    await asyncio.sleep(delay)
                    delay *= 2
                    continue
                raise JobFailed(
                    f"could not store trajectory {traj.id}: {err.code().name}: {err.details()}",
                    grpc.StatusCode.UNAVAILABLE
                    if err.code() == grpc.StatusCode.UNAVAILABLE
                    else grpc.StatusCode.INTERNAL,
                ) from None
        raise AssertionError("unreachable: the last attempt returns or raises")
