"""The fused LoRA layer: PEFT's LoRA ``Linear`` as one autograd node, for training on a CUDA GPU.

:func:`fuse_lora` routes every plain LoRA layer of a PEFT model through :func:`fused_lora_function`;
the parameters, state dict, checkpoints and saved adapter stay PEFT's own. ``tests/test_gpu.py``
compares it with float64 arithmetic and with PEFT's layers (on the CPU in CI, on a GPU with the
device tool); ``bench/RESULTS.md`` has what it gains.
"""

from __future__ import annotations

import functools
from typing import Any

#: Layers with fewer input or output features keep bfloat16 base matmuls under ``fp8``: on an H100
#: at 16k tokens, the FP8 matmul of k_proj/v_proj (1536 -> 256) took 0.080 ms against bfloat16's
#: 0.060 ms before any quantisation (bench/bench_fp8_gemm.py, bench/RESULTS.md).
FP8_MIN_FEATURES = 1024

#: Whether CUDA layers add the dropout branch's input gradient with :func:`_add_dropout_grad`'s kernel
#: (the benchmark turns it off to measure what it gains).
DROPOUT_GRAD_KERNEL = True
#: Whether CUDA layers draw the adapter's dropout inside its own kernels (counter-based random
#: numbers, drawn again in the backward) instead of writing the dropped-out input and its mask
#: out. Its first version (one Philox call an element) took 26% less peak memory but ran 18%
#: slower at 8 rows of 2,048 tokens on an H100; the present one draws eight elements a Philox
#: call and kept the 13 GiB while running faster than PyTorch's dropout and mask
#: (bench/RESULTS.md; the benchmark's ``_maskdrop`` variants turn it off).
DROPOUT_IN_KERNELS = True
#: Whether the seeded dropout's backward is one kernel (:func:`seeded_dropout_backward`: the weight
#: and the input gradient from one pass over the input, each keep decision drawn once) instead of
#: two (:func:`seeded_dropout_da`, then :func:`_add_dropout_grad`, each drawing every decision);
#: the benchmark's ``_bwd1`` and ``_bwd2`` variants set it. Off: on an H100 with seven Philox rounds
#: it was no faster on 1,536-wide inputs (0.133 against 0.129 ms) and 32% slower on the 8,960-wide
#: one (0.615 against 0.465 ms), whose input gradient the two-kernel path spreads over far more
#: programs (``bench/bench_seeded_kernels.py``, bench/RESULTS.md).
SEEDED_ONE_PASS_BACKWARD = False
#: Widest adapter rank the seeded-dropout kernels take (their tiles hold the whole rank).
SEEDED_MAX_RANK = 128


def _add_dropout_grad(
    d_x: Any, gb: Any, a: Any, mask: Any, scale: float, seed: int | None = None, p: float = 0.0
) -> None:
    """``d_x += (gb @ a) * mask * scale`` in place (d_x (M, K), gb (M, r), a (r, K), mask (M, K) bool):
    the adapter branch's input gradient under dropout.

    ``gb`` and ``a`` have a small rank r, so ``gb @ a`` is cheap to compute but as large as ``d_x``
    to store. PyTorch needs it written out, then an ``addcmul`` over three full-size tensors with a
    bool mask (an unvectorised kernel): 37 ms of a 336 ms step in the profile of 8 packed rows at
    1.5 B on an H100 (bench/RESULTS.md). On CUDA, :func:`flywheel_trainer.lora_kernels.dropout_grad`
    reads each tile of ``d_x``, computes its rank-r product in registers, masks, adds and writes it
    once.

    With ``seed`` there is no mask: the kernel draws the forward's keep decisions (the seeded
    kernels below) again from ``seed`` and ``p``, and ``scale`` should be
    ``lora_kernels.keep_scale(p)``."""
    import torch

    if seed is not None or (
        d_x.is_cuda and DROPOUT_GRAD_KERNEL and d_x.stride(1) == 1 and mask.is_contiguous()
    ):
        import triton

        from flywheel_trainer import lora_kernels

        rows, cols = d_x.shape
        r = gb.shape[1]
        if d_x.stride(1) != 1:  # the kernel takes rows at any stride, not columns
            raise ValueError(f"d_x must have contiguous rows, got strides {d_x.stride()}")
        if gb.stride(1) != 1:
            gb = gb.contiguous()
        a = a.to(gb.dtype).contiguous()
        bm, bk = 64, 128
        grid = (triton.cdiv(rows, bm), triton.cdiv(cols, bk))
        br = max(16, triton.next_power_of_2(r))
        seeded = seed is not None
        lora_kernels.dropout_grad[grid](
            d_x,
            gb,
            a,
            d_x if seeded else mask.view(torch.uint8),  # not read when seeded
            rows,
            cols,
            r,
            scale,
            seed if seeded else 0,
            lora_kernels.threshold(p) if seeded else 0,
            d_x.stride(0),
            gb.stride(0),
            bm=bm,
            bk=bk,
            br=br,
            seeded=seeded,
            rounds=lora_kernels.PHILOX_ROUNDS,
            num_warps=4,
        )
        return
    d_x.addcmul_(gb @ a, mask, value=scale)


