"""SFT LoRA, SFT QLoRA and DPO on a 1.54 B-parameter random model, on a CUDA GPU.

Runs the variants of ``bench/bench_sft_gpu.py`` for a few steps each. CI has no GPU, so this module
is skipped there; it runs on the GPU machine of the device tool (README: GPU benchmark).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CI has none)"),
]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sft_gpu.py"


@pytest.mark.parametrize("variant", ["ours", "qlora", "dpo"])
def test_variant_trains_on_a_large_model(variant: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--variant", variant, "--steps", "8"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    assert result["parameters"] >= 1_400_000_000
    assert result["tokens_per_s"] > 0 and math.isfinite(result["train_loss"])
