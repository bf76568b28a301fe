"""Data-parallel jobs (`FineTuneJob.gpus`): several training processes share each optimizer step.

CI has no GPU, so the processes run on the CPU: the trainer's testing aid
`FLYWHEEL_TRAINER_CPU_DATA_PARALLEL` lets a machine without GPUs run a job's `gpus` as that many
CPU processes, started by the same launcher (`torch.distributed.run`) and joined by the same DDP
(accelerate, over gloo instead of NCCL) as on GPUs. Everything else is real: the trainer service
over gRPC, its training processes, the tiny model, checkpoints in the object store. The GPU run of
the same path (NCCL, scaling) is `trainer-svc/bench` on the device tool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
import torch
from safetensors.torch import load_file

from flywheel.trainer.v1 import trainer_pb2 as S
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_testing.services import boot_service
from flywheel_testing.trainer import sft_job, wait_for
from flywheel_trainer.kube import GPU_RESOURCE, KubeJobs
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import download_dir

SUCCEEDED, FAILED, CANCELLED = 3, 4, 5
DONE = (3, 4, 5)


def _dp(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FLYWHEEL_TRAINER_CPU_DATA_PARALLEL": "true"}


async def _run(env: dict[str, str], channel_to: Callable, *jobs: S.FineTuneJob) -> list[S.FineTuneJob]:
    async with boot_service(build_app, TrainerSettings, env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        done = []
        for job in jobs:
            created = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job))).job
            done.append(await wait_for(stub, created.id, lambda j: j.state in DONE, limit_s=600))
        return done


def _weights(store: object, job: S.FineTuneJob, tmp_path: Path) -> dict[str, torch.Tensor]:
    folder = download_dir(store, job.adapter.object_prefix, tmp_path / job.id)  # type: ignore[arg-type]
    return load_file(folder / "adapter_model.safetensors")


async def test_two_processes_train_what_one_does(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable, tmp_path: Path
) -> None:
    """The same SFT job on one process and on two: each of the two takes 2 of a step's 4 rows, DDP
    averages their gradients, and the published weights match the one-process job's to float
    rounding (the sums are ordered differently), through a checkpoint every 3 steps that rank 0
    uploads. LoRA dropout is off for the comparison: each process draws its own masks. Both a
    packed job and an unpacked one (one row a pass on a CPU, the rest accumulated) are compared."""
    jobs = []
    for packing in (True, False):
        for gpus in (1, 2):
            job = sft_job(f"dp{gpus}{'p' if packing else 'u'}", max_steps=6, checkpoint_every_steps=3,
                          packing=packing, batch_size=4)  # fmt: skip
            job.hyperparameters.lora.dropout = 0.0
            job.gpus = gpus
            jobs.append(job)
    done = await _run(_dp(trainer_env), channel_to, *jobs)
    for job in done:
        assert job.state == SUCCEEDED, (job.adapter_name, job.error)
        assert job.progress.step == 6 and job.progress.total_steps == 6
    one_p, two_p, one_u, two_u = done
    assert one_p.gpus == 1 and two_p.gpus == 2  # 0 and 1 both mean one process
    assert two_p.device == "cpu, 2 processes in data parallel (gloo)", two_p.device
    assert one_p.device == "cpu"
    assert two_p.rows_per_pass == 2 and one_p.rows_per_pass == 4  # each process's share of a step
    assert two_p.last_checkpoint.key  # rank 0 uploaded the step-3 checkpoint (and the step-6 one)
    store = store_of(trainer_env)
    for one, two in ((one_p, two_p), (one_u, two_u)):
        a, b = _weights(store, one, tmp_path), _weights(store, two, tmp_path)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=lambda m, k=key: f"{k}: {m}")
        assert one.latest_metrics.loss == pytest.approx(two.latest_metrics.loss, rel=1e-3)


async def test_a_dpo_job_on_two_processes(trainer_env: dict[str, str], channel_to: Callable) -> None:
    """DPO's trainer under DDP: both processes train, rank 0 publishes."""
    job = sft_job("dpodp", max_steps=3, batch_size=2)
    job.dataset_id, job.method, job.gpus = "ds-dpo0000000000001", S.FINE_TUNE_METHOD_DPO, 2
    (done,) = await _run(_dp(trainer_env), channel_to, job)
    assert done.state == SUCCEEDED, done.error
    assert done.adapter.version == 1 and done.progress.step == 3 and done.rows_per_pass == 1


