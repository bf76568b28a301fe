"""SyncFreeSFTTrainer logs what TRL's SFTTrainer logs, without reading numbers back every step.

Two loss paths: TRL's chunked NLL (its default without Liger) runs for real. Liger's fused loss
needs Triton and a GPU, so for that path its forward is stood in for: the tiny model's own
forward, which also returns the token accuracy Liger's would (argmax against the shifted labels,
over the tokens that count). Both trainers run on the same stand-in; everything else (TRL,
transformers, PEFT, the packed padding-free collator) is the real code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")


def _texts() -> list[dict[str, str]]:
    words = "the cat sat on a mat while dogs ran past every red house near old trees".split()
    return [{"text": " ".join(words[(i * 3) % 7 :] + words[: (i * 5) % 11 + 2])} for i in range(24)]


def _stand_in_liger_forward(model: Any, seen: list[dict[str, Any]]) -> None:
    """Make ``model`` answer the kwargs SFTTrainer sends Liger's forward, as Liger's does."""
    import torch

    plain = model.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        asked = {k: kwargs.pop(k) for k in ("skip_logits", "return_token_accuracy", "use_token_scaling")}
        seen.append(asked)
        out = plain(*args, **kwargs)
        with torch.no_grad():  # the loss path keeps no logits: take them again for the accuracy
            logits = plain(*args, **{k: v for k, v in kwargs.items() if k != "labels"}).logits
        labels = kwargs["labels"][:, 1:]
        counted = labels != -100
        right = (logits[:, :-1].argmax(-1) == labels) & counted
        out["token_accuracy"] = right.sum().float() / counted.sum()
        return out

    model.forward = forward


def _watched(cls: Any, see: Callable[[dict[str, Any]], None]) -> Any:
    """``cls`` whose training forwards show their keyword arguments to ``see`` first (which may
    change them)."""

    class Watched(cls):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            plain = model.forward

            def forward(*a: Any, **kw: Any) -> Any:
                see(kw)
                return plain(*a, **kw)

            model.forward = forward
            try:
                return super().compute_loss(model, inputs, *args, **kwargs)
            finally:
                model.forward = plain

    return Watched


def _train(
    cls: Any,
    path: str,
    model_dir: Path,
    out: Path,
    seen: list[dict[str, Any]],
    held: list[list[str]],
    heard: list[tuple[int, int, float | None]] | None = None,
    max_steps: int = 3,
    save_steps: int = 0,
    stop_at: int = 0,
    accumulation: int = 1,
) -> Any:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=[],
        use_cpu=True,
        packing=True,
        padding_free=True,
        max_length=64,
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        loss_type="nll" if path == "liger" else "chunked_nll",
    )
    trainer = cls(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(_texts()),
        processing_class=tok,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    # As a GPU job with liger-kernel installed; set after construction, and the Trainer's patching
    # of the model with Liger's Triton kernels (which a CPU cannot run) is switched off by the test.
    if path == "liger":
        trainer.args.use_liger_kernel = True
        _stand_in_liger_forward(trainer.model, seen)

    class Held(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # Before the Trainer logs the step: what the metrics hold until then.
            metrics = trainer._metrics["train"]
            held.append(
                [type(v).__name__ for k in ("entropy", "mean_token_accuracy") for v in metrics.get(k, [])]
            )

    class Heard(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            # What a callback (the worker's Reporter) sees when a log arrives.
            if heard is not None and logs and "loss" in logs:
                heard.append((state.global_step, state.num_input_tokens_seen, logs.get("grad_norm")))

    class Stop(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if stop_at and state.global_step >= stop_at:  # as the worker's Reporter on a stop
                control.should_training_stop = True

    trainer.add_callback(Held())
    trainer.add_callback(Heard())
    trainer.add_callback(Stop())
    trainer.train()
    return trainer


@pytest.mark.parametrize("path", ["liger", "chunked"])
def test_sync_free_trainer_logs_trls_metrics_and_reads_them_back_only_when_logging(
    path: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trl import SFTTrainer

    from flywheel_trainer.sync_free import SyncFreeSFTTrainer

    monkeypatch.setattr("transformers.trainer.apply_liger_kernel", lambda *a, **k: None)
    trl_seen: list[dict[str, Any]] = []
    ours_seen: list[dict[str, Any]] = []
    trl_held: list[list[str]] = []
    ours_held: list[list[str]] = []
    trl = _train(SFTTrainer, path, tiny_model_dir, tmp_path / "trl", trl_seen, trl_held)
    ours = _train(SyncFreeSFTTrainer, path, tiny_model_dir, tmp_path / "ours", ours_seen, ours_held)

    # The same request of Liger's forward on every micro-batch.
    assert ours_seen == trl_seen
    if path == "liger":
        assert ours_seen[0] == {
            "skip_logits": True,
            "return_token_accuracy": True,
            "use_token_scaling": False,
        }
    metrics = ["num_tokens", "mean_token_accuracy"] + (["entropy"] if path == "chunked" else [])

    def logs(trainer: Any) -> list[dict[str, Any]]:
        return [h for h in trainer.state.log_history if "loss" in h]

    trl_logs, ours_logs = logs(trl), logs(ours)
    assert len(ours_logs) == len(trl_logs) == 3
    for mine, theirs in zip(ours_logs, trl_logs, strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)
        assert mine["num_input_tokens_seen"] == theirs["num_input_tokens_seen"] > 0
        assert sorted(k for k in mine if k in metrics) == sorted(metrics)
        assert mine["num_tokens"] == theirs["num_tokens"] > 0
        for key in metrics:
            assert isinstance(mine[key], int | float), key
            assert mine[key] == pytest.approx(theirs[key], abs=1e-6), key
    assert ours.state.num_input_tokens_seen == trl.state.num_input_tokens_seen
    if path == "chunked":
        assert 0 < ours_logs[-1]["entropy"]

    # TRL reads its metrics back on every micro-batch; ours holds them on the device until the log.
    per_step = 1 if path == "liger" else 2
    assert trl_held == [["float"] * per_step] * 3
    assert ours_held == [["Tensor"] * per_step] * 3


def test_gpu_jobs_drop_the_per_micro_batch_loss_test() -> None:
    from flywheel_trainer.device_options import cuda_sft_overrides

    assert cuda_sft_overrides(4, 2048, True)["logging_nan_inf_filter"] is False
    assert cuda_sft_overrides(4, 2048, False)["logging_nan_inf_filter"] is False


def test_all_finite_finds_a_nan_or_inf_in_any_tensor_and_leaves_the_values() -> None:
    import torch

    from flywheel_trainer.recipe import all_finite

    torch.manual_seed(0)
    grads = [torch.randn(4, 3), torch.randn(7, dtype=torch.bfloat16), torch.randn(2, 2, dtype=torch.float64)]
    before = [g.clone() for g in grads]
    assert all_finite(grads)
    assert all(torch.equal(a, b) for a, b in zip(grads, before, strict=True))
    for bad in (float("nan"), float("inf"), float("-inf")):
        for i in range(len(grads)):
            spoiled = [g.clone() for g in grads]
            spoiled[i].view(-1)[-1] = bad
            assert not all_finite(spoiled), (bad, i)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_logs_read_a_step_late_are_the_logs_trl_writes(
    accumulation: int, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the trainer queues each log's numbers (a copy to pinned memory behind a CUDA event)
    and writes the log at the next step's boundary. Here the same bookkeeping runs on the CPU
    (``defer_logs = True``): every log, its step, epoch and token count as callbacks see them, the
    training loss, and the token count kept on the host must equal TRL's own."""
    import transformers
    from trl import SFTTrainer

    from flywheel_trainer.sync_free import SyncFreeSFTTrainer

    class Deferred(SyncFreeSFTTrainer):
        defer_logs = True

    counted_on_device: list[str] = []
    device_count = transformers.Trainer._track_num_input_tokens

    def spy(self: Any, inputs: Any) -> None:
        counted_on_device.append(type(self).__name__)
        device_count(self, inputs)

    monkeypatch.setattr(transformers.Trainer, "_track_num_input_tokens", spy)
    trl_heard: list[tuple[int, int, float | None]] = []
    ours_heard: list[tuple[int, int, float | None]] = []
    kw: dict[str, Any] = {"max_steps": 5, "accumulation": accumulation}
    trl = _train(SFTTrainer, "chunked", tiny_model_dir, tmp_path / "trl", [], [], trl_heard, **kw)
    ours = _train(Deferred, "chunked", tiny_model_dir, tmp_path / "ours", [], [], ours_heard, **kw)

    def logs(trainer: Any) -> list[dict[str, Any]]:
        return [h for h in trainer.state.log_history if "loss" in h]

    trl_logs, ours_logs = logs(trl), logs(ours)
    assert [h["step"] for h in ours_logs] == [h["step"] for h in trl_logs] == [1, 2, 3, 4, 5]
    for mine, theirs in zip(ours_logs, trl_logs, strict=True):
        assert set(mine) == set(theirs), (mine, theirs)
        for key in ("loss", "grad_norm", "learning_rate", "epoch", "mean_token_accuracy", "entropy"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), key
        for key in ("num_input_tokens_seen", "num_tokens", "step"):
            assert mine[key] == theirs[key], key
    assert [(s, t) for s, t, _ in ours_heard] == [(s, t) for s, t, _ in trl_heard]
    assert all(isinstance(g, float) for _, _, g in ours_heard)
    assert ours.state.log_history[-1]["train_loss"] == pytest.approx(
        trl.state.log_history[-1]["train_loss"], rel=1e-6
    )
    assert ours.state.num_input_tokens_seen == trl.state.num_input_tokens_seen > 0
    # TRL counted every micro-batch's tokens on the device; ours took the collator's count.
    assert counted_on_device == ["SFTTrainer"] * 5 * accumulation
    assert ours._pending_log is None


