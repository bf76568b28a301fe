"""The job core's contract (``flywheel_common.jobs``), run against each resource type.

Runs, evaluations, loops, dataset builds and fine-tune jobs share one life: idempotent create,
a conflicting create is ALREADY_EXISTS, a watch sees every state, cancel, a restart in the
middle of the work resumes it, and the terminal event goes out exactly once — also when NATS is
down while the job finishes and comes back later, and when the service restarts in between.
Each case uses the resource's own message, job class and terminal announcement from its
service. Real components: a nats-server of this module's own (so it can be stopped and started
again on the same port and store) and a filesystem object store.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nats
import pytest
import pytest_asyncio
from google.protobuf.message import Message

from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel_common.errors import AlreadyExists
from flywheel_common.events import EventBus, NatsSettings
from flywheel_common.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TERMINAL,
    Announcement,
    Job,
    JobFailed,
    JobTable,
)
from flywheel_common.natsserver import NatsServerProcess
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_dataset.build import TrajectorySource
from flywheel_dataset.jobs import BuildJob, BuildManager
from flywheel_orchestrator import evaluations, loops, runs

DEADLINE_S = 60.0  # generous: the machine may be busy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    check: Callable[[], Awaitable[bool] | bool], what: str, deadline_s: float = DEADLINE_S
) -> None:
    end = time.monotonic() + deadline_s
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------- the kinds


def _trainer_announce(job: trpb.FineTuneJob) -> Sequence[Announcement]:
    from flywheel_trainer import jobs as trainer_jobs

    announce = getattr(trainer_jobs, "terminal_events", None)
    if announce is None:
        pytest.fail("flywheel_trainer.jobs has no terminal_events(job) function")
    return cast(Sequence[Announcement], announce(job))  # found by name: untyped


def _no_source(cancel: threading.Event) -> TrajectorySource:
    raise AssertionError("the contract reads terminal events only; no dataset is built")


def _dataset_announce(store: Callable[[], Any]) -> Callable[[dpb.DatasetBuild], Sequence[Announcement]]:
    manager = BuildManager(store, lambda: None, _no_source)
    return manager._terminal_event


@dataclass
class Kind:
    name: str
    message: Callable[[str], Message]  #: a request whose one field is the given text
    make_job: Callable[[Any], Job[Any]]
    announce: Callable[[Callable[[], Any]], Callable[[Any], Sequence[Announcement]]]
    subject: str  #: the subject of its terminal event for a FAILED job


KINDS = [
    Kind(
        "run",
        lambda t: run_pb2.Run(suite=t),
        runs.RunJob,
        lambda _s: runs.completed_event,
        "flywheel.run.completed",
    ),
    Kind(
        "evaluation",
        lambda t: epb.Evaluation(suite=t),
        Job,
        lambda _s: evaluations.completed_event,
        "flywheel.eval.completed",
    ),
    Kind(
        "loop",
        lambda t: lpb.Loop(
            suite=t, stages=[lpb.LoopStageStatus(stage=lpb.LOOP_STAGE_ROLLOUTS, state=RUNNING)]
        ),
        loops.LoopJob,
        lambda _s: loops.terminal_events,
        "flywheel.loop.stage_changed",
    ),
    Kind(
        "dataset build",
        lambda t: dpb.DatasetBuild(recipe=t),
        BuildJob,
        _dataset_announce,
        "flywheel.dataset.failed",
    ),
    Kind(
        "fine-tune job",
        lambda t: trpb.FineTuneJob(base_model=t),
        Job,
        lambda _s: _trainer_announce,
        "flywheel.finetune.failed",
    ),
]


# ---------------------------------------------------------------------------------- fixtures


@dataclass
class Nats:
    """A nats-server that can go down and come back on the same port with the same store."""

    port: int
    store_dir: Path
    server: NatsServerProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def up(self) -> None:
        self.server = NatsServerProcess(port=self.port, store_dir=self.store_dir, stop_grace_s=5)
        self.server.start()

    def down(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    server = Nats(_free_port(), tmp_path_factory.mktemp("nats-contract") / "store")
    server.up()
    try:
        yield server
    finally:
        server.down()


@pytest_asyncio.fixture
async def bus(own_nats: Nats, request: pytest.FixtureRequest) -> AsyncIterator[EventBus]:
    if own_nats.server is None:
        own_nats.up()
    stream = f"CONTRACT{abs(hash(request.node.name)) % 10**8}"
    settings = NatsSettings(
        url=own_nats.url,
        stream=stream,
        subjects=["flywheel.>"],
        duplicate_window_s=120,
        storage="file",
        connect_timeout_s=10,
    )
    nc = await nats.connect(own_nats.url)
    js = nc.jetstream()
    for info in await js.streams_info():
        if info.config.name:
            await js.delete_stream(info.config.name)
    await nc.close()
    connected = await EventBus.connect(settings, name="contract")
    await connected.ensure_stream()
    try:
        yield connected
    finally:
        await connected.close()


async def stored_events(bus: EventBus, subject: str) -> list[str]:
    """The Nats-Msg-Ids of every message the stream holds on ``subject``."""
    js = bus.js
    info = await js.stream_info(bus.settings.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(bus.settings.stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject == subject:
            out.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    return out


def make_table(kind: Kind, root: Path, bus: Callable[[], EventBus | None]) -> JobTable[Any, Any]:
    store = FilesystemObjectStore(root)
    store.ensure_ready()
    return JobTable(
        store=lambda: store,
        bus=bus,
        prefix="contract/",
        message_class=type(kind.message("")),
        kind=kind.name,
        id_prefix="job",
        announce=kind.announce(lambda: store),
        make_job=kind.make_job,
    )


def loop_manager(
    root: Path, bus: EventBus, *, evaluations: Any = None, aliases: Callable[[Any], Any] | None = None
) -> loops.LoopManager:
    """The real loop manager on a filesystem store; the services a test does not reach are None."""
    from flywheel_orchestrator.settings import OrchestratorSettings

    store = FilesystemObjectStore(root)
    store.ensure_ready()
    return loops.LoopManager(
        OrchestratorSettings(dataset_address="127.0.0.1:1", trainer_address="127.0.0.1:1"),
        lambda: store,
        lambda: bus,
        runs=None,  # type: ignore[arg-type]
        evaluations=evaluations,
        models=None,  # type: ignore[arg-type]
        aliases=aliases(store) if aliases is not None else None,  # type: ignore[arg-type]
    )


async def work_to_success(table: JobTable[Any, Any]) -> Callable[[Job[Any]], Awaitable[None]]:
    async def work(job: Job[Any]) -> None:
        await table.set_running(job)

    return work


def blocked_work(
    table: JobTable[Any, Any], release: asyncio.Event, *, fail: bool = False
) -> Callable[[Job[Any]], Awaitable[None]]:
    async def work(job: Job[Any]) -> None:
        await table.set_running(job)
        await release.wait()
        if fail:
            raise JobFailed("the work failed on purpose")

    return work


# ---------------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_create_is_idempotent_and_a_conflict_is_already_exists(kind: Kind, tmp_path: Path) -> None:
    table = make_table(kind, tmp_path, lambda: None)
    await table.start(lambda job: None)
    first, created = await table.create(kind.message("a"), "req-1")
    again, created_again = await table.create(kind.message("a"), "req-1")
    assert created and not created_again and again.id == first.id
    other, _ = await table.create(kind.message("a"), "req-2")
    assert other.id != first.id
    with pytest.raises(AlreadyExists) as err:
        await table.create(kind.message("b"), "req-1")
    assert first.id in str(err.value) and "req-1" in str(err.value)
    await table.stop()
    # The ledger is in the store: a restarted service answers the same.
    restarted = make_table(kind, tmp_path, lambda: None)
    await restarted.start(lambda job: None)
    replayed, created = await restarted.create(kind.message("a"), "req-1")
    assert not created and replayed.id == first.id
    await restarted.stop()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_watch_sees_every_state(kind: Kind, tmp_path: Path) -> None:
    table = make_table(kind, tmp_path, lambda: None)
    await table.start(lambda job: None)
    job, _ = await table.create(kind.message("a"))
    seen: list[int] = []

    async def watch() -> None:
        async for item in table.watch(job.id):
            seen.append(item.state)

    watcher = asyncio.create_task(watch())
    await until(lambda: bool(seen), "the first snapshot")
    release = asyncio.Event()
    table.launch(job, blocked_work(table, release))
    await until(lambda: RUNNING in seen, "RUNNING")
    release.set()
    await asyncio.wait_for(watcher, DEADLINE_S)
    assert seen == [QUEUED, RUNNING, SUCCEEDED]
    # A watch of a finished job gets its terminal snapshot and ends.
    assert [item.state async for item in table.watch(job.id)] == [SUCCEEDED]
    await table.stop()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_cancel(kind: Kind, tmp_path: Path) -> None:
    table = make_table(kind, tmp_path, lambda: None)
    await table.start(lambda job: None)
    running, _ = await table.create(kind.message("a"))
    table.launch(running, blocked_work(table, asyncio.Event()))
    await until(lambda: running.state == RUNNING, "RUNNING")
    cancelled = await table.cancel(running.id)
    assert cancelled.state == CANCELLED and cancelled.error.message == "cancelled by request"
    queued, _ = await table.create(kind.message("b"))  # never started: ended at once
    assert (await table.cancel(queued.id)).state == CANCELLED
    assert (await table.cancel(running.id)).state == CANCELLED  # cancel of a terminal job: as is
    await table.stop()
    reloaded = make_table(kind, tmp_path, lambda: None)
    await reloaded.start(lambda job: pytest.fail(f"a cancelled job was resumed: {job.id}"))
    assert {j.state for j in reloaded.jobs.values()} == {CANCELLED}
    await reloaded.stop()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_a_restart_mid_work_resumes_it(kind: Kind, tmp_path: Path, bus: EventBus) -> None:
    table = make_table(kind, tmp_path, lambda: bus)
    await table.start(lambda job: None)
    job, _ = await table.create(kind.message("a"))
    table.launch(job, blocked_work(table, asyncio.Event()))
    await until(lambda: job.state == RUNNING, "RUNNING")
    await table.stop()  # shutdown: the job stays RUNNING, nothing announced
    assert job.state == RUNNING

    resumed: list[str] = []
    restarted = make_table(kind, tmp_path, lambda: bus)
    release = asyncio.Event()

    def resume(j: Job[Any]) -> None:
        resumed.append(j.id)
        restarted.launch(j, blocked_work(restarted, release, fail=True))

    await restarted.start(resume)
    assert resumed == [job.id]
    again = restarted.jobs[job.id]
    await until(lambda: again.state == RUNNING, "the resumed job RUNNING")
    # Let the resumed work end (FAILED on purpose: every kind has a failure event).
    release.set()
    await until(lambda: again.state in TERMINAL, "the resumed job's end")
    assert again.state == FAILED and again.resource.error.message == "the work failed on purpose"
    await until(lambda: restarted.outbox.pending == 0, "the outbox to empty")
    ids = await stored_events(bus, kind.subject)
    assert len(ids) == 1, ids
    await restarted.stop()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_terminal_event_exactly_once_when_nats_is_down_during_finish(
    kind: Kind, tmp_path: Path, own_nats: Nats, bus: EventBus
) -> None:
    table = make_table(kind, tmp_path, lambda: bus)
    await table.start(lambda job: None)
    release = asyncio.Event()
    job, _ = await table.create(kind.message("a"))
    table.launch(job, blocked_work(table, release, fail=True))
    await until(lambda: job.state == RUNNING, "RUNNING")

    own_nats.down()
    release.set()
    await until(lambda: job.terminal, "the job's end while NATS is down")
    assert job.state == FAILED  # the work's own outcome, not a bus error
    stored = make_table(kind, tmp_path, lambda: None).records
    assert (await asyncio.to_thread(stored.load))[0].state == FAILED
    assert table.outbox.pending >= 1

    # The service restarts while NATS is still down: the event is kept in the store.
    await table.stop()
    restarted = make_table(kind, tmp_path, lambda: bus)
    await restarted.start(lambda j: pytest.fail("a finished job was resumed"))
    assert restarted.outbox.pending >= 1

    own_nats.up()
    await until(lambda: restarted.outbox.pending == 0, "the outbox to empty once NATS is back")
    ids = await stored_events(bus, kind.subject)
    assert ids and len(ids) == len(set(ids)) == 1, ids
    await restarted.stop()


@pytest.mark.parametrize("promote", [True, False], ids=["promoted", "rejected"])
async def test_a_loop_whose_gate_decides_while_nats_is_down_ends_once_nats_returns(
    promote: bool, tmp_path: Path, own_nats: Nats, bus: EventBus
) -> None:
    """The real loop manager at its GATE stage (the evaluation it reads is a stand-in: only its
    metrics matter here): the gate decides while NATS is down, the loop ends SUCCEEDED with the
    decision, and ``loop.promoted`` / ``loop.rejected`` goes out exactly once when NATS is back."""
    from flywheel.common.v1 import common_pb2

    incumbent, candidate = "gemma-3-270m", "ft/agent-v1"
    evaluation = epb.Evaluation(
        id="eval-1",
        state=SUCCEEDED,
        models=[incumbent, candidate],
        baseline_model=incumbent,
        model_metrics=[
            epb.ModelMetrics(model=incumbent, baseline=True, pass_rate=0.2, episodes=10),
            epb.ModelMetrics(model=candidate, pass_rate=0.6 if promote else 0.1, episodes=10),
        ],
    )

    class Evaluations:
        def get(self, eval_id: str) -> epb.Evaluation:
            assert eval_id == evaluation.id
            return evaluation

    class Listing:
        """The gateway's model list, as the alias writer reads it (a stand-in: no gateway here)."""

        async def _entry(self, model: str) -> dict[str, object]:
            served = {incumbent: {"id": incumbent}, candidate: {"id": candidate, "parent": incumbent}}
            return served.get(model, {})

    from flywheel_orchestrator.aliases import AliasManager

    manager = loop_manager(
        tmp_path,
        bus,
        evaluations=Evaluations(),  # a stand-in: the gate calls only get()
        aliases=lambda store: AliasManager(lambda: store, lambda: bus, Listing()),  # type: ignore[arg-type]  # see Listing
    )
    await manager.start()
    ref = common_pb2.ResourceRef
    loop = lpb.Loop(
        suite="s",
        base_model=incumbent,
        incumbent_model=incumbent,
        candidate_model=candidate,
        adapter_name="agent",
        stage=lpb.LOOP_STAGE_GATE,
        stages=[
            lpb.LoopStageStatus(
                stage=lpb.LOOP_STAGE_HOT_LOAD,
                state=SUCCEEDED,
                artefacts=[ref(kind=common_pb2.RESOURCE_KIND_ADAPTER, id="agent/1")],
            ),
            lpb.LoopStageStatus(
                stage=lpb.LOOP_STAGE_GATE,
                state=RUNNING,
                artefacts=[ref(kind=common_pb2.RESOURCE_KIND_EVALUATION, id=evaluation.id)],
            ),
        ],
    )
    job, _ = await manager.table.create(loop)
    await manager.table.set_running(job)

    own_nats.down()
    await manager.advance(job.id)
    decided = manager.get(job.id)
    assert decided.state == SUCCEEDED
    want = lpb.GATE_DECISION_PROMOTE if promote else lpb.GATE_DECISION_REJECT
    assert decided.gate_result.decision == want
    assert decided.stages[-1].state == SUCCEEDED and decided.report.key

    subject = "flywheel.loop.promoted" if promote else "flywheel.loop.rejected"
    own_nats.up()
    await until(lambda: manager.table.outbox.pending == 0, "the loop's events once NATS is back")
    decision = "promoted" if promote else "rejected"
    assert await stored_events(bus, subject) == [f"loop-{decision}:{job.id}"]
    stages = await stored_events(bus, "flywheel.loop.stage_changed")
    if promote:  # a promoted candidate moves the loop's alias (written while NATS was down too)
        assert stages == [
            f"loop-stage:{job.id}:promotion:running",
            f"loop-stage:{job.id}:promotion:succeeded",
        ]
        assert decided.promotion.outcome == lpb.PROMOTION_OUTCOME_PROMOTED
        assert decided.promotion.alias == "agent/agent" and decided.promotion.revision == 1
    else:
        assert stages == [f"loop-stage:{job.id}:gate:succeeded"]
    await manager.stop()


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_a_change_cut_off_by_a_crash_is_announced_once(
    kind: Kind, tmp_path: Path, bus: EventBus
) -> None:
    """A live change (here: RUNNING) writes two things, its event and its record. The process
    dies after the first (the second write raises, and the table is dropped without a stop). The
    restarted service makes the change again only if the record does not show it, as the
    services' resume does. Either way the event goes out, and exactly once: the event first and
    the record second is the one order with this property."""
    subject = "flywheel.contract.changed"
    table = make_table(kind, tmp_path, lambda: bus)
    await table.start(lambda job: None)
    job, _ = await table.create(kind.message("a"))

    def changed(j: Job[Any]) -> list[Announcement]:
        return [Announcement(subject, j.resource, f"changed:{j.id}:running")]

    writes: list[str] = []
    send, save = table.outbox.send, table.records.save

    def die_on_second(what: str) -> None:
        writes.append(what)
        if len(writes) == 2:
            raise RuntimeError(f"the process died before its {what} write")

    async def sending(events: Sequence[Announcement]) -> None:
        die_on_second("event")
        await send(events)

    def saving(resource: Any) -> None:
        die_on_second("record")
        save(resource)

    table.outbox.send = sending  # type: ignore[method-assign]
    table.records.save = saving  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="died"):
        await table.set_running(job, events=changed(job))
    # What a crash leaves: no stop, no flush; the pump is simply gone.
    if table.outbox._pump is not None:
        table.outbox._pump.cancel()

    restarted = make_table(kind, tmp_path, lambda: bus)

    async def resume(j: Job[Any]) -> None:
        if j.state != RUNNING:
            await restarted.set_running(j, events=changed(j))

    await restarted.start(resume)
    await until(lambda: restarted.outbox.pending == 0, "the outbox to empty")
    assert await stored_events(bus, subject) == [f"changed:{job.id}:running"]
    stored = make_table(kind, tmp_path, lambda: None).records
    assert (await asyncio.to_thread(stored.load))[0].state == RUNNING
    await restarted.stop()


