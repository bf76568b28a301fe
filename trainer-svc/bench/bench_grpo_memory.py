"""Peak memory of one GRPO training step: the LM head a slice at a time against TRL's full logits.

Runs the worker's GRPO trainer (:class:`flywheel_trainer.grpo.RolloutGRPOTrainer`, DAPO loss, no
KL term: a GRPO job's defaults; bf16 weights under bf16 mixed precision, as a GPU job) on synthetic
stored rollouts, on the CPU, with a Qwen2-1.5B-shaped
model cut to ``--layers`` decoder layers (its 151,936-entry vocabulary and 1,536 width kept: the
logits' memory depends on those and on the token count only, not on depth). Each variant runs in
its own process, which resets its peak-RSS mark (``/proc/self/clear_refs``) after a warm-up step
and reports how far one more step (forward + backward) raised resident memory above what it held
before. The same memory lives in the GPU's allocator on a GPU; the CPU is where it can be
measured here without one.

    .venv/bin/python trainer-svc/bench/bench_grpo_memory.py                 # 2 samples x 1,024 tokens
    .venv/bin/python trainer-svc/bench/bench_grpo_memory.py --samples 4 --completion 1024

Prints one JSON line per variant and a table (peak step memory, its ratio, step time, loss).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("full", "sliced")


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def run_variant(args: argparse.Namespace) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from trl import GRPOConfig

    from flywheel_trainer.grpo import RolloutGRPOTrainer, prepare_rows, reward_stats

    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    config = Qwen2Config(
        vocab_size=151_936,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=args.layers,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else _tokenizer()
    gen = torch.Generator().manual_seed(1)
    uniform = -math.log(config.vocab_size)
    raw = []
    for n in range(args.samples):
        prompt = torch.randint(4, config.vocab_size, (args.prompt,), generator=gen).tolist()
        completion = torch.randint(4, config.vocab_size, (args.completion,), generator=gen).tolist()
        raw.append(
            {
                "prompt_token_ids": prompt,
                "completion_token_ids": completion,
                "behaviour_logprobs": [uniform] * len(completion),
                "advantage": 1.0 if n % 2 else -1.0,
                "reward": float(n % 2),
            }
        )
    rows = prepare_rows(raw, args.prompt + args.completion, config.vocab_size)
    grpo = GRPOConfig(
        output_dir=str(Path(args.out_dir) / args.variant),
        per_device_train_batch_size=args.samples,
        num_generations=max(2, args.samples),
        generation_batch_size=max(2, args.samples),
        max_completion_length=args.completion,
        temperature=1.0,
        beta=0.0,
        loss_type="dapo",
        remove_unused_columns=False,
        report_to=[],
        use_cpu=True,
        bf16=True,  # mixed precision, as a GPU job runs: Accelerate returns the logits in float32
    )
    trainer = RolloutGRPOTrainer(
        model=model,
        args=grpo,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
        rewards=reward_stats(rows),
        sliced_logps=args.variant == "sliced",
    )
    trainer.current_gradient_accumulation_steps = 1
    # What train() does first: Accelerate's bf16 autocast around the forward, the outputs in float32.
    trainer.accelerator.prepare_model(trainer.model)
    policy = trainer.model
    policy.train()
    batch = trainer._generate_and_score_completions(rows[: args.samples])

    def step() -> float:
        policy.zero_grad(set_to_none=False)
        loss = trainer.compute_loss(policy, batch)
        loss.backward()
        return float(loss.detach())

    step()  # warm-up: the LoRA gradients' buffers exist from here on
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to now
    started = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - started
    peak = _rss_kib("VmHWM")
    return {
        "variant": args.variant,
        "samples": args.samples,
        "completion_tokens": args.samples * args.completion,
        "layers": args.layers,
        "step_peak_mib": round((peak - before) / 1024, 1),
        "step_s": round(seconds, 2),
        "loss": loss,
    }


def _tokenizer():
    """A tokenizer object TRL accepts; the rows are token ids already, so only its pad id matters."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    inner = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=inner, pad_token="<pad>", unk_token="<unk>")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens a sample")
    parser.add_argument("--completion", type=int, default=1024, help="completion tokens a sample")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokenizer", default="", help="a tokenizer folder (default: a stand-in)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default="/tmp/bench-grpo-memory")
    parser.add_argument("--json-out", default="")
    args = parser.parse_args()
    if args.variant:  # a child: one variant, one JSON line
        print(json.dumps(run_variant(args)), flush=True)
        return 0
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--samples", str(args.samples)]
        cmd += [
            "--prompt",
            str(args.prompt),
            "--completion",
            str(args.completion),
            "--layers",
            str(args.layers),
        ]
        cmd += ["--out-dir", args.out_dir] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[variant]), flush=True)
    full, sliced = results["full"], results["sliced"]
    print()
    print(
        f"{args.samples} samples x {args.completion} completion tokens (+{args.prompt} prompt), {args.layers} layers"
    )
    print("| log-probs | step peak MiB | step s | loss |")
    print("|---|---:|---:|---:|")
    for name, r in (("TRL, full logits", full), ("sliced LM head", sliced)):
        print(f"| {name} | {r['step_peak_mib']:,.0f} | {r['step_s']:.1f} | {r['loss']:.6f} |")
    print(
        f"sliced / full: memory {sliced['step_peak_mib'] / full['step_peak_mib']:.2f}x, "
        f"time {sliced['step_s'] / full['step_s']:.2f}x; "
        f"full logits cost {(full['step_peak_mib'] - sliced['step_peak_mib']) * 1024 / full['completion_tokens']:.0f} KiB "
        "more a completion token"
    )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
