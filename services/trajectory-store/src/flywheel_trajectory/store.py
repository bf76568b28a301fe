"""The trajectory store's logic, free of gRPC: put, get, list, export, delete, recover, rebuild.

Write path of a batch (``put_many``), in this order, so a crash at any point loses nothing that
was acknowledged and leaves nothing half-visible:

1. validate and normalise every trajectory; take a ``create_time`` from a strictly increasing
   clock and mark it in flight (listing never shows rows at or past the oldest in-flight time);
2. record (id, content hash) in the index's ``pending`` journal (one SQLite transaction);
3. write each object with the store's no-overwrite put (atomic on both backends, in parallel
   threads); an id that exists is compared by content hash: same → unchanged, else a conflict;
4. insert the index rows (one transaction) — the rows are derived from the written bytes;
5. publish ``flywheel.trajectory.stored`` with a msg id derived from id + content hash (a retry
   or a recovery publishes the same id, which JetStream stores once);
6. clear the journal entries; only now is the batch acknowledged.

On start-up :meth:`recover` finishes whatever step 2 recorded and step 6 did not clear.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import concurrent.futures.process
import datetime as dt
import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    Unavailable,
    check_timestamp,
    shown,
)
from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore
from flywheel_trajectory import model
from flywheel_trajectory.index import Query, TrajectoryIndex, rebuild
from flywheel_trajectory.pg_index import PostgresIndex
from flywheel_trajectory.writer import WriterPool

log = logging.getLogger("flywheel.trajectory")

T = TypeVar("T")

SUBJECT_STORED = "flywheel.trajectory.stored"
PRODUCER = "trajectory-store"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
#: Rows fetched from the index per step of an export (memory stays at this many trajectories).
EXPORT_CHUNK = 64
EXPORT_FIRST_CHUNK = 4
MAX_REASON = 1000

Publisher = Callable[[str, events_pb2.TrajectoryStored, str], Awaitable[None]]


@dataclass
class PutResult:
    """What happened to one trajectory of a put."""

    index: int
    trajectory_id: str
    created: bool = False
    error: Exception | None = None
    stored: pb.Trajectory | None = None  # BASIC view with OUTPUT_ONLY fields, when stored


def event_id(trajectory_id: str, content_sha256: str) -> str:
    return f"trajectory-stored:{trajectory_id}:{content_sha256[:16]}"


class TrajectoryStore:
    """Trajectories as immutable objects plus a rebuildable index (SQLite or PostgreSQL). Async API."""

    def __init__(
        self,
        objects: ObjectStore,
        index: TrajectoryIndex,
        publish: Publisher | None,
        writer: WriterPool,
        *,
        io_threads: int = 32,
    ) -> None:
        self.objects = objects
        self.index = index
        self.writer = writer
        self._publish = publish
        self._pool = concurrent.futures.ThreadPoolExecutor(io_threads, thread_name_prefix="traj-io")
        # Index calls get their own few threads: each thread keeps one SQLite connection (and its
        # page cache), so running them on the wide I/O pool would grow memory with its size.
        self._index_pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="traj-index")
        self._clock_lock = threading.Lock()
        self._last_us = index.max_create_time_us()
        self._inflight: dict[int, int] = {}  # create_time_us -> count of puts holding it

    def close(self) -> None:
        self.writer.close()
        self._pool.shutdown(wait=True)
        self._index_pool.shutdown(wait=True)
        self.index.close()

    async def _io(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _idx(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._index_pool, fn, *args)

    # ---------------------------------------------------------------------------------- clock

    def _take_times(self, n: int) -> list[int]:
        with self._clock_lock:
            now = time.time_ns() // 1000
            start = max(now, self._last_us + 1)
            times = list(range(start, start + n))
            self._last_us = start + n - 1
            for t in times:
                self._inflight[t] = self._inflight.get(t, 0) + 1
            return times

    def _release_times(self, times: Sequence[int]) -> None:
        with self._clock_lock:
            for t in times:
                left = self._inflight.get(t, 0) - 1
                if left > 0:
                    self._inflight[t] = left
                else:
                    self._inflight.pop(t, None)

    def watermark_us(self) -> int | None:
        """Rows at or after this time may still be joined by earlier rows: readers stop before it."""
        with self._clock_lock:
            return min(self._inflight) if self._inflight else None

    # ------------------------------------------------------------------------------------ put

    async def put_many(self, trajectories: Sequence[pb.Trajectory], first_index: int = 0) -> list[PutResult]:
        """Store a chunk of trajectories; every result is durable when this returns."""
        results = [PutResult(first_index + i, t.id) for i, t in enumerate(trajectories)]
        if not results:
            return results
        times = self._take_times(len(results))
        tokens: list[int] = []
        try:
            # Only ids that can name an object are journalled (the others fail validation anyway).
            journal = [r.trajectory_id if model.ID_RE.fullmatch(r.trajectory_id) else None for r in results]
            # A shared index may move the times later (another replica's clock is ahead); the
            # local in-flight marks stay at the earlier times, which only hides more, never less.
            tokens, times_used = await self._idx(self.index.begin_puts, journal, times)
            if times_used[-1] > times[-1]:
                with self._clock_lock:
                    self._last_us = max(self._last_us, times_used[-1])
            items = [(t.SerializeToString(), ct) for t, ct in zip(trajectories, times_used, strict=True)]
            # Split over the writer processes (at least a few items each, to amortise the hop).
            parts = max(1, min(self.writer.processes or 1, len(items) // 8))
            size = -(-len(items) // parts)
            futures = [self.writer.submit(items[i : i + size]) for i in range(0, len(items), size)]
            try:
                written = [
                    w for part in await asyncio.gather(*map(asyncio.wrap_future, futures)) for w in part
                ]
            except concurrent.futures.process.BrokenProcessPool:
                self.writer.restart()
                raise Unavailable(
                    "a writer process died during this put; nothing was acknowledged, retry it"
                ) from None
            for result, w in zip(results, written, strict=True):
                if w.error_kind == "invalid":
                    result.error = InvalidArgument(w.field, w.message.removeprefix(f"{w.field}: "))
                elif w.error_kind == "conflict":
                    result.error = AlreadyExists(w.message)
                else:
                    result.created = w.created
            rows = [w.row for w in written if w.row is not None]
            newly_indexed = await self._idx(self.index.insert, rows)
            unchanged = [w.row.id for w in written if w.row is not None and not w.created]
            unfinished = await self._idx(self.index.pending_tokens, unchanged, tokens) if unchanged else {}
        finally:
            self._release_times(times)
            await self._idx(self.index.end_puts, tokens)
        # An identical put publishes too when an earlier put of the id may not have: its object was
        # not indexed yet (a write that crashed before step 4) or it is still in the journal (a
        # crash or a bus failure before step 5, or a put in flight). Same msg id, so JetStream
        # keeps one event.
        await asyncio.gather(
            *(
                self._announce(w.row)
                for w in written
                if w.row is not None and (w.created or w.row.id in newly_indexed or w.row.id in unfinished)
            )
        )
        # Announced now, so the entries of earlier puts of these ids are done too.
        await self._idx(self.index.clear_pending, [*tokens, *(t for ts in unfinished.values() for t in ts)])
        for result, w in zip(results, written, strict=True):
            if w.row is not None:
                result.stored = pb.Trajectory.FromString(w.row.basic)
                result.stored.object.CopyFrom(_ref(w.row))
        return results

    async def _announce(self, row: model.IndexRow) -> None:
        if self._publish is None:
            return
        t = pb.Trajectory.FromString(row.basic)
        msg_id = event_id(row.id, row.content_sha256)
        event = events_pb2.TrajectoryStored(
            meta=events_pb2.EventMeta(event_id=msg_id, occurred_at=t.create_time, producer=PRODUCER),
            trajectory_id=t.id,
            run_id=t.run_id,
            task=t.task,
            model=t.policy.model,
            teacher_kind=t.teacher_kind,
            resolved=t.outcome.resolved,
            object=_ref(row),
        )
        try:
            await self._publish(SUBJECT_STORED, event, msg_id)
        except Exception as err:
            raise Unavailable(
                f"trajectory {row.id!r} is stored but its flywheel.trajectory.stored event could not be "
                f"published ({type(err).__name__}: {err}); retry the put to finish it"
            ) from err

    # ----------------------------------------------------------------------------------- read

    def _read_object(self, trajectory_id: str) -> pb.Trajectory | None:
        key = model.object_key(trajectory_id)
        try:
            data = self.objects.get_bytes(key)
        except ObjectNotFoundError:
            return None
        return model.parse_stored(key, data)

    async def get(
        self, trajectory_id: str, view: pb.TrajectoryView = pb.TRAJECTORY_VIEW_FULL
    ) -> pb.Trajectory:
        model.validate_id("trajectory_id", trajectory_id)
        t = await self._io(self._read_object, trajectory_id)
        if t is None:
            raise NotFound(f"trajectory {trajectory_id!r} not found")
        return model.basic_view(t) if view == pb.TRAJECTORY_VIEW_BASIC else t

    async def list_page(
        self, flt: pb.TrajectoryFilter, view: pb.TrajectoryView, page_size: int, page_token: str
    ) -> tuple[list[pb.Trajectory], str]:
        if page_size < 0:
            raise InvalidArgument("page_size", f"must be >= 0, got {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        query = build_query(flt)
        fingerprint = _fingerprint(flt, view)
        after = decode_token(page_token, fingerprint) if page_token else None
        rows = await self._idx(self.index.page, query, after, size + 1, self.watermark_us())
        more = len(rows) > size
        rows = rows[:size]
        items = await self._materialize(rows, view)
        token = encode_token(rows[-1][0], rows[-1][1], fingerprint) if more else ""
        return items, token

    async def _materialize(
        self, rows: Sequence[tuple[int, str, str, bytes, int, str]], view: pb.TrajectoryView
    ) -> list[pb.Trajectory]:
        if view != pb.TRAJECTORY_VIEW_FULL:
            out = []
            for _, _, key, basic, size, sha256 in rows:
                t = pb.Trajectory.FromString(basic)
                t.object.CopyFrom(common_pb2.ObjectRef(key=key, size_bytes=size, sha256=sha256))
                out.append(t)
            return out
        loaded = await asyncio.gather(*(self._io(self._read_object, row[1]) for row in rows))
        return [t for t in loaded if t is not None]  # a row whose object a DeleteRun just removed

    async def export(self, flt: pb.TrajectoryFilter, view: pb.TrajectoryView) -> AsyncIterator[pb.Trajectory]:
        """Every match in list order, EXPORT_CHUNK rows at a time (constant memory)."""
        query = build_query(flt)
        after: tuple[int, str] | None = None
        # Fixed at the start: an export is a snapshot of what was visible when it began.
        watermark = await self._idx(self.index.snapshot_bound, self.watermark_us(), self._last_us)
        chunk = EXPORT_FIRST_CHUNK  # small first, so the first item leaves quickly
        while True:
            rows = await self._idx(self.index.page, query, after, chunk, watermark)
            if not rows:
                return
            for t in await self._materialize(rows, view):
                yield t
            after = (rows[-1][0], rows[-1][1])
            chunk = EXPORT_CHUNK

    # --------------------------------------------------------------------------------- delete

    async def delete_run(
        self, run_id: str, reason: str, validate_only: bool, caller: dict[str, str]
    ) -> tuple[int, common_pb2.ObjectRef | None]:
        model.validate_id("run_id", run_id)
        if not reason.strip():
            raise InvalidArgument(
                "reason", "is required: say why the run is deleted (it goes to the audit record)"
            )
        if len(reason) > MAX_REASON:
            raise InvalidArgument("reason", f"is {len(reason)} characters; at most {MAX_REASON}")
        query = Query()
        query.eq("run_id", run_id)
        ids: list[str] = []
        after = None
        while True:
            rows = await self._idx(self.index.page, query, after, 5000, None)
            if not rows:
                break
            ids.extend(row[1] for row in rows)
            after = (rows[-1][0], rows[-1][1])
        if validate_only:
            return len(ids), None
        now = dt.datetime.now(dt.UTC)
        record = {
            "action": "DeleteRun",
            "service": PRODUCER,
            "run_id": run_id,
            "reason": reason,
            "caller": caller,
            "time": now.isoformat(),
            "trajectory_count": len(ids),
            "trajectory_ids": ids,
        }
        audit_key = f"audit/trajectory-store/delete-run/{run_id}/{now.strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}.json"
        data = json.dumps(record, indent=2).encode()
        # The audit record is durable before anything is removed.
        info = await self._io(self.objects.put, audit_key, data)
        ref = common_pb2.ObjectRef(
            key=audit_key, size_bytes=len(data), sha256=info.sha256 or hashlib.sha256(data).hexdigest()
        )
        for start in range(0, len(ids), 256):
            chunk = ids[start : start + 256]
            await asyncio.gather(*(self._io(self.objects.delete, model.object_key(i)) for i in chunk))
            await self._idx(self.index.delete_ids, chunk)
        log.info("deleted run", extra={"run_id": run_id, "count": len(ids), "audit_record": audit_key})
        return len(ids), ref

    # ------------------------------------------------------------------------------- recovery

    async def recover(self) -> int:
        """Finish puts a crash interrupted (index row and event); returns how many were found."""
        pending = await self._idx(self.index.pending)
        if not pending:
            return 0
        done = []
        for token, trajectory_id, _ in pending:
            if not model.ID_RE.fullmatch(trajectory_id):
                done.append(token)
                continue
            key = model.object_key(trajectory_id)
            try:
                data = await self._io(self.objects.get_bytes, key)
            except ObjectNotFoundError:
                done.append(token)  # the object was never written: the put was not acknowledged
                continue
            row = model.index_row(key, data)
            await self._idx(self.index.insert, [row])
            # Announced whether or not the crash came before the event: the msg id is the same, so
            # JetStream keeps one within its window, and consumers are idempotent beyond it.
            await self._announce(row)
            done.append(token)
        await self._idx(self.index.clear_pending, done)
        # Recovered rows keep the create_time their put took before the crash; the clock must
        # stay ahead of them (an export's snapshot bound is derived from it).
        recovered_max = await self._idx(self.index.max_create_time_us)
        with self._clock_lock:
            self._last_us = max(self._last_us, recovered_max)
        log.info("recovered interrupted puts", extra={"count": len(pending)})
        return len(pending)


# --------------------------------------------------------------------------------- rebuild


def iter_index_rows(objects: ObjectStore, threads: int = 16, window: int = 256) -> Iterator[model.IndexRow]:
    """Index rows for every trajectory object, read ``threads`` at a time (an S3 GET is mostly
    waiting); at most ``window`` objects are held in memory."""

    def load(key: str) -> model.IndexRow | None:
        try:
            return model.index_row(key, objects.get_bytes(key))
        except ObjectNotFoundError:
            return None  # deleted since listed

    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="traj-rebuild") as pool:
        keys: list[str] = []
        for info in objects.list(model.OBJECT_PREFIX):
            if model.id_from_key(info.key) is not None:
                keys.append(info.key)
            if len(keys) >= window:
                yield from (row for row in pool.map(load, keys) if row is not None)
                keys = []
        yield from (row for row in pool.map(load, keys) if row is not None)


def rebuild_index(objects: ObjectStore, target: Path | PostgresIndex, meta: dict[str, str]) -> int:
    """Rebuild an index from the objects alone: replace the SQLite file at ``target``, or make
    the PostgreSQL index ``target`` equal to the objects (in place, while replicas write)."""
    if isinstance(target, PostgresIndex):
        return target.rebuild(iter_index_rows(objects), meta)
    return rebuild(target, iter_index_rows(objects), meta)


# ------------------------------------------------------------------------------ filter → SQL
# One WHERE clause for both index backends (``?`` placeholders; labels rendered per dialect).


def build_query(flt: pb.TrajectoryFilter) -> Query:
    q = Query()
    if flt.run_ids:
        q.any_of("run_id", list(flt.run_ids))
    if flt.suite:
        q.eq("suite", flt.suite)
    if flt.task_ids:
        q.any_of("task_id", list(flt.task_ids))
    if flt.split:
        q.eq("split", int(flt.split))
    if flt.model:
        q.eq("model", flt.model)
    if flt.adapter_version and not flt.adapter_name:
        raise InvalidArgument("filter.adapter_version", "needs filter.adapter_name")
    if flt.adapter_name:
        q.eq("adapter_name", flt.adapter_name)
    if flt.adapter_version:
        q.eq("adapter_version", flt.adapter_version)
    if flt.outcome == pb.OUTCOME_FILTER_RESOLVED:
        q.eq("resolved", 1)
    elif flt.outcome == pb.OUTCOME_FILTER_UNRESOLVED:
        q.eq("resolved", 0)
    rng = flt.create_time_range
    for name in ("start_time", "end_time"):
        if rng.HasField(name):
            check_timestamp(f"filter.create_time_range.{name}", getattr(rng, name))
    if rng.HasField("start_time"):
        q.raw("create_time_us >= ?", rng.start_time.ToMicroseconds())
    if rng.HasField("end_time"):
        q.raw("create_time_us < ?", rng.end_time.ToMicroseconds())
    if flt.teacher_kinds:
        q.any_of("teacher_kind", [int(k) for k in flt.teacher_kinds])
    for key, value in sorted(flt.labels.items()):
        # The key goes into a JSON path: only label keys as stored ones are (no quotes, no NULs).
        if not model.LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"filter.labels[{shown(key)}]", "keys are 1-63 characters of [a-z0-9_.-]")
        q.label(key, value)
    return q


def _ref(row: model.IndexRow) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(key=row.object_key, size_bytes=row.size_bytes, sha256=row.sha256)


def _fingerprint(flt: pb.TrajectoryFilter, view: pb.TrajectoryView) -> str:
    raw = flt.SerializeToString(deterministic=True) + bytes([view])
    return hashlib.sha256(raw).hexdigest()[:16]


def encode_token(create_time_us: int, trajectory_id: str, fingerprint: str) -> str:
    raw = json.dumps([create_time_us, trajectory_id, fingerprint], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, fingerprint: str) -> tuple[int, str]:
    try:
        t, i, f = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        t, i = int(t), str(i)
    except (ValueError, TypeError):
        raise InvalidArgument("page_token", "was not issued by ListTrajectories") from None
    if f != fingerprint:
        raise InvalidArgument("page_token", "was issued for a different filter or view; keep them unchanged")
    return t, i
