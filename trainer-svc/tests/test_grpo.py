"""GRPO on stored rollouts and continued training (init_adapter).

Real TRL/PEFT on the tiny offline Llama; the service tests go through the real gRPC server, a real
nats-server and one real training process per job. The rollouts are sampled in the test from the
tiny model itself with torch (temperature 1), standing in for the model server that records them in
production, and scored by a rule (the rewarded first token) standing in for the sandbox.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from flywheel.trainer.v1 import trainer_pb2 as S
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_common.objectstore import ObjectStore
from flywheel_testing.services import boot_service
from flywheel_testing.trainer import assert_starts_from, sft_job, wait_for
from flywheel_trainer import catalog
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import download_dir

PROMPT = "What is the capital of France?"
G = 16  # samples per group


# ---------------------------------------------------------------------------------- helpers


def _load(model_dir: Path, adapter_dir: Path | None = None) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    return tok, model.eval()


def _sample_group(model: Any, prompt_ids: list[int], seed: int, target: int | None) -> tuple[list[dict], int]:
    """G completions of 2 tokens at temperature 1 with their log-probs; reward 1 when the first token
    is ``target`` (chosen here, when None, as the most frequent first token that not all samples share)."""
    gen = torch.Generator().manual_seed(seed)
    samples = []
    with torch.no_grad():
        for _ in range(G):
            ids, logps = list(prompt_ids), []
            for _ in range(2):
                logits = model(torch.tensor([ids])).logits[0, -1]
                dist = torch.log_softmax(logits.float(), -1)
                token = int(torch.multinomial(dist.exp(), 1, generator=gen))
                ids.append(token)
                logps.append(float(dist[token]))
            samples.append((ids[len(prompt_ids) :], logps))
    if target is None:
        firsts = [c[0] for c, _ in samples]
        target = max((t for t in set(firsts) if firsts.count(t) < G), key=firsts.count)
    rewards = [1.0 if c[0] == target else 0.0 for c, _ in samples]
    mean = sum(rewards) / G
    std = (sum((r - mean) ** 2 for r in rewards) / G) ** 0.5
    rows = [
        {
            "group_id": f"g-{seed}",
            "task_id": "t-1",
            "trajectory_id": f"tr-{seed}-{i}",
            "turn": 0,
            "prompt_token_ids": list(prompt_ids),
            "completion_token_ids": completion,
            "behaviour_logprobs": logps,
            "reward": reward,
            "advantage": (reward - mean) / (std + 1e-4),
            "adapter": None,
        }
        for i, ((completion, logps), reward) in enumerate(zip(samples, rewards, strict=True))
    ]
    return rows, target


def _first_token_prob(model: Any, prompt_ids: list[int], token: int) -> float:
    with torch.no_grad():
        return float(torch.softmax(model(torch.tensor([prompt_ids])).logits[0, -1], -1)[token])


def _write_rl(store: ObjectStore, dataset_id: str, rows: list[dict], policy: dict[str, str] | None) -> None:
    """An RL dataset the way the builder writes one (proto field names, rl_stats with the policy)."""
    prefix = f"datasets/{dataset_id}/"
    for row in rows:
        row["adapter"] = policy
    store.put(prefix + "train.grpo_tokens.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    rl_stats: dict[str, Any] = {"groups": 1, "episodes": len(rows), "samples": len(rows)}
    if policy:
        name, version = policy["adapter_id"].split("/v")
        rl_stats["policy"] = {**policy, "name": name, "version": int(version)}
    manifest = {
        "id": dataset_id,
        "kind": "DATASET_KIND_RL",
        "files": {"train": "train.grpo_tokens.jsonl"},
        "rl_stats": rl_stats,
    }
    store.put(prefix + "manifest.json", json.dumps(manifest).encode())


def grpo_job(dataset_id: str, init: str = "", **grpo: Any) -> S.FineTuneJob:
    # 5e-2: at 2e-2 the rewarded token's probability rose 1.06x (0.160 -> 0.169) on an AVX2-only
    # CPU (float32 numerics pick another group than on the AVX-512 machine, where it rose > 1.3x).
    job = sft_job("policy", learning_rate=5e-2, batch_size=8, max_steps=0, epochs=6, max_seq_length=64)
    job.method = S.FINE_TUNE_METHOD_GRPO
    job.dataset_id = dataset_id
    job.init_adapter = init
    job.hyperparameters.warmup_ratio = 0.0
    job.hyperparameters.scheduler = S.LR_SCHEDULER_CONSTANT
    for key, value in grpo.items():
        setattr(job.hyperparameters.grpo, key, value)
    return job


async def _run(stub: trainer_pb2_grpc.TrainerServiceStub, job: S.FineTuneJob) -> S.FineTuneJob:
    created = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job))).job
    done = await wait_for(stub, created.id, lambda j: j.state in (3, 4, 5))
    assert done.state == 3, done.error
    return done


async def _error(stub: trainer_pb2_grpc.TrainerServiceStub, job: S.FineTuneJob) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job, validate_only=True))
    return info.value


# ---------------------------------------------------------------------------------- the loss


def _loss_setup(
    model_dir: Path, tmp_path: Path, sliced: bool = True, bf16: bool = False
) -> tuple[Any, Any, dict[str, Any]]:
    """(trainer, its PEFT model in train mode, one collated batch of 4 padded samples) on the tiny
    model, with LoRA B drawn at random so that every adapter matrix has gradients."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig

    from flywheel_trainer.grpo import RolloutGRPOTrainer, prepare_rows, reward_stats

    tok, model = _load(model_dir)
    base = tok(PROMPT).input_ids
    raw = [
        {
            "prompt_token_ids": base[: 3 + i],
            "completion_token_ids": [10 + i] * (1 + i),
            "advantage": a,
            "reward": r,
        }
        for i, (a, r) in enumerate([(1.0, 1.0), (-1.0, 0.0), (0.5, 1.0), (-0.5, 0.0)])
    ]
    for row in raw:
        row["behaviour_logprobs"] = [-3.0] * len(row["completion_token_ids"])
    rows = prepare_rows(raw, 64, model.config.vocab_size)
    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        generation_batch_size=4,
        max_completion_length=4,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        beta=0.05,
        epsilon_high=0.3,
        bf16=bf16,
    )
    torch.manual_seed(0)
    trainer = RolloutGRPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
        rewards=reward_stats(rows),
        sliced_logps=sliced,
    )
    trainer.current_gradient_accumulation_steps = 1
    if bf16:  # what train() does first: Accelerate's autocast (and float32 outputs) around the forward
        trainer.accelerator.prepare_model(trainer.model)
        assert trainer.accelerator.native_amp
    peft_model = trainer.model
    with torch.no_grad():  # B = 0 at init: give the adapter some weight so every LoRA matrix has gradients
        gen = torch.Generator().manual_seed(7)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.train()
    return trainer, peft_model, trainer._generate_and_score_completions(rows[:4])


