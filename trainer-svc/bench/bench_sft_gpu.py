"""GPU benchmark of the trainer's SFT against plain TRL SFTTrainer defaults (same model, data, GPU, run).

    python trainer-svc/bench/bench_sft_gpu.py [--steps 30] [--variants baseline,ours,qlora,dpo]

Model: a randomly initialised Qwen2-style causal LM with Qwen2-1.5B's shape (1.54 B parameters);
data: random words (a 32k-word vocabulary) of variable length, 64 to 2,048 tokens per example.
LoRA r=16, alpha 32 on every attention and MLP projection in every variant.

* baseline — ``SFTConfig`` defaults (padding to the longest in the batch, TRL's default batch
  size), only ``max_length=2048``, ``bf16`` and the step count set.
* ours — the options the trainer's worker uses on a CUDA GPU (:func:`flywheel_trainer.worker.
  cuda_sft_overrides`): examples packed into padding-free rows, fused linear + cross-entropy
  (Liger) when installed, no activation recomputation, large token batches.
* ours_flex, ours_flex16 — ours with PyTorch flex attention (block-sparse over the packed row),
  8 or 16 packed rows (16k or 32k tokens) per micro-batch.
* qlora — ours with the base weights in 4-bit NF4 (bitsandbytes), a few steps.
* dpo — DPOTrainer with LoRA on the same model, a few steps.

Each variant runs in its own process (clean peak-memory figures). Prints one JSON line per
variant and a summary: tokens/s (non-padding tokens), MFU (4 FLOPs per parameter per token, the
LoRA convention of the issue, against the GPU's dense bf16 peak), peak memory, final loss.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
WORDS = 32000


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "<bos>": 3}
    vocab.update({f"w{i}": i + 4 for i in range(WORDS)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", bos_token="<bos>"
    )


def _model(quantized: bool):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=3,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    if quantized:
        # bitsandbytes quantizes on load, so round-trip the random weights through a folder.
        from transformers import BitsAndBytesConfig

        folder = Path("/tmp/bench-random-qwen2")
        if not folder.exists():
            model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = Qwen2ForCausalLM.from_pretrained(folder, quantization_config=quant, device_map={"": 0})
    return model


def _texts(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(64, 2047))) for _ in range(n)]


def run_variant(variant: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    from flywheel_trainer.worker import cuda_sft_overrides

    torch.backends.cuda.matmul.allow_tf32 = True
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        task_type="CAUSAL_LM",
    )
    tok = _tokenizer()
    model = _model(quantized=variant == "qlora")
    if variant == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    n_params = sum(p.numel() for p in model.parameters())
    if variant == "qlora":
        n_params = 1_543_714_304  # 4-bit packing halves numel(); count the real model
    timing: dict = {"t": [], "tokens": []}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            timing["t"].append(time.perf_counter())
            timing["tokens"].append(state.num_input_tokens_seen)

    common = {
        "output_dir": f"/tmp/bench-{variant}",
        "max_steps": steps,
        "report_to": [],
        "bf16": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "include_num_input_tokens_seen": "non_padding",
        "max_length": 2048,
        "disable_tqdm": True,
    }
    if variant == "dpo":
        from trl import DPOConfig, DPOTrainer

        texts = _texts(3 * steps * 8, seed=1)
        rows = [
            {"prompt": texts[i][:3000], "chosen": texts[i + 1][:3000], "rejected": texts[i + 2][:3000]}
            for i in range(0, len(texts) - 2, 3)
        ]
        args = DPOConfig(**common, per_device_train_batch_size=4, gradient_checkpointing=False)
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
        )
    else:
        from trl import SFTConfig, SFTTrainer

        overrides = {} if variant == "baseline" else cuda_sft_overrides()
        if variant.startswith("ours_flex"):
            # Block-sparse attention over the packed row (only the diagonal blocks are computed),
            # padded to a fixed length so the compiled flex kernel is built once.
            rows = 16 if variant == "ours_flex16" else 8
            model.set_attn_implementation("flex_attention")
            overrides.update(per_device_train_batch_size=rows, pad_to_multiple_of=rows * 2048)
        batch = overrides.get("per_device_train_batch_size", 8)
        data = Dataset.from_list([{"text": t} for t in _texts(steps * batch * 4, seed=1)])
        args = SFTConfig(**{**common, **overrides})
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora
        )
    trainer.add_callback(Clock())
    torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    warm = min(5, len(timing["t"]) - 2)
    seconds = timing["t"][-1] - timing["t"][warm]
    tokens = timing["tokens"][-1] - timing["tokens"][warm]
    tps = tokens / seconds
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), 989e12)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "variant": variant,
        "gpu": name,
        "parameters": n_params,
        "steps": steps,
        "batch_rows": args.per_device_train_batch_size,
        "tokens_per_s": round(tps),
        "mfu": round(4 * n_params * tps / peak, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "final_loss": losses[-1] if losses else None,
        "train_loss": result.training_loss,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", default="baseline,ours,qlora,dpo")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.steps)), flush=True)
        return 0
    results = {}
    for variant in args.variants.split(","):
        steps = args.steps if variant.startswith(("baseline", "ours")) else max(5, args.steps // 4) + 2
        proc = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--steps", str(steps)],
            capture_output=True,
            text=True,
            env=os.environ,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{variant}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[variant] = json.loads(lines[-1][len("RESULT ") :])
        print(json.dumps(results[variant]), flush=True)
    for name in ("ours", "ours_flex", "ours_flex16"):
        if "baseline" not in results or name not in results:
            continue
        base, ours = results["baseline"], results[name]
        print(
            f"SUMMARY {name}/baseline tokens/s = {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x; "
            f"MFU {base['mfu']:.1%} -> {ours['mfu']:.1%}; peak memory {base['peak_memory_gib']} -> "
            f"{ours['peak_memory_gib']} GiB; final loss {base['final_loss']:.3f} vs {ours['final_loss']:.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
