"""One life for every long-running resource: runs, evaluations, loops, dataset builds, fine-tunes.

A job resource is a protobuf message with ``id``, ``state`` (``flywheel.common.v1.JobState``),
``error``, ``create_time``, ``start_time`` and ``end_time``. Its life is the same whatever the
work: created idempotently under a ``request_id``, persisted on every change, watched, cancelled,
resumed after a restart, and announced once by its terminal event(s). This module holds that
life once; a manager keeps only its domain (what the work is and what its events say).

Three parts:

- :class:`JobStore` — how a kind keeps itself in the object store, under one prefix::

      <prefix><id>.json                 the resource message as JSON, rewritten on every change
      <prefix><id>/<name>.json          side data a manager keeps beside it (optional)
      <prefix>requests/<sha256>.json    request-id ledger: {"id", "fingerprint"}
      <prefix>published/<id>            the terminal announcement is safely in the outbox

- :class:`Outbox` — the one failure policy for events: an event is written to the object store,
  published, and deleted once JetStream has it. While NATS is down the events wait (in order)
  and a background pump retries with back-off; pending events survive a restart. A resource
  never fails because the bus was down. Message ids are deterministic, so a retry after an
  unacknowledged publish is dropped by JetStream's duplicate window, and consumers are
  idempotent beyond it.

- :class:`JobTable` — the in-memory map of one kind: create (idempotent), get, list with
  pagination, watch streams, cancel, resume of unfinished work at start, and
  :meth:`JobTable.finish` = persist, wake the watchers, announce exactly once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from ulid import ULID

from flywheel.common.v1 import common_pb2
from flywheel_common.errors import AlreadyExists, NotFound
from flywheel_common.events import EventBus, EventBusError
from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore
from flywheel_common.paging import offset_page

log = logging.getLogger("flywheel.jobs")

QUEUED = common_pb2.JOB_STATE_QUEUED
RUNNING = common_pb2.JOB_STATE_RUNNING
SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED
FAILED = common_pb2.JOB_STATE_FAILED
CANCELLED = common_pb2.JOB_STATE_CANCELLED
#: States a job never leaves.
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
#: States of a job that still has work to do (resumed at start-up).
LIVE = frozenset({QUEUED, RUNNING})

#: How long cancel() waits for a job's task to wind down before it answers.
CANCEL_WAIT_S = 10.0


class JobResource(Protocol):
    """What every job message has (checked structurally; generated protobuf classes match)."""

    id: str
    state: common_pb2.JobState

    @property
    def error(self) -> common_pb2.Error: ...
    @property
    def create_time(self) -> Timestamp: ...
    @property
    def start_time(self) -> Timestamp: ...
    @property
    def end_time(self) -> Timestamp: ...
    def HasField(self, field_name: str) -> bool: ...  # the protobuf API


M = TypeVar("M", bound=Message)


def now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def state_name(state: common_pb2.JobState) -> str:
    """``JOB_STATE_SUCCEEDED`` → ``succeeded`` (event subjects and ids use this form)."""
    return common_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def fingerprint(message: Message) -> str:
    """SHA-256 of a request's deterministic serialisation: same request, same fingerprint."""
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


def make_error(
    code: grpc.StatusCode, message: str, details: dict[str, str] | None = None
) -> common_pb2.Error:
    err = common_pb2.Error(code=code.value[0], message=message)
    err.details.update(details or {})
    return err


