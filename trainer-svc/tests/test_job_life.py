"""Fine-tune jobs on the job core: records outlive the pod, events outlive an outage of NATS,
every progress record of the training process is applied or logged, old local records are kept.

Real gRPC server, real nats-server (this module starts its own where a test stops it), real
training processes on the tiny model, except where a test needs a process that misbehaves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import nats
import nats.js.errors
import pytest
from google.protobuf import json_format

from flywheel.trainer.v1 import trainer_pb2 as S
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_common.events import NatsSettings
from flywheel_common.natsserver import NatsServerProcess
from flywheel_common.objectstore import ObjectStore
from flywheel_testing.services import boot_service
from flywheel_testing.trainer import sft_job, wait_for
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings

SUCCEEDED, FAILED = 3, 4
DONE = (3, 4, 5)
OUTBOX = "trainer/jobs/outbox/"


async def _create(
    stub: trainer_pb2_grpc.TrainerServiceStub, job: S.FineTuneJob, **kw: object
) -> S.FineTuneJob:
    return (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job, **kw))).job


async def _until(check: Callable[[], bool], what: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_a_job_outlives_the_pod(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable, tmp_path: Path
) -> None:
    """The service stops mid-run and its local disk is lost; a new one on a fresh disk knows the
    job from the object store and resumes it from its checkpoint there."""
    slow = {**trainer_env, "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.3"}
    async with boot_service(build_app, TrainerSettings, slow) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        job = await _create(stub, sft_job("pod", max_steps=8, checkpoint_every_steps=3), request_id="pod-1")
        await wait_for(stub, job.id, lambda j: j.HasField("last_checkpoint"))
    shutil.rmtree(trainer_env["FLYWHEEL_TRAINER_STATE_DIR"])
    fresh = {**trainer_env, "FLYWHEEL_TRAINER_STATE_DIR": str(tmp_path / "another-pod")}
    async with boot_service(build_app, TrainerSettings, fresh) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        again = await _create(stub, sft_job("pod", max_steps=8, checkpoint_every_steps=3), request_id="pod-1")
        assert again.id == job.id  # the request-id ledger is in the store too
        final = await wait_for(stub, job.id, lambda j: j.state in DONE)
        listed = (await stub.ListFineTuneJobs(S.ListFineTuneJobsRequest())).jobs
    assert final.state == SUCCEEDED, final.error
    assert final.resume_count == 1 and final.adapter.version == 1
    assert [j.id for j in listed] == [job.id]
    assert list(
        (tmp_path / "another-pod" / "work" / job.id / "resume").glob("checkpoint-*/adapter_model.safetensors")
    )
    store: ObjectStore = store_of(trainer_env)
    assert store.exists(f"trainer/jobs/{job.id}.json")


async def _stream(url: str, stream: str) -> list[tuple[str, str]]:
    """(subject, Nats-Msg-Id) of every message in the stream, in order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            out.append((msg.subject, (msg.headers or {}).get("Nats-Msg-Id", "")))
        return out
    finally:
        await nc.close()


async def test_nats_down_while_the_adapter_is_published(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable, tmp_path: Path
) -> None:
    """NATS goes down while the job trains: the job still ends SUCCEEDED with its adapter, and
    ``adapter.published`` then ``finetune.succeeded`` go out exactly once when NATS is back."""
    nats_store = tmp_path / "nats-store"
    server = NatsServerProcess(store_dir=nats_store, stop_grace_s=5).start()
    port, url = server.port, server.url
    env = {**trainer_env, "FLYWHEEL_NATS_URL": url, "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.3"}
    store: ObjectStore = store_of(trainer_env)
    try:
        async with boot_service(build_app, TrainerSettings, env) as address:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
            job = await _create(stub, sft_job("outage", max_steps=30))
            await wait_for(stub, job.id, lambda j: j.progress.step >= 1)
            await asyncio.to_thread(server.stop)
            during = (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=job.id))).job
            assert during.state == 2 and during.progress.step < 30, "the job ended before NATS went down"

            final = await wait_for(stub, job.id, lambda j: j.state in DONE)
            assert final.state == SUCCEEDED, final.error
            assert final.adapter.object_prefix == "adapters/outage/v1/"
            # The job is SUCCEEDED in its record a moment before its announcement is written to
            # the outbox (the record first: a crash in between is re-announced at start-up).
            await _until(lambda: bool(list(store.list(OUTBOX))), "the announcement to wait in the outbox", 60)

            server = NatsServerProcess(port=port, store_dir=nats_store, stop_grace_s=5).start()
            await _until(lambda: not list(store.list(OUTBOX)), "the outbox to empty once NATS is back", 120)
            seen = await _stream(url, NatsSettings(url=url).stream)
    finally:
        server.stop()
    ids = [msg_id for _subject, msg_id in seen]
    published = [i for s, i in seen if s == "flywheel.adapter.published"]
    succeeded = [i for s, i in seen if s == "flywheel.finetune.succeeded"]
    assert published == ["adapter-published:outage/v1"], seen
    assert succeeded == [f"finetune-succeeded:{job.id}:0"], seen
    assert ids.index(published[0]) < ids.index(succeeded[0])  # the adapter first, then the job's end
    assert ids[:2] == [f"finetune-queued:{job.id}:0", f"finetune-running:{job.id}:0"]
    assert len(ids) == len(set(ids)) == 4


