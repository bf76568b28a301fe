"""How a 32B model would be trained on the device tool's machines: memory per GPU and rows per step
for QLoRA on one GPU, bf16 LoRA on one GPU, and FSDP over 2 and 8 GPUs, from the trainer's memory
model (`flywheel_trainer.memory_plan`, fitted to the 1.5B H200 run). A plan on paper: nothing
here runs a 32B model.

    .venv/bin/python trainer-svc/bench/plan_32b.py [--seq-len 2048] [--rank 16]
"""

from __future__ import annotations

import argparse

from flywheel_trainer.memory_plan import SHAPES, fitted_check, plan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--margin", type=float, default=0.10)
    a = p.parse_args()
    print("Fit check, Qwen2-1.5B shape on one H200, no recomputation (allocator peak):")
    print("| rows | model GiB | measured GiB |\n|---:|---:|---:|")
    for rows, model, measured in fitted_check():
        print(f"| {rows} | {model:.2f} | {measured:.2f} |")
    shape = SHAPES["qwen2.5-32b"]
    print(
        f"\n{shape.name}: {shape.params / 1e9:.2f} B parameters from its shape "
        f"({(shape.params - shape.embedding_params) / 1e9:.2f} B outside the embeddings), "
        f"LoRA r{a.rank} on all 7 projections: {shape.lora_params(a.rank) / 1e6:.0f} M; "
        f"rows of {a.seq_len} tokens, {a.margin:.0%} of each GPU kept free"
    )
    print("\n| setup | GPUs | fixed GiB/GPU | GiB per row | fits | throughput at 29.5% MFU |")
    print("|---|---|---:|---:|---|---:|")
    common = {"rank": a.rank, "seq_len": a.seq_len, "margin": a.margin}
    for kw in (
        {"gpus": 1, "gpu_gib": 80, "qlora": True},
        {"gpus": 1, "gpu_gib": 80},
        {"gpus": 1, "gpu_gib": 141, "qlora": True},
        {"gpus": 1, "gpu_gib": 141},
        {"gpus": 2, "gpu_gib": 80},
        {"gpus": 8, "gpu_gib": 80},
        {"gpus": 8, "gpu_gib": 80, "recompute": False},
    ):
        print(plan(shape, **common, **kw).line())  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
