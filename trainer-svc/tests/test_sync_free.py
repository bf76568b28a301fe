"""SyncFreeSFTTrainer logs what TRL's SFTTrainer logs, without reading numbers back every step.

Two loss paths: TRL's chunked NLL (its default without Liger) runs for real. Liger's fused loss
needs Triton and a GPU, so for that path its forward is stood in for: the tiny model's own
forward, which also returns the token accuracy Liger's would (argmax against the shifted labels,
over the tokens that count). Both trainers run on the same stand-in; everything else (TRL,
transformers, PEFT, the packed padding-free collator) is the real code.
"""

from __future__ import annotations

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


def _train(
    cls: Any, path: str, model_dir: Path, out: Path, seen: list[dict[str, Any]], held: list[list[str]]
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
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
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

    trainer.add_callback(Held())
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
