"""flywheel_trainer.token_logps against log_softmax-then-gather on the full logits (CPU, real torch).

float64 makes the comparison exact up to rounding, so a wrong term in the hand-written backward
shows; the slice size is chosen so that slices split rows unevenly.
"""

from __future__ import annotations

import pytest
import torch

from flywheel_trainer.token_logps import head_returns_hidden, plain_head, slice_tokens, token_logps


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_log_probs_entropy_and_every_gradient_match_the_full_logits(temperature: float, chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 97, bias=True).double()
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    target = torch.randint(0, 97, (3, 7), generator=gen)
    weights = torch.randn(3, 7, dtype=torch.float64, generator=gen)

    logps, entropy = token_logps(
        hidden, head, target, temperature=temperature, entropy=True, chunk_tokens=chunk
    )
    (logps * weights).sum().backward()
    got = [hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()]
    hidden.grad = None
    head.zero_grad()

    z = head(hidden) / temperature
    want = z.log_softmax(-1).gather(-1, target[..., None])[..., 0]
    (want * weights).sum().backward()
    want_entropy = -(z.softmax(-1) * z.log_softmax(-1)).sum(-1)

    assert logps.dtype == torch.float64 and logps.shape == target.shape
    torch.testing.assert_close(logps, want.detach(), rtol=0, atol=1e-12)
    assert entropy is not None and not entropy.requires_grad
    torch.testing.assert_close(entropy, want_entropy.detach(), rtol=0, atol=1e-12)
    for g, w in zip(got, [hidden.grad, head.weight.grad, head.bias.grad], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-12)


def test_bf16_autocast_and_bf16_weights() -> None:
    """Under CPU bf16 autocast (the worker's mode on AVX-512 BF16 machines) the head's matmul runs
    in bf16 as the model's own would, and the log-probs come back float32; a bf16 model without
    autocast gets bf16 gradients for its bf16 hidden states."""
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(16, 97, bias=False).requires_grad_(False)
    hidden = torch.randn(2, 5, 16, generator=gen, requires_grad=True)
    target = torch.randint(0, 97, (2, 5), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = token_logps(hidden, head, target, chunk_tokens=3)
        want = head(hidden).float().log_softmax(-1).gather(-1, target[..., None])[..., 0]
    logps.sum().backward()
    got = hidden.grad.clone()
    hidden.grad = None
    want.sum().backward()
    assert logps.dtype == torch.float32
    torch.testing.assert_close(logps, want.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, hidden.grad, rtol=1e-2, atol=1e-3)

    bf16 = head.to(torch.bfloat16)
    h16 = torch.randn(2, 5, 16, generator=gen).to(torch.bfloat16).requires_grad_()
    out, _ = token_logps(h16, bf16, target)
    out.sum().backward()
    assert out.dtype == torch.float32 and h16.grad is not None and h16.grad.dtype == torch.bfloat16


def test_which_heads_it_stands_in_for() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    model = LlamaForCausalLM(config)
    head = plain_head(model)
    assert head is model.lm_head
    ids = torch.tensor([[1, 2, 3]])
    with head_returns_hidden(head) as call:
        hidden = model(ids).logits
    assert hidden.shape == (1, 3, 16)  # the final hidden states, not (1, 3, 64) logits
    assert call.autocast is not None and call.autocast[1] is False
    with torch.autocast("cpu", dtype=torch.bfloat16), head_returns_hidden(head) as inside:
        model(ids)
    assert inside.autocast == ("cpu", True, torch.bfloat16)  # what the model's forward ran under
    assert model(ids).logits.shape == (1, 3, 64)  # the head is itself again afterwards
    torch.testing.assert_close(head(hidden), model(ids).logits)

    model.config.final_logit_softcapping = 30.0  # Gemma 2 transforms the logits after the head
    assert plain_head(model) is None
    model.config.final_logit_softcapping = None
    model.lm_head = torch.nn.Sequential(model.lm_head)  # not a plain Linear (a LoRA-wrapped head is not)
    assert plain_head(model) is None
    assert slice_tokens(151_936) == 441 and slice_tokens(10**9) == 1