# The seeded dropout (DROPOUT_IN_KERNELS). PyTorch's dropout writes the dropped-out input and a bool
# mask, as large as the input, for every adapted layer (7 a decoder layer), and keeps both for the
# backward: 17 ms of an ours8 step's GPU time at 1.5 B on an H100, and about 3 bytes an input
# element of activation memory a layer. The Triton kernels of lora_kernels draw each element's keep
# decision from a seed where they read the input (that module says how), so the backward draws the
# same ones again instead of storing them, and the input itself (which q/k/v, and gate/up, share)
# is what is kept: seeded_dropout_xa computes the adapter's first product, seeded_dropout_da its
# weight gradient (float32 partial sums over row splits, summed here, so the result does not
# depend on scheduling), _add_dropout_grad with a seed its input gradient, and
# seeded_dropout_keep the keep decisions themselves (for tests and checks).


def _draw_seed() -> int:
    """A dropout seed from PyTorch's CPU generator: reproducible under ``torch.manual_seed`` (which the
    Trainer's ``seed`` sets) and drawn without waiting for the GPU."""
    import torch

    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def _seeded(x2: Any, rank: int) -> bool:
    """Whether a layer's dropout runs in the seeded kernels (CUDA, on, a rank their tiles take)."""
    return bool(x2.is_cuda and DROPOUT_IN_KERNELS and rank <= SEEDED_MAX_RANK and x2.is_contiguous())


def seeded_dropout_xa(x2: Any, a: Any, seed: int, p: float) -> Any:
    """``dropout(x2) @ a^T`` (rows, r) in ``x2``'s dtype, the dropout drawn from ``seed``."""
    import torch
    import triton

    from flywheel_trainer import lora_kernels

    rows, cols = x2.shape
    r = a.shape[0]
    out = torch.empty(rows, r, device=x2.device, dtype=x2.dtype)
    bm, bk, br = 64, 64, max(16, triton.next_power_of_2(r))
    lora_kernels.dropout_xa[(triton.cdiv(rows, bm),)](
        x2,
        a.to(x2.dtype).contiguous(),
        out,
        rows,
        cols,
        r,
        seed,
        lora_kernels.threshold(p),
        lora_kernels.keep_scale(p),
        bm=bm,
        bk=bk,
        br=br,
        rounds=lora_kernels.PHILOX_ROUNDS,
    )
    return out


#: Tile sizes (rows, columns) of the seeded weight-gradient kernels.
_SPLIT_BM, _SPLIT_BK = 64, 64


def _over_row_splits(gb: Any, x2: Any) -> tuple[tuple[int, int], Any, int, int]:
    """The launch of a seeded weight-gradient kernel: ``(grid, partial, split_rows, br)``.

    One program a column tile of a split of the rows; the row range is cut into splits of whole
    tiles, enough that the programs fill the GPU (about 512), and each split's float32 sums go to
    its slice of ``partial`` (splits, r, cols), added after, so the result does not depend on
    scheduling."""
    import torch
    import triton

    rows, cols = x2.shape
    r = gb.shape[1]
    col_tiles = triton.cdiv(cols, _SPLIT_BK)
    splits = max(1, min(triton.cdiv(rows, _SPLIT_BM), triton.cdiv(512, col_tiles)))
    split_rows = triton.cdiv(triton.cdiv(rows, splits), _SPLIT_BM) * _SPLIT_BM
    splits = triton.cdiv(rows, split_rows)
    partial = torch.empty(splits, r, cols, device=x2.device, dtype=torch.float32)
    return (col_tiles, splits), partial, split_rows, max(16, triton.next_power_of_2(r))


def seeded_dropout_da(gb: Any, x2: Any, seed: int, p: float) -> Any:
    """``gb^T @ dropout(x2)`` (r, cols) in float32, the dropout the forward drew from ``seed``, kept
    elements scaled as :func:`seeded_dropout_xa` scales them."""
    from flywheel_trainer import lora_kernels

    (rows, cols), r = x2.shape, gb.shape[1]
    grid, partial, split_rows, br = _over_row_splits(gb, x2)
    lora_kernels.dropout_da[grid](
        gb.contiguous(),
        x2,
        partial,
        rows,
        cols,
        r,
        seed,
        lora_kernels.threshold(p),
        split_rows,
        bm=_SPLIT_BM,
        bk=_SPLIT_BK,
        br=br,
        rounds=lora_kernels.PHILOX_ROUNDS,
    )
    return partial.sum(0).mul_(lora_kernels.keep_scale(p))


