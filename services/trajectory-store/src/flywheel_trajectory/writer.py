"""Step 3 of a put (see store.py), run in writer processes: normalise, seal, write, derive the row.

Why processes: on the filesystem backend a put is mostly Python (validation and stats over every
step, serialisation, the object store's temp file, fsync, sidecar and link), all under one GIL.
Measured here on 2 cores, one process tops out below 900 puts/s of 10 KB trajectories; spreading
the per-trajectory work over a few processes (each with threads for the fsync waits) lets the
service use every core. The main process keeps the gRPC server, the clock, the SQLite index and
the event bus. ``write_processes = 0`` runs the same code on threads of the main process.

Everything crossing the process boundary is plain: serialized trajectories in, tuples out.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common.errors import InvalidArgument
from flywheel_common.objectstore import ObjectExistsError, ObjectStore, ObjectStoreSettings, open_object_store
from flywheel_common.procs import die_with_parent
from flywheel_trajectory import model

log = logging.getLogger("flywheel.trajectory.writer")


@dataclass(frozen=True)
class Written:
    """The outcome of one item: ``row`` when stored (``created`` False: identical content was
    already there), else ``error_kind`` ("invalid" or "conflict") with ``field`` and ``message``."""

    row: model.IndexRow | None = None
    created: bool = False
    error_kind: str = ""
    field: str = ""
    message: str = ""


class _Writer:
    def __init__(self, store: ObjectStore, threads: int) -> None:
        self.store = store
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="traj-write")

    def write_items(self, items: list[tuple[bytes, int]]) -> list[Written]:
        return list(self.pool.map(self.write_one, items))

    def write_one(self, item: tuple[bytes, int]) -> Written:
        raw, create_time_us = item
        t = pb.Trajectory.FromString(raw)
        try:
            model.normalize(t, in_place=True)
        except InvalidArgument as err:
            return Written(error_kind="invalid", field=err.field, message=err.message)
        content_hash = model.content_sha256(t)
        data = model.seal(t, create_time_us)
        key = model.object_key(t.id)
        try:
            self.store.put(key, data, content_type=model.CONTENT_TYPE)
            return Written(row=model.index_row(key, data, t, content_hash), created=True)
        except ObjectExistsError:
            pass
        existing = self.store.get_bytes(key)
        stored = pb.Trajectory.FromString(existing)
        stored_hash = model.content_sha256(stored)
        if stored_hash != content_hash:
            return Written(
                error_kind="conflict",
                message=f"trajectory {t.id!r} already exists with different content (stored content sha256 "
                f"{stored_hash[:12]}…, this one {content_hash[:12]}…); trajectories are immutable: store the "
                "new one under a new id",
            )
        return Written(row=model.index_row(key, existing, stored, stored_hash), created=False)


# ------------------------------------------------------------------------ in a worker process

_worker: _Writer | None = None


def _init_worker(settings: ObjectStoreSettings, threads: int, parent: int) -> None:
    global _worker
    die_with_parent()
    # die_with_parent only works if the parent was alive when it ran, and a spawned worker takes
    # seconds to get here; a worker must never outlive the service (it would hold its pipes and
    # write after the service is gone), so it also watches its parent pid.
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()
    # Ctrl-C goes to the whole process group: the service decides when its writers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = open_object_store(settings)
    store.ensure_ready()
    _worker = _Writer(store, threads)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _write_in_worker(items: list[tuple[bytes, int]]) -> list[Written]:
    assert _worker is not None, "writer process not initialised"
    return _worker.write_items(items)


def _ping(_: int = 0) -> int:
    return os.getpid()


class WriterPool:
    """Runs :meth:`_Writer.write_items` on ``processes`` worker processes, or on local threads."""

    def __init__(
        self, store: ObjectStore, settings: ObjectStoreSettings, processes: int, threads: int
    ) -> None:
        self.processes = processes
        self._settings = settings
        self._threads = threads
        self._local = _Writer(store, threads) if processes == 0 else None
        # The outer call of local mode waits on the writer's own pool, so it runs elsewhere.
        self._local_outer = concurrent.futures.ThreadPoolExecutor(8) if processes == 0 else None
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def start(self) -> None:
        if self.processes and self._executor is None:
            import multiprocessing

            # spawn, not fork: the parent runs gRPC and asyncio threads, which must not be forked.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self._settings, self._threads, os.getpid()),
            )
            # Start every worker now, so the first put does not pay for it.
            list(self._executor.map(_ping, range(self.processes)))

    def submit(self, items: list[tuple[bytes, int]]) -> concurrent.futures.Future[list[Written]]:
        if self._local is not None and self._local_outer is not None:
            return self._local_outer.submit(self._local.write_items, items)
        assert self._executor is not None, "WriterPool.start() was not called"
        try:
            return self._executor.submit(_write_in_worker, items)
        except concurrent.futures.process.BrokenProcessPool:
            self.restart()
            return self._executor.submit(_write_in_worker, items)

    def restart(self) -> None:
        """After a writer process died: a fresh pool (puts in flight fail; clients retry them)."""
        log.error("a writer process died; starting new ones")
        old, self._executor = self._executor, None
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        self.start()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._local is not None and self._local_outer is not None:
            self._local_outer.shutdown(wait=True)
            self._local.pool.shutdown(wait=True)