class JobFailed(Exception):
    """Raised by a job's work to end it FAILED with this message and status code."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.ABORTED) -> None:
        super().__init__(message)
        self.code = code


def _res(message: Message) -> JobResource:
    return cast(JobResource, message)


# ---------------------------------------------------------------------------------- store


class JobStore(Generic[M]):
    """One kind's resources, request ledger and published markers in the object store.

    Methods are blocking (object-store I/O): call them through ``asyncio.to_thread`` from the
    event loop. ``kind`` is the word used in error messages, e.g. ``run``.
    """

    def __init__(
        self, store: Callable[[], ObjectStore], prefix: str, message_class: type[M], kind: str
    ) -> None:
        if not prefix.endswith("/"):
            raise ValueError(f"prefix must end with '/', got {prefix!r}")
        self._store = store
        self.prefix = prefix
        self.message_class = message_class
        self.kind = kind

    @property
    def store(self) -> ObjectStore:
        return self._store()

    def load(self) -> list[M]:
        """Every stored resource of the kind (fields a newer contract dropped are ignored)."""
        store = self.store
        out = []
        for info in store.list(self.prefix):
            rest = info.key[len(self.prefix) :]
            if "/" in rest or not rest.endswith(".json"):
                continue
            out.append(
                json_format.Parse(store.get_bytes(info.key), self.message_class(), ignore_unknown_fields=True)
            )
        return out

    def save(self, message: M) -> None:
        body = json_format.MessageToJson(message, preserving_proto_field_name=True).encode()
        self.store.put(
            f"{self.prefix}{_res(message).id}.json", body, content_type="application/json", overwrite=True
        )

    def save_side(self, resource_id: str, name: str, data: dict[str, Any]) -> None:
        """Side data a manager keeps beside a resource (e.g. the trainer's resolved settings)."""
        self.store.put(
            f"{self.prefix}{resource_id}/{name}.json",
            json.dumps(data).encode(),
            content_type="application/json",
            overwrite=True,
        )

    def load_side(self, resource_id: str, name: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.store.get_bytes(f"{self.prefix}{resource_id}/{name}.json"))
        except ObjectNotFoundError:
            return None
        return data

    def published(self) -> set[str]:
        prefix = f"{self.prefix}published/"
        return {info.key[len(prefix) :] for info in self.store.list(prefix)}

    def mark_published(self, resource_id: str) -> None:
        self.store.put(f"{self.prefix}published/{resource_id}", b"", overwrite=True)

    def _request_key(self, request_id: str) -> str:
        return f"{self.prefix}requests/{hashlib.sha256(request_id.encode()).hexdigest()}.json"

    def replay(self, request_id: str, print_: str) -> str | None:
        """The id an earlier request with this request id created; None when there was none.

        The same request id with a different request is ALREADY_EXISTS naming the first resource.
        """
        if not request_id:
            return None
        try:
            seen = json.loads(self.store.get_bytes(self._request_key(request_id)))
        except ObjectNotFoundError:
            return None
        # ``id`` since the job core; older ledgers named the id after the kind (``run_id``…).
        earlier = str(seen.get("id") or next((v for k, v in seen.items() if k.endswith("_id")), ""))
        if seen["fingerprint"] != print_:
            raise AlreadyExists(
                f"request_id {request_id!r} was already used for {self.kind} {earlier} with a different request"
            )
        return earlier

    def remember(self, request_id: str, resource_id: str, print_: str) -> None:
        if not request_id:
            return
        body = json.dumps({"id": resource_id, "fingerprint": print_}).encode()
        self.store.put(self._request_key(request_id), body, content_type="application/json", overwrite=True)


# ---------------------------------------------------------------------------------- outbox


@dataclass(frozen=True)
class Announcement:
    """One event to publish: subject, payload and its deterministic ``Nats-Msg-Id``."""

    subject: str
    message: Message
    msg_id: str


class Outbox:
    """Events that must go out, kept in the object store (``<prefix>``) until NATS has them.

    :meth:`send` writes each event and wakes the pump, which publishes at once (the healthy
    path costs one put and one delete). What cannot go out now waits, in order, and the pump
    retries with back-off from ``retry_initial_s`` to ``retry_max_s``; :meth:`start` picks up
    what an earlier process left. With events turned off (``bus()`` is None) nothing is kept.
    """

    def __init__(
        self,
        store: Callable[[], ObjectStore],
        prefix: str,
        bus: Callable[[], EventBus | None],
        *,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 15.0,
    ) -> None:
        self._store = store
        self.prefix = prefix
        self._bus = bus
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self._pending: dict[str, Announcement] = {}  # key → event, insertion (= publish) order
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._seq = 0

    @property
    def pending(self) -> int:
        """Events written but not yet acknowledged by JetStream."""
        return len(self._pending)

    async def start(self) -> None:
        if self._bus() is None:
            return
        loaded = await asyncio.to_thread(self._load)
        for key, event in loaded:
            self._pending[key] = event
        if loaded:
            log.info("outbox %s: %d event(s) left by an earlier process", self.prefix, len(loaded))
        self._pump = asyncio.create_task(self._run(), name=f"outbox {self.prefix}")
        self._wake.set()

    async def stop(self, flush_s: float = 1.0) -> None:
        """One last try (at most ``flush_s``), then stop; what is still pending stays in the
        store for the next start."""
        if self._pending and self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout=flush_s)
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
            self._pump = None

    async def send(self, events: Sequence[Announcement]) -> None:
        """Keep ``events`` until they are out; the pump publishes them right away (in order).

        Returns once they are kept, without waiting for NATS: a caller never blocks on a bus
        that is down (a JetStream publish waits seconds for its ack before it fails).
        """
        if not events or self._bus() is None:
            return
        for event in events:
            self._seq += 1
            key = f"{self.prefix}{time.time_ns():020d}-{self._seq:06d}.json"
            try:
                await asyncio.to_thread(self._write, key, event)
            except Exception:
                # The store failing as well: keep it in memory; still retried while we live.
                log.exception("outbox %s: could not keep %s; retried from memory", self.prefix, event.msg_id)
            self._pending[key] = event
        self._wake.set()

    async def flush(self) -> bool:
        """Publish what is pending, in order; True when nothing is left."""
        bus = self._bus()
        if bus is None:
            return True
        async with self._lock:
            for key, event in list(self._pending.items()):
                try:
                    await bus.publish(event.subject, event.message, msg_id=event.msg_id)
                except (ValueError, TypeError) as err:
                    # A malformed event (subject, id) can never go out: drop it rather than let it
                    # block every event behind it.
                    log.error("outbox %s: dropped %s (%s): %s", self.prefix, event.subject, event.msg_id, err)
                except Exception as err:
                    log.warning(
                        "outbox %s: %s (%s) waits for NATS: %s", self.prefix, event.subject, event.msg_id, err
                    )
                    if isinstance(err, EventBusError):
                        # NATS came back without our stream (e.g. memory storage): set it up again.
                        with contextlib.suppress(Exception):
                            await bus.ensure_stream()
                    self._wake.set()
                    return False
                self._pending.pop(key, None)
                with contextlib.suppress(Exception):  # left behind, it is sent again: a duplicate id
                    await asyncio.to_thread(self._store().delete, key)
        return True

    async def _run(self) -> None:
        delay = self.retry_initial_s
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                delay = self.retry_initial_s
                continue
            if await self.flush():
                delay = self.retry_initial_s
                continue
            self._wake.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)
            self._wake.set()

    def _write(self, key: str, event: Announcement) -> None:
        body = {
            "subject": event.subject,
            "msg_id": event.msg_id,
            "type": event.message.DESCRIPTOR.full_name,
            "payload": base64.b64encode(event.message.SerializeToString()).decode(),
        }
        self._store().put(key, json.dumps(body).encode(), content_type="application/json", overwrite=True)

    def _load(self) -> list[tuple[str, Announcement]]:
        store = self._store()
        out = []
        for info in store.list(self.prefix):
            try:
                body = json.loads(store.get_bytes(info.key))
                cls = message_factory.GetMessageClass(
                    descriptor_pool.Default().FindMessageTypeByName(body["type"])
                )
                message = cls.FromString(base64.b64decode(body["payload"]))
            except Exception:
                log.exception("outbox %s: %s is unreadable; dropped", self.prefix, info.key)
                store.delete(info.key)
                continue
            out.append((info.key, Announcement(body["subject"], message, body["msg_id"])))
        return out


