"""Triton kernels of the fused LoRA layer (:mod:`flywheel_trainer.fused_lora`), CUDA only.

Imported on first use by a CUDA layer, never on a CPU (Triton is not installed there).

Triton reads a kernel's parameter annotations as the types of its arguments, so the kernels'
parameters carry none but ``tl.constexpr``.

**The seeded dropout.** Element ``(m, k)`` of a ``(rows, cols)`` input is kept where a 16-bit
uniform number ``u(seed, m, k)`` is at least ``threshold = round(p * 65536)``, and a kept element is
scaled by ``65536 / (65536 - threshold)`` (the exact inverse of the keep probability, which differs
from ``1 - p`` by under 2**-17). The numbers come from Philox: one ``tl.randint4x`` call on the
counter ``m * ceil(cols / 8) + k // 8`` gives four 32-bit words, i.e. the eight 16-bit numbers of
columns ``8 * (k // 8)`` to ``8 * (k // 8) + 7``. Every kernel takes its keep decisions from
:func:`keep_tile`, so the forward and the backward draw the same ones; a tile's first column must
be a multiple of 8 and its width a multiple of 8.

Philox runs :data:`PHILOX_ROUNDS` rounds. Its authors found seven rounds of Philox4x32 enough to
pass TestU01's BigCrush and keep ten (Triton's default) as a margin for general use (Salmon et
al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011); a dropout mask needs no more than
seven, and the draws are most of these kernels' arithmetic. ``test_gpu.py`` checks the keep rate of each of a
call's eight lanes and that neighbouring decisions are independent.
"""

from __future__ import annotations

import triton
import triton.language as tl

#: Bits of the uniform number behind each keep decision: p is rounded to a multiple of 2**-16.
KEEP_BITS = 16
#: Philox rounds behind each draw: seven, against Triton's default ten, took the seeded kernels from
#: 64.8 to 50.5 ms a step at 1.5 B on an H100, launches included (``bench/bench_seeded_kernels.py``,
#: bench/RESULTS.md). The benchmark's ``_philox7`` and ``_philox10`` variants set it.
PHILOX_ROUNDS = 7


def threshold(p: float) -> int:
    """The 16-bit threshold for dropout probability ``p`` (0 < p < 1)."""
    return min((1 << KEEP_BITS) - 1, max(1, round(p * (1 << KEEP_BITS))))


def keep_scale(p: float) -> float:
    """The scale of a kept element: 1 / (the keep probability the threshold gives)."""
    full = 1 << KEEP_BITS
    return full / (full - threshold(p))


@triton.jit
def keep_tile(seed, rm, k0, cols, thresh, bm: tl.constexpr, bk: tl.constexpr, rounds: tl.constexpr):
    """Keep decisions (bool, ``(bm, bk)``) of rows ``rm`` and columns ``k0 .. k0 + bk``."""
    groups = (cols + 7) // 8
    g = k0 // 8 + tl.arange(0, bk // 8)
    counter = rm[:, None] * groups + g[None, :]
    r0, r1, r2, r3 = tl.randint4x(seed, counter, rounds)
    low = tl.join(tl.join(r0 & 0xFFFF, r0 >> 16), tl.join(r1 & 0xFFFF, r1 >> 16))
    high = tl.join(tl.join(r2 & 0xFFFF, r2 >> 16), tl.join(r3 & 0xFFFF, r3 >> 16))
    u = tl.reshape(tl.join(low, high), (bm, bk))
    return u.to(tl.int32) >= thresh  # u < 2**16: no sign to mix with the int32 threshold