def seeded_dropout_backward(gb: Any, x2: Any, a: Any, d_x: Any, seed: int, p: float) -> Any:
    """The adapter's backward under the seeded dropout, in one kernel: adds the branch's input
    gradient ``(gb @ a) * keep * scale`` to ``d_x`` in place (as :func:`_add_dropout_grad` with a
    seed) and returns its weight gradient ``gb^T @ dropout(x2)`` in float32 (as
    :func:`seeded_dropout_da`, the keep scale applied in the kernel), both from the keep decisions
    the forward drew from ``seed``."""
    from flywheel_trainer import lora_kernels

    (rows, cols), r = x2.shape, gb.shape[1]
    grid, partial, split_rows, br = _over_row_splits(gb, x2)
    scale = lora_kernels.keep_scale(p)
    lora_kernels.dropout_bwd[grid](
        gb.contiguous(),
        x2,
        a.to(gb.dtype).contiguous(),
        d_x,
        partial,
        rows,
        cols,
        r,
        seed,
        lora_kernels.threshold(p),
        scale,
        split_rows,
        bm=_SPLIT_BM,
        bk=_SPLIT_BK,
        br=br,
        rounds=lora_kernels.PHILOX_ROUNDS,
    )
    return partial[0] if grid[1] == 1 else partial.sum(0)


def seeded_dropout_keep(rows: int, cols: int, seed: int, p: float, device: Any) -> Any:
    """The keep decisions the seeded kernels make for a (rows, cols) input: a bool tensor."""
    import torch
    import triton

    from flywheel_trainer import lora_kernels

    out = torch.empty(rows, cols, device=device, dtype=torch.uint8)
    bm, bk = 32, 64
    lora_kernels.dropout_keep[(triton.cdiv(rows, bm), triton.cdiv(cols, bk))](
        out, rows, cols, seed, lora_kernels.threshold(p), bm=bm, bk=bk, rounds=lora_kernels.PHILOX_ROUNDS
    )
    return out.bool()


def _branch_forward(x2: Any, a: Any, p: float) -> tuple[Any, Any, Any, int | None]:
    """The adapter branch's first half: ``(xd, mask, xa, seed)``, where ``xa = dropout(x2) @ a^T``.

    Under the seeded dropout ``xd`` is ``x2`` itself, ``mask`` is None and ``seed`` is what the
    kernels drew from; otherwise ``seed`` is None, and with ``p > 0`` ``xd`` is the dropped-out copy
    and ``mask`` its keep mask (with ``p == 0``, ``x2`` and None)."""
    import torch

    if p > 0.0 and _seeded(x2, a.shape[0]):
        # The dropout inside the adapter's kernels: no dropped-out copy, no mask.
        seed = _draw_seed()
        return x2, None, seeded_dropout_xa(x2, a, seed, p), seed
    if p > 0.0:
        xd, mask = torch.native_dropout(x2, p, True)
    else:
        xd, mask = x2, None
    return xd, mask, xd @ a.t(), None


def _branch_backward(
    gb: Any, xd: Any, mask: Any, a: Any, d_x: Any, seed: int | None, p: float, want_a: bool
) -> Any:
    """The adapter branch's backward from ``gb = s * dY @ B`` (N, r): adds its input gradient to
    ``d_x`` in place (when ``d_x`` is not None) and returns A's gradient in float32 when
    ``want_a`` (else None). ``xd``, ``mask`` and ``seed`` are :func:`_branch_forward`'s; ``gb`` and
    ``d_x`` may be column slices of a wider matrix (a grouped layer's, :func:`grouped_lora_function`)."""
    if seed is not None and d_x is not None and want_a and SEEDED_ONE_PASS_BACKWARD and d_x.is_contiguous():
        # xd is the input itself: one kernel drops it again for both gradients (its d_x is a whole
        # matrix; a grouped layer's column slice takes the two kernels below)
        return seeded_dropout_backward(gb, xd, a, d_x, seed, p)
    d_a = None
    if want_a:
        if seed is not None:  # xd is the input itself: the kernel drops it again
            d_a = seeded_dropout_da(gb, xd, seed, p)
        else:
            d_a = gb.t() @ xd
    if d_x is not None and seed is not None:
        from flywheel_trainer.lora_kernels import keep_scale

        _add_dropout_grad(d_x, gb, a, None, keep_scale(p), seed=seed, p=p)
    elif d_x is not None and mask is None:
        d_x.addmm_(gb, a)
    elif d_x is not None:
        _add_dropout_grad(d_x, gb, a, mask, 1.0 / (1.0 - p))
    return d_a


