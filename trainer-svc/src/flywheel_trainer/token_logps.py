"""Per-token log-probs through the LM head, a slice of tokens at a time.

RL and preference losses need ``log p(token)`` for every completion token. Computed the usual
way (TRL's ``_get_per_token_logps_and_entropies``), the model returns a ``(rows, tokens, vocab)``
logits tensor, and autograd keeps it, its temperature-scaled copy and the log-softmax of every row
until the backward. At Qwen2's 151,936-entry vocabulary that is about 0.6 MB a token in bf16 per
copy: the GRPO benchmark's 8-sample step ran out of memory on an 80 GB card because of it.

:func:`token_logps` takes the final hidden states instead and runs the LM head over
``chunk_tokens`` tokens at a time. Each slice's logits live only while that slice's log-probs
(and, without gradient, entropies) are taken; the backward recomputes them slice by slice. What
autograd keeps is the hidden states, which the model keeps anyway. Peak extra memory is one slice
of float32 logits instead of several copies of all of them, for one more LM-head matmul.

Liger's ``LigerFusedLinearGRPOLoss`` fuses the same idea with the whole GRPO loss, but it is
Triton (GPU only, so our CPU tests and CPU jobs could not run it) and it replaces TRL's loss and
metrics path, which :mod:`flywheel_trainer.grpo` keeps. This keeps the loss TRL's and changes only
how the log-probs are obtained.

:func:`head_returns_hidden` is how the hidden states are obtained without bypassing the model's
own forward (which DDP's gradient sync needs): for the duration, the LM head module returns its
input, so ``outputs.logits`` are the final hidden states at the positions the model kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

#: float32 logits per slice: 2**26 entries = 256 MiB, ~440 tokens at a 152k vocabulary.
SLICE_LOGITS = 2**26


def slice_tokens(vocab_size: int, budget: int = SLICE_LOGITS) -> int:
    """Tokens per slice so that one slice's float32 logits stay within ``budget`` entries."""
    return max(1, budget // max(1, vocab_size))


def plain_head(model: Any) -> torch.nn.Linear | None:
    """The model's LM head if :func:`token_logps` can stand in for it, else None.

    It can when the head is a plain ``nn.Linear`` (not a LoRA-wrapped or quantised one, whose
    output is more than ``x @ W.T + b``) and the model applies nothing to the logits after it
    (Gemma 2's final soft-capping does).
    """
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear:
        return None
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    if getattr(text, "final_logit_softcapping", None):
        return None
    return head


@dataclass
class HeadCall:
    """What :func:`head_returns_hidden` saw when the model called its head: the autocast state
    (device type, enabled, dtype) inside the model's forward, which Accelerate's mixed precision
    enters there and not around it. :func:`token_logps` runs the head's matmul under it."""

    autocast: tuple[str, bool, torch.dtype] | None = None


@contextlib.contextmanager
def head_returns_hidden(head: torch.nn.Module) -> Iterator[HeadCall]:
    """While inside, ``head(x)`` returns ``x``: the model's ``logits`` are its final hidden states."""
    call = HeadCall()

    def identity(x: torch.Tensor) -> torch.Tensor:
        call.autocast = _autocast_state(x.device.type)
        return x

    head.forward = identity  # an instance attribute shadows the method
    try:
        yield call
    finally:
        del head.forward


class _TokenLogps(torch.autograd.Function):
    """log p(target) (and, with no gradient, the entropy) of ``hidden @ W.T + b``, sliced."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,  # (N, H)
        weight: torch.Tensor,  # (V, H)
        bias: torch.Tensor | None,
        target: torch.Tensor,  # (N,)
        temperature: float,
        chunk: int,
        entropy: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        out = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        logps = torch.empty(n, dtype=out, device=hidden.device)
        ents = torch.empty(n if entropy else 0, dtype=out, device=hidden.device)
        lses = torch.empty(n, dtype=out, device=hidden.device)  # kept: the backward's softmax needs it
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            logits = _logits(hidden[start:end], weight, bias, temperature)
            lse = lses[start:end]
            torch.logsumexp(logits, dim=-1, out=lse)
            logps[start:end] = logits.gather(-1, target[start:end, None])[:, 0] - lse
            if entropy:  # H = logsumexp(z) - sum(softmax(z) * z), one slice-sized temporary
                ents[start:end] = lse - (logits - lse[:, None]).exp_().mul_(logits).sum(-1)
            del logits
        ctx.save_for_backward(hidden, weight, bias, target, lses)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.autocast = _autocast_state(hidden.device.type)
        ctx.mark_non_differentiable(ents)
        return logps, ents

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor, _grad_ents: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, target, lses = ctx.saved_tensors
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if want_h else None  # every slice's rows are written
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32  # W's and b's sums
        grad_w = torch.zeros_like(weight, dtype=acc) if want_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if want_b and bias is not None else None
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for start in range(0, hidden.shape[0], ctx.chunk):
                end = min(start + ctx.chunk, hidden.shape[0])
                h = hidden[start:end]
                # d log p(t) / dz = onehot(t) - softmax(z); z = (h W^T + b) / T. The softmax is
                # taken in place from the forward's logsumexp: one slice of logits at a time.
                grad = _logits(h, weight, bias, ctx.temperature).sub_(lses[start:end, None]).exp_().neg_()
                rows = torch.arange(end - start, device=grad.device)
                grad[rows, target[start:end]] += 1.0
                grad.mul_(grad_logps[start:end, None] / ctx.temperature)
                # Under the forward's autocast the matmuls cast for themselves; without it, to W's dtype.
                g = grad if enabled else grad.to(weight.dtype)
                del grad
                if grad_h is not None:
                    grad_h[start:end] = (g @ weight).to(grad_h.dtype)
                if grad_w is not None:
                    grad_w += (g.t() @ (h if enabled else h.to(weight.dtype))).to(acc)
                if grad_b is not None:
                    grad_b += g.to(acc).sum(0)
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None else None,
            None,
            None,
            None,
            None,
        )


def _logits(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """One slice's logits in float32 (float64 stays), the matmul in the dtype autocast or W give."""
    if h.dtype != weight.dtype and not torch.is_autocast_enabled(h.device.type):
        h = h.to(weight.dtype)
    logits = F.linear(h, weight, bias)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return logits.div_(temperature) if temperature != 1.0 else logits  # a fresh tensor: in place


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    enabled = torch.is_autocast_enabled(device_type)
    return device_type, enabled, torch.get_autocast_dtype(device_type)


def token_logps(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    chunk_tokens: int | None = None,
    autocast: tuple[str, bool, torch.dtype] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log p(target), entropy or None) per position, shaped like ``target``: float32 (float64
    for float64 hidden states), whatever the model's dtype.

    ``hidden`` is ``(..., H)`` (the final hidden states at the positions that predict
    ``target``); the entropy is computed without gradient, as TRL does when no entropy bonus is
    trained. ``chunk_tokens`` defaults to :func:`slice_tokens` of the head's vocabulary.
    ``autocast`` (a :class:`HeadCall`'s) is the autocast to run the head under; default: the
    caller's.
    """
    shape = target.shape
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_t = target.reshape(-1)
    chunk = chunk_tokens or slice_tokens(head.weight.shape[0])
    ambient = (
        contextlib.nullcontext()
        if autocast is None
        else torch.autocast(autocast[0], dtype=autocast[2], enabled=autocast[1])
    )
    with ambient:
        logps, ents = _TokenLogps.apply(
            flat_h, head.weight, head.bias, flat_t, float(temperature), chunk, entropy
        )
    return logps.view(shape), ents.view(shape) if entropy else None
