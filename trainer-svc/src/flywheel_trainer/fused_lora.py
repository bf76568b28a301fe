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
        d_x.is_cuda and DROPOUT_GRAD_KERNEL and d_x.is_contiguous() and mask.is_contiguous()
    ):
        import triton

        from flywheel_trainer import lora_kernels

        rows, cols = d_x.shape
        r = gb.shape[1]
        gb, a = gb.contiguous(), a.to(gb.dtype).contiguous()
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
                seed = None
                if p > 0.0 and _seeded(x2, a.shape[0]):
                    # The dropout inside the adapter's kernels: no dropped-out copy, no mask.
                    seed = _draw_seed()
                    xd, mask = x2, None
                    xa = seeded_dropout_xa(x2, a, seed, p)
                else:
                    if p > 0.0:
                        xd, mask = torch.native_dropout(x2, p, True)
                    else:
                        xd, mask = x2, None
                    xa = xd @ a.t()
                if fp8 is not None:  # the frozen base in FP8 (fp8.py), the adapter in `dtype`
                    y = fp8.forward(x2, x).to(dtype)
                    if bias is not None:
                        y.add_(bias.to(y.dtype))
                else:
                    w = weight.to(dtype)
                    y = torch.addmm(bias.to(dtype), x2, w.t()) if bias is not None else x2 @ w.t()
                y.addmm_(xa, b.t(), alpha=scaling)
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
            d_a = d_x = None
            if ctx.needs_input_grad[0]:
                d_x = ctx.fp8.backward(g).to(dtype) if ctx.fp8 is not None else g @ weight.to(dtype)
            if (
                ctx.seed is not None
                and d_x is not None
                and ctx.needs_input_grad[3]
                and SEEDED_ONE_PASS_BACKWARD
            ):
                # xd is the input itself: one kernel drops it again for both gradients
                d_a = seeded_dropout_backward(gb, xd, a, d_x, ctx.seed, ctx.p).to(ctx.a_dtype)
            else:
                if ctx.needs_input_grad[3]:
                    if ctx.seed is not None:  # xd is the input itself: the kernel drops it again
                        d_a = seeded_dropout_da(gb, xd, ctx.seed, ctx.p).to(ctx.a_dtype)
                    else:
                        d_a = (gb.t() @ xd).to(ctx.a_dtype)
                if d_x is not None and ctx.seed is not None:
                    from flywheel_trainer.lora_kernels import keep_scale

                    _add_dropout_grad(d_x, gb, a, None, keep_scale(ctx.p), seed=ctx.seed, p=ctx.p)
                elif d_x is not None and mask is None:
                    d_x.addmm_(gb, a)
                elif d_x is not None:
                    _add_dropout_grad(d_x, gb, a, mask, 1.0 / (1.0 - ctx.p))
            if d_x is not None:
                d_x = d_x.view(ctx.x_shape).to(ctx.x_dtype)
            return d_x, None, None, d_a, d_b, None, None, None

    return _Fn


def _fused_forward(module: Any, plain_forward: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """Forward of a patched PEFT LoRA Linear: the fused path when it applies, PEFT's otherwise."""
    import torch

    active = module.active_adapters
    if args or kwargs or module.disable_adapters or module.merged or len(active) != 1:
        return plain_forward(x, *args, **kwargs)  # DPO's reference pass (adapters off), merges, mixes
    name = active[0]
    if name not in module.lora_A or name in module.lora_variant or module.lora_B[name].bias is not None:
        return plain_forward(x)
    dropout = module.lora_dropout[name]
    p = float(dropout.p) if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    base = module.get_base_layer()
    return fused_lora_function().apply(
        x,
        base.weight,
        base.bias,
        module.lora_A[name].weight,
        module.lora_B[name].weight,
        float(module.scaling[name]),
        p,
        vars(module).get("_flywheel_fp8"),
    )


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