def test_the_counting_collator_counts_as_the_trainer_does() -> None:
    import torch

    from flywheel_trainer.sync_free import TOKENS_KEY, HostSideCollator

    ids = torch.tensor([[5, 6, 0, 7, 0, 0]])
    padded = HostSideCollator(lambda ex: {"input_ids": ids.clone()}, pad_token_id=0)([{}])
    assert padded[TOKENS_KEY] == (3, 6)
    masked = HostSideCollator(
        lambda ex: {"input_ids": ids.clone(), "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]])}, 0
    )([{}])
    assert masked[TOKENS_KEY] == (4, 6)
    assert HostSideCollator(lambda ex: {"input_ids": ids.clone()}, None)([{}])[TOKENS_KEY] == (6, 6)


def test_gpu_jobs_collate_in_a_worker_and_copy_without_waiting() -> None:
    from flywheel_trainer.device_options import cuda_sft_overrides

    options = cuda_sft_overrides(4, 2048, True)
    assert options["dataloader_num_workers"] >= 1 and options["dataloader_pin_memory"] is True
    assert options["accelerator_config"] == {"non_blocking": True}


def test_a_checkpoint_or_a_stop_finds_every_log_written(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Logs read a step late are written before a checkpoint is saved (its trainer state holds
    every log up to its step) and before training stops early."""
    import json

    from flywheel_trainer.sync_free import SyncFreeSFTTrainer

    class Deferred(SyncFreeSFTTrainer):
        defer_logs = True

    saved = _train(Deferred, "chunked", tiny_model_dir, tmp_path / "saved", [], [], max_steps=5, save_steps=2)
    for step in (2, 4):
        state = json.loads((tmp_path / "saved" / f"checkpoint-{step}" / "trainer_state.json").read_text())
        assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, step + 1))
    assert [h["step"] for h in saved.state.log_history if "loss" in h] == [1, 2, 3, 4, 5]

    stopped = _train(
        Deferred, "chunked", tiny_model_dir, tmp_path / "stopped", [], [], max_steps=5, stop_at=3
    )
    assert stopped.state.global_step == 3
    assert [h["step"] for h in stopped.state.log_history if "loss" in h] == [1, 2, 3]
    assert stopped._pending_log is None


def test_the_block_mask_built_on_the_host_reaches_the_model(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``host_block_mask`` the collator computes flex attention's block tensors and the loss
    path hands the model a BlockMask built from them: the mask transformers would build from the
    same position ids (``create_block_mask`` with its mask function). The tiny model runs SDPA on
    the CPU, so the stand-in forward takes the BlockMask off before calling it."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask
    from transformers.masking_utils import (
        add_offsets_to_mask_function,
        and_masks,
        causal_mask_function,
        find_packed_sequence_indices,
        packed_sequence_mask_function,
    )

    from flywheel_trainer.sync_free import SyncFreeSFTTrainer

    monkeypatch.setattr("transformers.trainer.apply_liger_kernel", lambda *a, **k: None)
    got: list[tuple[Any, Any]] = []

    class HostMask(SyncFreeSFTTrainer):
        host_block_mask = True

        def _uses_flex_attention(self) -> bool:
            return True

    def see(kw: dict[str, Any]) -> None:
        got.append((kw.pop("attention_mask", None), kw["position_ids"].clone()))

    _train(_watched(HostMask, see), "liger", tiny_model_dir, tmp_path / "ours", [], [])
    assert len(got) == 3
    for mask, position_ids in got:
        assert isinstance(mask, BlockMask)
        seq = find_packed_sequence_indices(position_ids)
        assert seq is not None  # the rows are packed
        n = position_ids.shape[1]
        mod = add_offsets_to_mask_function(
            and_masks(causal_mask_function, packed_sequence_mask_function(seq)), 0, 0
        )
        theirs = create_block_mask(mod, 1, None, n, n, device="cpu", _compile=False)
        assert torch.equal(mask.to_dense(), theirs.to_dense())
        assert torch.equal(mask.full_kv_indices, theirs.full_kv_indices)
        q = torch.arange(n)
        dense = (q[None, :] <= q[:, None]) & (seq[0][:, None] == seq[0][None, :])
        assert torch.equal(mask.mask_mod(0, 0, q[:, None], q[None, :]), dense)


def test_the_wait_free_liger_helper_multiplies_out_of_place_and_installs_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The replacement of Liger's backward helper, on a stand-in for Liger's module (Liger needs
    Triton and a GPU; ``test_gpu.py`` runs the real one under the sync debug mode): a scalar
    incoming gradient scales every stored gradient out of place in its own dtype, a per-token one
    goes to Liger's own helper, and a second install does not wrap the first."""
    import sys
    import types

    import torch

    from flywheel_trainer.sync_free import liger_backward_without_wait

    calls: list[Any] = []

    def own(grad_output: Any, grad_input: Any, grad_weight: Any, grad_bias: Any) -> Any:
        calls.append(grad_output)
        return grad_input, grad_weight, grad_bias

    module = types.ModuleType("liger_kernel.ops.fused_linear_cross_entropy")
    module.fused_linear_cross_entropy_backward = own  # type: ignore[attr-defined]
    ops = types.ModuleType("liger_kernel.ops")
    ops.fused_linear_cross_entropy = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.ops", ops)
    monkeypatch.setitem(sys.modules, "liger_kernel.ops.fused_linear_cross_entropy", module)

    assert liger_backward_without_wait()
    installed = module.fused_linear_cross_entropy_backward
    assert installed is not own
    assert liger_backward_without_wait() and module.fused_linear_cross_entropy_backward is installed

    grad_input = torch.randn(6, 4, dtype=torch.bfloat16)
    grad_weight = torch.randn(5, 4)
    kept = grad_input.clone()
    gi, gw, gb = installed(torch.tensor(0.25), grad_input, grad_weight, None)
    assert gb is None and not calls
    assert gi.dtype == torch.bfloat16 and torch.equal(gi, kept * 0.25)
    assert torch.equal(gw, grad_weight * 0.25)
    assert torch.equal(grad_input, kept)  # the saved gradient is left for a second backward
    per_token = torch.ones(6)
    installed(per_token, grad_input, grad_weight, None)
    assert calls == [per_token]


def test_the_packed_check_takes_the_host_verdict_only_inside_our_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """transformers' packed-sequence check after :func:`packed_check_from_host`: with no verdict set
    it is transformers' own; with one it returns what transformers would for that verdict without
    looking at the device's answer (a False verdict on packed rows gives None, which only a check
    that never reads the tensor can); a second install does not wrap the first."""
    import torch
    from transformers import masking_utils

    from flywheel_trainer import sync_free

    own = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", own)
    sync_free.packed_check_from_host()
    installed = masking_utils.find_packed_sequence_indices
    sync_free.packed_check_from_host()
    assert installed is not own and masking_utils.find_packed_sequence_indices is installed

    packed = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [5, 6, 7, 8, 9, 0, 1, 2, 3]])
    single = torch.arange(9).unsqueeze(0).expand(2, -1) + 4
    assert torch.equal(installed(packed), own(packed)) and installed(single) is None is own(single)
    for verdict, ids in ((True, packed), (True, single), (False, packed), (False, single)):
        token = sync_free._packed_verdict.set(verdict)
        try:
            got = installed(ids)
        finally:
            sync_free._packed_verdict.reset(token)
        if not verdict:
            assert got is None
        elif ids is packed:
            assert torch.equal(got, own(packed))
        else:  # one sequence a row, told packed: every token in sequence 0, the same mask
            assert torch.equal(got, torch.zeros_like(single))


