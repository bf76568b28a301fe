"""The gRPC surface of the trajectory store.

Thin transport: the servicer maps protobuf requests to :class:`~flywheel_trajectory.store.TrajectoryStore`
and back. Domain errors raised there become status codes in the shared interceptor.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import cast

import grpc

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common.errors import FlywheelError, InvalidArgument, NotFound, check_enum, shown
from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore
from flywheel_common.runtime import Dependencies, StartupError
from flywheel_common.server import GrpcApp, ServiceBinding
from flywheel_trajectory import importers, model
from flywheel_trajectory.index import SqliteIndex, TrajectoryIndex
from flywheel_trajectory.pg_index import IndexDatabaseError, PostgresIndex
from flywheel_trajectory.settings import TrajectorySettings
from flywheel_trajectory.store import TrajectoryStore, rebuild_index
from flywheel_trajectory.writer import WriterPool

NAME = "trajectory-store"
DESCRIPTOR = pb.DESCRIPTOR.services_by_name["TrajectoryService"]
INDEX_FILE = "index.sqlite"
MAX_IMPORT_ERRORS = 1000
#: Chunks of one BatchPutTrajectories stream being stored at once.
PIPELINE = 2

log = logging.getLogger("flywheel.trajectory")


def store_fingerprint(settings: TrajectorySettings) -> str:
    """Which object store an index belongs to: an index found next to another store is rebuilt."""
    s = settings.object_store
    if s.backend == "fs":
        return f"fs:{s.root.expanduser().absolute()}"
    return f"s3:{s.endpoint}/{s.bucket}"


def open_index(settings: TrajectorySettings, objects: ObjectStore) -> TrajectoryIndex:
    """Open the listing index (PostgreSQL when a database URL is set, else SQLite), rebuilding it
    from the objects first when asked, when there is none yet, or when it belongs to another
    object store. Blocking; a database that cannot be used raises :class:`StartupError`."""
    fingerprint = store_fingerprint(settings)
    if settings.database_url is not None:
        try:
            index = PostgresIndex(settings.database_url.get_secret_value(), settings.database_schema)
        except IndexDatabaseError as err:
            raise StartupError(f"{NAME}: {err}") from err
        try:
            # One replica at a time decides (and rebuilds): the others then find it done.
            with index.startup_lock():
                reason = _rebuild_reason(settings, index.get_meta("store"), fingerprint)
                if reason is not None:
                    count = rebuild_index(objects, index, {"store": fingerprint})
                    log.info(
                        "rebuilt the trajectory index from the objects",
                        extra={"reason": reason, "rows": count},
                    )
        except BaseException:
            index.close()
            raise
        return index
    path = settings.resolved_index_dir() / INDEX_FILE
    if path.exists():
        probe = SqliteIndex(path)
        try:
            reason = _rebuild_reason(settings, probe.get_meta("store"), fingerprint)
        finally:
            probe.close()
    else:
        reason = _rebuild_reason(settings, None, fingerprint)
    if reason is not None:
        count = rebuild_index(objects, path, {"store": fingerprint})
        log.info("rebuilt the trajectory index from the objects", extra={"reason": reason, "rows": count})
    return SqliteIndex(path)


def _rebuild_reason(settings: TrajectorySettings, owner: str | None, fingerprint: str) -> str | None:
    if settings.rebuild_index_on_start:
        return "FLYWHEEL_TRAJECTORY_REBUILD_INDEX_ON_START is set"
    if owner is None:
        return "no index yet"
    if owner != fingerprint:
        return f"the index belongs to {owner!r}, not {fingerprint!r}"
    return None


def open_trajectory_store(settings: TrajectorySettings, objects: ObjectStore, publish) -> TrajectoryStore:
    """Open (and rebuild first, if needed) the index, and the store on top of it. Blocking."""
    index = open_index(settings, objects)
    writer = WriterPool(objects, settings.object_store, settings.write_processes, settings.write_threads)
    return TrajectoryStore(objects, index, publish, writer)


class TrajectoryService(trajectory_pb2_grpc.TrajectoryServiceServicer):
    """``flywheel.trajectory.v1.TrajectoryService``."""

    def __init__(self, settings: TrajectorySettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps
        self._store: TrajectoryStore | None = None

    @property
    def store(self) -> TrajectoryStore:
        if self._store is None:
            raise RuntimeError("the trajectory store is not open (before start-up)")
        return self._store

    async def start(self) -> None:
        async def publish(subject: str, message, msg_id: str) -> None:
            await self.deps.bus.publish(subject, message, msg_id=msg_id)

        self._store = await asyncio.to_thread(open_trajectory_store, self.settings, self.deps.store, publish)
        # On this (the main) thread: writer processes die with the thread that started them
        # (PR_SET_PDEATHSIG), so they must not be started from a pool thread that may exit.
        self._store.writer.start()
        await self._store.recover()

    async def stop(self) -> None:
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None

    # ---------------------------------------------------------------------------------- RPCs

    async def PutTrajectory(self, request: pb.PutTrajectoryRequest, context) -> pb.PutTrajectoryResponse:
        if not request.HasField("trajectory"):
            raise InvalidArgument("trajectory", "is required")
        (result,) = await self.store.put_many([request.trajectory])
        if result.error is not None:
            raise result.error
        return pb.PutTrajectoryResponse(trajectory=result.stored, created=result.created)

    async def BatchPutTrajectories(self, request_iterator, context) -> pb.BatchPutTrajectoriesResponse:
        reply = pb.BatchPutTrajectoriesResponse()
        chunk: list[pb.Trajectory] = []
        position = 0
        # Chunks are stored while the next ones arrive: at most PIPELINE in flight per stream.
        in_flight: list[asyncio.Task] = []

        async def store(items: list[pb.Trajectory], first: int) -> None:
            for r in await self.store.put_many(items, first_index=first):
                if r.error is not None:
                    reply.errors.append(_batch_error(r.index, r.trajectory_id, r.error))
                elif r.created:
                    reply.created_count += 1
                else:
                    reply.unchanged_count += 1

        def flush() -> None:
            nonlocal chunk, position
            in_flight.append(asyncio.create_task(store(chunk, position)))
            position += len(chunk)
            chunk = []

        try:
            async for request in request_iterator:
                chunk.append(request.trajectory)
                if len(chunk) >= self.settings.batch_chunk:
                    flush()
                    if len(in_flight) >= PIPELINE:
                        await in_flight.pop(0)
            if chunk:
                flush()
            for task in in_flight:
                await task
        finally:
            for task in in_flight:
                task.cancel()
        reply.errors.sort(key=lambda e: e.index)
        return reply

    async def GetTrajectory(self, request: pb.GetTrajectoryRequest, context) -> pb.GetTrajectoryResponse:
        view = _view(request.view, pb.TRAJECTORY_VIEW_FULL)
        return pb.GetTrajectoryResponse(trajectory=await self.store.get(request.trajectory_id, view))

    async def ListTrajectories(
        self, request: pb.ListTrajectoriesRequest, context
    ) -> pb.ListTrajectoriesResponse:
        view = _view(request.view, pb.TRAJECTORY_VIEW_BASIC)
        items, token = await self.store.list_page(request.filter, view, request.page_size, request.page_token)
        return pb.ListTrajectoriesResponse(trajectories=items, next_page_token=token)

    async def ExportTrajectories(
        self, request: pb.ExportTrajectoriesRequest, context
    ) -> AsyncIterator[pb.ExportTrajectoriesResponse]:
        view = _view(request.view, pb.TRAJECTORY_VIEW_FULL)
        async for t in self.store.export(request.filter, view):
            yield pb.ExportTrajectoriesResponse(trajectory=t)

    async def DeleteRun(self, request: pb.DeleteRunRequest, context) -> pb.DeleteRunResponse:
        metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        caller = {
            "peer": context.peer() or "",
            "user": metadata.get("x-flywheel-user", ""),
            "request_id": metadata.get("x-request-id", ""),
            "user_agent": metadata.get("user-agent", ""),
        }
        count, ref = await self.store.delete_run(
            request.run_id, request.reason, request.validate_only, caller
        )
        reply = pb.DeleteRunResponse(deleted_count=count)
        if ref is not None:
            reply.audit_record.CopyFrom(ref)
        return reply

    async def ImportTrajectories(
        self, request: pb.ImportTrajectoriesRequest, context
    ) -> pb.ImportTrajectoriesResponse:
        fmt = request.format
        if fmt not in importers.SUITE_DEFAULTS:
            raise InvalidArgument(
                "format", "is required: IMPORT_FORMAT_AIDE_JOURNAL, _SWE_JSONL or _CHAT_JSONL"
            )
        which = request.WhichOneof("source")
        if which is None:
            raise InvalidArgument("source", "set exactly one of object_key or content")
        if request.run_id:
            model.validate_id("run_id", request.run_id)
        if request.suite and not model.TASK_ID_RE.fullmatch(request.suite):
            raise InvalidArgument("suite", "must be 1-128 characters of [A-Za-z0-9._/-]")
        for key, value in request.labels.items():
            if not model.LABEL_KEY_RE.fullmatch(key) or len(value) > model.MAX_LABEL_VALUE:
                raise InvalidArgument(
                    f"labels[{key}]", "keys: 1-63 of [a-z0-9_.-]; values: at most 256 characters"
                )
        if len(request.source_name) > 1024:
            raise InvalidArgument("source_name", "is longer than 1,024 characters")
        if which == "content":
            source = request.source_name or "inline"
            content_hash = hashlib.sha256(request.content).hexdigest()
        else:
            source = request.object_key
            try:
                info = await asyncio.to_thread(self.deps.store.stat, source)
            except ObjectNotFoundError:
                raise NotFound(f"object_key: no object {shown(source)} in the object store") from None
            if info.sha256:
                content_hash = info.sha256
            else:  # a backend that does not know the hash: read the object once
                content_hash = await asyncio.to_thread(_hash_object, self.deps.store, source)
        run_id = request.run_id or importers.default_run_id(content_hash)
        ctx = importers.ImportContext(
            source=source, run_id=run_id, suite=request.suite, labels=dict(request.labels)
        )
        reply = pb.ImportTrajectoriesResponse(run_id=run_id)

        def report(line: int, pointer: str, message: str) -> None:
            reply.skipped_count += 1
            if len(reply.errors) < MAX_IMPORT_ERRORS:
                reply.errors.add(source=source, line=line, pointer=pointer, message=message)
            else:
                reply.errors_truncated = True

        chunk: list[tuple[int, pb.Trajectory]] = []

        async def flush() -> None:
            if request.validate_only:
                reply.created_count += len(chunk)  # would be stored (or found unchanged)
            else:
                results = await self.store.put_many([t for _, t in chunk])
                for (line, _), r in zip(chunk, results, strict=True):
                    if r.error is not None:
                        report(line, "", _message(r.error))
                    elif r.created:
                        reply.created_count += 1
                    else:
                        reply.unchanged_count += 1
            chunk.clear()

        async for item in self._import_items(fmt, which, request, source, ctx):
            if item.error is not None:
                report(item.line, item.error.pointer, item.error.message)
                continue
            assert item.trajectory is not None  # a record without an error was converted
            chunk.append((item.line, item.trajectory))
            if len(chunk) >= self.settings.batch_chunk:
                await flush()
        if chunk:
            await flush()
        return reply

    async def _import_items(
        self, fmt: pb.ImportFormat, which: str, request, source: str, ctx
    ) -> AsyncIterator[importers.Imported]:
        if which == "content":
            for item in importers.convert(fmt, request.content, ctx):
                yield item
            return
        # From the object store: JSONL is read a line at a time in a worker thread, so a large
        # source is never held in memory; an AIDE journal is one JSON document and is read whole.
        queue: asyncio.Queue = asyncio.Queue(maxsize=256)
        loop = asyncio.get_running_loop()
        done = object()

        def produce() -> None:
            try:
                with self.deps.store.open(source) as stream:
                    if fmt == pb.IMPORT_FORMAT_AIDE_JOURNAL:
                        items: Iterator[importers.Imported] = importers.convert(fmt, stream.read(), ctx)
                    else:
                        items = importers.convert(fmt, iter(stream.readline, b""), ctx)
                    for item in items:
                        asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()
            except BaseException as err:
                asyncio.run_coroutine_threadsafe(queue.put(err), loop).result()
                return
            asyncio.run_coroutine_threadsafe(queue.put(done), loop).result()

        worker = loop.run_in_executor(None, produce)
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        await worker


def _view(value: int, default: int) -> pb.TrajectoryView:
    """A request's ``view``: 0 (unset) means ``default``; a number outside the enum is refused."""
    return cast(pb.TrajectoryView, check_enum("view", value, pb.TrajectoryView, default=default))


def _hash_object(store: ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    with store.open(key) as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _message(err: Exception) -> str:
    return str(getattr(err, "message", err))


def _batch_error(index: int, trajectory_id: str, err: Exception) -> pb.BatchPutError:
    code = err.code if isinstance(err, FlywheelError) else grpc.StatusCode.INTERNAL
    details = {"field": err.field} if isinstance(err, InvalidArgument) else {}
    return pb.BatchPutError(
        index=index,
        trajectory_id=trajectory_id,
        error=common_pb2.Error(code=code.value[0], message=_message(err), details=details),
    )


def build_app(settings: TrajectorySettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    servicer = TrajectoryService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, trajectory_pb2_grpc.add_TrajectoryServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    # After the bus and the store are open (deps' hooks run first); shutdown hooks run in
    # reverse, so the servicer closes before the bus and the store do.
    app.on_startup.append(servicer.start)
    app.on_shutdown.append(servicer.stop)
    return app