def _loss_and_grads(
    trainer: Any, peft_model: Any, inputs: dict[str, Any]
) -> tuple[float, list[torch.Tensor]]:
    peft_model.zero_grad()
    loss = trainer.compute_loss(peft_model, inputs)
    loss.backward()
    grads = [p.grad.clone() for p in peft_model.parameters() if p.requires_grad]
    assert any(g.abs().sum() > 0 for g in grads)
    return float(loss.detach()), grads


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
def test_sliced_log_probs_give_trls_loss_gradients_and_metrics(
    tiny_model_dir: Path, tmp_path: Path, bf16: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The LM head a slice at a time (flywheel_trainer.token_logps, the default) against TRL's own
    full-logits path, on the same batch: the reference log-probs, the loss, every LoRA gradient
    and the logged entropy and KL agree to float32 rounding; and the sliced path really ran. Also
    under bf16 autocast (the worker's CPU mode where the CPU has bf16, and a GPU job's), which
    Accelerate enters inside the model's forward, so the head must run under it too."""
    from flywheel_trainer import token_logps

    original = token_logps.token_logps
    calls: list[Any] = []  # the autocast each call ran the head under

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("autocast"))
        return original(*args, **kwargs)

    monkeypatch.setattr(token_logps, "token_logps", counting)
    sliced = _loss_setup(tiny_model_dir, tmp_path / "sliced", sliced=True, bf16=bf16)
    full = _loss_setup(tiny_model_dir, tmp_path / "full", sliced=False, bf16=bf16)
    assert calls, "the sliced path did not run (the trainer fell back on TRL's)"
    made = len(calls)
    torch.testing.assert_close(sliced[2]["ref_per_token_logps"], full[2]["ref_per_token_logps"])
    loss_s, grads_s = _loss_and_grads(*sliced)
    loss_f, grads_f = _loss_and_grads(*full)
    assert len(calls) > made and len(calls) == 2 * made  # one reference pass, one training pass
    # the head ran under the model's autocast: bf16 where Accelerate's mixed precision is on
    assert all(a is not None and a[1] == bf16 for a in calls), calls
    assert loss_s == pytest.approx(loss_f, rel=1e-5, abs=1e-7)
    for gs, gf in zip(grads_s, grads_f, strict=True):
        torch.testing.assert_close(gs, gf, atol=1e-6, rtol=1e-4)
    for key in ("entropy", "kl"):
        ms, mf = sliced[0]._metrics["train"][key], full[0]._metrics["train"][key]
        assert ms and ms == pytest.approx(mf, rel=1e-5), key


