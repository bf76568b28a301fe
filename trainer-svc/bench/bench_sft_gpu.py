"""GPU benchmark of the trainer's SFT against plain TRL SFTTrainer defaults (same model, data, GPU, run).

    python3 trainer-svc/bench/bench_sft_gpu.py [--steps 30] [--variants baseline,peft16,ours16,...]

Model: a randomly initialised Qwen2-style causal LM with Qwen2-1.5B's shape (1.54 B parameters);
data: words of a 32k-word vocabulary drawn from a Zipf distribution (so a model can learn
something in a few steps and the losses compare), 64 to 2,047 words (= tokens) per example.
LoRA r=16, alpha 32 on every attention and MLP projection in every variant, dropout 0.05 (the
trainer's default) unless the variant ends in ``_p0``. Learning rate 2e-4 (the trainer's SFT
default) in every SFT variant, so the losses at equal steps compare.

* baseline: ``SFTConfig`` defaults (padding to the longest in the batch, 8 examples a batch,
  gradient checkpointing on); only ``max_length=2048``, ``bf16``, the learning rate and the step
  count set.
* ours16, ours8, ours4: exactly the worker's CUDA path for a packed SFT job with ``batch_size``
  16, 8 or 4 (the default): :func:`flywheel_trainer.device_options.cuda_sft_overrides` (packed,
  padding-free rows padded to ``batch_size x 2048`` tokens, Liger's fused linear + cross-entropy,
  no recomputation),
  :func:`~flywheel_trainer.device_options.cuda_model_kwargs` (flex attention) and
  :func:`~flywheel_trainer.fused_lora.fuse_lora` (one fused autograd node per LoRA layer).
* ours16_p0: ours16 with LoRA dropout 0 (a job's ``lora.dropout = 0``).
* peft16: ours16 without ``fuse_lora`` (PEFT's own LoRA layers): the previous configuration.
* ours16_compile: ours16 plus ``torch_compile=True`` (an experiment; not what the worker does).
* qlora: the worker's path (4 rows) with the base weights in 4-bit NF4 (bitsandbytes), a few steps.
* dpo: DPOTrainer with LoRA through ``fuse_lora``, 4 pairs a step, a few steps.

Each variant runs in its own process (clean peak-memory figures). Prints one JSON line per
variant and a summary: tokens/s (non-padding tokens, steps 6 to the end), MFU (4 FLOPs per
parameter per token, the LoRA convention of issue 7, against the GPU's dense bf16 peak), peak
memory, final loss (the last step's) and the mean loss of the last five steps.
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
LEARNING_RATE = 2e-4
MAX_LENGTH = 2048
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SFT_VARIANTS = ("baseline", "peft16", "ours16", "ours16_p0", "ours8", "ours4", "ours16_compile", "qlora")
TIMEOUT_S = {"ours16_compile": 240}


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
    import itertools
    import random

    rng = random.Random(seed)
    cum = list(itertools.accumulate(1.0 / (rank + 1) ** 1.1 for rank in range(WORDS)))
    words = [f"w{i}" for i in range(WORDS)]
    return [" ".join(rng.choices(words, cum_weights=cum, k=rng.randint(64, 2047))) for _ in range(n)]


def run_variant(variant: str, steps: int) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback

    from flywheel_trainer.device_options import cuda_model_kwargs, cuda_sft_overrides
    from flywheel_trainer.fused_lora import fuse_lora

    torch.backends.cuda.matmul.allow_tf32 = True
    lora = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0 if variant.endswith("_p0") else 0.05,
        target_modules=TARGETS,
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
        "max_length": MAX_LENGTH,
        "disable_tqdm": True,
    }
    fused = 0
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
        fused = fuse_lora(trainer.model)
    else:
        from trl import SFTConfig, SFTTrainer

        overrides: dict = {}
        if variant != "baseline":
            rows = {"ours4": 4, "qlora": 4, "ours8": 8}.get(variant, 16)
            overrides = cuda_sft_overrides(batch_size=rows, max_length=MAX_LENGTH, packing=True)
            attn = cuda_model_kwargs("SFT", packing=True).get("attn_implementation")
            if attn:
                model.set_attn_implementation(attn)
            if variant.endswith("_compile"):
                overrides["torch_compile"] = True
        batch = overrides.get("per_device_train_batch_size", 8)
        data = Dataset.from_list([{"text": t} for t in _texts(steps * batch * 4, seed=1)])
        args = SFTConfig(**{**common, "learning_rate": LEARNING_RATE, **overrides})
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora
        )
        if variant != "baseline" and variant != "peft16":
            fused = fuse_lora(trainer.model)
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
        "torch": torch.__version__,
        "parameters": n_params,
        "steps": steps,
        "batch_rows": args.per_device_train_batch_size,
        "lora_dropout": lora.lora_dropout,
        "fused_lora_layers": fused,
        "tokens_per_step": round(tokens / (len(timing["t"]) - 1 - warm)),
        "tokens_per_s": round(tps),
        "mfu": round(4 * n_params * tps / peak, 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "final_loss": losses[-1] if losses else None,
        "last5_loss": round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else None,
        "train_loss": result.training_loss,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--variants", default="baseline,peft16,ours16,ours16_p0,ours4,qlora,dpo")
    parser.add_argument("--json-out", help="also write every variant's result to this JSON file")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.steps)), flush=True)
        return 0
    results = {}
    for variant in args.variants.split(","):
        full = variant in SFT_VARIANTS and variant != "qlora"
        steps = args.steps if full else max(5, args.steps // 4) + 2
        try:
            proc = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--steps", str(steps)],
                capture_output=True,
                text=True,
                env=os.environ,
                timeout=TIMEOUT_S.get(variant, 420),
            )
        except subprocess.TimeoutExpired as err:
            tail = (err.stderr or b"")[-2000:]
            print(f"{variant}: TIMED OUT after {err.timeout} s\n{tail!r}", flush=True)
            continue
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{variant}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", flush=True)
            continue
        results[variant] = json.loads(lines[-1][len("RESULT ") :])
        print(json.dumps(results[variant]), flush=True)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=1))
    base = results.get("baseline")
    print("| variant | rows | dropout | tokens/s | vs baseline | MFU | peak GiB | final loss | last-5 loss |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(
            f"| {name} | {r['batch_rows']} | {r['lora_dropout']} | {r['tokens_per_s']:,} | {ratio} | "
            f"{r['mfu']:.1%} | {r['peak_memory_gib']} | {r['final_loss'] or 0:.4f} | "
            f"{r['last5_loss'] or 0:.4f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