async def test_bad_gpu_counts_are_refused_naming_the_field(
    trainer_env: dict[str, str], channel_to: Callable
) -> None:
    """Out of range or not dividing batch_size: INVALID_ARGUMENT; more than this machine has (a
    CPU machine without the testing aid has none): FAILED_PRECONDITION. Nothing is created."""
    cases = [
        (_dp(trainer_env), -1, 4, grpc.StatusCode.INVALID_ARGUMENT, "job.gpus: must be between 0 (one) and 16"),
        (_dp(trainer_env), 17, 4, grpc.StatusCode.INVALID_ARGUMENT, "got 17"),
        (_dp(trainer_env), 3, 4, grpc.StatusCode.INVALID_ARGUMENT, "3 GPUs cannot share a step of 4 rows"),
        (trainer_env, 2, 4, grpc.StatusCode.FAILED_PRECONDITION, "asks for 2 GPUs and this trainer's machine has none"),
    ]  # fmt: skip
    for env, gpus, rows, code, text in cases:
        async with boot_service(build_app, TrainerSettings, env) as address:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
            job = sft_job("badgpus", batch_size=rows)
            job.gpus = gpus
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job))
            assert raised.value.code() == code, (gpus, raised.value.details())
            assert text in (raised.value.details() or ""), raised.value.details()
            listed = await stub.ListFineTuneJobs(S.ListFineTuneJobsRequest())
            assert not listed.jobs


async def test_cancelling_a_data_parallel_job_stops_every_process(
    trainer_env: dict[str, str], channel_to: Callable
) -> None:
    """Cancel while both processes train: the job ends CANCELLED and neither the launcher nor any
    rank is left running (they agree to stop at the same step boundary, so none waits forever in a
    collective)."""
    env = {**_dp(trainer_env), "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.5"}
    async with boot_service(build_app, TrainerSettings, env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        job = sft_job("dpcancel", max_steps=200, batch_size=2, packing=True)
        job.gpus = 2
        created = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job))).job
        await wait_for(stub, created.id, lambda j: j.progress.step >= 2, limit_s=300)
        workers = _workers(created.id)
        assert len(workers) == 2, [p.cmdline() for p in workers]  # two ranks were training
        await stub.CancelFineTuneJob(S.CancelFineTuneJobRequest(job_id=created.id))
        done = await wait_for(stub, created.id, lambda j: j.state in DONE, limit_s=120)
        assert done.state == CANCELLED, done.error
        deadline = asyncio.get_running_loop().time() + 60
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers):
            assert asyncio.get_running_loop().time() < deadline, "a rank outlived its cancelled job"
            await asyncio.sleep(0.2)


def _workers(job_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "flywheel_trainer.worker" in cmd and any(job_id in part for part in cmd):
            found.append(proc)
    return found


def test_a_kubernetes_job_asks_for_the_job_s_gpus(tmp_path: Path) -> None:
    """The Job made for a 2-GPU fine-tune limits (and, where the template requests GPUs, requests)
    nvidia.com/gpu to 2; a one-GPU job keeps the configured job_gpus."""
    template = tmp_path / "job.yaml"
    template.write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n"
        "      restartPolicy: Never\n      containers:\n      - name: train\n        image: flywheel\n"
        "        resources:\n          requests: {nvidia.com/gpu: '1'}\n          limits: {nvidia.com/gpu: '1'}\n"
    )
    # An API URL that is never called: making the manifest talks to no cluster.
    kube = KubeJobs(
        TrainerSettings(
            backend="kubernetes", job_template=template, job_gpus=1, job_api_url="http://127.0.0.1:9"
        )
    )
    two = kube.manifest("ftj-abc", gpus=2)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert two["limits"][GPU_RESOURCE] == "2" and two["requests"][GPU_RESOURCE] == "2"
    one = kube.manifest("ftj-abc", gpus=1)["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert one["limits"][GPU_RESOURCE] == "1"


_LEAVE = """
import json, logging, os, sys, time
from pathlib import Path
from types import SimpleNamespace

import torch.distributed as tdist

from flywheel_trainer.recipe import Recipe

rank, port, folder = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
tdist.init_process_group("gloo", rank=rank, world_size=2)
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("flywheel.trainer.recipe").addHandler(handler)
if rank == 0:  # the late rank: it reaches the barrier only once rank 1 has left it
    deadline = time.monotonic() + 120
    while not (folder / "1.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
Recipe._leave_together(SimpleNamespace(rank=rank, LEAVE_TIMEOUT_S=1.0))
(folder / f"{rank}.json").write_text(json.dumps(warnings))
tdist.destroy_process_group()
"""


def test_a_finished_rank_does_not_wait_for_ever_for_a_late_one(tmp_path: Path) -> None:
    """Ranks wait for each other before leaving the process group (``Recipe._leave_together``), but
    only for ``LEAVE_TIMEOUT_S``: rank 1 leaves, with a warning, while rank 0 has not yet arrived
    (rank 0 arrives only after rank 1 has left), and neither raises. Two real processes over gloo."""
    import json
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen([sys.executable, "-c", _LEAVE, str(rank), str(port), str(tmp_path)])
        for rank in (0, 1)
    ]
    assert [proc.wait(timeout=180) for proc in procs] == [0, 0]
    got = {rank: json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)}
    assert any("not every rank finished" in w for w in got[1]), got  # rank 1 gave up waiting
    assert got[0] == [], got  # rank 0 found rank 1's arrival and left at once