def _layer_output(x2: Any, x: Any, weight: Any, bias: Any, b: Any, xa: Any, scaling: float, fp8: Any) -> Any:
    """``x2 W^T + bias + s xa B^T`` in ``b``'s dtype (the compute dtype): the base product (in FP8
    where ``fp8``, :mod:`flywheel_trainer.fp8`), then the adapter's added by its matmul."""
    import torch

    dtype = b.dtype
    if fp8 is not None:  # the frozen base in FP8, the adapter in `dtype`
        y = fp8.forward(x2, x).to(dtype)
        if bias is not None:
            y.add_(bias.to(y.dtype))
    else:
        w = weight.to(dtype)
        y = torch.addmm(bias.to(dtype), x2, w.t()) if bias is not None else x2 @ w.t()
    return y.addmm_(xa, b.t(), alpha=scaling)


def _base_input_grad(g: Any, weight: Any, fp8: Any, into: Any = None) -> Any:
    """``dY W`` (in FP8 where ``fp8``) in ``g``'s dtype, added into ``into`` when given (by the matmul
    itself where it can) and returned."""
    if fp8 is not None:
        part = fp8.backward(g).to(g.dtype)
        return part if into is None else into.add_(part)
    w = weight.to(g.dtype)
    return g @ w if into is None else into.addmm_(g, w)


@functools.cache
def fused_lora_function() -> Any:
    """``y = x W^T + b + s * dropout(x) A^T B^T`` for PEFT's LoRA ``Linear`` in one autograd node.

    Why: PEFT computes the adapter branch as five separate modules. With the adapter weights kept
    in float32 (PEFT's default, which we want for the optimizer) it first copies each adapted
    input to float32, applies dropout in float32, lets autocast copy it back to bfloat16 for the
    matmul, then scales and adds the branch's output in two more passes; the backward pass mirrors
    every copy: by our count ~40 MB of memory traffic per token for a 1.5 B model. Here the branch
    runs in the compute dtype: dropout is one kernel that also returns its mask, the adapter's
    output is added by the matmul itself (``addmm_``, scaling as its ``alpha``), and the backward
    pass computes the adapter gradients from the saved dropped-out input and the small ``x A^T``
    (N x r) with five matmuls and one fused mask-multiply-add. Same function and same parameters as PEFT's layer (the checkpoints and the
    published adapter are PEFT's own); the test compares it with PEFT's forward and backward.
    On one H200 this cut the benchmark's step time by 22% (36.8k -> 47.3k tokens/s, 16 packed
    rows, dropout 0.05; bench/RESULTS.md).
    """
    # Built once, on first use (functools.cache): importing this module must not import torch.
    import torch

    class _Fn(torch.autograd.Function):
        @staticmethod
        def forward(
            ctx: Any,
            x: Any,
            weight: Any,
            bias: Any,
            lora_a: Any,
            lora_b: Any,
            scaling: float,
            p: float,
            fp8: Any = None,
        ) -> Any:
            device = x.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
            with torch.autocast(device_type=device, enabled=False):
                x2 = x.reshape(-1, x.shape[-1]).to(dtype)
                a = lora_a.to(dtype)
                b = lora_b.to(dtype)
                xd, mask, xa, seed = _branch_forward(x2, a, p)
                y = _layer_output(x2, x, weight, bias, b, xa, scaling, fp8)
            # The adapter's compute-dtype copies (rank x features, small) are kept for the backward
            # instead of casting the float32 parameters again: two copy kernels and their host
            # overhead fewer per layer and step (392 at 1.5 B).
            ctx.save_for_backward(xd, mask, xa, weight, a, b)
            ctx.scaling, ctx.p, ctx.dtype, ctx.x_shape, ctx.x_dtype = scaling, p, dtype, x.shape, x.dtype
            ctx.fp8, ctx.a_dtype, ctx.b_dtype, ctx.seed = fp8, lora_a.dtype, lora_b.dtype, seed
            return y.view(*x.shape[:-1], y.shape[-1])

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            xd, mask, xa, weight, a, b = ctx.saved_tensors
            dtype, s = ctx.dtype, ctx.scaling
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)
            # The scaling rides in the matmuls' alpha (beta 0: `unused` is never read) instead of a
            # multiply kernel after each: fewer launches for the host to issue in the small layers.
            unused = g.new_empty(())
            gb = torch.addmm(unused, g, b, beta=0, alpha=s)  # (N, r), scaled
            d_b = None
            if ctx.needs_input_grad[4]:
                d_b = torch.addmm(unused, g.t(), xa, beta=0, alpha=s).to(ctx.b_dtype)
            d_x = _base_input_grad(g, weight, ctx.fp8) if ctx.needs_input_grad[0] else None
            d_a = _branch_backward(gb, xd, mask, a, d_x, ctx.seed, ctx.p, ctx.needs_input_grad[3])
            if d_a is not None:
                d_a = d_a.to(ctx.a_dtype)
            if d_x is not None:
                d_x = d_x.view(ctx.x_shape).to(ctx.x_dtype)
            return d_x, None, None, d_a, d_b, None, None, None

    return _Fn


