"""Host-side cost of a training step's LoRA layers: ours (``fuse_lora``) against PEFT's, on a CPU.

    .venv/bin/python trainer-svc/bench/bench_fused_host.py [--repeats 30]

On a GPU the host must launch a step's kernels faster than the GPU runs them, or the GPU waits:
the H100 profile of 2026-12-06 (bench/RESULTS.md) had the GPU busy 87% of an 8-row step, with
about 258 ms of host work against 314 ms of kernels. This script measures the host's part alone:
a Qwen2-shaped model with the 1.5 B model's layer count (28) and LoRA targets (7 a layer) but tiny
widths (64), so each kernel is nearly free and a forward + backward pass costs what the Python,
the dispatcher and the autograd engine cost. Weights in bfloat16 and adapters in float32, as on
the GPU. It prints the fastest step of each round (the median over rounds) and the ``aten::_to_copy`` (dtype copy) operations
per step, for PEFT's layers, ours, and ours with sibling layers grouped (``grouped``:
``fused_lora.GROUP_SHARED_INPUT``, with q/k/v in the accumulate form and gate/up in the concat form as
at 1.5 B), in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(fused: bool, grouped: bool = False):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from flywheel_trainer import fused_lora
    from flywheel_trainer.fused_lora import fuse_lora

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=28,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # adapters in float32 (PEFT's default), as the worker's
    model.train()
    if fused:
        fused_lora.GROUP_SHARED_INPUT = grouped
        # q/k/v's outputs are 2x its input here (1.33x at 1.5 B), gate/up's 4x (11.7x): a bar
        # between them gives each group the form it has at 1.5 B
        fused_lora.CONCAT_MIN_RATIO = 3.0
        assert fuse_lora(model) == 7 * 28
    return model


def step(model, ids) -> None:
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    model.zero_grad(set_to_none=True)


def measure(name: str, repeats: int) -> dict:
    import torch

    model = build(name != "peft", grouped=name == "grouped")
    ids = torch.randint(0, 256, (1, 32))
    for _ in range(3):
        step(model, ids)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step(model, ids)
        times.append(time.perf_counter() - started)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(model, ids)
    copies = sum(e.count for e in prof.key_averages() if e.key == "aten::_to_copy")
    # The fastest step: host overhead is a floor that other processes' load only adds to.
    return {"ms": min(times) * 1e3, "copies": copies}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3, help="PEFT and ours alternate this many times")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows: dict[str, list[dict]] = {"peft": [], "fused": [], "grouped": []}
    for _ in range(args.rounds):
        for name in rows:
            rows[name].append(measure(name, args.repeats))
    print("| layers | fastest step, median of rounds | min-max of rounds | dtype copies a step |")
    print("|---|---:|---:|---:|")
    for name, runs in rows.items():
        ms = [r["ms"] for r in runs]
        print(
            f"| {name} | {statistics.median(ms):.1f} ms | {min(ms):.1f}-{max(ms):.1f} | {runs[0]['copies']} |"
        )

    def median(name: str) -> float:
        return statistics.median(r["ms"] for r in rows[name])

    print(f"\nours / PEFT host time: {median('fused') / median('peft'):.2f}")
    print(f"grouped / ours host time: {median('grouped') / median('fused'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
