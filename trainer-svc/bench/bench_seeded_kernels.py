"""GPU time of the seeded-dropout kernels alone, at the 1.5 B model's shapes (CUDA only).

    python3 trainer-svc/bench/bench_seeded_kernels.py

For the two inputs an adapted layer sees at 8 packed rows of 2,048 tokens (16,384 x 1,536 for
q/k/v/o/gate/up, 16,384 x 8,960 for down), rank 16, bfloat16: the forward's kernel
(``seeded_dropout_xa``) and the backward as two kernels (``seeded_dropout_da`` then
``_add_dropout_grad``) or one (``seeded_dropout_backward``), each with ten and seven Philox
rounds. Times are medians of CUDA-event timings over 20 calls after 3 warm-up calls; each timing
also holds the host's launch of the kernels (events bracket one call), so the small calls read
high, but equally for ten and seven rounds. The step
figure weights them as a step of the 28-layer model does (6 inputs of width 1,536 and 1 of
8,960 a layer).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _time(fn, calls: int = 20) -> float:
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    import torch

    from flywheel_trainer import fused_lora, lora_kernels

    rows, rank, p, seed = 16384, 16, 0.05, 1234
    step: dict[str, float] = {}
    print("| width | rounds | forward ms | backward, two kernels ms | backward, one pass ms |")
    print("|---:|---:|---:|---:|---:|")
    for cols, per_layer in ((1536, 6), (8960, 1)):
        x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        a = torch.randn(rank, cols, device="cuda") / 8
        a16 = a.to(torch.bfloat16)
        gb = torch.randn(rows, rank, device="cuda", dtype=torch.bfloat16)
        d_x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
        scale = lora_kernels.keep_scale(p)
        for rounds in (10, 7):
            lora_kernels.PHILOX_ROUNDS = rounds
            fwd = _time(lambda x=x, a=a: fused_lora.seeded_dropout_xa(x, a, seed, p))
            two = _time(
                lambda x=x, gb=gb, d_x=d_x, a16=a16, scale=scale: (
                    fused_lora.seeded_dropout_da(gb, x, seed, p),
                    fused_lora._add_dropout_grad(d_x, gb, a16, None, scale, seed=seed, p=p),
                )
            )
            one = _time(
                lambda x=x, gb=gb, d_x=d_x, a=a: fused_lora.seeded_dropout_backward(gb, x, a, d_x, seed, p)
            )
            print(f"| {cols} | {rounds} | {fwd:.3f} | {two:.3f} | {one:.3f} |", flush=True)
            for name, ms in (("fwd", fwd), ("two", two), ("one", one)):
                key = f"{name}{rounds}"
                step[key] = step.get(key, 0.0) + 28 * per_layer * ms
    print()
    print("a step of the 28-layer model (7 adapted layers a layer), ms:")
    for rounds in (10, 7):
        print(
            f"  rounds {rounds}: forward {step[f'fwd{rounds}']:.1f}, backward two kernels "
            f"{step[f'two{rounds}']:.1f}, one pass {step[f'one{rounds}']:.1f}"
        )


if __name__ == "__main__":
    main()
