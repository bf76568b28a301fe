"""Fine-tune jobs: the queue, one training process per job, persistence, events and publishing.

Each job record is a JSON file under ``<state_dir>/jobs/`` rewritten atomically on every change,
so a restarted service knows every job. At start-up, jobs that were RUNNING when the service
stopped go back to the queue and resume from their newest checkpoint (``resume_count`` + 1).
A training process that dies while the service runs (killed, out of memory, a crash) fails its
job with the reason; the service itself stays SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from ulid import ULID

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.trainer.v1 import trainer_pb2
from flywheel_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from flywheel_common.events import EventBus
from flywheel_common.objectstore import ObjectStore
from flywheel_common.procs import group_alive
from flywheel_trainer import catalog, hparams
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import COMPLETE_MARKER, is_complete, upload_dir
from flywheel_trainer.worker import PREFIX

log = logging.getLogger("flywheel.trainer.jobs")

S = common_pb2
LIVE = (S.JOB_STATE_QUEUED, S.JOB_STATE_RUNNING)
TERMINAL = (S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
ADAPTERS_PREFIX = "adapters/"
_DEFAULT_PAGE = 50
_MAX_PAGE = 1000


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def state_name(state: int) -> str:
    return S.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def page_bounds(page_size: int, page_token: str, fingerprint: str) -> tuple[int, int]:
    """(offset, size) of a page; tokens carry the offset and a fingerprint of the filters."""
    if page_size < 0:
        raise InvalidArgument("page_size", f"must be >= 0, got {page_size}")
    size = min(page_size or _DEFAULT_PAGE, _MAX_PAGE)
    if not page_token:
        return 0, size
    try:
        offset_s, fp = page_token.split(":", 1)
        offset = int(offset_s)
    except ValueError:
        raise InvalidArgument("page_token", f"{page_token!r} was not issued by this service") from None
    if fp != fingerprint:
        raise InvalidArgument("page_token", "the filters changed since the token was issued")
    return offset, size


class Record:
    """A job and what the service keeps beside it (idempotency key, event counters, spec)."""

    def __init__(self, job: trainer_pb2.FineTuneJob, request_id: str = "", request_hash: str = "") -> None:
        self.job = job
        self.request_id = request_id
        self.request_hash = request_hash
        self.event_counts: dict[str, int] = {}
        self.worker_hp: dict[str, Any] = {}
        self.publish_version = 0
        self.cancel_requested = False
        self.history: list[trainer_pb2.TrainingLog] = []

    def to_json(self) -> dict[str, Any]:
        return {
            "job": json_format.MessageToDict(self.job),
            "request_id": self.request_id,
            "request_hash": self.request_hash,
            "event_counts": self.event_counts,
            "worker_hp": self.worker_hp,
            "publish_version": self.publish_version,
            "cancel_requested": self.cancel_requested,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        job = json_format.ParseDict(data["job"], trainer_pb2.FineTuneJob())
        rec = cls(job, data.get("request_id", ""), data.get("request_hash", ""))
        rec.event_counts = data.get("event_counts", {})
        rec.worker_hp = data.get("worker_hp", {})
        rec.publish_version = data.get("publish_version", 0)
        rec.cancel_requested = data.get("cancel_requested", False)
        return rec


class JobManager:
    """The queue of fine-tune jobs and their training processes."""

    def __init__(self, settings: TrainerSettings, store: ObjectStore, bus: EventBus) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus
        self.gpu = False
        self.records: dict[str, Record] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.watchers: dict[str, set[asyncio.Queue[trainer_pb2.WatchFineTuneJobResponse | None]]] = {}
        self.stopping = False
        self.publish_lock = asyncio.Lock()
        self.jobs_dir = settings.state_dir / "jobs"
        self.work_dir = settings.state_dir / "work"
        self.cache_dir = settings.state_dir / "base-models"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for folder in (self.jobs_dir, self.work_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if self.settings.gpu_available is not None:
            self.gpu = self.settings.gpu_available
        else:
            self.gpu = await asyncio.to_thread(_cuda_available)
        for path in sorted(self.jobs_dir.glob("ftj-*.json")):
            rec = Record.from_json(json.loads(path.read_text()))
            self.records[rec.job.id] = rec
        for rec in self.records.values():
            if rec.job.state == S.JOB_STATE_RUNNING:
                # Interrupted by a restart: back to the queue, resumed from its newest checkpoint.
                rec.job.resume_count += 1
                await self._set_state(rec, S.JOB_STATE_QUEUED)
                log.info("job %s was running at shutdown: queued to resume", rec.job.id)
        self._schedule()

    async def stop(self) -> None:
        """Stop the training processes without changing job states (they resume at the next start)."""
        self.stopping = True
        for job_id, proc in list(self.procs.items()):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            log.info("stopping training process of %s", job_id)
        if self.tasks:
            _done, pending = await asyncio.wait(
                list(self.tasks.values()), timeout=self.settings.cancel_grace_s
            )
            for proc in self.procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=5)
        for queues in self.watchers.values():
            for queue in queues:
                queue.put_nowait(None)

    # ------------------------------------------------------------------ persistence and events

    def _save(self, rec: Record) -> None:
        path = self.jobs_dir / f"{rec.job.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec.to_json()))
        os.replace(tmp, path)

    def _notify(self, job_id: str, message: trainer_pb2.WatchFineTuneJobResponse | None) -> None:
        for queue in self.watchers.get(job_id, ()):
            queue.put_nowait(message)

    async def _set_state(self, rec: Record, state: int, error: common_pb2.Error | None = None) -> None:
        job = rec.job
        previous = job.state
        job.state = state
        if state == S.JOB_STATE_RUNNING and not job.HasField("start_time"):
            job.start_time.CopyFrom(_now())
        if state in TERMINAL:
            job.end_time.CopyFrom(_now())
        if error is not None:
            job.error.CopyFrom(error)
        self._save(rec)
        name = state_name(state)
        count = rec.event_counts.get(name, 0)
        rec.event_counts[name] = count + 1
        self._save(rec)
        event_id = f"finetune-{name}:{job.id}" + (f":{count}" if count else "")
        event = events_pb2.FineTuneStateChanged(
            job_id=job.id,
            state=state,
            base_model=job.base_model,
            dataset_id=job.dataset_id,
            method=job.method,
            adapter_name=job.adapter_name,
            loop_id=job.loop_id,
        )
        event.meta.event_id = event_id
        event.meta.occurred_at.CopyFrom(_now())
        event.meta.producer = "trainer"
        if previous != S.JOB_STATE_UNSPECIFIED and previous != state:
            event.previous_state = previous
        if job.HasField("adapter"):
            event.adapter.CopyFrom(job.adapter)
        if job.HasField("error"):
            event.error.CopyFrom(job.error)
        if job.HasField("latest_metrics"):
            event.latest_metrics.CopyFrom(job.latest_metrics)
        try:
            await self.bus.publish(f"flywheel.finetune.{name}", event, msg_id=event_id)
        except Exception as err:  # the job record is the truth; a lost event must not fail the job
            log.warning("could not publish %s for %s: %s", name, job.id, err)
        snapshot = trainer_pb2.WatchFineTuneJobResponse()
        snapshot.job.CopyFrom(job)
        self._notify(job.id, snapshot)
        if state in TERMINAL:
            self._notify(job.id, None)

    # ------------------------------------------------------------------ RPC operations

    async def create(
        self, job_in: trainer_pb2.FineTuneJob, request_id: str, validate_only: bool
    ) -> trainer_pb2.FineTuneJob:
        job = trainer_pb2.FineTuneJob(
            base_model=job_in.base_model,
            dataset_id=job_in.dataset_id,
            method=job_in.method,
            adapter_name=job_in.adapter_name,
            loop_id=job_in.loop_id,
        )
        job.hyperparameters.CopyFrom(job_in.hyperparameters)
        job.labels.update(job_in.labels)
        if request_id and not REQUEST_ID_RE.match(request_id):
            raise InvalidArgument("request_id", "must be 1-64 characters of [A-Za-z0-9_-]")
        request_hash = hashlib.sha256(job.SerializeToString(deterministic=True)).hexdigest()
        if request_id:
            for rec in self.records.values():
                if rec.request_id == request_id:
                    if rec.request_hash != request_hash:
                        raise AlreadyExists(
                            f"request_id {request_id!r} was used for a different request (job {rec.job.id})"
                        )
                    return rec.job
        hparams.check_names(job)
        base = await asyncio.to_thread(catalog.base_model_info, self.store, job.base_model)
        if base is None:
            known = [m.name for m in await asyncio.to_thread(catalog.list_base_models, self.store)]
            raise InvalidArgument(
                "job.base_model",
                f"unknown base model {job.base_model!r} (known: {', '.join(known) or 'none'})",
            )
        await asyncio.to_thread(self._check_dataset, job)
        worker_hp = hparams.resolve(job, self.settings, base, self.gpu)
        if validate_only:
            return job
        job.id = f"ftj-{ULID()}"
        job.state = S.JOB_STATE_UNSPECIFIED
        job.create_time.CopyFrom(_now())
        job.progress.total_steps = job.hyperparameters.max_steps
        rec = Record(job, request_id, request_hash)
        rec.worker_hp = worker_hp
        self.records[job.id] = rec
        await self._set_state(rec, S.JOB_STATE_QUEUED)
        self._schedule()
        return job

    def _check_dataset(self, job: trainer_pb2.FineTuneJob) -> None:
        try:
            info = catalog.dataset_info(self.store, job.dataset_id)
        except catalog.DatasetError as err:
            if err.missing:
                raise InvalidArgument("job.dataset_id", str(err)) from None
            raise FailedPrecondition(f"job.dataset_id: {err}") from None
        want = "SFT" if job.method == trainer_pb2.FINE_TUNE_METHOD_SFT else "PREFERENCE"
        method = trainer_pb2.FineTuneMethod.Name(job.method)
        if info.kind != want:
            raise FailedPrecondition(
                f"job.dataset_id: dataset {job.dataset_id} is a {info.kind} dataset but {method} needs "
                f"a {want} dataset"
            )
        rows = []
        with self.store.open(info.train_key) as stream:
            for n, line in enumerate(stream):
                if n >= 50:  # the shape check looks at the head only; the worker reads the rest
                    break
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise FailedPrecondition(
                            f"job.dataset_id: {info.train_key} line {n + 1} is not JSON: {err}"
                        ) from None
        try:
            catalog.check_rows(rows, info.kind, info.train_key)
        except catalog.DatasetError as err:
            raise FailedPrecondition(f"job.dataset_id: {err}") from None

    def get(self, job_id: str) -> trainer_pb2.FineTuneJob:
        if not job_id:
            raise InvalidArgument("job_id", "required")
        rec = self.records.get(job_id)
        if rec is None:
            raise NotFound(f"no fine-tune job {job_id!r}")
        return rec.job

    def list(self, request: trainer_pb2.ListFineTuneJobsRequest) -> trainer_pb2.ListFineTuneJobsResponse:
        fp = hashlib.sha256(f"{request.state}|{request.adapter_name}|{request.loop_id}".encode()).hexdigest()[
            :12
        ]
        offset, size = page_bounds(request.page_size, request.page_token, fp)
        jobs = [
            r.job
            for r in sorted(self.records.values(), key=lambda r: r.job.id, reverse=True)
            if (not request.state or r.job.state == request.state)
            and (not request.adapter_name or r.job.adapter_name == request.adapter_name)
            and (not request.loop_id or r.job.loop_id == request.loop_id)
        ]
        reply = trainer_pb2.ListFineTuneJobsResponse(jobs=jobs[offset : offset + size])
        if offset + size < len(jobs):
            reply.next_page_token = f"{offset + size}:{fp}"
        return reply

    async def cancel(self, job_id: str) -> trainer_pb2.FineTuneJob:
        job = self.get(job_id)
        rec = self.records[job_id]
        if job.state in TERMINAL:
            return job
        rec.cancel_requested = True
        self._save(rec)
        proc = self.procs.get(job_id)
        if job.state == S.JOB_STATE_QUEUED and proc is None:
            await self._set_state(rec, S.JOB_STATE_CANCELLED)
        elif proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            asyncio.get_running_loop().call_later(self.settings.cancel_grace_s, _kill_group, proc.pid)
        return job

    async def watch(self, job_id: str) -> AsyncIterator[trainer_pb2.WatchFineTuneJobResponse]:
        job = self.get(job_id)
        queue: asyncio.Queue[trainer_pb2.WatchFineTuneJobResponse | None] = asyncio.Queue()
        self.watchers.setdefault(job_id, set()).add(queue)
        try:
            first = trainer_pb2.WatchFineTuneJobResponse()
            first.job.CopyFrom(job)
            yield first
            if job.state in TERMINAL:
                return
            while True:
                item = await queue.get()
                if item is None:
                    return
                yield item
        finally:
            self.watchers[job_id].discard(queue)

    # ------------------------------------------------------------------ scheduling and running

    def _schedule(self) -> None:
        if self.stopping:
            return
        running = sum(1 for t in self.tasks.values() if not t.done())
        queued = sorted(
            (
                r
                for r in self.records.values()
                if r.job.state == S.JOB_STATE_QUEUED and r.job.id not in self.tasks
            ),
            key=lambda r: r.job.id,
        )
        for rec in queued[: max(0, self.settings.slots - running)]:
            task = asyncio.create_task(self._run(rec), name=f"train-{rec.job.id}")
            self.tasks[rec.job.id] = task
            task.add_done_callback(lambda _t, job_id=rec.job.id: self._finished(job_id))

    def _finished(self, job_id: str) -> None:
        self.tasks.pop(job_id, None)
        self._schedule()

    async def _run(self, rec: Record) -> None:
        job = rec.job
        try:
            await self._train(rec)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("job %s failed in the service", job.id)
            if not self.stopping and job.state not in TERMINAL:
                await self._set_state(rec, S.JOB_STATE_FAILED, _error(13, f"trainer service error: {err}"))

    async def _train(self, rec: Record) -> None:
        job = rec.job
        work = self.work_dir / job.id
        work.mkdir(parents=True, exist_ok=True)
        spec = {
            "job_id": job.id,
            "base_model": job.base_model,
            "dataset_id": job.dataset_id,
            "method": "SFT" if job.method == trainer_pb2.FINE_TUNE_METHOD_SFT else "DPO",
            "hyperparameters": rec.worker_hp,
            "cache_dir": str(self.cache_dir),
            "logging_steps": self.settings.logging_steps,
            "step_delay_s": self.settings.step_delay_s,
        }
        (work / "spec.json").write_text(json.dumps(spec, indent=2))
        shutil.rmtree(work / "output", ignore_errors=True)
        await self._set_state(rec, S.JOB_STATE_RUNNING)
        env = {**os.environ, **_store_env(self.settings)}
        with (work / "worker.log").open("ab") as log_file:
            proc = await asyncio.create_subprocess_exec(
                self.settings.worker_python or sys.executable,
                "-m",
                "flywheel_trainer.worker",
                str(work),
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
                # No preexec_fn: running Python between fork and exec in a process with gRPC threads
                # can crash the child (SIGSEGV seen here); the worker calls die_with_parent() itself.
                start_new_session=True,
            )
        self.procs[job.id] = proc
        if rec.cancel_requested:  # cancelled while the process was starting
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        outcome: dict[str, Any] = {}
        started = time.monotonic()
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace")
                if not line.startswith(PREFIX):
                    continue
                try:
                    record = json.loads(line[len(PREFIX) :])
                except json.JSONDecodeError:
                    continue
                await self._on_record(rec, record, outcome, started)
            rc = await proc.wait()
        finally:
            self.procs.pop(job.id, None)
        if self.stopping:
            return  # left RUNNING on disk: the next start resumes it
        if rec.cancel_requested:
            await self._set_state(rec, S.JOB_STATE_CANCELLED)
            return
        if rc == 0 and "done" in outcome:
            await self._publish(rec, Path(outcome["done"]["output"]))
            return
        if "error" in outcome:
            err = outcome["error"]
            await self._set_state(rec, S.JOB_STATE_FAILED, _error(err["code"], err["message"]))
            return
        if rc < 0:
            sig = signal.Signals(-rc).name
            hint = " (the kernel's out-of-memory killer sends SIGKILL)" if rc == -signal.SIGKILL else ""
            message = f"training process was killed by {sig}{hint}"
        else:
            message = f"training process exited with status {rc} without a result; see {work / 'worker.log'}"
        await self._set_state(rec, S.JOB_STATE_FAILED, _error(13, message, {"exit_status": str(rc)}))

    async def _on_record(
        self, rec: Record, record: dict[str, Any], outcome: dict[str, Any], started: float
    ) -> None:
        job = rec.job
        kind = record.get("type")
        if kind == "device":
            job.device = record["device"]
            self._save(rec)
        elif kind == "plan":
            job.progress.total_steps = int(record["total_steps"])
            self._save(rec)
        elif kind == "log":
            if record.get("loss") is None and record.get("eval_loss") is None:
                return
            metrics = trainer_pb2.TrainingMetrics(step=int(record["step"]))
            if record.get("loss") is not None:
                metrics.loss = float(record["loss"])
            elif job.HasField("latest_metrics"):
                metrics.CopyFrom(job.latest_metrics)
                metrics.step = int(record["step"])
            for name in ("learning_rate", "grad_norm", "tokens_per_second"):
                if record.get(name) is not None:
                    setattr(metrics, name, float(record[name]))
            if record.get("eval_loss") is not None:
                metrics.eval_loss = float(record["eval_loss"])
            for key, value in (record.get("extra") or {}).items():
                if key.startswith(("rewards/", "logps/", "logits/")) or key in (
                    "mean_token_accuracy",
                    "entropy",
                ):
                    metrics.extra[key] = float(value)
            total = int(record.get("total_steps") or job.progress.total_steps or 0)
            progress = trainer_pb2.TrainingProgress(
                step=int(record["step"]), total_steps=total, epoch=float(record.get("epoch") or 0.0)
            )
            progress.fraction = min(1.0, progress.step / total) if total else 0.0
            if record.get("eta_s") is not None:
                progress.eta.CopyFrom(Duration(seconds=int(record["eta_s"])))
            job.progress.CopyFrom(progress)
            job.latest_metrics.CopyFrom(metrics)
            self._save(rec)
            entry = trainer_pb2.TrainingLog(progress=progress, metrics=metrics, log_time=_now())
            rec.history.append(entry)
            self._notify(job.id, trainer_pb2.WatchFineTuneJobResponse(log=entry))
        elif kind == "checkpoint":
            job.last_checkpoint.CopyFrom(
                common_pb2.ObjectRef(key=record["key"] + COMPLETE_MARKER, size_bytes=int(record["size"]))
            )
            self._save(rec)
        elif kind in ("done", "error", "stopped"):
            outcome[kind] = record

    # ------------------------------------------------------------------ publishing

    async def _publish(self, rec: Record, output: Path) -> None:
        job = rec.job
        async with self.publish_lock:
            if not rec.publish_version:
                rec.publish_version = await asyncio.to_thread(self._next_version, job.adapter_name)
                self._save(rec)
        version = rec.publish_version
        prefix = f"{ADAPTERS_PREFIX}{job.adapter_name}/v{version}/"
        adapter = await asyncio.to_thread(self._write_adapter, rec, output, prefix, version)
        job.adapter.CopyFrom(
            trainer_pb2.AdapterRef(name=adapter.name, version=adapter.version, object_prefix=prefix)
        )
        event = events_pb2.AdapterPublished(
            name=adapter.name,
            version=version,
            base_model=job.base_model,
            dataset_id=job.dataset_id,
            job_id=job.id,
            object_prefix=prefix,
            lora_rank=job.hyperparameters.lora.rank,
            target_modules=list(job.hyperparameters.lora.target_modules),
            loop_id=job.loop_id,
        )
        event.manifest.CopyFrom(adapter.manifest)
        event.meta.event_id = f"adapter-published:{adapter.name}/v{version}"
        event.meta.occurred_at.CopyFrom(adapter.create_time)
        event.meta.producer = "trainer"
        await self.bus.publish("flywheel.adapter.published", event, msg_id=event.meta.event_id)
        await self._set_state(rec, S.JOB_STATE_SUCCEEDED)
        shutil.rmtree(output.parent / "hf", ignore_errors=True)

    def _next_version(self, name: str) -> int:
        versions = [0]
        for info in self.store.list(f"{ADAPTERS_PREFIX}{name}/"):
            match = re.match(rf"{ADAPTERS_PREFIX}{re.escape(name)}/v(\d+)/", info.key)
            if match:
                versions.append(int(match.group(1)))
        taken = {r.publish_version for r in self.records.values() if r.job.adapter_name == name}
        version = max(versions + list(taken)) + 1
        return version

    def _write_adapter(self, rec: Record, output: Path, prefix: str, version: int) -> trainer_pb2.Adapter:
        job = rec.job
        template_path = output / "chat_template.jinja"
        template = template_path.read_text() if template_path.exists() else ""
        base = catalog.base_model_info(self.store, job.base_model)
        adapter = trainer_pb2.Adapter(
            name=job.adapter_name,
            version=version,
            base_model=job.base_model,
            dataset_id=job.dataset_id,
            job_id=job.id,
            method=job.method,
            object_prefix=prefix,
            chat_template_sha256=catalog.template_sha256(template),
            default_chat_template=template == catalog.DEFAULT_CHAT_TEMPLATE,
            loop_id=job.loop_id,
        )
        adapter.hyperparameters.CopyFrom(job.hyperparameters)
        adapter.labels.update(job.labels)
        adapter.create_time.CopyFrom(_now())
        if job.HasField("latest_metrics"):
            adapter.final_metrics.CopyFrom(job.latest_metrics)
        history = json.loads((output / "training_log.json").read_text())
        evals = [h["eval_loss"] for h in history if "eval_loss" in h]
        if evals:
            adapter.final_metrics.eval_loss = float(evals[-1])
        adapter.loss_curve.CopyFrom(_ref(output / "loss_curve.png", prefix + "loss_curve.png"))
        adapter.manifest.key = prefix + "manifest.json"
        manifest = {
            "adapter": json_format.MessageToDict(adapter),
            "adapter_id": f"{job.adapter_name}/v{version}",
            "lineage": {
                "base_model": base.to_json() if base else {"name": job.base_model},
                "dataset_id": job.dataset_id,
                "job_id": job.id,
                "method": trainer_pb2.FineTuneMethod.Name(job.method),
                "hyperparameters": json_format.MessageToDict(job.hyperparameters),
                "resume_count": job.resume_count,
                "device": job.device,
            },
            "metrics": {"final": json_format.MessageToDict(adapter.final_metrics), "history": history},
            "serving": {
                "format": "peft-lora",
                "base_model_name_or_path": job.base_model,
                "lora_rank": job.hyperparameters.lora.rank,
                "target_modules": list(job.hyperparameters.lora.target_modules),
            },
        }
        (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if is_complete(self.store, prefix):
            return adapter  # published before a restart; the same version is not written twice
        upload_dir(self.store, output, prefix, overwrite=True)
        return adapter

    # ------------------------------------------------------------------ adapters

    def load_adapters(self) -> list[trainer_pb2.Adapter]:
        adapters = []
        for info in self.store.list(ADAPTERS_PREFIX):
            if not info.key.endswith("/" + COMPLETE_MARKER) or info.key.count("/") != 3:
                continue
            manifest_key = info.key[: -len(COMPLETE_MARKER)] + "manifest.json"
            data = json.loads(self.store.get_bytes(manifest_key))
            adapter = json_format.ParseDict(
                data["adapter"], trainer_pb2.Adapter(), ignore_unknown_fields=True
            )
            stat = self.store.stat(manifest_key)
            adapter.manifest.CopyFrom(
                common_pb2.ObjectRef(key=manifest_key, size_bytes=stat.size, sha256=stat.sha256 or "")
            )
            adapters.append(adapter)
        adapters.sort(
            key=lambda a: (a.create_time.seconds, a.create_time.nanos, a.name, a.version), reverse=True
        )
        return adapters


def _ref(path: Path, key: str) -> common_pb2.ObjectRef:
    data = path.read_bytes()
    return common_pb2.ObjectRef(key=key, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def _error(code: int, message: str, details: dict[str, str] | None = None) -> common_pb2.Error:
    err = common_pb2.Error(code=code, message=message)
    err.details.update(details or {})
    return err


def _kill_group(pgid: int) -> None:
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


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