def test_masked_positions_carry_no_gradient(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Token ids and log-probs under the padding (prompt_mask / completion_mask 0) do not change the
    loss or any gradient; a completion token inside the mask does (so the check can fail)."""
    trainer, peft_model, batch = _loss_setup(tiny_model_dir, tmp_path)
    vocab = peft_model.config.vocab_size
    assert batch["prompt_mask"].eq(0).any() and batch["completion_mask"].eq(0).any()  # padding on both sides

    def loss_and_grads(inputs: dict[str, Any]) -> tuple[float, list[torch.Tensor]]:
        return _loss_and_grads(trainer, peft_model, inputs)

    loss0, grads0 = loss_and_grads(batch)
    noisy = dict(batch)
    gen = torch.Generator().manual_seed(1)
    for ids, mask in (("prompt_ids", "prompt_mask"), ("completion_ids", "completion_mask")):
        random_ids = torch.randint(0, vocab, batch[ids].shape, generator=gen)
        noisy[ids] = torch.where(batch[mask].bool(), batch[ids], random_ids)
    noise = torch.randn(batch["old_per_token_logps"].shape, generator=gen)
    noisy["old_per_token_logps"] = torch.where(
        batch["completion_mask"].bool(), batch["old_per_token_logps"], noise
    )
    noisy["ref_per_token_logps"] = torch.where(
        batch["completion_mask"].bool(), batch["ref_per_token_logps"], noise
    )
    loss1, grads1 = loss_and_grads(noisy)
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    for g0, g1 in zip(grads0, grads1, strict=True):
        torch.testing.assert_close(g0, g1, atol=1e-6, rtol=1e-5)

    changed = dict(batch)
    changed["completion_ids"] = batch["completion_ids"].clone()
    changed["completion_ids"][0, 0] = (int(batch["completion_ids"][0, 0]) + 1) % vocab
    _, grads2 = loss_and_grads(changed)
    assert any(not torch.allclose(g0, g2, atol=1e-6) for g0, g2 in zip(grads0, grads2, strict=True))


def test_each_record_once_per_epoch_and_iteration(tiny_model_dir: Path, tmp_path: Path) -> None:
    """5 records, generation batch 4 (2 x 2 accumulation), 2 iterations: 2 batches collated (the
    second filled with the padding row), each trained on twice: 4 optimizer steps, and tokens/s
    counts the real samples' tokens of every pass."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig

    from flywheel_trainer.grpo import RolloutGRPOTrainer, prepare_rows, reward_stats

    tok, model = _load(tiny_model_dir)
    raw = [
        {
            "prompt_token_ids": [5, 6, 40 + i],
            "completion_token_ids": [20 + i, 30],
            "behaviour_logprobs": [-4.0, -4.0],
            "advantage": (-1.0) ** i,
            "reward": float(i % 2),
        }
        for i in range(5)
    ]
    rows = prepare_rows(raw, 32, model.config.vocab_size)
    collated: list[list[Any]] = []

    class Recording(RolloutGRPOTrainer):
        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            collated.append(["pad" if r["pad"] else r["prompt_token_ids"][-1] - 40 for r in inputs])
            return super()._generate_and_score_completions(inputs)

    args = GRPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_generations=4,
        generation_batch_size=4,
        num_iterations=2,
        max_completion_length=2,
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        num_train_epochs=1,
        disable_tqdm=True,
    )
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]),
        rewards=reward_stats(rows),
    )
    trainer.train()
    assert trainer.state.global_step == 4
    assert len(collated) == 2 and collated[1].count("pad") == 3
    assert sorted(i for batch in collated for i in batch if i != "pad") == [0, 1, 2, 3, 4]
    assert trainer.state.num_input_tokens_seen == 2 * 5 * 5  # 2 passes x 5 samples x 5 tokens


