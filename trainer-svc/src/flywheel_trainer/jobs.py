"""Fine-tune jobs: the slot scheduler, one training process per job, its progress, adapter publishing.

A job's life — idempotent create under a ``request_id``, persistence, watch, cancel, resume at
start-up and the terminal announcement exactly once — is the job core's
(:mod:`flywheel_common.jobs`); this module keeps what is the trainer's own. In the object store,
so that a job outlives the pod that ran it::

    trainer/jobs/<id>.json               the FineTuneJob, rewritten on every change
    trainer/jobs/<id>/adapter.json       {"version": n}: the adapter version reserved for publishing
    trainer/jobs/<id>/cancel.json        {"requested": true}: a cancel reached the job
    trainer/jobs/requests/ published/ outbox/    the core's request ledger, markers and outbox

The worker's hyperparameters are not kept beside the job: they are a function of its resolved
``hyperparameters`` (``hparams.worker_hparams``). A job's local work folder is
``<state_dir>/work/<id>/`` (``spec.json``, ``worker.log``, the trained adapter until it is
published); its checkpoints are in ``trainer/checkpoints/<id>/`` (``checkpoints.py``).

Scheduling: ``slots`` jobs train at once; the others wait QUEUED, oldest first. At start-up a job
that was RUNNING goes back to the queue (``resume_count`` + 1) and resumes from its newest
checkpoint; one whose cancel had been requested ends CANCELLED. A training process that dies while
the service runs (killed, out of memory, a crash) fails its job with the reason; the service stays
SERVING. Progress comes from the process as :mod:`flywheel_trainer.protocol` records.

Backends (``settings.backend``): ``local`` runs that process beside the service (``_train``);
``kubernetes`` runs it in a Kubernetes Job per job (``_train_in_kubernetes``, :mod:`.kube`,
:mod:`.podjob`): its spec is ``trainer/work/<id>/spec.json`` and its trained adapter
``trainer/work/<id>/output/`` in the object store, its records come from the pod's log, and a
restart re-attaches to the Job instead of moving the job back to the queue.

Events (``events.py``), all through the core's outbox (kept in the store until NATS takes them: a
job never fails because NATS is down): each state change is ``flywheel.finetune.<state>``; a
SUCCEEDED job is announced by ``flywheel.adapter.published``, then ``flywheel.finetune.succeeded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal, assert_never

import grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from flywheel.common.v1 import common_pb2
from flywheel.trainer.v1 import trainer_pb2
from flywheel_common.errors import InvalidArgument
from flywheel_common.events import EventBus
from flywheel_common.jobs import (
    CANCEL_WAIT_S,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    TERMINAL,
    Announcement,
    Job,
    JobFailed,
    JobStore,
    JobTable,
    fingerprint,
    now,
)
from flywheel_common.objectstore import ObjectStore
from flywheel_common.procs import group_alive
from flywheel_trainer import adapters, catalog, hparams, podjob
from flywheel_trainer.events import state_event, terminal_events
from flywheel_trainer.kube import KubeJobs, PodView, job_failure, pod_view
from flywheel_trainer.launch import worker_command
from flywheel_trainer.protocol import PREFIX as RECORD_PREFIX
from flywheel_trainer.protocol import (
    Checkpoint,
    Device,
    Done,
    Failure,
    Log,
    Outcome,
    Passes,
    Plan,
    ProtocolError,
    Record,
    Resuming,
    Spec,
    Stopped,
    decode,
)
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import COMPLETE_MARKER, download_dir, is_complete

log = logging.getLogger("flywheel.trainer.jobs")
# terminal_events: the core's announcement for fine-tune jobs (the job contract test reads it here).
__all__ = ["JobManager", "TrainJob", "import_local_records", "terminal_events"]

FineTuneJob = trainer_pb2.FineTuneJob
PREFIX = "trainer/jobs/"
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Side data (``JobStore.save_side``) names.
ADAPTER_SIDE, CANCEL_SIDE = "adapter", "cancel"
#: At most one save of a training job's progress per this many seconds (Get and Watch see every
#: log at once; after a crash the resumed job writes its progress again).
PROGRESS_SAVE_S = 2.0
_CANCELLED = "cancelled by request"
METHOD_NAMES: dict[int, Literal["SFT", "DPO", "GRPO"]] = {
    trainer_pb2.FINE_TUNE_METHOD_SFT: "SFT",
    trainer_pb2.FINE_TUNE_METHOD_DPO: "DPO",
    trainer_pb2.FINE_TUNE_METHOD_GRPO: "GRPO",
}
#: TRL log keys kept in TrainingMetrics.extra besides the ``rewards/``, ``logps/`` and ``logits/``
#: families (DPO): SFT's token accuracy, GRPO's KL to the starting policy, clipped fractions and
#: entropy, and the rewards of the RL dataset.
EXTRA_KEYS = frozenset(
    {
        "mean_token_accuracy",
        "entropy",
        "kl",
        "clip_ratio/region_mean",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "reward_mean",
        "reward_std",
    }
)


# ---------------------------------------------------------------------------------- jobs


class TrainJob(Job[trainer_pb2.FineTuneJob]):
    """A fine-tune job and, while it trains, its process."""

    def __init__(self, resource: trainer_pb2.FineTuneJob) -> None:
        super().__init__(resource)
        self.has_slot = False  # past the scheduler: its process starts or runs
        self.proc: asyncio.subprocess.Process | None = None
        self.adapter_version = 0  # reserved for publishing; 0 = none yet
        self.saved_at = 0.0  # time.monotonic() of the last progress save


class JobManager:
    """The fine-tune jobs of this trainer: their slots, training processes and adapters."""

    def __init__(
        self,
        settings: TrainerSettings,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
    ) -> None:
        self.settings = settings
        self._store = store
        self.gpu = False
        self.gpu_count = 0  # CUDA devices this machine's training processes can use
        self.table: JobTable[trainer_pb2.FineTuneJob, TrainJob] = JobTable(
            store=store,
            bus=bus,
            prefix=PREFIX,
            message_class=FineTuneJob,
            kind="fine-tune job",
            id_prefix="ftj",
            announce=terminal_events,
            make_job=TrainJob,
            on_cancel=self._cancel,
        )
        self._slots = asyncio.Semaphore(settings.slots)  # FIFO: jobs start in the order they queue
        self._publish_lock = asyncio.Lock()
        self.work_dir = settings.state_dir / "work"
        self.cache_dir = settings.state_dir / "base-models"
        self.kube: KubeJobs | None = None  # the kubernetes backend's API, from start()

    @property
    def store(self) -> ObjectStore:
        return self._store()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for folder in (self.work_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if self.settings.backend == "kubernetes":
            self.kube = await asyncio.to_thread(KubeJobs, self.settings)  # a bad template fails the boot
        if self.kube is not None:
            # Jobs train in pods, not here: what counts is the GPUs a training pod asks for (the
            # service's own pod usually has none, which refused NF4 and sized jobs as on a CPU).
            available = self.settings.gpu_available
            self.gpu = self.settings.job_gpus > 0 if available is None else available
        else:
            # Ask torch (an import of a few seconds) unless the settings say there is no GPU.
            no_gpu = self.settings.gpu_available is False
            self.gpu_count = 0 if no_gpu else await asyncio.to_thread(_cuda_count)
            self.gpu = (
                self.gpu_count > 0 if self.settings.gpu_available is None else self.settings.gpu_available
            )
        imported = await asyncio.to_thread(
            import_local_records, self.settings.state_dir / "jobs", self.table.records
        )
        if imported:
            log.info("imported %d job record(s) from %s", imported, self.settings.state_dir / "jobs")
        await self.table.start(self._resume)

    async def stop(self) -> None:
        """Stop the training processes; the jobs stay as they are and resume at the next start."""
        await self.table.stop()

    async def _resume(self, job: TrainJob) -> None:
        side = self.table.records
        reserved = await asyncio.to_thread(side.load_side, job.id, ADAPTER_SIDE)
        job.adapter_version = int(reserved["version"]) if reserved else 0
        if await asyncio.to_thread(side.load_side, job.id, CANCEL_SIDE):
            job.cancel_requested = True
            if self.kube is not None:  # the cancel may have come before its Job was deleted
                await asyncio.to_thread(self.kube.delete, job.id)
            await self.table.finish(job, CANCELLED, _CANCELLED, grpc.StatusCode.CANCELLED)
            return
        if job.state == RUNNING and self.kube is None:
            # Interrupted by a restart: back to the queue, resumed from its newest checkpoint. (With
            # the kubernetes backend the Job trains on without the service: _train re-attaches.)
            job.resource.resume_count += 1
            await self._set_state(job, QUEUED)
        self.table.launch(job, self._work)

    @staticmethod
    def _created(job: trainer_pb2.FineTuneJob) -> list[Announcement]:
        return [state_event(job, common_pb2.JOB_STATE_UNSPECIFIED)]

    async def _set_state(self, job: TrainJob, state: common_pb2.JobState) -> None:
        """A live state (QUEUED, RUNNING): persist, show watchers, announce."""
        previous = job.resource.state
        if state == RUNNING:
            job.resource.state = RUNNING  # the event names the new state; set_running stamps the rest
            await self.table.set_running(job, events=[state_event(job.resource, previous)])
        else:
            job.resource.state = state
            await self.table.save(job, events=[state_event(job.resource, previous)])

    # ------------------------------------------------------------------ requests

    async def create(
        self, job_in: trainer_pb2.FineTuneJob, request_id: str, validate_only: bool
    ) -> trainer_pb2.FineTuneJob:
        if request_id and not REQUEST_ID_RE.match(request_id):
            raise InvalidArgument("request_id", "must be 1-64 characters of [A-Za-z0-9_-]")
        clean = FineTuneJob(
            base_model=job_in.base_model,
            dataset_id=job_in.dataset_id,
            method=job_in.method,
            adapter_name=job_in.adapter_name,
            loop_id=job_in.loop_id,
            hyperparameters=job_in.hyperparameters,
            labels=job_in.labels,
            init_adapter=job_in.init_adapter,
            gpus=job_in.gpus,
        )
        if request_id:  # a repeated request is answered as the first was, before any check
            earlier = await asyncio.to_thread(self.table.records.replay, request_id, fingerprint(clean))
            if earlier is not None and earlier in self.table.jobs:
                job, _ = await self.table.create(clean, request_id, announce=self._created)
                return self.table.snapshot(job)
        hparams.check_names(clean)
        base = await asyncio.to_thread(catalog.base_model_info, self.store, clean.base_model)
        if base is None:
            known = [m.name for m in await asyncio.to_thread(catalog.list_base_models, self.store)]
            raise InvalidArgument(
                "job.base_model",
                f"unknown base model {clean.base_model!r} (known: {', '.join(known) or 'none'})",
            )
        info = await asyncio.to_thread(hparams.check_dataset, self.store, clean)
        init = await asyncio.to_thread(hparams.check_init_adapter, self.store, clean)
        if clean.method == trainer_pb2.FINE_TUNE_METHOD_GRPO:
            hparams.check_policy(info, clean, init)
        resolved = FineTuneJob()
        resolved.CopyFrom(clean)
        if init is not None:
            await asyncio.to_thread(hparams.apply_init_lora, self.store, resolved, init)
        hparams.resolve(resolved, self.settings, base, self.gpu)
        hparams.check_gpus(resolved, self.settings, None if self.kube is not None else self.gpu_count)
        if validate_only:
            return resolved

        def prepare(new: trainer_pb2.FineTuneJob) -> None:
            new.hyperparameters.CopyFrom(resolved.hyperparameters)
            new.gpus = resolved.gpus
            new.progress.total_steps = resolved.hyperparameters.max_steps

        job, created = await self.table.create(clean, request_id, prepare=prepare, announce=self._created)
        if created:
            self.table.launch(job, self._work)
        return self.table.snapshot(job)

    def get(self, job_id: str) -> trainer_pb2.FineTuneJob:
        if not job_id:
            raise InvalidArgument("job_id", "required")
        return self.table.get(job_id)

    def page(self, request: trainer_pb2.ListFineTuneJobsRequest) -> tuple[list[trainer_pb2.FineTuneJob], str]:
        """One page of the jobs matching the request's filters, newest first."""

        def keep(job: trainer_pb2.FineTuneJob) -> bool:
            return (
                (not request.state or job.state == request.state)
                and (not request.adapter_name or job.adapter_name == request.adapter_name)
                and (not request.loop_id or job.loop_id == request.loop_id)
            )

        return self.table.page(keep, request.page_size, request.page_token)

    async def cancel(self, job_id: str) -> trainer_pb2.FineTuneJob:
        self.get(job_id)
        return await self.table.cancel(job_id)

    async def _cancel(self, job: TrainJob) -> None:
        """Best effort: a queued job ends at once; a training process is asked to stop (SIGTERM,
        SIGKILL after ``cancel_grace_s``) and its job ends CANCELLED once it has. Answers when the
        job has ended or after ``CANCEL_WAIT_S``."""
        await asyncio.to_thread(self.table.records.save_side, job.id, CANCEL_SIDE, {"requested": True})
        if self.kube is not None:  # delete the Job (its pods go with it); the task ends CANCELLED
            await asyncio.to_thread(self.kube.delete, job.id)
            await self.table.cancel_task(job)
            return
        if not job.has_slot:
            await self.table.cancel_task(job)
            return
        if job.proc is not None:  # else it is starting: _train stops it once it exists
            _signal_group(job.proc.pid, signal.SIGTERM)
            asyncio.get_running_loop().call_later(self.settings.cancel_grace_s, _kill_group, job.proc.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.done.wait(), CANCEL_WAIT_S)

    async def watch(self, job_id: str) -> AsyncIterator[trainer_pb2.WatchFineTuneJobResponse]:
        self.get(job_id)
        async for item in self.table.watch(job_id):
            if isinstance(item, FineTuneJob):
                yield trainer_pb2.WatchFineTuneJobResponse(job=item)
            else:
                yield trainer_pb2.WatchFineTuneJobResponse(log=item)

    # ------------------------------------------------------------------ training

    async def _work(self, job: TrainJob) -> None:
        """The job's task (run by the core, which turns its end into the terminal state)."""
        async with self._slots:
            job.has_slot = True
            if self.kube is not None:
                await self._train_in_kubernetes(job, self.kube)
            else:
                await self._train(job)

    def _spec(self, job: TrainJob) -> Spec:
        res = job.resource
        return Spec(
            job_id=job.id,
            base_model=res.base_model,
            dataset_id=res.dataset_id,
            method=METHOD_NAMES[res.method],
            hyperparameters=hparams.worker_hparams(res.hyperparameters),
            init_adapter=res.init_adapter,
            init_adapter_prefix=_init_prefix(res.init_adapter),
            cache_dir=str(self.cache_dir),
            logging_steps=self.settings.logging_steps,
            step_delay_s=self.settings.step_delay_s,
            simulate_oom_from_rows=self.settings.simulate_oom_from_rows,
            gpus=max(1, res.gpus),
            compile_cache=self.settings.compile_cache,
        )

    async def _train(self, job: TrainJob) -> None:
        work = self.work_dir / job.id
        work.mkdir(parents=True, exist_ok=True)
        (work / "spec.json").write_text(self._spec(job).model_dump_json(indent=2))
        shutil.rmtree(work / "output", ignore_errors=True)
        if job.cancel_requested:  # cancelled while it got its slot
            await self.table.finish(job, CANCELLED, _CANCELLED, grpc.StatusCode.CANCELLED)
            return
        await self._set_state(job, RUNNING)
        job.proc = proc = await self._spawn(work)
        if job.cancel_requested:  # cancelled while the process was starting
            _signal_group(proc.pid, signal.SIGTERM)
        try:
            outcome = await self._follow(job, proc)
            rc = await proc.wait()
        except asyncio.CancelledError:  # the service stops: the job stays RUNNING and resumes later
            await self._terminate(proc)
            raise
        finally:
            job.proc = None
        await self._conclude(job, outcome, rc, work)

    async def _train_in_kubernetes(self, job: TrainJob, kube: KubeJobs) -> None:
        """Train as a Kubernetes Job: create it (or re-attach to the one a restart left), follow its
        pods until one ends, then publish the adapter it uploaded, or fail with the pod's reason.

        A pending pod keeps the job QUEUED with the scheduler's reason in ``error``; a running one
        makes it RUNNING and its log is applied as the local process's stdout is. A pod that ends
        with a Failure record fails the job (the Job fails too: podFailurePolicy FailJob on the
        worker's no-retry exit statuses); an OOMKilled or node-pressure-evicted pod fails it with
        that reason and the Job is deleted (a new pod would fail the same way). A pod that goes or
        fails otherwise (preempted, drained, its node lost, a crash) is replaced by the Job
        controller (disruptions are not counted against ``backoffLimit``), and the new pod resumes
        from the newest checkpoint (``resume_count`` + 1); the job fails when the Job does. A
        shutdown leaves the Job training.
        """
        spec = self._spec(job).model_dump_json(indent=2).encode()
        await asyncio.to_thread(
            self.store.put, podjob.spec_key(job.id), spec, content_type="application/json", overwrite=True
        )
        if job.cancel_requested:
            await self.table.finish(job, CANCELLED, _CANCELLED, grpc.StatusCode.CANCELLED)
            return
        if await asyncio.to_thread(kube.get, job.id) is None:
            await asyncio.to_thread(kube.create, job.id, job.resource.gpus)
            log.info("job %s: created Kubernetes Job %s/%s", job.id, kube.namespace, job.id.lower())
        else:
            log.info("job %s: re-attached to its Kubernetes Job", job.id)
        current = ""  # uid of the pod followed last
        ended: set[str] = set()  # uids of pods that failed and that the Job controller replaces
        try:
            while True:
                kjob = await asyncio.to_thread(kube.get, job.id)
                if kjob is None:
                    raise JobFailed(
                        "its Kubernetes Job was deleted (not by a cancel)", grpc.StatusCode.ABORTED
                    )
                pods = await asyncio.to_thread(kube.pods, job.id)
                live = [p for p in pods if pod_view(p).kind != "gone"]
                pod = live[-1] if live else None
                view = pod_view(pod)
                if pod is None:
                    failure = job_failure(kjob)
                    if failure:
                        raise JobFailed(failure, grpc.StatusCode.ABORTED)
                    await self._waiting(job, "waiting for the Kubernetes Job to create its pod")
                    await asyncio.sleep(self.settings.job_poll_s)
                    continue
                if view.kind == "pending":
                    await self._waiting(job, view.reason)
                    await asyncio.sleep(self.settings.job_poll_s)
                    continue
                if pod.metadata.uid in ended:  # its replacement is not there yet, or the Job failed
                    failure = job_failure(kjob)
                    if failure:
                        raise JobFailed(f"{view.reason}; {failure}", grpc.StatusCode.ABORTED)
                    await self._waiting(job, f"{view.reason}; waiting for the Kubernetes Job to replace it")
                    await asyncio.sleep(self.settings.job_poll_s)
                    continue
                if current and pod.metadata.uid != current:
                    job.resource.resume_count += 1  # a replacement pod: it resumes from the checkpoint
                    log.info("job %s: pod replaced by %s", job.id, pod.metadata.name)
                current = pod.metadata.uid
                if job.state != RUNNING or job.resource.status_message:
                    job.resource.status_message = ""
                    await self._set_state(job, RUNNING)
                outcome = await self._follow_pod(job, kube, pod.metadata.name)
                view = pod_view(await asyncio.to_thread(kube.pod, pod.metadata.name))
                if view.kind in ("running", "gone", "pending"):
                    continue  # the log broke off, or the pod went: read the Job's pods again
                if view.kind in ("oom", "evicted") and not job.cancel_requested:
                    # The Job would make a new pod (neither counts as a no-retry failure): delete it.
                    await asyncio.shield(asyncio.to_thread(kube.delete, job.id))
                    raise JobFailed(view.reason, grpc.StatusCode.RESOURCE_EXHAUSTED)
                if (
                    view.kind in ("failed", "disrupted")
                    and not job.cancel_requested
                    and not isinstance(outcome, Failure)
                ):
                    log.info("job %s: %s; the Kubernetes Job replaces the pod", job.id, view.reason)
                    ended.add(pod.metadata.uid)
                    continue
                await self._conclude_pod(job, outcome, view)
                return
        except asyncio.CancelledError:
            if job.cancel_requested:  # the Job may have been created as the cancel came: delete it
                await asyncio.shield(asyncio.to_thread(kube.delete, job.id))
            raise  # a shutdown leaves the Job training; the next start re-attaches

    async def _waiting(self, job: TrainJob, reason: str) -> None:
        """Keep the job QUEUED with why its pod is not running in ``status_message`` (cleared when
        it runs)."""
        if job.state == QUEUED and job.resource.status_message == reason:
            return
        job.resource.status_message = reason
        if job.state != QUEUED:
            await self._set_state(job, QUEUED)
        else:
            await self.table.save(job)

    async def _follow_pod(self, job: TrainJob, kube: KubeJobs, pod: str) -> Outcome | None:
        """Apply the progress records of the pod's log until it ends; returns the outcome."""
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[str | None] = asyncio.Queue()

        def on_line(line: str | None) -> None:  # in the log's thread
            loop.call_soon_threadsafe(lines.put_nowait, line)

        stop = kube.follow_log(pod, on_line)
        outcome: Outcome | None = None
        try:
            while (line := await lines.get()) is not None:
                if not line.startswith(RECORD_PREFIX):
                    continue  # the libraries' output: in the pod's log, not the service's
                try:
                    record = decode(line)
                except ProtocolError as err:
                    log.warning("job %s: unreadable progress line %r: %s", job.id, line[:300], err)
                    continue
                outcome = await self._on_record(job, record) or outcome
        finally:
            stop()
        return outcome

    async def _conclude_pod(self, job: TrainJob, outcome: Outcome | None, view: PodView) -> None:
        if job.cancel_requested:
            await self.table.finish(job, CANCELLED, _CANCELLED, grpc.StatusCode.CANCELLED)
            return
        if view.kind == "succeeded" and isinstance(outcome, Done):
            prefix = podjob.output_prefix(job.id)
            if not await asyncio.to_thread(is_complete, self.store, prefix):
                raise JobFailed(f"the training pod ended without uploading its adapter to {prefix}")
            output = await asyncio.to_thread(
                download_dir, self.store, prefix, self.work_dir / job.id / "output"
            )
            await self._publish(job, output)  # returning, the core ends the job SUCCEEDED
            return
        if isinstance(outcome, Failure):
            raise JobFailed(outcome.message, outcome.status)
        if view.kind in ("oom", "evicted"):
            raise JobFailed(view.reason, grpc.StatusCode.RESOURCE_EXHAUSTED)
        raise JobFailed(view.reason or "the training pod ended without a result", grpc.StatusCode.INTERNAL)

    async def _spawn(self, work: Path) -> asyncio.subprocess.Process:
        env = {**os.environ, **_store_env(self.settings)}
        spec = Spec.model_validate_json((work / "spec.json").read_text())
        with (work / "worker.log").open("ab") as log_file:
            return await asyncio.create_subprocess_exec(
                self.settings.worker_python or sys.executable,
                *worker_command(spec.gpus, work),
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
                # No preexec_fn: running Python between fork and exec in a process with gRPC threads
                # can crash the child (SIGSEGV seen here); the worker calls die_with_parent() itself.
                start_new_session=True,
            )

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group; SIGKILL it after ``cancel_grace_s``."""
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.cancel_grace_s)
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)

    async def _follow(self, job: TrainJob, proc: asyncio.subprocess.Process) -> Outcome | None:
        """Apply the process's progress records until it closes stdout; returns its outcome."""
        assert proc.stdout is not None
        outcome: Outcome | None = None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            try:
                record = decode(line)
            except ProtocolError as err:
                log.warning("job %s: unreadable progress line %r: %s", job.id, line[:300], err)
                continue
            outcome = await self._on_record(job, record) or outcome
        return outcome

    async def _on_record(self, job: TrainJob, record: Record) -> Outcome | None:
        res = job.resource
        match record:
            case Device():
                res.device = record.device
                await self.table.save(job, notify=False)
            case Resuming():
                log.info("job %s resumes from its checkpoint of step %d", job.id, record.step)
            case Passes():
                res.rows_per_pass, res.rows_per_pass_note = record.rows, record.note
                if record.note:
                    log.info("job %s: %s", job.id, record.note)
                await self.table.save(job, notify=False)
            case Plan():
                res.progress.total_steps = record.total_steps
                await self.table.save(job, notify=False)
            case Log():
                await self._on_log(job, record)
            case Checkpoint():
                res.last_checkpoint.CopyFrom(
                    common_pb2.ObjectRef(key=record.key + COMPLETE_MARKER, size_bytes=record.size)
                )
                await self.table.save(job, notify=False)
            case Done() | Failure() | Stopped():
                return record
            case _:
                assert_never(record)
        return None

    async def _on_log(self, job: TrainJob, record: Log) -> None:
        if record.loss is None and record.eval_loss is None:
            return  # the Trainer's end-of-training summary: nothing a step did
        res = job.resource
        metrics = trainer_pb2.TrainingMetrics(step=record.step)
        if record.loss is not None:
            metrics.loss = record.loss
        elif res.HasField("latest_metrics"):  # an evaluation: the step's training metrics stay
            metrics.CopyFrom(res.latest_metrics)
            metrics.step = record.step
        for name in ("learning_rate", "grad_norm", "tokens_per_second"):
            value = getattr(record, name)
            if value is not None:
                setattr(metrics, name, value)
        if record.eval_loss is not None:
            metrics.eval_loss = record.eval_loss
        for key, value in record.extra.items():
            if key.startswith(("rewards/", "logps/", "logits/")) or key in EXTRA_KEYS:
                metrics.extra[key] = value
        total = record.total_steps or res.progress.total_steps
        progress = trainer_pb2.TrainingProgress(step=record.step, total_steps=total, epoch=record.epoch)
        progress.fraction = min(1.0, progress.step / total) if total else 0.0
        if record.eta_s is not None:
            progress.eta.CopyFrom(Duration(seconds=int(record.eta_s)))
        res.progress.CopyFrom(progress)
        res.latest_metrics.CopyFrom(metrics)
        if time.monotonic() - job.saved_at >= PROGRESS_SAVE_S:
            await self.table.save(job, notify=False)
            job.saved_at = time.monotonic()
        self.table.notify(job, trainer_pb2.TrainingLog(progress=progress, metrics=metrics, log_time=now()))

    async def _conclude(self, job: TrainJob, outcome: Outcome | None, rc: int, work: Path) -> None:
        """Turn the process's end into the job's: publish, or end it CANCELLED or FAILED."""
        if job.cancel_requested:
            await self.table.finish(job, CANCELLED, _CANCELLED, grpc.StatusCode.CANCELLED)
            return
        if isinstance(outcome, Done) and rc == 0:
            # The adapter is trained: a shutdown now waits for its publishing instead of leaving
            # the job to train again at the next start. Returning, the core ends it SUCCEEDED.
            publishing = asyncio.ensure_future(self._publish(job, Path(outcome.output)))
            try:
                await asyncio.shield(publishing)
            except asyncio.CancelledError:
                if not self.table.stopping:
                    raise
                await publishing
            return
        if isinstance(outcome, Failure):
            raise JobFailed(outcome.message, outcome.status)
        if isinstance(outcome, Stopped):
            raise JobFailed(
                f"training process stopped at step {outcome.step}: it was sent SIGTERM, not by a cancel",
                grpc.StatusCode.ABORTED,
            )
        if rc < 0:
            sig = signal.Signals(-rc).name
            hint = " (the kernel's out-of-memory killer sends SIGKILL)" if rc == -signal.SIGKILL else ""
            message = f"training process was killed by {sig}{hint}"
        else:
            message = f"training process exited with status {rc} without a result; see {work / 'worker.log'}"
        await self.table.finish(
            job, FAILED, message, grpc.StatusCode.INTERNAL, details={"exit_status": str(rc)}
        )

    # ------------------------------------------------------------------ publishing

    async def _publish(self, job: TrainJob, output: Path) -> None:
        """Write the adapter as the next version of its name (the same one after a restart)."""
        res = job.resource
        async with self._publish_lock:
            if not job.adapter_version:
                name = res.adapter_name
                taken = {
                    j.adapter_version for j in self.table.jobs.values() if j.resource.adapter_name == name
                }
                existing = await asyncio.to_thread(adapters.versions, self.store, name)
                job.adapter_version = max(existing | taken | {0}) + 1
                await asyncio.to_thread(
                    self.table.records.save_side, job.id, ADAPTER_SIDE, {"version": job.adapter_version}
                )
        version = job.adapter_version
        adapter = await asyncio.to_thread(adapters.publish, self.store, res, output, version)
        res.adapter.CopyFrom(
            trainer_pb2.AdapterRef(
                name=res.adapter_name,
                version=version,
                object_prefix=adapters.version_prefix(res.adapter_name, version),
                content_digest=adapter.content_digest,
            )
        )


