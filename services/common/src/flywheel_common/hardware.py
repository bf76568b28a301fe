"""What the machine's processor can do, for choices a service makes once at start-up."""

from __future__ import annotations

import functools
import os
from pathlib import Path


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether bfloat16 matrix work runs natively here (AVX-512 BF16 or AMX).

    On such CPUs (Intel Sapphire Rapids and later, AMD Zen 4 and later) bfloat16 roughly halves
    the time of a small model's forward and backward pass; measured on this project's 2-core
    Zen 4 machine with Gemma 3 270M: generation 10.5 → 23.4 tokens/s, prefill 203 → 633 tokens/s.
    Without them PyTorch emulates bfloat16 and float32 is faster.

    ``FLYWHEEL_CPU_BF16=off`` answers False on any CPU (every service then computes in float32, as
    on a CPU without these instructions: how the demo was measured for such machines); ``auto``
    (the default) asks the CPU.
    """
    choice = os.environ.get("FLYWHEEL_CPU_BF16", "auto").strip().lower()
    if choice in ("off", "0", "false", "no"):
        return False
    if choice not in ("auto", ""):
        raise ValueError(f"FLYWHEEL_CPU_BF16={choice!r}: expected auto or off")
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
