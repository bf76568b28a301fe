"""The fused LoRA layer's Triton kernels (``lora_kernels``) run by Triton's interpreter on the CPU.

The kernels only run on a GPU in training, and CI has none; ``test_gpu.py`` checks them there
through the device tool. Here Triton's own interpreter (``TRITON_INTERPRET=1``: each program of
the grid run with NumPy) runs the very same kernels in CI, so a wrong index, mask or tile bound is
caught before a GPU sees it. The interpreter has no bfloat16 arithmetic, so these run in float32.

Triton is installed by ``make install`` apart from the project's packages (``.venv/triton-interpreter``,
added to the path of a child process only): on the CPU its presence would change what PyTorch and
Liger pick, so the other tests never see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TRITON_DIR = ROOT / ".venv" / "triton-interpreter"
SRC = ROOT / "trainer-svc" / "src"


def _interpreted(rank: int, rounds: int) -> dict:
    """Run this file's checks under the interpreter in a child process; their figures as a dict."""
    assert (TRITON_DIR / "triton").is_dir(), (
        f"Triton's interpreter is not installed at {TRITON_DIR}: run `make install`"
    )
    env = {
        **os.environ,
        "TRITON_INTERPRET": "1",
        "PYTHONPATH": os.pathsep.join([str(TRITON_DIR), str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, __file__, str(rank), str(rounds)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("rank", "rounds"), [(8, 10), (16, 7), (40, 10)])
def test_the_lora_kernels_match_pytorch_under_the_interpreter(rank: int, rounds: int) -> None:
    """Every kernel at shapes that are not tile multiples (130 x 300; rank 40 is not a power of two),
    against float64 arithmetic on the keep mask the seed stands for (the input gradient's kernel
    also on column slices of wider matrices, as grouped layers pass them); the one-pass backward equals
    the two kernels it replaces; the mask depends on the seed alone and drops about p, with
    Philox's ten rounds or seven (``lora_kernels.PHILOX_ROUNDS``)."""
    got = _interpreted(rank, rounds)
    for name in ("xa", "da", "grad", "one_pass_da", "one_pass_dx", "mask_grad", "strided_grad"):
        assert got[name] < 1e-5, (name, got)
    assert got["one_pass_vs_two_da"] < 1e-6 and got["one_pass_vs_two_dx"] < 1e-6, got
    assert got["strided_rest_untouched"], got  # a column slice's kernel writes inside it only
    assert got["same_seed_same_mask"] and not got["other_seed_same_mask"], got
    assert abs(got["drop_rate"] - 0.1) < 0.01, got


def _main(rank: int, rounds: int) -> None:
    import torch

    from flywheel_trainer import fused_lora, lora_kernels
    from flywheel_trainer.lora_kernels import keep_scale

    lora_kernels.PHILOX_ROUNDS = rounds
    gen = torch.Generator().manual_seed(rank)
    rows, cols, p, seed = 130, 300, 0.1, 1234 + rank
    x = torch.randn(rows, cols, generator=gen)
    a = torch.randn(rank, cols, generator=gen) / 4
    gb = torch.randn(rows, rank, generator=gen)
    d_x = torch.randn(rows, cols, generator=gen)
    keep = fused_lora.seeded_dropout_keep(rows, cols, seed, p, "cpu")
    scale = keep_scale(p)
    dropped = x.double() * keep * scale
    grad_ref = d_x.double() + (gb.double() @ a.double()) * keep * scale

    def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
        return float((got.double() - ref.double()).norm() / ref.double().norm())

    two = d_x.clone()
    fused_lora._add_dropout_grad(two, gb, a, None, scale, seed=seed, p=p)
    da_two = fused_lora.seeded_dropout_da(gb, x, seed, p)
    one = d_x.clone()
    da_one = fused_lora.seeded_dropout_backward(gb, x, a, one, seed, p)
    mask = torch.rand(rows, cols, generator=gen) > p
    # With a mask, _add_dropout_grad takes its kernel on CUDA only: launch it as it does there.
    masked = d_x.clone()
    lora_kernels.dropout_grad[(3, 3)](
        masked, gb, a, mask.view(torch.uint8), rows, cols, rank, 1 / (1 - p), 0, 0, cols, rank,
        bm=64, bk=128, br=max(16, 1 << (rank - 1).bit_length()), seeded=False,
        rounds=lora_kernels.PHILOX_ROUNDS,
    )  # fmt: skip
    # Column slices of wider matrices, as the grouped layers pass them (fused_lora._GroupFn):
    # d_x the first cols columns of (rows, cols + 24), gb 16 columns into (rows, rank + 24).
    wide = torch.randn(rows, cols + 24, generator=gen)
    wide_gb = torch.randn(rows, rank + 24, generator=gen)
    wide_gb[:, 16 : 16 + rank] = gb
    before = wide.clone()
    wide[:, :cols] = d_x
    fused_lora._add_dropout_grad(wide[:, :cols], wide_gb[:, 16 : 16 + rank], a, None, scale, seed=seed, p=p)
    print(
        json.dumps(
            {
                "strided_grad": rel(wide[:, :cols], grad_ref),
                "strided_rest_untouched": bool(torch.equal(wide[:, cols:], before[:, cols:])),
                "xa": rel(fused_lora.seeded_dropout_xa(x, a, seed, p), dropped @ a.double().t()),
                "da": rel(da_two, gb.double().t() @ dropped),
                "grad": rel(two, grad_ref),
                "one_pass_da": rel(da_one, gb.double().t() @ dropped),
                "one_pass_dx": rel(one, grad_ref),
                "one_pass_vs_two_da": rel(da_one, da_two),
                "one_pass_vs_two_dx": rel(one, two),
                "mask_grad": rel(masked, d_x.double() + (gb.double() @ a.double()) * mask / (1 - p)),
                "same_seed_same_mask": bool(
                    torch.equal(keep, fused_lora.seeded_dropout_keep(rows, cols, seed, p, "cpu"))
                ),
                "other_seed_same_mask": bool(
                    torch.equal(keep, fused_lora.seeded_dropout_keep(rows, cols, seed + 1, p, "cpu"))
                ),
                "drop_rate": float((~keep).float().mean()),
            }
        )
    )


if __name__ == "__main__":
    _main(int(sys.argv[1]), int(sys.argv[2]))
