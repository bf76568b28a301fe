"""Microbenchmark: the base-weight matmuls of a LoRA step in bf16 against FP8 (Hopper), per shape.

    python3 trainer-svc/bench/bench_fp8_gemm.py [--tokens 16384]

A LoRA step on a frozen base runs two matmuls per projection and per pass: the forward
``x W^T`` and the backward ``dY W`` (no weight gradient). With the weight frozen, its FP8 copy
(per-output-channel scales) is made once; what an FP8 step pays every time is the row-wise
quantisation of the activations (forward) and of the incoming gradients (backward). This prints,
for each projection shape of Qwen2-1.5B at ``--tokens`` rows: the bf16 time, the FP8 matmul alone,
FP8 with the quantisation (:func:`flywheel_trainer.fp8.quantize_rows`), and the ratios; then the
sums over one decoder layer. It decides whether FP8 base matmuls are a lever worth taking.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

# (name, in_features K, out_features N, count per decoder layer) for Qwen2-1.5B.
SHAPES = [
    ("q_proj/o_proj", 1536, 1536, 2),
    ("k_proj/v_proj", 1536, 256, 2),
    ("gate_proj/up_proj", 1536, 8960, 2),
    ("down_proj", 8960, 1536, 1),
]


def _time(fn, repeats: int = 30) -> float:
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats  # ms


def _measure(m: int, k: int, n: int) -> tuple[float, ...]:
    """Milliseconds of bf16 forward/backward, FP8 matmuls alone, FP8 with quantisation; and FP8's forward error."""
    import torch

    from flywheel_trainer.fp8 import Fp8Weight, fp8_matmul, quantize_rows

    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    w8 = Fp8Weight.of(w)
    xq, xs = quantize_rows(x)
    gq, gs = quantize_rows(dy)
    fwd_bf16 = _time(lambda: x @ w.t())
    bwd_bf16 = _time(lambda: dy @ w)
    fwd_mm = _time(lambda: fp8_matmul(xq, xs, w8.forward_q, w8.forward_s))
    bwd_mm = _time(lambda: fp8_matmul(gq, gs, w8.backward_q, w8.backward_s))
    fwd_all = _time(lambda: fp8_matmul(*quantize_rows(x), w8.forward_q, w8.forward_s))
    bwd_all = _time(lambda: fp8_matmul(*quantize_rows(dy), w8.backward_q, w8.backward_s))
    ref = (x.float() @ w.float().t()).norm()
    err = (
        (fp8_matmul(*quantize_rows(x), w8.forward_q, w8.forward_s).float() - x.float() @ w.float().t()).norm()
        / ref
    ).item()
    return fwd_bf16, bwd_bf16, fwd_mm, bwd_mm, fwd_all, bwd_all, err


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    m = args.tokens
    torch.manual_seed(0)
    rows = []
    totals = {"bf16": 0.0, "fp8_mm": 0.0, "fp8": 0.0}
    for name, k, n, count in SHAPES:
        fwd_bf16, bwd_bf16, fwd_mm, bwd_mm, fwd_all, bwd_all, err = _measure(m, k, n)
        flops = 2 * m * k * n
        row = {
            "shape": name,
            "K": k,
            "N": n,
            "bf16_ms": round(fwd_bf16 + bwd_bf16, 4),
            "fp8_matmul_ms": round(fwd_mm + bwd_mm, 4),
            "fp8_with_quant_ms": round(fwd_all + bwd_all, 4),
            "bf16_tflops": round(2 * flops / (fwd_bf16 + bwd_bf16) / 1e9, 1),
            "fp8_tflops_with_quant": round(2 * flops / (fwd_all + bwd_all) / 1e9, 1),
            "speedup_with_quant": round((fwd_bf16 + bwd_bf16) / (fwd_all + bwd_all), 3),
            "forward_rel_error": round(err, 5),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        totals["bf16"] += count * (fwd_bf16 + bwd_bf16)
        totals["fp8_mm"] += count * (fwd_mm + bwd_mm)
        totals["fp8"] += count * (fwd_all + bwd_all)
    summary = {
        "gpu": torch.cuda.get_device_name(0),
        "tokens": m,
        "layer_bf16_ms": round(totals["bf16"], 3),
        "layer_fp8_ms": round(totals["fp8"], 3),
        "layer_fp8_matmul_only_ms": round(totals["fp8_mm"], 3),
        "layer_speedup": round(totals["bf16"] / totals["fp8"], 3),
    }
    print("SUMMARY " + json.dumps(summary), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"shapes": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