# ---------------------------------------------------------------------------------- through the service


async def test_grpo_learns_continues_adapters_and_refuses_stale_rollouts(
    trainer_env: dict[str, str],
    channel_to: Callable,
    store_of: Callable,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    store = store_of(trainer_env)
    tok, base = _load(tiny_model_dir)
    prompt_ids = tok(PROMPT).input_ids
    rows0, target = _sample_group(base, prompt_ids, seed=0, target=None)
    _write_rl(store, "ds-rl00000000000000", rows0, None)
    p_base = _first_token_prob(base, prompt_ids, target)

    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))

        # GRPO needs an RL dataset, and an RL dataset is for GRPO only.
        err = await _error(stub, grpo_job("ds-sft0000000000001"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "FINE_TUNE_METHOD_GRPO needs a RL dataset" in err.details()
        wrong = sft_job()
        wrong.dataset_id = "ds-rl00000000000000"
        assert (await _error(stub, wrong)).code() == grpc.StatusCode.FAILED_PRECONDITION

        # Round 1, from the base model: the rewarded first token becomes more likely.
        job1 = await _run(stub, grpo_job("ds-rl00000000000000", kl_beta=0.01, epsilon_high=1.0))
        assert job1.hyperparameters.grpo.loss_type == S.GRPO_LOSS_TYPE_DAPO
        assert job1.adapter.name == "policy" and job1.adapter.version == 1
        extra = job1.latest_metrics.extra
        for key in ("kl", "clip_ratio/region_mean", "entropy", "reward_mean", "reward_std"):
            assert key in extra, key
        assert extra["reward_mean"] == pytest.approx(sum(r["reward"] for r in rows0) / G)
        assert job1.latest_metrics.tokens_per_second > 0
        v1 = (await stub.GetAdapter(S.GetAdapterRequest(name="policy", version=1))).adapter
        assert v1.method == S.FINE_TUNE_METHOD_GRPO and not v1.init_adapter
        assert store.exists(v1.loss_curve.key)
        v1_dir = download_dir(store, v1.object_prefix, tmp_path / "v1")
        _, policy1 = _load(tiny_model_dir, v1_dir)
        p1 = _first_token_prob(policy1, prompt_ids, target)
        assert p1 > 1.3 * p_base, (p_base, p1)

        # Round 2 continues policy/v1 on rollouts of policy/v1 (same digest): the rise goes on.
        rows1, _ = _sample_group(policy1, prompt_ids, seed=1, target=target)
        identity = {"adapter_id": "policy/v1", "digest": v1.content_digest}
        _write_rl(store, "ds-rl00000000000001", rows1, identity)
        stale = {"adapter_id": "policy/v1", "digest": "sha256:" + "0" * 64}
        _write_rl(store, "ds-rl00000000000002", rows1, stale)

        # Refusals: stale rollouts, base rollouts for a continued adapter, an adapter's rollouts for
        # a fresh one, unknown and malformed adapters, another base model.
        err = await _error(stub, grpo_job("ds-rl00000000000002", init="policy/v1"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "sha256:" + "0" * 64 in err.details() and v1.content_digest in err.details()
        err = await _error(stub, grpo_job("ds-rl00000000000000", init="policy/v1"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "the base model" in err.details()
        err = await _error(stub, grpo_job("ds-rl00000000000001"))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "policy/v1" in err.details()
        err = await _error(stub, grpo_job("ds-rl00000000000001", init="policy/v9"))
        assert err.code() == grpc.StatusCode.NOT_FOUND and "v1" in err.details()
        err = await _error(stub, grpo_job("ds-rl00000000000001", init="policy-v1"))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "job.init_adapter" in err.details()
        _register_copy(store, tiny_model_dir, tmp_path / "other-base", "tiny-other")
        on_other = grpo_job("ds-rl00000000000001", init="policy/v1")
        on_other.base_model = "tiny-other"
        err = await _error(stub, on_other)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "tiny-other" in err.details()

        # The init adapter's LoRA settings win over the request's, and are echoed.
        request = grpo_job("ds-rl00000000000001", init="policy/v1", epsilon_high=1.0, kl_beta=0.01)
        request.hyperparameters.lora.rank = 4
        resolved = (
            await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=request, validate_only=True))
        ).job
        assert (resolved.hyperparameters.lora.rank, resolved.hyperparameters.lora.alpha) == (8, 16.0)
        job2 = await _run(stub, request)
        v2 = (await stub.GetAdapter(S.GetAdapterRequest(name="policy", version=2))).adapter
        assert job2.adapter.version == 2 and v2.init_adapter == "policy/v1"
        manifest = json.loads(store.get_bytes(v2.manifest.key))
        assert manifest["lineage"]["init_adapter"] == identity
        # Only the trained adapter is published, not TRL's frozen "ref" copy of the starting one.
        assert not [o.key for o in store.list(v2.object_prefix) if "/ref/" in o.key]
        _, policy2 = _load(tiny_model_dir, download_dir(store, v2.object_prefix, tmp_path / "v2"))
        assert _first_token_prob(policy2, prompt_ids, target) > p1

        # SFT continues a published adapter too.
        sft = sft_job("policy", max_steps=2)
        sft.init_adapter = "policy/v2"
        job3 = await _run(stub, sft)
        assert job3.hyperparameters.lora.rank == 8
        v3 = (await stub.GetAdapter(S.GetAdapterRequest(name="policy", version=3))).adapter
        assert v3.init_adapter == "policy/v2" and v3.method == S.FINE_TUNE_METHOD_SFT

    # The continued job's initial weights are v1's, exactly: the recipe's setup, in this process.
    assert_starts_from(trainer_env, job2, v1_dir, tmp_path / "setup")


def _register_copy(store: ObjectStore, source: Path, folder: Path, name: str) -> None:
    folder.mkdir()
    for f in source.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    catalog.register_base_model(store, folder, name, "a second base model")


# ---------------------------------------------------------------------------------- divergence


def test_non_finite_gradients_are_skipped_and_three_in_a_row_are_divergence() -> None:
    """The guard alone, on a real torch module: a NaN gradient drops every gradient of the step
    (the optimizer then leaves the weights alone), a finite one resets the count."""
    from flywheel_trainer.recipe import MAX_NONFINITE_STEPS_IN_A_ROW, NonFiniteSteps, nonfinite_parameters

    layer = torch.nn.Linear(2, 2)
    guard = NonFiniteSteps()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1)
    before = layer.weight.detach().clone()

    def backward(scale: float) -> None:
        layer.zero_grad()
        (layer(torch.ones(1, 2)).sum() * scale).backward()

    backward(float("nan"))
    assert not guard.check(layer, step=1)
    assert layer.weight.grad is None and guard.skipped == 1
    optimizer.step()
    assert torch.equal(layer.weight.detach(), before)  # the skipped step changed nothing
    backward(1.0)
    assert not guard.check(layer, step=2) and guard.in_a_row == 0 and layer.weight.grad is not None
    for step in range(3, 3 + MAX_NONFINITE_STEPS_IN_A_ROW):
        backward(float("inf"))
        judged = guard.check(layer, step=step)
    assert judged and "training diverged" in guard.diverged and f"up to step {step}" in guard.diverged
    assert guard.skipped == 1 + MAX_NONFINITE_STEPS_IN_A_ROW
    assert nonfinite_parameters(layer) == []
    with torch.no_grad():
        layer.bias[0] = float("nan")
    assert nonfinite_parameters(layer) == ["bias"]


def test_on_the_device_path_fused_adam_skips_the_step_and_the_verdict_comes_a_step_late() -> None:
    """The guard's GPU path, run on the CPU (``on_device = True``; PyTorch's fused AdamW honours
    ``found_inf`` on both): no gradient is dropped and nothing is read back at the check; the
    optimizer's fused kernel skips the step (weights, moments and step count unchanged), and the
    count and the divergence verdict come at the next check, or from ``settle`` after the last."""
    from types import SimpleNamespace

    from flywheel_trainer.recipe import MAX_NONFINITE_STEPS_IN_A_ROW, NonFiniteSteps

    layer = torch.nn.Linear(2, 2)
    guard = NonFiniteSteps()
    guard.on_device = True
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, fused=True)
    wrapped = SimpleNamespace(optimizer=optimizer)  # as accelerate's AcceleratedOptimizer holds it
    before = layer.weight.detach().clone()

    def backward(scale: float) -> None:
        layer.zero_grad()
        (layer(torch.ones(1, 2)).sum() * scale).backward()

    backward(float("nan"))
    assert not guard.check(layer, 1, wrapped)
    assert layer.weight.grad is not None and guard.skipped == 0  # not read yet
    optimizer.step()
    assert torch.equal(layer.weight.detach(), before)
    assert float(optimizer.state[layer.weight]["step"]) == 0.0  # the skipped step is not counted
    backward(1.0)
    assert not guard.check(layer, 2, wrapped)
    assert guard.skipped == 1 and guard.in_a_row == 1  # step 1's verdict
    optimizer.step()
    trained = layer.weight.detach().clone()
    assert not torch.equal(trained, before)
    for step in range(3, 3 + MAX_NONFINITE_STEPS_IN_A_ROW):
        backward(float("inf"))
        assert not guard.check(layer, step, wrapped)  # the verdicts so far cover up to step - 1
        optimizer.step()
    assert torch.equal(layer.weight.detach(), trained)  # every non-finite step was skipped
    last = 2 + MAX_NONFINITE_STEPS_IN_A_ROW
    assert guard.settle() and f"up to step {last}" in guard.diverged
    assert guard.skipped == 1 + MAX_NONFINITE_STEPS_IN_A_ROW
    # A finite step after a non-finite one on the plain path clears the flag handed to the optimizer.
    guard.on_device = False
    backward(1.0)
    guard.check(layer, last + 1, wrapped)
    assert optimizer.found_inf is None


def test_on_the_device_path_two_bad_dtype_groups_still_skip_the_step() -> None:
    """The flag is checked a (device, dtype) group at a time; fused Adam skips only on
    ``found_inf == 1``, so two bad groups must give 1, not 2 (a sum let this NaN step through)."""
    from flywheel_trainer.nonfinite import NonFiniteSteps, nonfinite_flag

    layer = torch.nn.Linear(2, 2)
    extra = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    model = torch.nn.ParameterList([layer.weight, layer.bias, extra])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    guard = NonFiniteSteps()
    guard.on_device = True
    before = layer.weight.detach().clone()
    ((layer(torch.ones(1, 2)).sum() + extra.float().sum()) * float("nan")).backward()
    assert float(nonfinite_flag([p.grad for p in model.parameters()])) == 1.0
    guard.check(model, 1, optimizer)
    optimizer.step()
    assert torch.equal(layer.weight.detach(), before) and not extra.detach().isnan().any()
    assert guard.settle() is False and guard.skipped == 1


def test_a_plain_adam_keeps_the_read_at_once_path() -> None:
    """Only fused Adam/AdamW take ``found_inf``: with the foreach one the guard drops the gradients."""
    from flywheel_trainer.recipe import NonFiniteSteps

    layer = torch.nn.Linear(2, 2)
    guard = NonFiniteSteps()
    guard.on_device = True
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, foreach=True)
    (layer(torch.ones(1, 2)).sum() * float("nan")).backward()
    assert not guard.check(layer, 1, optimizer)
    assert layer.weight.grad is None and guard.skipped == 1


async def test_a_diverging_grpo_job_fails_with_the_reason_and_publishes_nothing(
    trainer_env: dict[str, str],
    channel_to: Callable,
    store_of: Callable,
    tiny_model_dir: Path,
) -> None:
    """Seen on the GPU (issue 17's run): one GRPO job's gradients became NaN, the job succeeded,
    and the NaN adapter it published crashed the model server's sampling. Here every rollout holds
    a token whose behaviour log-prob is -1000, so exp(logp - behaviour_logp) overflows in every
    batch: the job must fail naming the divergence, and no adapter version may appear."""
    store = store_of(trainer_env)
    tok, base = _load(tiny_model_dir)
    rows, _ = _sample_group(base, tok(PROMPT).input_ids, seed=0, target=None)
    for row in rows:
        row["behaviour_logprobs"][0] = -1000.0
    _write_rl(store, "ds-rl0000000000000d", rows, None)
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        job = grpo_job("ds-rl0000000000000d")
        job.adapter_name = "diverged"
        created = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job))).job
        done = await wait_for(stub, created.id, lambda j: j.state in (3, 4, 5))
        assert done.state == 4, done  # FAILED
        assert "training diverged" in done.error.message, done.error
        assert "not finite" in done.error.message
        listed = await stub.ListAdapters(S.ListAdaptersRequest(name="diverged"))
        assert list(listed.adapters) == []