async def test_a_loop_announces_its_next_stage_before_writing_it(tmp_path: Path, bus: EventBus) -> None:
    """The real loop manager starting a stage keeps the stage's event in the outbox before it
    writes the loop's record (the order JobTable.save gives), so a crash between the two cannot
    lose ``flywheel.loop.stage_changed``: the end-to-end loop test once lost its fine-tune stage's
    event to an orchestrator killed there."""
    manager = loop_manager(tmp_path, bus)  # _begin calls no other service
    await manager.start()
    job, _ = await manager.table.create(
        lpb.Loop(suite="s", stages=[lpb.LoopStageStatus(stage=lpb.LOOP_STAGE_ROLLOUTS, state=RUNNING)])
    )
    await manager.table.set_running(job)

    order: list[str] = []
    send, save = manager.table.outbox.send, manager.table.records.save

    async def sending(events: Sequence[Announcement]) -> None:
        order.extend(f"event {e.msg_id}" for e in events)
        await send(events)

    def saving(resource: lpb.Loop) -> None:
        order.append(f"record {loops.stage_name(resource.stage)}")
        save(resource)

    manager.table.outbox.send = sending  # type: ignore[method-assign]
    manager.table.records.save = saving  # type: ignore[method-assign]
    await manager._begin(job, lpb.LOOP_STAGE_DATASET, [])
    assert order == [f"event loop-stage:{job.id}:dataset:running", "record dataset"]
    await until(lambda: manager.table.outbox.pending == 0, "the outbox to empty")
    assert await stored_events(bus, "flywheel.loop.stage_changed") == [f"loop-stage:{job.id}:dataset:running"]
    await manager.stop()