# ---------------------------------------------------------------------------------- records of earlier versions


def import_local_records(folder: Path, records: JobStore[trainer_pb2.FineTuneJob]) -> int:
    """Copy the job records earlier trainers kept on local disk (``<state_dir>/jobs/<id>.json``) into
    the job core's store, once; returns how many were imported.

    Each brings its request-id ledger entry (the same fingerprint: the request's fields), its
    reserved adapter version and its cancel flag; a finished job counts as announced (its events
    went out when it ended). The file is then renamed ``<id>.json.imported``. Blocking.
    """
    if not folder.is_dir():
        return 0
    count = 0
    for path in sorted(folder.glob("ftj-*.json")):
        data = json.loads(path.read_text())
        job = json_format.ParseDict(data["job"], FineTuneJob(), ignore_unknown_fields=True)
        if not records.store.exists(f"{records.prefix}{job.id}.json"):
            if data.get("publish_version"):
                records.save_side(job.id, ADAPTER_SIDE, {"version": int(data["publish_version"])})
            if data.get("cancel_requested"):
                records.save_side(job.id, CANCEL_SIDE, {"requested": True})
            if data.get("request_id") and data.get("request_hash"):
                records.remember(data["request_id"], job.id, data["request_hash"])
            if job.state in TERMINAL:
                records.mark_published(job.id)
            records.save(job)  # last: a crash before it imports the file again
        path.rename(path.with_name(path.name + ".imported"))
        count += 1
    return count


# ---------------------------------------------------------------------------------- helpers


def _init_prefix(adapter_id: str) -> str:
    match = adapters.ADAPTER_ID_RE.match(adapter_id)
    return adapters.version_prefix(match.group(1), int(match.group(2))) if match else ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _kill_group(pgid: int) -> None:
    if group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)


def _cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _store_env(settings: TrainerSettings) -> dict[str, str]:
    """The object-store settings as FLYWHEEL_OBJECT_STORE_* variables for the training process."""
    env = {}
    for name, value in settings.object_store.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"FLYWHEEL_OBJECT_STORE_{name.upper()}"] = (
            str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env