@triton.jit
def dropout_grad(
    dx_ptr,
    gb_ptr,
    a_ptr,
    mask_ptr,
    rows,
    cols,
    r,
    scale,
    seed,
    thresh,
    dx_stride,
    gb_stride,
    bm: tl.constexpr,
    bk: tl.constexpr,
    br: tl.constexpr,
    seeded: tl.constexpr,
    rounds: tl.constexpr,
):
    """``d_x += ((gb @ a) * keep) * scale`` in place, ``keep`` from a bool mask or (``seeded``) drawn
    again from the seed. ``d_x`` and ``gb`` may be column slices of wider matrices (their rows
    ``dx_stride`` and ``gb_stride`` elements apart); the mask is a whole (rows, cols) matrix."""
    pm = tl.program_id(0)
    pk = tl.program_id(1)
    rm = (pm * bm + tl.arange(0, bm)).to(tl.int64)
    rk = pk * bk + tl.arange(0, bk)
    rr = tl.arange(0, br)
    in_m = rm < rows
    in_k = rk < cols
    gb = tl.load(
        gb_ptr + rm[:, None] * gb_stride + rr[None, :], mask=in_m[:, None] & (rr[None, :] < r), other=0.0
    )
    a = tl.load(a_ptr + rr[:, None] * cols + rk[None, :], mask=(rr[:, None] < r) & in_k[None, :], other=0.0)
    t = tl.dot(gb, a)
    both = in_m[:, None] & in_k[None, :]
    offs = rm[:, None] * cols + rk[None, :]
    if seeded:
        keep = keep_tile(seed, rm, pk * bk, cols, thresh, bm, bk, rounds).to(tl.float32)
    else:
        keep = tl.load(mask_ptr + offs, mask=both, other=0).to(tl.float32)
    dx_offs = rm[:, None] * dx_stride + rk[None, :]
    dx = tl.load(dx_ptr + dx_offs, mask=both, other=0.0).to(tl.float32)
    tl.store(dx_ptr + dx_offs, (dx + t * keep * scale).to(dx_ptr.dtype.element_ty), mask=both)


@triton.jit
def dropout_xa(
    x_ptr,
    a_ptr,
    out_ptr,
    rows,
    cols,
    r,
    seed,
    thresh,
    scale,
    bm: tl.constexpr,
    bk: tl.constexpr,
    br: tl.constexpr,
    rounds: tl.constexpr,
):
    """``out = (dropout(x) @ a^T) * scale``: x (rows, cols), a (r, cols), out (rows, r)."""
    rm = (tl.program_id(0) * bm + tl.arange(0, bm)).to(tl.int64)
    rr = tl.arange(0, br)
    in_m = rm < rows
    acc = tl.zeros((bm, br), dtype=tl.float32)
    for k0 in tl.range(0, cols, bk):
        rk = k0 + tl.arange(0, bk)
        in_k = rk < cols
        x = tl.load(x_ptr + rm[:, None] * cols + rk[None, :], mask=in_m[:, None] & in_k[None, :], other=0.0)
        x = tl.where(keep_tile(seed, rm, k0, cols, thresh, bm, bk, rounds), x, tl.zeros_like(x))
        a = tl.load(
            a_ptr + rr[None, :] * cols + rk[:, None], mask=(rr[None, :] < r) & in_k[:, None], other=0.0
        )
        acc += tl.dot(x, a)
    out = (acc * scale).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rm[:, None] * r + rr[None, :], out, mask=in_m[:, None] & (rr[None, :] < r))


@triton.jit
def dropout_da(
    gb_ptr,
    x_ptr,
    out_ptr,
    rows,
    cols,
    r,
    seed,
    thresh,
    split_rows,
    bm: tl.constexpr,
    bk: tl.constexpr,
    br: tl.constexpr,
    rounds: tl.constexpr,
):
    """``out[split] = gb[split]^T @ dropout(x[split])`` (unscaled), float32 partial sums over a
    split of the rows each: gb (rows, r), x (rows, cols), out (splits, r, cols)."""
    k0 = tl.program_id(0) * bk
    rk = k0 + tl.arange(0, bk)
    split = tl.program_id(1)
    rr = tl.arange(0, br)
    in_k = rk < cols
    acc = tl.zeros((br, bk), dtype=tl.float32)
    start = split * split_rows
    for m0 in tl.range(0, split_rows, bm):
        rm = (start + m0 + tl.arange(0, bm)).to(tl.int64)
        in_m = rm < rows
        x = tl.load(x_ptr + rm[:, None] * cols + rk[None, :], mask=in_m[:, None] & in_k[None, :], other=0.0)
        x = tl.where(keep_tile(seed, rm, k0, cols, thresh, bm, bk, rounds), x, tl.zeros_like(x))
        gb = tl.load(
            gb_ptr + rm[:, None] * r + rr[None, :], mask=in_m[:, None] & (rr[None, :] < r), other=0.0
        )
        acc += tl.dot(tl.trans(gb), x)
    tl.store(
        out_ptr + split * r * cols + rr[:, None] * cols + rk[None, :],
        acc,
        mask=(rr[:, None] < r) & in_k[None, :],
    )