@pytest.mark.parametrize("cut", ["ledger", "record", "event"])
@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_a_create_cut_off_by_a_crash_is_finished_by_its_retry_once(
    kind: Kind, cut: str, tmp_path: Path, bus: EventBus
) -> None:
    """A create writes the request id's ledger entry, the record and the creation event. The
    process dies at one of the three writes (it raises, and the table is dropped without a stop);
    the client retries the create with the same request id on the restarted service. Whatever
    the point: one job, under one id, and its creation event exactly once."""
    subject = "flywheel.contract.created"

    def created(resource: Any) -> list[Announcement]:
        return [Announcement(subject, resource, f"created:{resource.id}")]

    table = make_table(kind, tmp_path, lambda: bus)
    await table.start(lambda job: None)

    def dying(name: str) -> Callable[..., Any]:
        def die(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"the process died at the {name} write")

        return die

    if cut == "ledger":
        table.records.remember = dying(cut)  # type: ignore[method-assign]
    elif cut == "record":
        table.records.save = dying(cut)  # type: ignore[method-assign]
    else:

        async def die_sending(events: Sequence[Announcement]) -> None:
            raise RuntimeError("the process died at the event write")

        table.outbox.send = die_sending  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match=f"died at the {cut}"):
        await table.create(kind.message("a"), "req-1", announce=created)
    if table.outbox._pump is not None:  # a crash: no stop, no flush
        table.outbox._pump.cancel()

    restarted = make_table(kind, tmp_path, lambda: bus)
    await restarted.start(lambda job: None)  # a job left QUEUED waits here for its retry
    job, _ = await restarted.create(kind.message("a"), "req-1", announce=created)
    again, new = await restarted.create(kind.message("a"), "req-1", announce=created)
    assert again.id == job.id and not new
    stored = make_table(kind, tmp_path, lambda: None).records
    assert [_id for _id in (r.id for r in await asyncio.to_thread(stored.load))] == [job.id]
    await until(lambda: restarted.outbox.pending == 0, "the outbox to empty")
    assert await stored_events(bus, subject) == [f"created:{job.id}"]
    await restarted.stop()
