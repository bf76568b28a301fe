"""FP8 (e4m3) matmuls for the frozen base weights of a LoRA step, on Hopper GPUs.

A LoRA step never updates the base weights, so each one is quantised to FP8 once, with one scale
per output channel for the forward ``x W^T`` and one per input channel for the backward ``dY W``
(:class:`Fp8Weight`); the activations and incoming gradients are quantised per row on every call
(:func:`quantize_rows`). The matmul is ``torch._scaled_mm`` with row-wise scales, accumulating in
float32 and writing bfloat16. The LoRA adapters, their gradients and the optimizer stay in
bfloat16/float32: only the frozen part of the arithmetic is rounded to FP8.

Why not a library: torchao's float8 training converts ``nn.Linear`` modules and re-quantises the
weight every step (it assumes the weight trains); transformer-engine replaces the modules with
its own. Neither plugs into PEFT's LoRA layer, whose base ``Linear`` must stay a plain module for
its checkpoints and merges. What is ours is the ~60 lines below; the matmul is PyTorch's.

Off CUDA (CI, the CPU tests) :func:`fp8_matmul` computes the same product from the FP8 values in
float32, so the quantisation's effect on training is testable without a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

#: Largest finite float8_e4m3fn value.
E4M3_MAX = 448.0


@functools.cache
def supported() -> bool:
    """Whether this process can run FP8 matmuls with row-wise scales on its GPU.

    Compute capability 8.9 or more is necessary but not enough: which GPUs PyTorch's row-wise
    ``_scaled_mm`` runs on depends on its build (Hopper is where it was measured). So this tries one
    small product on the device, once, and says no if PyTorch refuses it, instead of failing a job
    at its first step.
    """
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        return False
    try:
        a = torch.ones(16, 32, device="cuda").to(torch.float8_e4m3fn)
        b = torch.ones(16, 32, device="cuda").to(torch.float8_e4m3fn)
        one = torch.ones(16, 1, device="cuda")
        out = fp8_matmul(a, one, b, one)
        return bool(torch.isclose(out.float(), torch.full_like(out.float(), 32.0)).all())
    except (RuntimeError, NotImplementedError):
        return False


@functools.cache
def _triton_quantize() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def _kernel(x_ptr, q_ptr, s_ptr, cols, stride, block: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, block)
        keep = offs < cols
        x = tl.load(x_ptr + row * stride + offs, mask=keep, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-12) / 448.0
        tl.store(q_ptr + row * cols + offs, (x / scale).to(tl.float8e4nv), mask=keep)
        tl.store(s_ptr + row, scale)

    return _kernel


def quantize_rows(x: Any) -> tuple[Any, Any]:
    """``x`` (M, K) as float8_e4m3fn values and float32 scales (M, 1), one per row: ``x ~ q * s``.

    One Triton kernel on CUDA (reads ``x`` once, writes one byte an element); eager PyTorch
    elsewhere. The scale maps the row's largest magnitude to 448, e4m3's largest finite value.
    """
    import torch

    if x.is_cuda and x.stride(-1) == 1:
        import triton

        rows, cols = x.shape
        q = torch.empty((rows, cols), device=x.device, dtype=torch.float8_e4m3fn)
        s = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
        block = triton.next_power_of_2(cols)
        _triton_quantize()[(rows,)](
            x, q, s, cols, x.stride(0), block=block, num_warps=8 if block >= 4096 else 4
        )
        return q, s
    xf = x.float()
    s = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (xf / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), s


def fp8_matmul(aq: Any, a_scale: Any, bq: Any, b_scale: Any, fast_accum: bool = False) -> Any:
    """``(aq * a_scale) @ (bq * b_scale)^T`` in bfloat16: ``aq`` (M, K) and ``bq`` (N, K) row-major FP8.

    ``a_scale`` is (M, 1) and ``b_scale`` (N, 1), float32. On CUDA this is one ``torch._scaled_mm``
    (``bq`` transposed is the column-major operand it wants, without a copy).
    """
    import torch

    if aq.is_cuda:
        return torch._scaled_mm(
            aq,
            bq.t(),
            scale_a=a_scale,
            scale_b=b_scale.view(1, -1),
            out_dtype=torch.bfloat16,
            use_fast_accum=fast_accum,
        )
    return ((aq.float() * a_scale) @ (bq.float() * b_scale).t()).to(torch.bfloat16)


class _LastInput:
    """The last input quantised by a forward, kept so q/k/v (and gate/up), which share one input, quantise it once.

    Holds a reference to that input (so its storage cannot be reused under the same key) until
    the next forward quantises another; ``_version`` changes on any in-place write to it.
    """

    tensor: Any = None
    version: int = -1
    value: tuple[Any, Any] | None = None

    @classmethod
    def quantized(cls, x: Any, x2: Any) -> tuple[Any, Any]:
        if x is cls.tensor and x._version == cls.version and cls.value is not None:
            return cls.value
        cls.tensor, cls.version, cls.value = None, -1, None  # drop the old reference first
        value = quantize_rows(x2)
        cls.tensor, cls.version, cls.value = x, x._version, value
        return value

    @classmethod
    def clear(cls) -> None:
        cls.tensor, cls.version, cls.value = None, -1, None


@dataclass(frozen=True)
class Fp8Weight:
    """A frozen weight ``W`` (N, K) in FP8 twice: rows of ``W`` for the forward, rows of ``W^T`` for the backward."""

    forward_q: Any  # (N, K) float8_e4m3fn
    forward_s: Any  # (N, 1) float32
    backward_q: Any  # (K, N) float8_e4m3fn
    backward_s: Any  # (K, 1) float32

    @classmethod
    def of(cls, weight: Any) -> Fp8Weight:
        import torch

        with torch.no_grad():
            w = weight.detach()
            fq, fs = quantize_rows(w.contiguous())
            bq, bs = quantize_rows(w.t().contiguous())
        return cls(fq, fs, bq, bs)

    def forward(self, x2: Any, x: Any = None) -> Any:
        """``x2 W^T`` (x2: (M, K), bfloat16; ``x``, when given, the layer input ``x2`` was reshaped from).

        With ``x``, a layer that receives the same input tensor as the previous one (q, k and v
        do; gate and up do) reuses its quantisation instead of making it again.
        """
        xq = _LastInput.quantized(x, x2) if x is not None else quantize_rows(x2)
        return fp8_matmul(*xq, self.forward_q, self.forward_s, fast_accum=True)

    def backward(self, g: Any) -> Any:
        """``g W`` (g: (M, N), bfloat16), the gradient of the input."""
        return fp8_matmul(*quantize_rows(g), self.backward_q, self.backward_s)
