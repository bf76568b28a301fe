"""Build jobs: queued, run in a worker thread, kept by the job core, resumed on restart.

A build lives in the job core (``flywheel_common.jobs``) under ``dataset-builds/``: the
DatasetBuild message as ``dataset-builds/<id>.json``, rewritten on every state change, the
request-id ledger, and ``dataset-builds/published/<id>`` once its terminal event is in the
outbox. At start-up every QUEUED or RUNNING build is queued again: a build has no partial output
outside its temporary folder, and the same inputs give the same dataset id, so running it again
from the start yields the same dataset (and an already published dataset is not rewritten).
The terminal event (``flywheel.dataset.built`` with the dataset's manifest, or
``flywheel.dataset.failed``) has an id derived from the build id and goes out through the
core's outbox, so NATS being down never fails a build.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.events.v1 import events_pb2
from flywheel_common.events import EventBus
from flywheel_common.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    Announcement,
    Job,
    JobTable,
)
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
from flywheel_dataset.rl import PolicyMismatch
from flywheel_dataset.source import GrpcTrajectorySource, StoreUnavailable
from flywheel_dataset.tokens import TokenCounter, load_counter
from flywheel_dataset.validation import spec_from_build

log = logging.getLogger("flywheel.dataset.jobs")

PREFIX = "dataset-builds/"
PRODUCER = "dataset-builder"


class _Shutdown(Exception):
    """The service is stopping; the build stays RUNNING and is resumed at the next start."""


class BuildJob(Job[dpb.DatasetBuild]):
    """A build and, while its thread runs, its live progress and cancel flag."""

    def __init__(self, build: dpb.DatasetBuild) -> None:
        super().__init__(build)
        self.live: tuple[Progress, threading.Event] | None = None


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
        self._source_factory = source_factory
        self._workers = workers
        self._price = price_usd_per_million_tokens
        self._ngram = decontamination_ngram
        self._work_dir = work_dir
        self.table: JobTable[dpb.DatasetBuild, BuildJob] = JobTable(
            store=store,
            bus=bus,
            prefix=PREFIX,
            message_class=dpb.DatasetBuild,
            kind="dataset build",
            id_prefix="dsb",
            announce=self._terminal_event,
            make_job=BuildJob,
            snapshot=self._snapshot,
            on_cancel=self._cancel,
        )
        self._shutdown = threading.Event()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> ObjectStore:
        return self._store()

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        await self.table.start(lambda job: self._queue.put_nowait(job.id))
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(self._workers)]

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop running builds where they are (they stay RUNNING and rerun at the next start).

        A build's thread notices within one trajectory or 256 examples; its worker is awaited (at
        most ``grace_s``, which fits the service's shutdown budget) so that no thread normally
        still writes when the object store is closed; a build cut off here reruns from the start.
        Idle workers are cancelled.
        """
        self._shutdown.set()
        for job in self.table.jobs.values():
            if job.live is not None:
                job.live[1].set()
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.table.stop()

    # ------------------------------------------------------------------------------ requests

    async def create(self, build: dpb.DatasetBuild, request_id: str) -> dpb.DatasetBuild:
        """Queue a resolved build; a repeated request_id with the same build returns the first."""
        job, created = await self.table.create(build, request_id)
        if created:
            self._queue.put_nowait(job.id)
        return self.table.snapshot(job)

    def get(self, build_id: str) -> dpb.DatasetBuild:
        return self.table.get(build_id)

    def page(self, request: dpb.ListDatasetBuildsRequest) -> tuple[list[dpb.DatasetBuild], str]:
        """One page of builds matching the request's filters, newest first."""
        state, loop_id = request.state, request.loop_id
        return self.table.page(
            lambda b: (not state or b.state == state) and (not loop_id or b.loop_id == loop_id),
            request.page_size,
            request.page_token,
        )

    def _snapshot(self, job: BuildJob) -> dpb.DatasetBuild:
        """The build with its live progress."""
        out = dpb.DatasetBuild()
        out.CopyFrom(job.resource)
        if job.live is not None:
            progress = job.live[0]
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
        return await self.table.cancel(build_id)

    async def _cancel(self, job: BuildJob) -> None:
        if job.live is not None:
            job.live[1].set()  # the worker finishes the transition to CANCELLED
        elif job.state == QUEUED:
            await self._finish(job, CANCELLED, "cancelled by request", grpc.StatusCode.CANCELLED)

    # ------------------------------------------------------------------------------ running

    async def _worker(self) -> None:
        # Returns after its current build once the service is stopping (stop() awaits that).
        while not self._shutdown.is_set():
            build_id = await self._queue.get()
            job = self.table.jobs.get(build_id)
            if job is None or job.terminal:
                continue
            task = asyncio.current_task()
            assert task is not None
            self._busy.add(task)
            try:
                await self._run(job)
            except _Shutdown:
                return
            except Exception:  # never let one build stop the worker
                log.exception("build %s crashed the worker", build_id)
            finally:
                self._busy.discard(task)

    async def _run(self, job: BuildJob) -> None:
        build = job.resource
        cancel = threading.Event()
        progress = Progress()
        job.live = (progress, cancel)
        if job.cancel_requested:
            cancel.set()
        await self.table.set_running(job)
        source = self._source_factory(cancel)
        spec = spec_from_build(build)
        store = self.store

        def counter(workdir: Path) -> TokenCounter:
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
            if self._shutdown.is_set() and not job.cancel_requested:
                job.live = None
                raise _Shutdown() from None
            await self._finish(job, CANCELLED, "cancelled by request", grpc.StatusCode.CANCELLED)
            return
        except (EmptyDataset, PolicyMismatch) as err:
            await self._finish(job, FAILED, str(err), grpc.StatusCode.FAILED_PRECONDITION)
            return
        except Exception as err:
            if self._shutdown.is_set():
                job.live = None
                raise _Shutdown() from None
            log.exception("build %s failed", build.id)
            code = (
                grpc.StatusCode.UNAVAILABLE if isinstance(err, StoreUnavailable) else grpc.StatusCode.INTERNAL
            )
            await self._finish(job, FAILED, str(err), code)
            return
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
        log.info("build %s produced %s in %.1f s", build.id, dataset.id, time.monotonic() - started)
        build.dataset_id = dataset.id
        await self._finish(job, SUCCEEDED)

    async def _finish(
        self,
        job: BuildJob,
        state: common_pb2.JobState,
        message: str = "",
        code: grpc.StatusCode | None = None,
    ) -> None:
        build = job.resource
        build.progress.CopyFrom(self._snapshot(job).progress)
        if state == SUCCEEDED:
            build.progress.fraction = 1.0
        job.live = None
        await self.table.finish(job, state, message, code)

    def _terminal_event(self, build: dpb.DatasetBuild) -> list[Announcement]:
        """``flywheel.dataset.built`` (with the dataset read back from its manifest) or
        ``flywheel.dataset.failed``; runs in a worker thread (it reads the store)."""
        meta = events_pb2.EventMeta(occurred_at=build.end_time, producer=PRODUCER)
        if build.state == SUCCEEDED:
            key = f"datasets/{build.dataset_id}/manifest.json"
            try:
                dataset = manifest_to_dataset(self.store.get_bytes(key))
            except ObjectNotFoundError:
                log.error("build %s succeeded but %s is missing; no event", build.id, key)
                return []
            dataset.manifest.key = key
            meta.event_id = f"dataset-built:{build.id}"
            built = events_pb2.DatasetBuilt(
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
            return [Announcement("flywheel.dataset.built", built, meta.event_id)]
        meta.event_id = f"dataset-failed:{build.id}"
        failed = events_pb2.DatasetBuildFailed(
            meta=meta,
            build_id=build.id,
            recipe=build.recipe,
            state=build.state,
            error=build.error,
            loop_id=build.loop_id,
        )
        return [Announcement("flywheel.dataset.failed", failed, meta.event_id)]


def grpc_source_factory(address: str, timeout_s: float) -> Callable[[threading.Event], TrajectorySource]:
    def make(cancel: threading.Event) -> TrajectorySource:
        return GrpcTrajectorySource(address, timeout_s=timeout_s, cancel=cancel)

    return make
