"""What the machine's processor can do, for choices a service makes once at start-up."""

from __future__ import annotations

import functools
import os
from pathlib import Path

#: ``ATEN_CPU_CAPABILITY`` values that keep PyTorch's kernels below AVX-512 (PyTorch's spelling).
CAPABILITIES_BELOW_AVX512 = frozenset({"default", "avx2", "zvector", "vsx", "sve256"})


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

    ``ATEN_CPU_CAPABILITY`` (PyTorch's own cap on the vector instructions its kernels use) set below
    AVX-512 also answers False: PyTorch then runs as on a CPU without AVX-512, so bfloat16 would be
    emulated. Setting it to ``avx2`` (with ``ONEDNN_MAX_CPU_ISA=AVX2`` and
    ``MKL_ENABLE_INSTRUCTIONS=AVX2`` for the libraries below PyTorch) is how an AVX2-only machine
    is stood in for on a newer one.
    """
    choice = os.environ.get("FLYWHEEL_CPU_BF16", "auto").strip().lower()
    if choice in ("off", "0", "false", "no"):
        return False
    if choice not in ("auto", ""):
        raise ValueError(f"FLYWHEEL_CPU_BF16={choice!r}: expected auto or off")
    if os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower() in CAPABILITIES_BELOW_AVX512:
        return False
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_summary() -> str:
    """The processor in a few words: its model name, core count, and the vector instructions
    PyTorch may use here (``ATEN_CPU_CAPABILITY`` if set, else the widest the CPU has), e.g.
    ``Intel(R) Xeon(R) Processor, 2 cores, AVX-512 with bfloat16``."""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    cap = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if cap in CAPABILITIES_BELOW_AVX512:
        isa = f"capped at {cap.upper()} (ATEN_CPU_CAPABILITY)"
    elif "avx512f" in flags:
        isa = "AVX-512" + (" with bfloat16" if flags & {"avx512_bf16", "amx_bf16"} else "")
    elif "avx2" in flags:
        isa = "AVX2"
    else:
        isa = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    parts = [name or "unknown CPU", f"{cores} cores", isa]
    return ", ".join(p for p in parts if p)
