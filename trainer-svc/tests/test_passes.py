"""Rows per pass: a step's rows that do not fit the card are split into passes, and the training
stays the same.

An SFT job on a GPU is split up front by the memory model (`memory_plan.rows_per_pass`); any job
that runs out of GPU memory retries with half the rows a pass from its newest checkpoint, down to
one row. CI has no GPU, so the out-of-memory error is simulated: the trainer's testing aid
`FLYWHEEL_TRAINER_SIMULATE_OOM_FROM_ROWS` makes every step after the first whose passes hold that
many rows raise `torch.OutOfMemoryError` inside the real training process, where CUDA would. The
memory model's decision is checked against a Gemma 3 270M config with given free memory.
Everything else is real: the trainer service over gRPC, its training processes, the tiny model.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import torch
from safetensors.torch import load_file
from transformers import Gemma3TextConfig

from flywheel.trainer.v1 import trainer_pb2 as S
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_testing.services import boot_service
from flywheel_testing.trainer import TINY, sft_job, wait_for
from flywheel_trainer.memory_plan import Shape, rows_per_pass, split_rows
from flywheel_trainer.recipe import Recipe
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import download_dir

SUCCEEDED, FAILED = 3, 4
DONE = (3, 4, 5)
GIB = 2**30
# Gemma 3 270M's text config (its config.json): 18 layers, hidden 640, 4 heads of 256, 1 KV head.
GEMMA_270M = Gemma3TextConfig(
    hidden_size=640,
    intermediate_size=2048,
    num_hidden_layers=18,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    vocab_size=262144,
    tie_word_embeddings=True,
)


async def _run(env: dict[str, str], channel_to: Callable, job: S.FineTuneJob) -> S.FineTuneJob:
    async with boot_service(build_app, TrainerSettings, env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        created = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job))).job
        return await wait_for(stub, created.id, lambda j: j.state in DONE)


async def test_an_out_of_memory_pass_is_halved_and_trains_the_same(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable, tmp_path: Path
) -> None:
    """4 rows a pass run out of memory at the second step; the job retries at 2 rows a pass and 2
    passes a step from scratch (no checkpoint yet), succeeds with the same optimizer steps, reports
    the split, and publishes the very weights of the unsplit job: each step holds the same 4 rows
    and the Trainer normalises the loss over the whole accumulated step. LoRA dropout is off for
    the comparison: its masks are drawn per pass."""
    spec = {"max_steps": 6, "checkpoint_every_steps": 4, "packing": True, "batch_size": 4}
    jobs = [sft_job(name, **spec) for name in ("whole", "split")]
    for job in jobs:
        job.hyperparameters.lora.dropout = 0.0
    whole = await _run(trainer_env, channel_to, jobs[0])
    oom = {**trainer_env, "FLYWHEEL_TRAINER_SIMULATE_OOM_FROM_ROWS": "4"}
    split = await _run(oom, channel_to, jobs[1])

    assert whole.state == SUCCEEDED and split.state == SUCCEEDED, (whole.error, split.error)
    assert (whole.rows_per_pass, whole.rows_per_pass_note) == (4, "")
    assert split.rows_per_pass == 2
    note = split.rows_per_pass_note
    assert note.startswith("out of memory at 4 rows a pass (CUDA out of memory (simulated"), note
    assert note.endswith("retried at 2 rows a pass, 2 passes a step"), note
    assert split.progress.total_steps == whole.progress.total_steps == 6
    assert split.progress.step == 6
    assert split.hyperparameters.batch_size == 4  # what the user asked for is unchanged

    store = store_of(trainer_env)
    weights = [
        load_file(download_dir(store, j.adapter.object_prefix, tmp_path / j.id) / "adapter_model.safetensors")
        for j in (whole, split)
    ]
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


async def test_halving_goes_down_to_one_row_then_fails_resource_exhausted_saying_what_to_change(
    trainer_env: dict[str, str], channel_to: Callable
) -> None:
    """Every pass runs out of memory: 4 rows, then 2 (from the step-1 checkpoint), then 1; then the
    job fails RESOURCE_EXHAUSTED (never retried by Kubernetes: exit status 6) naming the levers."""
    oom = {**trainer_env, "FLYWHEEL_TRAINER_SIMULATE_OOM_FROM_ROWS": "1"}
    job = sft_job("nofit", max_steps=4, packing=True, batch_size=4, checkpoint_every_steps=1)
    done = await _run(oom, channel_to, job)
    assert done.state == FAILED
    assert done.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], done.error
    message = done.error.message
    assert message.startswith("out of memory while training, even at 1 row a pass: CUDA out of memory"), (
        message
    )
    assert "max_seq_length, currently 128" in message and "NF4" in message
    assert done.rows_per_pass == 1
    assert "out of memory at 2 rows a pass" in done.rows_per_pass_note


def test_the_memory_model_reads_a_real_config_and_sizes_passes() -> None:
    shape = Shape.of(GEMMA_270M)
    assert shape.head_dim == 256 and shape.kv_heads == 1
    # The registered Gemma 3 270M has 268,098,176 parameters (norm weights aside, within 0.1%).
    assert shape.params == pytest.approx(268_098_176, rel=1e-3)
    small, large = rows_per_pass(shape, 10 * GIB, 2048, 16), rows_per_pass(shape, 70 * GIB, 2048, 16)
    assert 1 <= small < large
    # Without a fused loss each row also holds 262k-wide logits: far fewer rows fit.
    assert rows_per_pass(shape, 70 * GIB, 2048, 16, fused_loss=False) < large / 2
    assert rows_per_pass(shape, 0.5 * GIB, 2048, 16) == 1  # never 0: one row is the OOM retry's to judge
    assert [split_rows(16, m) for m in (16, 9, 8, 5, 1, 0)] == [16, 8, 8, 4, 1, 1]
    assert split_rows(6, 4) == 3 and split_rows(7, 6) == 1 and split_rows(4, 100) == 4


def test_an_sft_step_that_would_not_fit_is_split_up_front(tmp_path: Path) -> None:
    """The decision the worker makes on a GPU once the weights are loaded, given the free memory:
    16 rows of 2,048 tokens of Gemma 3 270M fit 70 GiB with the fused (Liger) loss, not without it
    (each row then holds its 262k-wide logits too), and not in 10 GiB."""
    (tmp_path / "spec.json").write_text(
        _spec_json(batch_size=16, gradient_accumulation_steps=2, max_seq_length=2048, lora_rank=16)
    )
    model = SimpleNamespace(config=GEMMA_270M)
    shape = Shape.of(GEMMA_270M)

    def recipe() -> Recipe:
        return Recipe(tmp_path, stop=None, emit=lambda r: None)  # type: ignore[arg-type]

    roomy = recipe()
    roomy._fit_passes(model, 70 * GIB, fused_loss=True)
    assert (roomy.pass_rows, roomy.accumulation, roomy.pass_note) == (16, 2, "")
    for free, fused in ((70 * GIB, False), (10 * GIB, True)):
        tight = recipe()
        fit = rows_per_pass(shape, free, 2048, 16, fused_loss=fused)
        tight._fit_passes(model, free, fused_loss=fused)
        assert tight.pass_rows == split_rows(16, fit) < 16, (free, fused, fit)
        assert tight.accumulation == 2 * 16 // tight.pass_rows
        note = tight.pass_note
        assert note.startswith(
            f"16 rows of 2048 tokens a pass would not fit the {free / GIB:.1f} GiB free"
        ), note
        assert f"the memory model allows {fit}" in note and f"{tight.accumulation} passes a step" in note


def _spec_json(**hp: object) -> str:
    from flywheel_trainer.protocol import Spec, WorkerHyperparameters

    base = {
        "lora_rank": 8,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj"],
        "quantization": "NONE",
        "double_quantization": False,
        "epochs": 1,
        "max_steps": 0,
        "learning_rate": 1e-4,
        "scheduler": "constant",
        "warmup_ratio": 0.0,
        "batch_size": 4,
        "gradient_accumulation_steps": 1,
        "max_seq_length": 128,
        "packing": False,
        "seed": 1,
        "checkpoint_every_steps": 10,
        "dpo_beta": 0.1,
    }
    spec = Spec(
        job_id="ftj-test",
        base_model="tiny",
        dataset_id="ds-x",
        method="SFT",
        hyperparameters=WorkerHyperparameters(**{**base, **hp}),  # type: ignore[arg-type]
        cache_dir="/tmp",
        logging_steps=1,
    )
    return spec.model_dump_json()


async def test_a_dpo_job_from_the_cli_shows_the_split(
    trainer_env: dict[str, str], channel_to: Callable
) -> None:
    """DPO (which the memory model does not size up front) relies on the retry alone: 4 rows a pass
    run out of memory, then 2; `flywheel finetune create` (a real CLI process, following the job)
    prints why the pass shrank, and the job succeeds at 1 row a pass."""
    oom = {**trainer_env, "FLYWHEEL_TRAINER_SIMULATE_OOM_FROM_ROWS": "2"}
    async with boot_service(build_app, TrainerSettings, oom) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "flywheel_cli", "finetune", "--address", address, "create"],
            *[
                "--base-model",
                TINY,
                "--dataset",
                "ds-dpo0000000000001",
                "--adapter",
                "prefs",
                "--method",
                "dpo",
            ],
            *[
                "--rank",
                "8",
                "--max-steps",
                "4",
                "--lr",
                "1e-3",
                "--max-seq-length",
                "128",
                "--batch-size",
                "4",
            ],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
        err = stderr.decode()
        assert proc.returncode == 0, err
        assert "split:" in err and "retried at 1 row a pass, 4 passes a step" in err, err
        final = (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=stdout.decode().split()[0]))).job
    assert final.state == SUCCEEDED and final.rows_per_pass == 1, final
    assert final.progress.step == final.progress.total_steps == 4


async def test_a_gpu_sft_job_left_at_batch_size_0_is_sized_by_tokens(
    trainer_env: dict[str, str], channel_to: Callable, tmp_path: Path
) -> None:
    """On a GPU, an SFT job that leaves batch_size at 0 gets gpu_step_tokens (32,768) of rows a step:
    64 rows at max_seq_length 512, capped at 256 for short rows, a multiple of job.gpus; DPO and CPU
    jobs keep default_batch_size (4), and a job's own batch_size always wins. The Kubernetes backend
    decides by the training pod's GPUs (job_gpus), not by the service's own machine: a GPU pod gets
    the token-sized step and may run NF4, a pod without GPUs neither. validate_only: nothing runs
    (CI has no GPU; FLYWHEEL_TRAINER_GPU_AVAILABLE declares one, as the chart does for GPU nodes)."""

    async def resolved(env: dict[str, str], **changes: object) -> S.FineTuneJob | grpc.aio.AioRpcError:
        job = sft_job("sized", batch_size=0, max_seq_length=512)
        for key, value in changes.items():
            if key in ("method", "dataset_id", "gpus"):
                setattr(job, key, value)
            elif key == "nf4":
                job.hyperparameters.quantization.quantization = S.QUANTIZATION_NF4
            else:
                setattr(job.hyperparameters, key, value)
        async with boot_service(build_app, TrainerSettings, env) as address:
            stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
            try:
                request = S.CreateFineTuneJobRequest(job=job, validate_only=True)
                return (await stub.CreateFineTuneJob(request)).job
            except grpc.aio.AioRpcError as err:
                return err

    def rows(job: S.FineTuneJob | grpc.aio.AioRpcError) -> int:
        assert isinstance(job, S.FineTuneJob), job.details()
        return job.hyperparameters.batch_size

    gpu = {
        **trainer_env,
        "FLYWHEEL_TRAINER_GPU_AVAILABLE": "true",
        "FLYWHEEL_TRAINER_CPU_DATA_PARALLEL": "true",
    }
    assert rows(await resolved(gpu)) == 64
    assert rows(await resolved(gpu, max_seq_length=256)) == 128
    assert rows(await resolved(gpu, max_seq_length=100)) == 256  # 327 by tokens, capped
    assert rows(await resolved(gpu, gpus=3)) == 63  # a multiple of the processes sharing a step
    assert rows(await resolved(gpu, batch_size=6)) == 6  # the job's own value wins
    dpo = await resolved(gpu, method=S.FINE_TUNE_METHOD_DPO, dataset_id="ds-dpo0000000000001")
    assert rows(dpo) == 4
    assert rows(await resolved({**gpu, "FLYWHEEL_TRAINER_GPU_STEP_TOKENS": "0"})) == 4
    assert rows(await resolved({**trainer_env, "FLYWHEEL_TRAINER_GPU_AVAILABLE": "false"})) == 4

    template = tmp_path / "job.yaml"
    template.write_text(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n"
        "      restartPolicy: Never\n      containers:\n      - name: train\n        image: flywheel\n"
    )
    kube = {
        **trainer_env,
        "FLYWHEEL_TRAINER_BACKEND": "kubernetes",
        "FLYWHEEL_TRAINER_JOB_TEMPLATE": str(template),
        "FLYWHEEL_TRAINER_JOB_API_URL": "http://127.0.0.1:9",  # validate_only calls no cluster
    }
    assert rows(await resolved(kube)) == 64  # job_gpus defaults to 1: the pods train on a GPU
    assert isinstance(await resolved(kube, nf4=True), S.FineTuneJob)
    no_gpu_pods = {**kube, "FLYWHEEL_TRAINER_JOB_GPUS": "0"}
    assert rows(await resolved(no_gpu_pods)) == 4
    refused = await resolved(no_gpu_pods, nf4=True)
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "NF4" in (refused.details() or "")

    # FP8 base matmuls: taken by a GPU trainer (and echoed), refused with NF4 and without a GPU.
    fp8 = await resolved(gpu, fp8_base_matmuls=True)
    assert isinstance(fp8, S.FineTuneJob) and fp8.hyperparameters.fp8_base_matmuls
    both = await resolved(gpu, fp8_base_matmuls=True, nf4=True)
    assert isinstance(both, grpc.aio.AioRpcError) and both.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "job.hyperparameters.fp8_base_matmuls" in (both.details() or "") and "NF4" in (
        both.details() or ""
    )
    dpo_fp8 = await resolved(
        gpu, fp8_base_matmuls=True, method=S.FINE_TUNE_METHOD_DPO, dataset_id="ds-dpo0000000000001"
    )
    assert isinstance(dpo_fp8, grpc.aio.AioRpcError) and dpo_fp8.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SFT" in (dpo_fp8.details() or "")
    cpu_fp8 = await resolved(no_gpu_pods, fp8_base_matmuls=True)
    assert isinstance(cpu_fp8, grpc.aio.AioRpcError) and cpu_fp8.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fp8_base_matmuls" in (cpu_fp8.details() or "") and "CUDA GPU" in (cpu_fp8.details() or "")