# Sibling layers that read one input (q/k/v, gate/up). Autograd sums the input gradients of three
# separate q/k/v nodes with two elementwise adds, and gate/up with one, each a full pass over a
# (tokens x hidden) tensor (the 193 bf16 adds of 9.7 ms a step in the H100 profile of bench/RESULTS.md,
# seventh session, with the residual stream's); and each layer adds its adapter's product to its output
# in a pass of its own (``addmm_``: a read and a write of the output, 20.7 ms a step there, most of
# it on gate/up's 8,960-wide outputs). One node for the group instead:
#
# * "accumulate" form: each layer's forward as before; the backward's base matmuls add into one
#   input gradient (``addmm_``, the sum done in the matmul's epilogue), no elementwise adds.
# * "concat" form, for groups whose outputs are much wider than their input (gate/up): the input
#   and the adapters' ``dropout(x) A^T`` side by side, ``[x | xa_1 | xa_2]``, and each layer's base
#   weight widened to ``[W_i | 0 | s B_i]``, so one matmul writes ``x W_i^T + s xa_i B_i^T`` once.
#   The backward's ``dY_i [W_i | 0 | s B_i]`` summed over the group gives the input gradient and
#   every ``s dY_i B_i`` (the adapters' ``gb``) as column blocks of one matmul's output, so the
#   wide ``dY_i`` are read once instead of twice.

#: Sibling layer names that read the same input in the decoder blocks we train (Llama, Qwen2,
#: Mistral, Gemma and their kin). A guess only: the group checks at run time that its layers get the
#: very same input tensor (:class:`_SharedInput`), so a wrong guess costs speed, never correctness.
SHARED_INPUT_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
#: Whether :func:`fuse_lora` runs such siblings as one node (the benchmark's ``_group`` and
#: ``_nogroup`` set it). Off: on an H100 at 8 rows of 2,048 tokens (1.5 B, ninth session) it took
#: 13 ms of GPU time off a step (matmuls 172 -> 154 ms, copies 22 -> 26 ms) but no throughput
#: (51,539 tokens/s, median of 8 runs, against 51,324, median of 3): the widened weights it copied
#: twice a step added host work to a step the host already nearly paces. The weights are kept
#: widened since (:func:`_keep_widened`); measured in the tenth session, that was slower still in
#: bfloat16 (46,413 tokens/s, median of 2, against 48,700, median of 4, same machine) and 54,027 in
#: the one FP8 run (two FP8 runs ungrouped: 51,918 and 42,232), so it stays off.
GROUP_SHARED_INPUT = False
#: A group takes the concat form when its layers' outputs together are at least this many times as
#: wide as its input (and none has an FP8 base): its input and weights are copied each step, which
#: pays where the outputs' second pass it saves is much larger (gate/up: 2 x 8,960 against 1,536;
#: q/k/v at 1.5 B, 2,048 against 1,536, keeps the accumulate form).
CONCAT_MIN_RATIO = 2.0
#: Each adapter's block of the concatenated input is its rank rounded up to this many columns, so
#: every row starts 16-byte aligned in bfloat16 (what cuBLAS's fast paths want).
_CONCAT_ALIGN = 8