async def test_two_processes_train_the_grpo_policy_one_does(
    trainer_env: dict[str, str],
    channel_to: Callable,
    store_of: Callable,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Data-parallel GRPO (the testing aid `CPU_DATA_PARALLEL`: CPU processes over gloo, started by
    the same launcher and joined by the same DDP as GPUs): the same job on one process and on two
    publishes the same policy to float rounding. Each rank takes 3 of a generation batch's 6
    records (the third batch of the 16 is filled with the padding row), each batch is used twice
    (``iterations`` 2), and the KL term's reference log-probs are taken through the DDP-wrapped
    model. LoRA dropout is off: each rank draws its own masks.

    The learning rate is 5e-3, not the 5e-2 of the learning test: at 5e-2 Adam turns float rounding
    in near-zero gradients into full-size steps, and even one process running the step as 4 rows x
    2 accumulated passes instead of 8 rows ended 0.016 away after 12 steps (two processes: 0.048).

    Float32 on every CPU (``FLYWHEEL_CPU_BF16=off``, inherited by the training processes): on a CPU
    with AVX-512 BF16 the worker autocasts to bfloat16, whose rounding Adam amplifies the same way
    (KL 0.865 against 0.869 after one step, weights 0.014 apart after 12, on a Zen 4 machine).
    What is checked is that two ranks compute the one-process step, not bfloat16's noise."""
    monkeypatch.setenv("FLYWHEEL_CPU_BF16", "off")
    from safetensors.torch import load_file

    tok, base = _load(tiny_model_dir)
    rows, _ = _sample_group(base, tok(PROMPT).input_ids, seed=0, target=None)
    store = store_of(trainer_env)
    _write_rl(store, "ds-rl0000000000000d", rows, None)
    env = {**trainer_env, "FLYWHEEL_TRAINER_CPU_DATA_PARALLEL": "true"}
    done = []
    async with boot_service(build_app, TrainerSettings, env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        for gpus in (1, 2):
            job = grpo_job("ds-rl0000000000000d", kl_beta=0.01, iterations=2)
            job.adapter_name = f"grpodp{gpus}"
            job.hyperparameters.learning_rate = 5e-3
            job.hyperparameters.batch_size = 6
            job.hyperparameters.lora.dropout = 0.0
            job.gpus = gpus
            done.append(await _run(stub, job))
    one, two = done
    assert two.device == "cpu, 2 processes in data parallel (gloo)" and two.rows_per_pass == 3
    # 3 generation batches an epoch, each used twice, for 6 epochs.
    assert one.progress.total_steps == two.progress.total_steps == 36 == two.progress.step
    assert two.latest_metrics.extra["kl"] == pytest.approx(one.latest_metrics.extra["kl"], rel=1e-2, abs=1e-6)
    assert two.latest_metrics.loss == pytest.approx(one.latest_metrics.loss, rel=1e-3, abs=1e-6)
    a, b = (
        load_file(download_dir(store, j.adapter.object_prefix, tmp_path / j.id) / "adapter_model.safetensors")
        for j in done
    )
    assert a.keys() == b.keys()
    moved = max(float(t.abs().max()) for k, t in a.items() if "lora_B" in k)
    assert moved > 1e-2  # the policy did train (LoRA B starts at zero)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=5e-5, msg=lambda m, k=key: f"{k}: {m}")