def test_the_collator_tells_whether_padding_free_rows_are_packed() -> None:
    import torch

    from flywheel_trainer.sync_free import PACKED_KEY, HostSideCollator

    def batch(position_ids: list[int]) -> dict[str, Any]:
        ids = torch.tensor([position_ids])
        return {"input_ids": ids + 10, "position_ids": ids}

    collate = HostSideCollator(lambda examples: examples[0], pad_token_id=0, count=False, packed=True)
    assert collate([batch([0, 1, 2, 0, 1])])[PACKED_KEY] is True
    assert collate([batch([0, 1, 2, 3, 4])])[PACKED_KEY] is False
    padded = {**batch([0, 1, 2, 0, 1]), "attention_mask": torch.ones(1, 5)}
    assert PACKED_KEY not in collate([padded])  # not padding-free: transformers' own check
    assert PACKED_KEY not in HostSideCollator(lambda e: e[0], 0, count=False)([batch([0, 1, 0])])


@pytest.mark.parametrize("path", ["liger", "chunked"])
def test_training_with_the_host_verdict_is_training_without_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The sync-free trainer with ``packed_check_from_host`` on packed, padding-free rows: every
    training forward's packed-sequence check took the collator's verdict (and found packed rows),
    and the losses are the ones of the same training with transformers' own check."""
    from transformers import masking_utils

    from flywheel_trainer.sync_free import SyncFreeSFTTrainer, _packed_verdict

    monkeypatch.setattr("transformers.trainer.apply_liger_kernel", lambda *a, **k: None)
    monkeypatch.setattr(
        masking_utils, "find_packed_sequence_indices", masking_utils.find_packed_sequence_indices
    )
    verdicts: list[bool | None] = []

    class Host(SyncFreeSFTTrainer):
        packed_check_from_host = True

    Host = _watched(Host, lambda kw: verdicts.append(_packed_verdict.get()))

    ours = _train(Host, path, tiny_model_dir, tmp_path / "ours", [], [])
    assert getattr(masking_utils.find_packed_sequence_indices, "_flywheel_host_verdict", False)
    # The liger stand-in runs the model twice a forward (the second for its accuracy).
    assert verdicts and all(v is True for v in verdicts), verdicts
    assert _packed_verdict.get() is None  # reset after each forward
    monkeypatch.setattr(Host, "packed_check_from_host", False)
    theirs = _train(Host, path, tiny_model_dir, tmp_path / "theirs", [], [])
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (ours, theirs)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5), losses