@triton.jit
def dropout_bwd(
    gb_ptr,
    x_ptr,
    a_ptr,
    dx_ptr,
    out_ptr,
    rows,
    cols,
    r,
    seed,
    thresh,
    scale,
    split_rows,
    bm: tl.constexpr,
    bk: tl.constexpr,
    br: tl.constexpr,
    rounds: tl.constexpr,
):
    """The adapter's backward under the seeded dropout in one pass over ``x``: :func:`dropout_da`'s
    float32 partial sums ``out[split] = gb[split]^T @ dropout(x[split])``, here scaled by ``scale``, and
    :func:`dropout_grad`'s ``d_x += ((gb @ a) * keep) * scale`` in place, from one draw of each
    keep tile (two kernels draw every decision twice). Each program owns a column tile of a split
    of the rows, so every element of ``d_x`` is written by one program."""
    k0 = tl.program_id(0) * bk
    rk = k0 + tl.arange(0, bk)
    split = tl.program_id(1)
    rr = tl.arange(0, br)
    in_k = rk < cols
    in_r = rr < r
    a = tl.load(a_ptr + rr[:, None] * cols + rk[None, :], mask=in_r[:, None] & in_k[None, :], other=0.0)
    acc = tl.zeros((br, bk), dtype=tl.float32)
    start = split * split_rows
    for m0 in tl.range(0, split_rows, bm):
        rm = (start + m0 + tl.arange(0, bm)).to(tl.int64)
        in_m = rm < rows
        both = in_m[:, None] & in_k[None, :]
        offs = rm[:, None] * cols + rk[None, :]
        keep = keep_tile(seed, rm, k0, cols, thresh, bm, bk, rounds)
        x = tl.load(x_ptr + offs, mask=both, other=0.0)
        x = tl.where(keep, x, tl.zeros_like(x))
        gb = tl.load(gb_ptr + rm[:, None] * r + rr[None, :], mask=in_m[:, None] & in_r[None, :], other=0.0)
        acc += tl.dot(tl.trans(gb), x)
        t = tl.dot(gb, a)
        dx = tl.load(dx_ptr + offs, mask=both, other=0.0).to(tl.float32)
        dx += tl.where(keep, t * scale, tl.zeros_like(t))
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=both)
    tl.store(
        out_ptr + split * r * cols + rr[:, None] * cols + rk[None, :],
        acc * scale,
        mask=in_r[:, None] & in_k[None, :],
    )


@triton.jit
def dropout_keep(out_ptr, rows, cols, seed, thresh, bm: tl.constexpr, bk: tl.constexpr, rounds: tl.constexpr):
    """The keep decisions themselves, as uint8 (rows, cols): for tests and checks."""
    rm = (tl.program_id(0) * bm + tl.arange(0, bm)).to(tl.int64)
    k0 = tl.program_id(1) * bk
    rk = k0 + tl.arange(0, bk)
    kept = keep_tile(seed, rm, k0, cols, thresh, bm, bk, rounds).to(tl.uint8)
    tl.store(
        out_ptr + rm[:, None] * cols + rk[None, :], kept, mask=(rm[:, None] < rows) & (rk[None, :] < cols)
    )
