"""Where the CPU time of one Gemma 3 270M LoRA step goes (float32 and bfloat16 autocast).

One optimizer step as the trainer runs it on a CPU (``recipe.py`` with
``device_options.cpu_sft_overrides``): LoRA r16 / alpha 32 / dropout 0.05 on all seven
projections, 4 chat rows as 4 micro-batches of one row (gradient accumulation 4), TRL 1.13's
default ``chunked_nll`` loss (the LM head and the cross-entropy only at label positions, in
256-token chunks, each recomputed in the backward pass), AdamW, gradient clipping at 1.0. bf16 is
the Trainer's CPU mode: ``torch.autocast("cpu", torch.bfloat16)`` over forward and loss, weights
float32.

The batch is synthetic but shaped like the demo's ``step_sft`` data: 4 rows with lengths drawn
from 300-1,000 tokens (seeded), random token ids, the loss on the last 40 % of each row.

Printed per configuration: seconds per optimizer step split into forward (body + LM head/CE),
backward, optimizer; the LM head + CE share measured on its own; tokens/s; and each figure as
a ratio against the baseline of the same dtype in the same run. Also the padding fraction a
padded batch of 4 would carry (what ``per_device_train_batch_size=4`` would compute).

    .venv/bin/python trainer-svc/bench/bench_cpu_step.py [--model DIR] [--rows 4] [--min-len 300 --max-len 1000] [--dtypes auto]

``--model``: a Hugging Face folder of Gemma 3 270M (default: the demo's object store
``~/.flywheel/demo/objects/base-models/gemma-3-270m``, else the newest
``~/.cache/flywheel-trainer/hf-gemma-3-270m-*`` that ``flywheel_trainer.gguf_import`` wrote).
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import (
    _CHUNKED_LM_HEAD_CHUNK_SIZE,
    _chunked_cross_entropy_loss,
    _patch_chunked_ce_lm_head,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def find_model(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    demo = Path.home() / ".flywheel/demo/objects/base-models/gemma-3-270m"
    if (demo / "config.json").exists():
        return demo
    cands = sorted((Path.home() / ".cache/flywheel-trainer").glob("hf-gemma-3-270m-*"))
    cands = [c for c in cands if (c / "config.json").exists()]
    if not cands:
        raise SystemExit("no Gemma 3 270M folder: run python -m flywheel_trainer.gguf_import first")
    return cands[-1]


def make_rows(n: int, lo: int, hi: int, vocab: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        length = rng.randint(lo, hi)
        ids = torch.tensor([2] + [rng.randrange(1000, vocab - 1000) for _ in range(length - 1)])
        labels = ids.clone()
        labels[: int(length * 0.6)] = -100
        rows.append((ids[None], labels[None]))
    return rows


def build(model_dir: Path, attn: str) -> Any:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    torch.manual_seed(0)
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules=TARGETS, bias="none", task_type="CAUSAL_LM"
    )
    peft = get_peft_model(model, lora)
    _patch_chunked_ce_lm_head(peft.get_base_model(), chunk_size=_CHUNKED_LM_HEAD_CHUNK_SIZE)
    peft.train()
    return peft


def one_step(model: Any, rows: list, bf16: bool, opt: torch.optim.Optimizer) -> dict[str, float]:
    """One optimizer step over ``rows`` (one micro-batch per row); seconds per phase."""
    n_items = sum(int((lbl[:, 1:] != -100).sum()) for _, lbl in rows)
    t = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    loss_sum = 0.0
    for ids, lbl in rows:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(input_ids=ids, labels=lbl, num_items_in_batch=n_items)
        t1 = time.perf_counter()
        out.loss.backward()
        t2 = time.perf_counter()
        t["forward"] += t1 - t0
        t["backward"] += t2 - t1
        loss_sum += float(out.loss.detach())
    t0 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    t["optimizer"] = time.perf_counter() - t0
    t["loss"] = loss_sum
    return t


def lm_head_time(model: Any, rows: list, bf16: bool, checkpointed: bool = True) -> float:
    """Seconds of TRL's chunked LM head + CE (forward + backward) over the rows, on their hidden states."""
    base = model.get_base_model()
    w = base.get_output_embeddings().weight
    cfg = base.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    total = 0.0
    ckpt = torch.utils.checkpoint.checkpoint
    labelled = sum(int((lbl[:, 1:] != -100).sum()) for _, lbl in rows)
    for ids, lbl in rows:
        hidden = torch.randn(1, ids.shape[1], cfg.hidden_size) * 0.5
        hidden.requires_grad_(True)
        if not checkpointed:  # the same math with the chunk's activations kept (no recompute)
            torch.utils.checkpoint.checkpoint = lambda f, *a, **k: f(*a)
        try:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, *_ = _chunked_cross_entropy_loss(
                    hidden,
                    w,
                    _CHUNKED_LM_HEAD_CHUNK_SIZE,
                    labels=lbl,
                    num_items_in_batch=labelled,
                    final_logit_softcapping=softcap,
                )
            loss.backward()
            total += time.perf_counter() - t0
        finally:
            torch.utils.checkpoint.checkpoint = ckpt
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-len", type=int, default=300)
    parser.add_argument("--max-len", type=int, default=1000)
    parser.add_argument(
        "--dtypes",
        default="auto",
        help="fp32, bf16, fp32,bf16 or auto (bf16 only where cpu_has_fast_bf16(): emulated bf16 is ~70x slower)",
    )
    args = parser.parse_args()
    model_dir = find_model(args.model)
    threads = torch.get_num_threads()
    print(f"model {model_dir}; torch {torch.__version__}, {threads} threads, {os.cpu_count()} CPUs")

    import inspect

    sig = inspect.signature(_chunked_cross_entropy_loss)
    assert list(sig.parameters)[:3] == ["hidden_states", "lm_head_weight", "chunk_size"], sig

    probe = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    vocab, default_attn = probe.config.vocab_size, probe.config._attn_implementation
    del probe
    rows = make_rows(args.rows, args.min_len, args.max_len, vocab, args.seed)
    lengths = [r[0].shape[1] for r in rows]
    real = sum(lengths)
    labelled = sum(int((lbl != -100).sum()) for _, lbl in rows)
    padded = len(rows) * max(lengths)
    print(
        f"batch: {len(rows)} rows, lengths {lengths}, {real} tokens, {labelled} with a label; "
        f"default attention: {default_attn}"
    )
    print(
        f"padding if the {len(rows)} rows were one padded batch: {padded - real} of {padded} tokens = "
        f"{(padded - real) / padded:.0%} (the CPU recipe runs one row per micro-batch: 0 %)"
    )
    warm = make_rows(1, 200, 200, vocab, 99)

    from flywheel_common.hardware import cpu_has_fast_bf16

    fast_bf16 = cpu_has_fast_bf16()
    dtypes = ("fp32,bf16" if fast_bf16 else "fp32") if args.dtypes == "auto" else args.dtypes
    print(f"native bf16 (cpu_has_fast_bf16): {fast_bf16}; measuring {dtypes}")
    configs: list[tuple[str, bool, str, int]] = []
    for bf16 in [d.strip() == "bf16" for d in dtypes.split(",")]:
        configs.append(("baseline", bf16, "sdpa", threads))
        configs.append(("eager attention", bf16, "eager", threads))
        if threads > 1:
            configs.append((f"{threads // 2} thread(s)", bf16, "sdpa", threads // 2))
    results: list[tuple[str, bool, dict[str, float]]] = []
    models: dict[str, Any] = {}
    for name, bf16, attn, nthreads in configs:
        torch.set_num_threads(nthreads)
        if attn not in models:
            models = {attn: build(model_dir, attn)}
        model = models[attn]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-9)
        one_step(model, warm, bf16, opt)  # allocator and oneDNN warm-up
        r = one_step(model, rows, bf16, opt)
        r["lm_head"] = lm_head_time(model, rows, bf16)
        if name == "baseline":
            r["lm_head_no_recompute"] = lm_head_time(model, rows, bf16, checkpointed=False)
        r["total"] = r["forward"] + r["backward"] + r["optimizer"]
        results.append((name, bf16, r))
        torch.set_num_threads(threads)
        print(f"  measured {name} ({'bf16' if bf16 else 'fp32'}): {r}", flush=True)

    print()
    print(
        "| dtype | configuration | step s | forward s | backward s | optimizer s | LM head+CE s (share) "
        "| tokens/s | vs baseline |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base_of = {bf16: r for name, bf16, r in results if name == "baseline"}
    for name, bf16, r in results:
        b = base_of[bf16]
        print(
            f"| {'bf16' if bf16 else 'fp32'} | {name} | {r['total']:.1f} | {r['forward']:.1f} | "
            f"{r['backward']:.1f} | {r['optimizer']:.2f} | {r['lm_head']:.1f} ({r['lm_head'] / r['total']:.0%}) | "
            f"{real / r['total']:.0f} | {b['total'] / r['total']:.2f}x |"
        )
    for bf16, b in base_of.items():
        print(
            f"{'bf16' if bf16 else 'fp32'}: LM head+CE with TRL's per-chunk recompute {b['lm_head']:.1f} s, "
            f"without it {b['lm_head_no_recompute']:.1f} s; loss {b['loss']:.4f}"
        )
    if True in base_of and False in base_of:
        print(f"bf16 vs fp32 step: {base_of[False]['total'] / base_of[True]['total']:.2f}x")


if __name__ == "__main__":
    main()