def _concat_offsets(cols: int, ranks: list[int]) -> list[int]:
    """Where each adapter's block starts in ``[x | xa_1 | xa_2 ...]``, and (last) the total width."""
    offsets = [cols]
    for r in ranks:
        offsets.append(offsets[-1] + -(-r // _CONCAT_ALIGN) * _CONCAT_ALIGN)
    return offsets


def _zero_widened(weight: Any, width: int, dtype: Any) -> Any:
    """``[W | 0]``: ``weight`` (out, cols) copied into the first columns of an (out, width) matrix."""
    import torch

    cols = weight.shape[1]
    w = torch.empty(weight.shape[0], width, device=weight.device, dtype=dtype)
    w[:, :cols].copy_(weight)
    w[:, cols:].zero_()
    return w


def _widened(
    i: int, weight: Any, b: Any, scaling: float, offsets: list[int], kept: Any, forward: bool
) -> Any:
    """Layer ``i``'s widened weight ``[W_i | 0 .. s B_i .. 0]`` (out, offsets[-1]) in ``b``'s dtype:
    its kept buffer where it has one that fits (the base weight lives in it, :func:`_keep_widened`;
    the forward writes ``s B_i`` into its block, the backward finds it there), else a fresh one (a
    copy of W in the forward and again in the backward)."""
    import torch

    w: Any = kept[i] if kept is not None else None
    fresh = w is None or w.dtype != b.dtype or w.shape[1] != offsets[-1]
    if fresh:
        w = _zero_widened(weight, offsets[-1], b.dtype)
    if fresh or forward:
        torch.mul(b, scaling, out=w[:, offsets[i] : offsets[i] + b.shape[1]])
    return w


def _keep_widened(members: list[Any]) -> tuple[Any, ...] | None:
    """Move each member's frozen base weight into a widened buffer ``[W_i | 0 ...]`` laid out for its
    active adapter's rank, the weight becoming a view of its first columns, so a concat-form node
    writes only ``s B_i`` each step instead of copying W twice (forward and backward): eight copy
    launches fewer a gate/up pair a step, where the H100 profile found the concat form's extra host
    work cancelling its 13 ms of saved GPU time (bench/RESULTS.md, ninth session). Memory: the
    rank's few extra columns per weight. None where a member has no single active adapter."""
    import torch

    ranks = []
    for m in members:
        if len(m.active_adapters) != 1 or m.active_adapters[0] not in m.lora_A:
            return None
        ranks.append(m.lora_A[m.active_adapters[0]].weight.shape[0])
    base = members[0].get_base_layer()
    offsets = _concat_offsets(base.in_features, ranks)
    kept = []
    with torch.no_grad():
        for m in members:
            weight = m.get_base_layer().weight
            w = _zero_widened(weight, offsets[-1], weight.dtype)
            weight.data = w[:, : offsets[0]]  # the frozen weight now lives in the buffer
            kept.append(w)
    return tuple(kept)


@functools.cache
def grouped_lora_function() -> Any:
    """Sibling LoRA layers that read one input as one autograd node (the comment above says why).

    ``apply(x, concat, kept, hyper, *params)``: ``hyper`` holds each layer's ``(scaling, p, fp8)``,
    ``params`` each layer's ``(base weight, base bias, lora_A weight, lora_B weight)`` in turn, and
    ``kept`` the concat form's widened weights (:func:`_keep_widened`) or None (fresh ones);
    returns each layer's output. Each layer keeps its own dropout draw, as PEFT's layers do, and
    the function is :func:`fused_lora_function`'s for each layer; ``test_gpu.py`` compares both
    forms with PEFT and with float64."""
    import torch

    class _GroupFn(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, x: Any, concat: bool, kept: Any, hyper: tuple[Any, ...], *params: Any) -> Any:
            ctx.set_materialize_grads(False)  # a sibling's output that nobody used has no gradient
            weights, biases, las, lbs = params[0::4], params[1::4], params[2::4], params[3::4]
            n = len(hyper)
            device = x.device.type
            dtype = (
                torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weights[0].dtype
            )
            with torch.autocast(device_type=device, enabled=False):
                x2 = x.reshape(-1, x.shape[-1]).to(dtype)
                a = [t.to(dtype) for t in las]
                b = [t.to(dtype) for t in lbs]
                branches = [_branch_forward(x2, a[i], hyper[i][1]) for i in range(n)]
                ys = []
                if concat:
                    offsets = _concat_offsets(x2.shape[1], [t.shape[0] for t in a])
                    xcat = x2.new_empty(x2.shape[0], offsets[-1])
                    xcat[:, : offsets[0]].copy_(x2)
                    for i, (_, _, xa, _) in enumerate(branches):
                        xcat[:, offsets[i] : offsets[i] + xa.shape[1]].copy_(xa)
                        if offsets[i] + xa.shape[1] < offsets[i + 1]:  # a rank that is not a multiple of 8
                            xcat[:, offsets[i] + xa.shape[1] : offsets[i + 1]].zero_()
                    for i in range(n):
                        w = _widened(i, weights[i], b[i], hyper[i][0], offsets, kept, forward=True)
                        bias = biases[i]
                        ys.append(
                            torch.addmm(bias.to(dtype), xcat, w.t()) if bias is not None else xcat @ w.t()
                        )
                    del xcat  # not kept: the backward needs x and each xa, saved below
                else:
                    for i, (_, _, xa, _) in enumerate(branches):
                        scaling, _, fp8 = hyper[i]
                        ys.append(_layer_output(x2, x, weights[i], biases[i], b[i], xa, scaling, fp8))
            ctx.save_for_backward(*(t for branch in branches for t in branch[:3]), *weights, *a, *b)
            ctx.concat, ctx.kept, ctx.hyper = concat, kept, hyper
            ctx.seeds = [branch[3] for branch in branches]
            ctx.dtype, ctx.x_shape, ctx.x_dtype = dtype, x.shape, x.dtype
            ctx.a_dtypes, ctx.b_dtypes = [t.dtype for t in las], [t.dtype for t in lbs]
            return tuple(y.view(*x.shape[:-1], y.shape[-1]) for y in ys)

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            n = len(ctx.hyper)
            saved = ctx.saved_tensors
            xds, masks, xas = saved[0 : 3 * n : 3], saved[1 : 3 * n : 3], saved[2 : 3 * n : 3]
            weights, a, b = saved[3 * n : 4 * n], saved[4 * n : 5 * n], saved[5 * n : 6 * n]
            dtype = ctx.dtype
            cols = ctx.x_shape[-1]
            live = [i for i in range(n) if grads[i] is not None]
            g = {i: grads[i].reshape(-1, grads[i].shape[-1]).to(dtype) for i in live}
            want_x = ctx.needs_input_grad[0]
            unused = xas[0].new_empty(())
            gb: dict[int, Any] = {}
            d_x = None
            if ctx.concat and live:
                # One matmul per layer into one output: the input gradient and every gb side by side.
                offsets = _concat_offsets(cols, [t.shape[0] for t in a])
                d_cat = None
                for i in live:
                    w = _widened(i, weights[i], b[i], ctx.hyper[i][0], offsets, ctx.kept, forward=False)
                    d_cat = g[i] @ w if d_cat is None else d_cat.addmm_(g[i], w)
                assert d_cat is not None
                d_x = d_cat[:, :cols] if want_x else None
                gb = {i: d_cat[:, offsets[i] : offsets[i] + a[i].shape[0]] for i in live}
            else:
                for i in live:
                    scaling, _, fp8 = ctx.hyper[i]
                    gb[i] = torch.addmm(unused, g[i], b[i], beta=0, alpha=scaling)
                    if want_x:
                        d_x = _base_input_grad(g[i], weights[i], fp8, into=d_x)
            out: list[Any] = [None, None, None, None]
            for i in range(n):
                d_a = d_b = None
                if i in gb:
                    scaling, p, _ = ctx.hyper[i]
                    if ctx.needs_input_grad[4 + 4 * i + 3]:
                        d_b = torch.addmm(unused, g[i].t(), xas[i], beta=0, alpha=scaling).to(ctx.b_dtypes[i])
                    want_a = ctx.needs_input_grad[4 + 4 * i + 2]
                    d_a = _branch_backward(gb[i], xds[i], masks[i], a[i], d_x, ctx.seeds[i], p, want_a)
                    if d_a is not None:
                        d_a = d_a.to(ctx.a_dtypes[i])
                out += [None, None, d_a, d_b]
            if d_x is not None:
                out[0] = d_x.view(ctx.x_shape).to(ctx.x_dtype)
            return tuple(out)

    return _GroupFn


class _SharedInput:
    """Sibling patched layers that may read the same input, run as one node when they do.

    The first member called with an input computes every member's output in one
    :func:`grouped_lora_function` node and keeps its siblings' outputs; a sibling called next with
    that very tensor (same object, not modified since) takes its output from there. A sibling called
    with anything else computes alone, as an ungrouped layer would, so the result never depends on
    the guess that the siblings share their input; and a group whose kept outputs go unused
    (:data:`MAX_MISSES` times: its siblings do not read one input in this model) stops grouping,
    so the guess costs at most that many wasted computations."""

    #: Kept outputs left unused this many times turn the group off.
    MAX_MISSES = 3

    def __init__(self, members: list[Any], out_features: list[int], in_features: int) -> None:
        self.members = members
        self.index = {id(m): i for i, m in enumerate(members)}
        self.concat = sum(out_features) >= CONCAT_MIN_RATIO * in_features
        self.kept: tuple[Any, ...] | None = None  # the concat form's widened weights
        self.pending: dict[int, Any] = {}
        self.x: Any = None
        self.version = -1
        self.misses = 0
        self.enabled = True
        self.calls = 0  # group computations (tests and the benchmark read it)

    def output(self, module: Any, x: Any) -> Any:
        """``module``'s output for ``x`` from the group, or None: compute it alone."""
        if not self.enabled:
            return None
        i = self.index[id(module)]
        if self.x is x and x._version == self.version and i in self.pending:
            y = self.pending.pop(i)
            if not self.pending:
                self.x = None
            return y
        if self.pending:  # the last group computation's outputs were not all taken
            self.pending, self.x = {}, None
            self.misses += 1
            if self.misses >= self.MAX_MISSES:
                self.enabled = False
                return None
        fused = [f for m in self.members if (f := _fused_args(m)) is not None]
        if len(fused) != len(self.members):  # a sibling is off the fused path (adapters off, merged...)
            return None
        hyper = tuple((f[4], f[5], f[6]) for f in fused)
        params = [t for f in fused for t in f[:4]]
        concat = self.concat and all(h[2] is None for h in hyper)
        ys = grouped_lora_function().apply(x, concat, self.kept if concat else None, hyper, *params)
        self.calls += 1
        self.pending = {j: y for j, y in enumerate(ys) if j != i}
        self.x, self.version = x, x._version
        return ys[i]


def _group_shared_inputs(model: Any) -> int:
    """Group the patched sibling layers :data:`SHARED_INPUT_GROUPS` names; returns the groups made."""
    groups = 0
    for parent in model.modules():
        children = dict(parent.named_children())
        for names in SHARED_INPUT_GROUPS:
            members = [
                children[name]
                for name in names
                if name in children
                and vars(children[name]).get("_flywheel_fused")
                and "_flywheel_group" not in vars(children[name])
            ]
            if len(members) < 2:
                continue
            bases = [m.get_base_layer() for m in members]
            if (
                len({base.in_features for base in bases}) != 1
                or len({base.weight.dtype for base in bases}) != 1
            ):
                continue
            group = _SharedInput(members, [base.out_features for base in bases], bases[0].in_features)
            if group.concat and not any("_flywheel_fp8" in vars(m) for m in members):
                group.kept = _keep_widened(members)
            for member in members:
                vars(member)["_flywheel_group"] = group
            groups += 1
    return groups


def _fused_args(module: Any) -> tuple[Any, ...] | None:
    """The fused node's arguments after ``x`` for a patched layer's active adapter, or None where
    the fused path does not apply (adapters off, as in DPO's reference pass; merged; several
    adapters active; a LoRA variant such as DoRA; a bias on B)."""
    import torch

    active = module.active_adapters
    if module.disable_adapters or module.merged or len(active) != 1:
        return None
    name = active[0]
    if name not in module.lora_A or name in module.lora_variant or module.lora_B[name].bias is not None:
        return None
    dropout = module.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    base = module.get_base_layer()
    return (
        base.weight,
        base.bias,
        module.lora_A[name].weight,
        module.lora_B[name].weight,
        float(module.scaling[name]),
        p,
        vars(module).get("_flywheel_fp8"),
    )


def _fused_forward(module: Any, plain_forward: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Forward of a patched PEFT LoRA Linear: the fused path when it applies, PEFT's otherwise; with
    its siblings in one node when they read the same input (:class:`_SharedInput`)."""
    if args or kwargs:
        return plain_forward(x, *args, **kwargs)
    fused = _fused_args(module)
    if fused is None:
        return plain_forward(x)
    group = vars(module).get("_flywheel_group")
    if group is not None:
        y = group.output(module, x)
        if y is not None:
            return y
    return fused_lora_function().apply(x, *fused)


def _takes_fp8(rows: int, cols: int) -> bool:
    """Whether a base weight of this shape gets an FP8 copy: wide enough to gain, and a multiple of 16
    in both dimensions (what the FP8 matmul needs)."""
    return min(rows, cols) >= FP8_MIN_FEATURES and rows % 16 == 0 and cols % 16 == 0


def fuse_lora(model: Any, fp8: bool = False) -> int:
    """Route every plain LoRA ``Linear`` of a PEFT model through one fused autograd node.

    The node is :func:`fused_lora_function`'s. Only layers whose base is a plain
    ``torch.nn.Linear`` (not 4-bit QLoRA layers, DoRA or other variants, nor ``fan_in_fan_out``
    layers) are patched; the others keep PEFT's forward. The parameters, state dict, checkpoints
    and saved adapter are unchanged. Returns the number of layers patched.

    With ``fp8`` (where ``fp8.supported()``: a GPU that runs PyTorch's row-wise FP8 matmul), each patched
    layer's frozen base weight also gets an FP8 copy (:class:`flywheel_trainer.fp8.Fp8Weight`)
    and its forward ``x W^T`` and backward ``dY W`` run as FP8 matmuls; layers narrower than
    :data:`FP8_MIN_FEATURES` (slower in FP8) or whose dimensions are not multiples of 16 (what the
    FP8 matmul needs) stay in bfloat16.
    """
    import torch
    from peft.tuners.lora.layer import Linear as LoraLinear

    patched = 0
    for module in model.modules():
        if type(module) is not LoraLinear or getattr(module, "_flywheel_fused", False):
            continue
        if type(module.get_base_layer()) is not torch.nn.Linear or module.fan_in_fan_out:
            continue
        # Instance attributes, as nn.Module.__setattr__ would store them: the instance's forward
        # shadows the class's, and the marker keeps a second call from patching twice.
        vars(module)["forward"] = functools.partial(_fused_forward, module, module.forward)
        vars(module)["_flywheel_fused"] = True
        weight: Any = module.get_base_layer().weight
        if fp8 and _takes_fp8(*weight.shape):
            from flywheel_trainer.fp8 import Fp8Weight

            vars(module)["_flywheel_fp8"] = Fp8Weight.of(weight)
        patched += 1
    if GROUP_SHARED_INPUT:
        _group_shared_inputs(model)
    return patched


def fp8_copy_bytes(model: Any, target_modules: list[str]) -> int:
    """GPU bytes the FP8 copies of ``fuse_lora(fp8=True)`` will take in ``model`` (before PEFT wraps it).

    Two bytes a weight (the forward's and the backward's layout, one byte each) for every targeted
    ``nn.Linear`` that :func:`fuse_lora` gives an FP8 copy; the memory plan takes them off the free
    memory (2.85 GiB more peak at 1.5 B on the H100, bench/RESULTS.md).
    """
    import torch

    targets = set(target_modules)
    total = 0
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or name.rsplit(".", 1)[-1] not in targets:
            continue
        rows, cols = module.weight.shape
        if _takes_fp8(rows, cols):
            total += 2 * rows * cols
    return total
