"""Build jobs: queued, run in a worker thread, persisted in the object store, resumed on restart.

A build is stored as ``dataset-builds/<id>.json`` (the DatasetBuild message as JSON) on every
state change, and an idempotency key as ``dataset-builds/requests/<sha256 of the key>.json``.
At start-up every QUEUED or RUNNING build is queued again: a build has no partial output
outside its temporary folder, and the same inputs give the same dataset id, so running it again
from the start yields the same dataset (and an already published dataset is not rewritten).
Events use ids derived from the build id, so a re-run never publishes twice. Once a terminal
event is out, ``dataset-builds/published/<id>`` records it; a terminal build without that record
at start-up (the service stopped in between, or NATS was down) has its event published again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from ulid import ULID

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.events.v1 import events_pb2
from flywheel_common.errors import AlreadyExists, NotFound
from flywheel_common.events import EventBus
from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore
from flywheel_dataset.build import (
    BuildCancelled,
    BuildContext,
    EmptyDataset,
    Progress,
    TrajectorySource,
    manifest_to_dataset,
    run_build,
)
from flywheel_dataset.source import GrpcTrajectorySource, StoreUnavailable
from flywheel_dataset.tokens import load_counter
from flywheel_dataset.validation import spec_from_build

log = logging.getLogger("flywheel.dataset.jobs")

PREFIX = "dataset-builds/"
#: ``dataset-builds/published/<build id>`` exists once the build's terminal event is published.
PUBLISHED = f"{PREFIX}published/"
TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)
PRODUCER = "dataset-builder"


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class _Shutdown(Exception):
    """The service is stopping; the build stays RUNNING and is resumed at the next start."""


class BuildManager:
    def __init__(
        self,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        source_factory: Callable[[threading.Event], TrajectorySource],
        *,
        workers: int = 1,
        price_usd_per_million_tokens: float = 0.48,
        decontamination_ngram: int = 13,
        work_dir: Path | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._source_factory = source_factory
        self._workers = workers
        self._price = price_usd_per_million_tokens
        self._ngram = decontamination_ngram
        self._work_dir = work_dir
        self.builds: dict[str, dpb.DatasetBuild] = {}
        self._live: dict[str, tuple[Progress, threading.Event]] = {}
        self._cancel_requested: set[str] = set()
        self._shutdown = threading.Event()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    @property
    def store(self) -> ObjectStore:
        return self._store()

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        pending, unannounced = await asyncio.to_thread(self._load)
        if unannounced:
            await self._republish(unannounced)
        for build in pending:
            log.info("resuming build %s (was %s)", build.id, common_pb2.JobState.Name(build.state))
            self._queue.put_nowait(build.id)
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]

    async def stop(self, grace_s: float = 15.0) -> None:
        """Stop running builds where they are (they stay RUNNING and rerun at the next start).

        A build's thread notices within one trajectory or 256 examples; its worker is awaited so
        that no thread still writes when the object store is closed. Idle workers are cancelled.
        """
        self._shutdown.set()
        for _, cancel in self._live.values():
            cancel.set()
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _load(self) -> tuple[list[dpb.DatasetBuild], list[dpb.DatasetBuild]]:
        """(builds to run again, terminal builds whose event may not be out)."""
        store = self.store
        pending = []
        published = {info.key[len(PUBLISHED) :] for info in store.list(PUBLISHED)}
        unannounced = []
        for info in store.list(PREFIX):
            rest = info.key[len(PREFIX) :]
            if "/" in rest or not rest.endswith(".json"):
                continue
            build = json_format.Parse(
                store.get_bytes(info.key), dpb.DatasetBuild(), ignore_unknown_fields=True
            )
            self.builds[build.id] = build
            if build.state not in TERMINAL:
                pending.append(build)
            elif build.id not in published:
                unannounced.append(build)
        pending.sort(key=lambda b: (b.create_time.ToNanoseconds(), b.id))
        return pending, unannounced

    def _persist(self, build: dpb.DatasetBuild) -> None:
        body = json_format.MessageToJson(build, preserving_proto_field_name=True).encode()
        self.store.put(f"{PREFIX}{build.id}.json", body, content_type="application/json", overwrite=True)

    # ------------------------------------------------------------------------------ requests

    async def create(self, build: dpb.DatasetBuild, request_id: str) -> dpb.DatasetBuild:
        """Queue a resolved build; a repeated request_id with the same build returns the first."""
        async with self._lock:
            request_key = ""
            fingerprint = hashlib.sha256(build.SerializeToString(deterministic=True)).hexdigest()
            if request_id:
                request_key = f"{PREFIX}requests/{hashlib.sha256(request_id.encode()).hexdigest()}.json"
                try:
                    seen = json.loads(await asyncio.to_thread(self.store.get_bytes, request_key))
                except ObjectNotFoundError:
                    seen = None
                if seen is not None:
                    if seen["fingerprint"] != fingerprint:
                        raise AlreadyExists(
                            f"request_id {request_id!r} was already used for build {seen['build_id']} "
                            "with a different request"
                        )
                    return self.get(seen["build_id"])
            build.id = f"dsb-{ULID()}"
            build.state = common_pb2.JOB_STATE_QUEUED
            build.create_time.CopyFrom(_now())
            await asyncio.to_thread(self._persist, build)
            if request_key:
                body = json.dumps({"build_id": build.id, "fingerprint": fingerprint}).encode()
                await asyncio.to_thread(self.store.put, request_key, body, content_type="application/json")
            self.builds[build.id] = build
            self._queue.put_nowait(build.id)
            return self.snapshot(build.id)

    def get(self, build_id: str) -> dpb.DatasetBuild:
        if build_id not in self.builds:
            raise NotFound(f"dataset build {build_id!r} does not exist")
        return self.snapshot(build_id)

    def snapshot(self, build_id: str) -> dpb.DatasetBuild:
        """The build with its live progress."""
        out = dpb.DatasetBuild()
        out.CopyFrom(self.builds[build_id])
        live = self._live.get(build_id)
        if live is not None:
            progress = live[0]
            out.progress.CopyFrom(
                dpb.BuildProgress(
                    trajectories_read=progress.trajectories_read,
                    trajectories_total=progress.trajectories_total,
                    examples_written=progress.examples_written,
                    fraction=progress.fraction,
                )
            )
        return out

    async def cancel(self, build_id: str) -> dpb.DatasetBuild:
        build = self.builds.get(build_id)
        if build is None:
            raise NotFound(f"dataset build {build_id!r} does not exist")
        if build.state in TERMINAL:
            return self.snapshot(build_id)
        self._cancel_requested.add(build_id)
        live = self._live.get(build_id)
        if live is not None:
            live[1].set()  # the worker finishes the transition to CANCELLED
        elif build.state == common_pb2.JOB_STATE_QUEUED:
            await self._finish(
                build,
                common_pb2.JOB_STATE_CANCELLED,
                error=("cancelled by request", grpc.StatusCode.CANCELLED),
            )
        return self.snapshot(build_id)

    # ------------------------------------------------------------------------------ running

    async def _worker(self) -> None:
        # Returns after its current build once the service is stopping (stop() awaits that).
        while not self._shutdown.is_set():
            build_id = await self._queue.get()
            build = self.builds.get(build_id)
            if build is None or build.state in TERMINAL:
                continue
            task = asyncio.current_task()
            assert task is not None
            self._busy.add(task)
            try:
                await self._run(build)
            except _Shutdown:
                return
            except Exception:  # never let one build stop the worker
                log.exception("build %s crashed the worker", build_id)
            finally:
                self._busy.discard(task)

    async def _run(self, build: dpb.DatasetBuild) -> None:
        cancel = threading.Event()
        progress = Progress()
        self._live[build.id] = (progress, cancel)
        if build.id in self._cancel_requested:
            cancel.set()
        build.state = common_pb2.JOB_STATE_RUNNING
        if not build.HasField("start_time"):
            build.start_time.CopyFrom(_now())
        await asyncio.to_thread(self._persist, build)
        source = self._source_factory(cancel)
        spec = spec_from_build(build)
        store = self.store

        def counter(workdir: Path):
            return load_counter(store, spec.target_base_model, workdir)

        ctx = BuildContext(
            store=store,
            source=source,
            tokenizer=counter,
            price_usd_per_million_tokens=self._price,
            decontamination_ngram=self._ngram,
            cancel=cancel,
            progress=progress,
        )
        started = time.monotonic()
        try:
            dataset = await asyncio.to_thread(
                run_build, spec, ctx, str(self._work_dir) if self._work_dir else None
            )
        except BuildCancelled:
            if self._shutdown.is_set() and build.id not in self._cancel_requested:
                self._live.pop(build.id, None)
                raise _Shutdown() from None
            await self._finish(
                build,
                common_pb2.JOB_STATE_CANCELLED,
                error=("cancelled by request", grpc.StatusCode.CANCELLED),
            )
            return
        except EmptyDataset as err:
            await self._finish(
                build, common_pb2.JOB_STATE_FAILED, error=(str(err), grpc.StatusCode.FAILED_PRECONDITION)
            )
            return
        except Exception as err:
            if self._shutdown.is_set():
                self._live.pop(build.id, None)
                raise _Shutdown() from None
            log.exception("build %s failed", build.id)
            code = (
                grpc.StatusCode.UNAVAILABLE if isinstance(err, StoreUnavailable) else grpc.StatusCode.INTERNAL
            )
            await self._finish(build, common_pb2.JOB_STATE_FAILED, error=(str(err), code))
            return
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        log.info("build %s produced %s in %.1f s", build.id, dataset.id, time.monotonic() - started)
        build.dataset_id = dataset.id
        await self._finish(build, common_pb2.JOB_STATE_SUCCEEDED, dataset=dataset)

    async def _finish(
        self,
        build: dpb.DatasetBuild,
        state: int,
        *,
        error: tuple[str, grpc.StatusCode] | None = None,
        dataset: dpb.Dataset | None = None,
    ) -> None:
        final = self.snapshot(build.id)
        build.progress.CopyFrom(final.progress)
        if state == common_pb2.JOB_STATE_SUCCEEDED:
            build.progress.fraction = 1.0
        build.state = state
        build.end_time.CopyFrom(_now())
        if error is not None:
            build.error.CopyFrom(common_pb2.Error(code=error[1].value[0], message=error[0]))
        await asyncio.to_thread(self._persist, build)
        self._live.pop(build.id, None)
        await self._publish(build, dataset)

    async def _publish(self, build: dpb.DatasetBuild, dataset: dpb.Dataset | None) -> None:
        bus = self._bus()
        if bus is None:
            return
        meta = events_pb2.EventMeta(occurred_at=build.end_time, producer=PRODUCER)
        if dataset is not None:
            meta.event_id = f"dataset-built:{build.id}"
            event = events_pb2.DatasetBuilt(
                meta=meta,
                dataset_id=dataset.id,
                build_id=build.id,
                recipe=build.recipe,
                kind=dataset.kind,
                splits=dataset.splits,
                formats=build.formats,
                trajectory_count=dataset.trajectory_count,
                manifest=dataset.manifest,
                loop_id=build.loop_id,
            )
            subject = "flywheel.dataset.built"
        else:
            meta.event_id = f"dataset-failed:{build.id}"
            event = events_pb2.DatasetBuildFailed(
                meta=meta,
                build_id=build.id,
                recipe=build.recipe,
                state=build.state,
                error=build.error,
                loop_id=build.loop_id,
            )
            subject = "flywheel.dataset.failed"
        try:
            await bus.publish(subject, event, msg_id=meta.event_id)
        except Exception:
            log.exception("could not publish %s for build %s; retried at the next start", subject, build.id)
            return
        await asyncio.to_thread(
            self.store.put, f"{PUBLISHED}{build.id}", meta.event_id.encode(), overwrite=True
        )

    async def _republish(self, builds: list[dpb.DatasetBuild]) -> None:
        """Publish the events of terminal builds whose event is not known to be out (the service
        stopped between the terminal state and the publish). Same msg id: JetStream drops a
        duplicate within its window, and consumers are idempotent on the ids beyond it."""
        for build in builds:
            dataset = None
            if build.state == common_pb2.JOB_STATE_SUCCEEDED:
                key = f"datasets/{build.dataset_id}/manifest.json"
                try:
                    dataset = manifest_to_dataset(await asyncio.to_thread(self.store.get_bytes, key))
                except ObjectNotFoundError:
                    log.error("build %s succeeded but %s is missing; no event", build.id, key)
                    continue
                dataset.manifest.key = key
            await self._publish(build, dataset)


def grpc_source_factory(address: str, timeout_s: float) -> Callable[[threading.Event], TrajectorySource]:
    def make(cancel: threading.Event) -> TrajectorySource:
        return GrpcTrajectorySource(address, timeout_s=timeout_s, cancel=cancel)

    return make
