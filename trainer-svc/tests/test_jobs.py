"""Fine-tune jobs end to end: real gRPC server, real nats-server, real TRL/PEFT on a tiny model.

Every job trains a randomly initialised ~0.1M-parameter Llama built in the test (no hub access)
in its own process, exactly as in production; only the model size differs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
import pytest
import torch
from safetensors.torch import load_file

from flywheel.events.v1 import events_pb2
from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.adapter_digest import folder_digest
from flywheel_common.events import EventBus, NatsSettings
from flywheel_common.objectstore import ObjectStore
from flywheel_testing.services import boot_service, health_status
from flywheel_testing.trainer import TINY, sft_job, wait_for
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import download_dir

S = trainer_pb2
DONE = (3, 4, 5)  # SUCCEEDED, FAILED, CANCELLED


async def _create(
    stub: trainer_pb2_grpc.TrainerServiceStub, job: S.FineTuneJob, **kw: object
) -> S.FineTuneJob:
    return (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job, **kw))).job


async def _expect_error(
    stub: trainer_pb2_grpc.TrainerServiceStub, job: S.FineTuneJob
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _create(stub, job)
    return info.value


async def test_bad_requests_name_the_problem(trainer_env: dict[str, str], channel_to: Callable) -> None:
    async with boot_service(build_app, TrainerSettings, trainer_env, max_lora_rank=32) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))

        unknown = sft_job()
        unknown.dataset_id = "ds-doesnotexist0001"
        err = await _expect_error(stub, unknown)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "job.dataset_id" in err.details() and "ds-doesnotexist0001" in err.details()

        wrong_kind = sft_job()
        wrong_kind.dataset_id = "ds-dpo0000000000001"
        err = await _expect_error(stub, wrong_kind)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "PREFERENCE dataset" in err.details() and "FINE_TUNE_METHOD_SFT" in err.details()

        too_big = sft_job(lora={"rank": 64, "alpha": 16})
        err = await _expect_error(stub, too_big)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "job.hyperparameters.lora.rank" in err.details() and "max_lora_rank=32" in err.details()

        qlora = sft_job()
        qlora.hyperparameters.quantization.quantization = S.QUANTIZATION_NF4
        err = await _expect_error(stub, qlora)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "needs a CUDA GPU" in err.details()

        no_base = sft_job()
        no_base.base_model = "no-such-model"
        err = await _expect_error(stub, no_base)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and TINY in err.details()

        bad_target = sft_job()
        bad_target.hyperparameters.lora.target_modules.append("lm_head")
        err = await _expect_error(stub, bad_target)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "lm_head" in err.details()

        # validate_only resolves the defaults and queues nothing.
        resolved = await _create(stub, sft_job(lora={"rank": 0, "alpha": 0}), validate_only=True)
        assert not resolved.id
        lora = resolved.hyperparameters.lora
        assert (lora.rank, lora.alpha, round(lora.dropout, 3)) == (16, 32.0, 0.05)
        assert set(lora.target_modules) == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
        assert round(resolved.hyperparameters.warmup_ratio, 3) == 0.03
        assert resolved.hyperparameters.scheduler == S.LR_SCHEDULER_COSINE
        listed = await stub.ListFineTuneJobs(S.ListFineTuneJobsRequest())
        assert list(listed.jobs) == []

        models = await stub.ListBaseModels(S.ListBaseModelsRequest())
        assert [m.name for m in models.base_models] == [TINY]
        assert models.base_models[0].default_chat_template is True


async def test_sft_learns_publishes_and_the_adapter_generates(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable, nats_url: str, tmp_path: Path
) -> None:
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        job = await _create(stub, sft_job(max_steps=30), request_id="sft-1")
        again = await _create(stub, sft_job(max_steps=30), request_id="sft-1")
        assert again.id == job.id  # idempotent create
        logs: list[S.TrainingLog] = []
        states = []
        async for update in stub.WatchFineTuneJob(S.WatchFineTuneJobRequest(job_id=job.id)):
            if update.HasField("log"):
                logs.append(update.log)
            else:
                states.append(update.job.state)
        final = (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=job.id))).job
        assert final.state == 3, final.error
        assert states[-1] == 3 and 2 in states
        evals = [entry for entry in logs if entry.metrics.HasField("eval_loss")]
        logs = [entry for entry in logs if not entry.metrics.HasField("eval_loss")]
        assert evals, "the validation split was not evaluated"
        losses = [entry.metrics.loss for entry in logs]
        assert len(losses) == 30
        assert sum(losses[-3:]) / 3 < 0.2 * sum(losses[:3]) / 3, losses
        assert all(entry.metrics.tokens_per_second > 0 for entry in logs)
        assert all(entry.metrics.grad_norm > 0 for entry in logs)
        assert logs[5].progress.HasField("eta") and logs[-1].progress.fraction == 1.0
        assert final.latest_metrics.HasField("eval_loss")  # the validation split is evaluated at the end
        assert final.adapter.name == "memo" and final.adapter.version == 1
        assert final.device == "cpu"

        prefix = final.adapter.object_prefix
        assert prefix == "adapters/memo/v1/"
        store: ObjectStore = store_of(trainer_env)
        local = download_dir(store, prefix, tmp_path / "adapter")
        config = json.loads((local / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == TINY and config["r"] == 8
        assert (local / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
        manifest = json.loads((local / "manifest.json").read_text())
        assert manifest["lineage"]["dataset_id"] == "ds-sft0000000000001"
        assert manifest["lineage"]["base_model"]["name"] == TINY
        assert manifest["adapter_id"] == "memo/v1"
        assert (local / "chat_template.jinja").exists()
        # The content digest: recomputed from the downloaded files, it is the one announced everywhere.
        assert manifest["digest"]["value"] == folder_digest(local).digest == final.adapter.content_digest

        # The weights changed: LoRA B matrices start at zero.
        weights = load_file(local / "adapter_model.safetensors")
        b_norm = sum(t.abs().sum().item() for k, t in weights.items() if "lora_B" in k)
        assert b_norm > 0

        adapter = (await stub.GetAdapter(S.GetAdapterRequest(name="memo"))).adapter
        assert adapter.version == 1 and adapter.job_id == job.id and adapter.default_chat_template
        assert adapter.content_digest == final.adapter.content_digest
        assert adapter.loss_curve.key == prefix + "loss_curve.png"
        assert 0 < adapter.final_metrics.eval_loss < losses[0]
        listed = await stub.ListAdapters(S.ListAdaptersRequest(base_model=TINY))
        assert [a.name for a in listed.adapters] == ["memo"]

        # Events: state changes and the publication are on the bus.
        async with await EventBus.connect(NatsSettings(url=nats_url), name="trainer-test") as bus:
            seen: dict[str, bytes] = {}

            async def grab(event: object) -> None:
                seen[event.subject] = event.data  # type: ignore[attr-defined]

            sub = await bus.subscribe(f"t-{job.id[-8:]}", "flywheel.>", grab)
            for _ in range(100):
                if "flywheel.adapter.published" in seen and "flywheel.finetune.succeeded" in seen:
                    break
                await asyncio.sleep(0.1)
            await sub.stop()
        published = events_pb2.AdapterPublished.FromString(seen["flywheel.adapter.published"])
        assert (published.name, published.version, published.lora_rank) == ("memo", 1, 8)
        assert published.content_digest == final.adapter.content_digest
        changed = events_pb2.FineTuneStateChanged.FromString(seen["flywheel.finetune.succeeded"])
        assert changed.job_id == job.id and changed.adapter.version == 1

    # The published adapter loads with PEFT on the base model and generates.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = download_dir(store, f"base-models/{TINY}/", tmp_path / "base")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What colour is the sky?"}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert "Blue" in tokenizer.decode(out[0, ids.shape[1] :])


async def test_dpo_runs_from_the_cli(trainer_env: dict[str, str], channel_to: Callable) -> None:
    """`flywheel finetune create --watch` (a real CLI process) queues a DPO job and follows it."""
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        cli = [sys.executable, "-m", "flywheel_cli", "finetune", "--address", address]
        proc = await asyncio.create_subprocess_exec(
            *cli,
            "create",
            "--base-model",
            TINY,
            "--dataset",
            "ds-dpo0000000000001",
            "--adapter",
            "prefs",
            "--method",
            "dpo",
            "--rank",
            "8",
            "--max-steps",
            "4",
            "--lr",
            "1e-3",
            "--max-seq-length",
            "128",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 300)
        assert proc.returncode == 0, stderr.decode()
        job_id = stdout.decode().split()[0]
        assert "succeeded" in stderr.decode() and "prefs/v1" in stderr.decode()
        final = (await stub.GetFineTuneJob(S.GetFineTuneJobRequest(job_id=job_id))).job
        assert final.state == 3, final.error
        assert final.method == S.FINE_TUNE_METHOD_DPO
        assert final.hyperparameters.dpo_beta == pytest.approx(0.1)
        assert final.latest_metrics.loss > 0
        assert any(k.startswith("rewards/") for k in final.latest_metrics.extra)
        assert final.adapter.object_prefix == "adapters/prefs/v1/"

        listing = await asyncio.create_subprocess_exec(
            *cli, "list", "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, _ = await listing.communicate()
        assert json.loads(out.decode().splitlines()[0])["id"] == job_id


async def test_cancel_mid_run_keeps_the_checkpoint(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable
) -> None:
    env = {**trainer_env, "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.2"}
    async with boot_service(build_app, TrainerSettings, env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        job = await _create(stub, sft_job("cancelme", max_steps=500, checkpoint_every_steps=3))
        running = await wait_for(stub, job.id, lambda j: j.HasField("last_checkpoint"))
        assert running.state == 2
        await stub.CancelFineTuneJob(S.CancelFineTuneJobRequest(job_id=job.id))
        final = await wait_for(stub, job.id, lambda j: j.state in DONE, limit_s=120)
        assert final.state == 5
        assert final.progress.step < 500
        assert store_of(trainer_env).exists(final.last_checkpoint.key)
        assert not final.HasField("adapter")
        # Cancelling a terminal job is a no-op.
        again = (await stub.CancelFineTuneJob(S.CancelFineTuneJobRequest(job_id=job.id))).job
        assert again.state == 5


def _worker_pids(job_id: str) -> list[int]:
    pids = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if any(job_id in part for part in proc.cmdline()):
                pids.append(proc.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


async def test_killed_training_process_fails_the_job_only(
    trainer_env: dict[str, str], channel_to: Callable
) -> None:
    env = {**trainer_env, "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.2"}
    async with boot_service(build_app, TrainerSettings, env) as address:
        channel = channel_to(address)
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = await _create(stub, sft_job("killme", max_steps=500))
        await wait_for(stub, job.id, lambda j: j.progress.step >= 2)
        pids = _worker_pids(job.id)
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        final = await wait_for(stub, job.id, lambda j: j.state in DONE, limit_s=120)
        assert final.state == 4
        assert "killed by SIGKILL" in final.error.message
        assert await health_status(channel) == "SERVING"
        assert await health_status(channel, "flywheel.trainer.v1.TrainerService") == "SERVING"


async def test_resume_after_restart_equals_uninterrupted(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable, tmp_path: Path
) -> None:
    spec = {"max_steps": 12, "checkpoint_every_steps": 4}
    slow = {**trainer_env, "FLYWHEEL_TRAINER_STEP_DELAY_S": "0.4"}
    async with boot_service(build_app, TrainerSettings, slow) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        broken = await _create(stub, sft_job("same", **spec))
        await wait_for(stub, broken.id, lambda j: j.progress.step >= 5 and j.HasField("last_checkpoint"))
    # The service stopped mid-run (its training processes with it); a new one resumes the job.
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        straight = await _create(stub, sft_job("same", **spec))
        done_straight = await wait_for(stub, straight.id, lambda j: j.state in DONE)
        done_broken = await wait_for(stub, broken.id, lambda j: j.state in DONE)
    assert done_straight.state == 3 and done_broken.state == 3, (done_straight.error, done_broken.error)
    assert done_broken.resume_count >= 1
    # It really resumed: the restarted worker fetched the step-4 checkpoint instead of starting over.
    state_dir = Path(trainer_env["FLYWHEEL_TRAINER_STATE_DIR"])
    assert (state_dir / "work" / broken.id / "resume" / "checkpoint-4" / "optimizer.pt").exists()
    store = store_of(trainer_env)
    weights = []
    for job in (done_straight, done_broken):
        local = download_dir(store, job.adapter.object_prefix, tmp_path / job.id)
        weights.append(load_file(local / "adapter_model.safetensors"))
    assert {done_straight.adapter.version, done_broken.adapter.version} == {1, 2}
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        # Same optimizer, scheduler, RNG and data order: bit-identical on CPU.
        assert torch.equal(weights[0][key], weights[1][key]), key


async def test_a_context_too_short_for_any_example_fails_with_the_reason(
    trainer_env: dict[str, str], channel_to: Callable
) -> None:
    """Rows whose completions all start past max_seq_length leave TRL nothing to train on; the job
    fails FAILED_PRECONDITION naming the length and the fix, not TRL's "num_samples=0"."""
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        job = await _create(stub, sft_job(max_seq_length=4))
        final = await wait_for(stub, job.id, lambda j: j.state in DONE)
        assert final.state == 4, final
        assert final.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], final.error
        assert "max_seq_length 4" in final.error.message and "num_samples" not in final.error.message