# ---------------------------------------------------------------------------------- table


class Job(Generic[M]):
    """A resource and what the service keeps beside it while it lives.

    Managers subclass it for their domain state (a run's results, a build's progress…).
    """

    def __init__(self, resource: M) -> None:
        self.resource = resource
        self.watchers: list[asyncio.Queue[Any]] = []
        self.task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        self.cancel_requested = False
        if _res(resource).state in TERMINAL:
            self.done.set()

    @property
    def id(self) -> str:
        return _res(self.resource).id

    @property
    def state(self) -> common_pb2.JobState:
        return _res(self.resource).state

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


J = TypeVar("J", bound=Job[Any])


class JobTable(Generic[M, J]):
    """The jobs of one kind: the in-memory map over a :class:`JobStore`, and their life.

    - ``id_prefix``: new ids are ``<id_prefix>-<ULID>`` (ULIDs sort by creation time);
    - ``announce(resource)``: the terminal event(s) of a finished resource, in order (called in
      a worker thread, so it may read the object store);
    - ``make_job``: builds the manager's :class:`Job` subclass for a resource;
    - ``snapshot``: the copy callers see (default: the stored message as is);
    - ``on_cancel``: how a cancel reaches live work; default :meth:`cancel_task`.
    """

    def __init__(
        self,
        *,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        prefix: str,
        message_class: type[M],
        kind: str,
        id_prefix: str,
        announce: Callable[[M], Sequence[Announcement]],
        make_job: Callable[[M], J],
        snapshot: Callable[[J], M] | None = None,
        on_cancel: Callable[[J], Awaitable[None]] | None = None,
    ) -> None:
        self.kind = kind
        self.id_prefix = id_prefix
        self.message_class = message_class
        self.records = JobStore(store, prefix, message_class, kind)
        self.outbox = Outbox(store, f"{prefix}outbox/", bus)
        self._announce = announce
        self._make_job = make_job
        self._snapshot = snapshot
        self._on_cancel = on_cancel or self.cancel_task
        self.jobs: dict[str, J] = {}
        self.stopping = False
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ start and stop

    async def start(self, resume: Callable[[J], Awaitable[None] | None]) -> None:
        """Load every job; announce terminal ones whose announcement a crash may have lost;
        hand unfinished ones (oldest first) to ``resume``."""
        loaded, published = await asyncio.to_thread(lambda: (self.records.load(), self.records.published()))
        for resource in loaded:
            self.jobs[_res(resource).id] = self._make_job(resource)
        await self.outbox.start()
        for job in list(self.jobs.values()):
            if job.terminal and job.id not in published:
                await self._announce_once(job)
        pending = sorted(
            (j for j in self.jobs.values() if not j.terminal),
            key=lambda j: (_res(j.resource).create_time.ToNanoseconds(), j.id),
        )
        for job in pending:
            log.info("resuming %s %s (was %s)", self.kind, job.id, state_name(job.state))
            result = resume(job)
            if result is not None:
                await result

    async def stop(self) -> None:
        """Stop where we are: running jobs stay RUNNING on the store and resume at the next start."""
        self.stopping = True
        tasks = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for job in self.jobs.values():
            # A job that reached its end is only announcing it: let it finish, never cut it off.
            if job.task is not None and not job.task.done() and not job.terminal:
                job.task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.outbox.stop()

    # ------------------------------------------------------------------ requests

    async def create(
        self,
        clean: M,
        request_id: str = "",
        *,
        prepare: Callable[[M], None] | None = None,
        announce: Callable[[M], Sequence[Announcement]] | None = None,
    ) -> tuple[J, bool]:
        """(the job, whether it is new) for a validated request with its output fields cleared.

        The same ``request_id`` with the same request returns the first job; with another request
        it is ALREADY_EXISTS. ``prepare`` fills derived fields of a new resource before it is
        stored (the fingerprint is taken before, of the request alone). ``announce`` gives the
        new job's creation event(s).

        Three writes, in an order that a crash between any two cannot turn into lost or doubled
        work, provided the client retries a create that did not answer (every caller in the
        project does; request ids exist for that):

        1. the request id's ledger entry, naming the new id: a retry finds the id even if nothing
           else was written, and creates the job under it instead of under a second id;
        2. the record: from here the job exists, and a restart resumes it;
        3. the creation event(s). A retry that finds the job still QUEUED sends them again, under
           the same message ids (JetStream drops a repeat), since the first create may have died
           before they were kept.
        """
        async with self._lock:
            print_ = fingerprint(clean)
            earlier = await asyncio.to_thread(self.records.replay, request_id, print_)
            if earlier is not None and earlier in self.jobs:
                job = self.jobs[earlier]
                if announce is not None and job.state == QUEUED:
                    await self.outbox.send(announce(job.resource))
                return job, False
            res = _res(clean)
            # An id in the ledger without a record: the first create died between writes 1 and 2.
            res.id = earlier or f"{self.id_prefix}-{ULID()}"
            res.state = QUEUED
            res.create_time.CopyFrom(now())
            if prepare is not None:
                prepare(clean)
            if earlier is None:
                await asyncio.to_thread(self.records.remember, request_id, res.id, print_)
            await asyncio.to_thread(self.records.save, clean)
            job = self._make_job(clean)
            self.jobs[res.id] = job
            if announce is not None:
                await self.outbox.send(announce(clean))
            return job, True

    def job(self, job_id: str) -> J:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"{self.kind} {job_id!r} does not exist")
        return job

    def snapshot(self, job: J) -> M:
        if self._snapshot is not None:
            return self._snapshot(job)
        out = self.message_class()
        out.CopyFrom(job.resource)
        return out

    def get(self, job_id: str) -> M:
        return self.snapshot(self.job(job_id))

    def select(self, keep: Callable[[M], bool] | None = None) -> list[J]:
        """Jobs whose resource ``keep`` accepts, newest first."""
        jobs = [j for j in self.jobs.values() if keep is None or keep(j.resource)]
        jobs.sort(key=lambda j: j.id, reverse=True)
        return jobs

    def page(
        self,
        keep: Callable[[M], bool] | None,
        page_size: int,
        page_token: str,
        view: Callable[[J], M] | None = None,
    ) -> tuple[list[M], str]:
        """One page of :meth:`select` as snapshots (``view`` instead of :meth:`snapshot` if given)."""
        chunk, token = offset_page(self.select(keep), page_size, page_token)
        show = view or self.snapshot
        return [show(j) for j in chunk], token

    async def cancel(self, job_id: str) -> M:
        """Best effort: a terminal job is returned as it is; live work is told to stop."""
        job = self.job(job_id)
        if not job.terminal:
            job.cancel_requested = True
            await self._on_cancel(job)
        return self.snapshot(job)

    async def cancel_task(self, job: J) -> None:
        """The default cancel: cancel the job's task (its work ends CANCELLED), or end a job that
        has no running task at once."""
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(job.task), timeout=CANCEL_WAIT_S)
        elif not job.terminal:
            await self.finish(job, CANCELLED, "cancelled by request", grpc.StatusCode.CANCELLED)

    async def watch(self, job_id: str) -> AsyncIterator[Any]:
        """A snapshot now, then every item :meth:`notify` queues, until a terminal snapshot."""
        job = self.job(job_id)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        job.watchers.append(queue)
        try:
            yield self.snapshot(job)
            if job.terminal:
                return
            while True:
                item = await queue.get()
                yield item
                if isinstance(item, self.message_class) and _res(item).state in TERMINAL:
                    return
        finally:
            job.watchers.remove(queue)

    # ------------------------------------------------------------------ changes

    def notify(self, job: J, item: Any | None = None) -> None:
        """Queue ``item`` (default: a snapshot of the job) for every watcher."""
        if item is None:
            item = self.snapshot(job)
        for queue in job.watchers:
            queue.put_nowait(item)

    async def save(self, job: J, *, notify: bool = True, events: Sequence[Announcement] = ()) -> None:
        """Persist the job (off the event loop) and, by default, show watchers the new state.

        ``events`` announce the change (a live state, a loop's stage). They are kept in the
        outbox *before* the record is written: a crash between the two leaves the event to go
        out and the old record, and the resumed job makes the change again under the same
        deterministic message id, which JetStream's duplicate window drops. The other order
        (record, then event) would lose the event for good: the resumed job sees the change
        already made and never announces it.
        """
        if events:
            await self.outbox.send(events)
        await asyncio.to_thread(self.records.save, job.resource)
        if notify:
            self.notify(job)

    async def set_running(self, job: J, *, events: Sequence[Announcement] = ()) -> None:
        res = _res(job.resource)
        res.state = RUNNING
        if not res.HasField("start_time"):
            res.start_time.CopyFrom(now())
        await self.save(job, events=events)

    async def finish(
        self,
        job: J,
        state: common_pb2.JobState,
        message: str = "",
        code: grpc.StatusCode | None = None,
        *,
        details: dict[str, str] | None = None,
    ) -> None:
        """End the job: persist, wake watchers, announce exactly once (when NATS can take it).

        A second call on a terminal job does nothing, so racing paths (a cancel and the work's
        own end) cannot announce twice.
        """
        if job.terminal:
            return
        if state not in TERMINAL:
            raise ValueError(f"finish() needs a terminal state, got {state_name(state)}")
        res = _res(job.resource)
        res.state = state
        res.end_time.CopyFrom(now())
        if message:
            res.error.CopyFrom(make_error(code or grpc.StatusCode.UNKNOWN, message, details))
        await self.save(job)
        job.done.set()
        # Shielded: a cancel arriving now (a shutdown) must not lose the announcement.
        await asyncio.shield(self._announce_once(job))

    async def _announce_once(self, job: J) -> None:
        # In a worker thread: an announcement may read the store (a dataset's manifest).
        await self.outbox.send(await asyncio.to_thread(self._announce, job.resource))
        try:
            await asyncio.to_thread(self.records.mark_published, job.id)
        except Exception:  # the outbox has the events; a start-up resends them, deduplicated by id
            log.exception("could not mark %s %s as announced", self.kind, job.id)

    # ------------------------------------------------------------------ running

    def launch(self, job: J, work: Callable[[J], Awaitable[None]]) -> None:
        """Run ``work(job)`` as the job's task under the common failure policy.

        Returning ends the job SUCCEEDED (unless the work finished it itself); :class:`JobFailed`
        ends it FAILED with its message and code; any other exception FAILED as INTERNAL; a
        cancel ends it CANCELLED — except at shutdown, when the job stays as it is and resumes
        at the next start.
        """
        job.task = asyncio.create_task(self._execute(job, work), name=f"{self.kind} {job.id}")

    async def _execute(self, job: J, work: Callable[[J], Awaitable[None]]) -> None:
        try:
            await work(job)
        except asyncio.CancelledError:
            if self.stopping and not job.cancel_requested:
                raise
            await self.finish(job, CANCELLED, "cancelled by request", grpc.StatusCode.CANCELLED)
        except JobFailed as err:
            await self.finish(job, FAILED, str(err), err.code)
        except Exception as err:
            log.exception("%s %s failed", self.kind, job.id)
            await self.finish(job, FAILED, f"internal error: {err}", grpc.StatusCode.INTERNAL)
        else:
            await self.finish(job, SUCCEEDED)