FAKE_WORKER = """#!{python}
# Stands in for `python -m flywheel_trainer.worker <work dir>`: a process that misbehaves.
print("@@flywheel " + '{{"type": "device", "device": "fake"}}')
print("@@flywheel {{not json")
print("@@flywheel " + '{{"type": "teleport", "to": "mars"}}')
print("a stray line on the record channel")
print("@@flywheel " + '{{"type": "plan", "total_steps": 40, "start_step": 0}}')
print("@@flywheel " + '{{"type": "log", "step": 1, "total_steps": 40, "loss": 2.5}}')
print("@@flywheel " + '{{"type": "error", "code": "FAILED_PRECONDITION", "message": "the fake gives up"}}')
raise SystemExit(3)
"""


async def test_every_progress_record_is_applied_or_logged(
    trainer_env: dict[str, str], channel_to: Callable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = tmp_path / "fake-python"
    fake.write_text(FAKE_WORKER.format(python=sys.executable))
    fake.chmod(0o755)
    caplog.set_level(logging.WARNING, logger="flywheel.trainer.jobs")
    async with boot_service(build_app, TrainerSettings, trainer_env, worker_python=str(fake)) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        job = await _create(stub, sft_job("fake"))
        final = await wait_for(stub, job.id, lambda j: j.state in DONE, limit_s=60)
    assert final.state == FAILED
    assert final.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert final.error.message == "the fake gives up"
    assert final.device == "fake" and final.progress.total_steps == 40 and final.latest_metrics.loss == 2.5
    unreadable = [r.getMessage() for r in caplog.records if "unreadable progress line" in r.getMessage()]
    assert len(unreadable) == 3, unreadable
    assert any("teleport" in m for m in unreadable) and any("stray line" in m for m in unreadable)


async def test_records_of_an_earlier_trainer_are_imported(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable
) -> None:
    """A job record the trainer kept on local disk before the job core (``<state_dir>/jobs/``)."""
    request = sft_job("legacy")
    job = S.FineTuneJob()
    job.CopyFrom(request)
    job.id, job.state, job.resume_count = "ftj-01JLEGACY0000000000000000", SUCCEEDED, 1
    job.adapter.CopyFrom(S.AdapterRef(name="legacy", version=1, object_prefix="adapters/legacy/v1/"))
    job.create_time.GetCurrentTime()
    job.end_time.GetCurrentTime()
    folder = Path(trainer_env["FLYWHEEL_TRAINER_STATE_DIR"]) / "jobs"
    folder.mkdir(parents=True)
    record = {
        "job": json_format.MessageToDict(job),
        "request_id": "legacy-1",
        "request_hash": hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest(),
        "event_counts": {"queued": 2, "running": 2, "succeeded": 1},
        "worker_hp": {"lora_rank": 8},
        "publish_version": 1,
        "cancel_requested": False,
    }
    (folder / f"{job.id}.json").write_text(json.dumps(record))
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        got = (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=job.id))).job
        assert got == job
        assert (await _create(stub, sft_job("legacy"), request_id="legacy-1")).id == job.id
        assert [j.id for j in (await stub.ListFineTuneJobs(S.ListFineTuneJobsRequest())).jobs] == [job.id]
    assert not (folder / f"{job.id}.json").exists() and (folder / f"{job.id}.json.imported").exists()
    store: ObjectStore = store_of(trainer_env)
    assert store.exists(f"trainer/jobs/published/{job.id}")  # announced when it ended: not again


async def test_a_queued_job_is_cancelled_at_once_while_another_trains(
    trainer_env: dict[str, str], channel_to: Callable
) -> None:
    slow = {**trainer_env, "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.3"}
    async with boot_service(build_app, TrainerSettings, slow, slots=1) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        first = await _create(stub, sft_job("first", max_steps=500))
        second = await _create(stub, sft_job("second"))
        await wait_for(stub, first.id, lambda j: j.state == 2)
        assert (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=second.id))).job.state == 1
        cancelled = (await stub.CancelFineTuneJob(S.CancelFineTuneJobRequest(job_id=second.id))).job
        assert cancelled.state == 5 and cancelled.error.code == grpc.StatusCode.CANCELLED.value[0]
        assert not cancelled.HasField("start_time")
        assert (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=first.id))).job.state == 2
        # The running one: its process is stopped (wherever it is: loading or training).
        await stub.CancelFineTuneJob(S.CancelFineTuneJobRequest(job_id=first.id))
        final = await wait_for(stub, first.id, lambda j: j.state in DONE, limit_s=120)
    assert final.state == 5 and final.progress.step < 500
