"""FP8 base matmuls for LoRA (``fp8.py`` and ``fuse_lora(fp8=True)``), on the CPU in CI and on a GPU.

On the CPU, ``fp8_matmul`` multiplies the very FP8 values and scales in float32 (CI has no FP8
hardware); on a Hopper GPU (device tool) it is ``torch._scaled_mm``, and the same tests compare it
with the bfloat16 layer.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HOPPER, reason="needs an FP8 GPU")]),
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    assert torch.isfinite(got).all()
    return ((got - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
def test_rows_are_quantized_to_e4m3_with_one_scale_each(device: str) -> None:
    from flywheel_trainer.fp8 import E4M3_MAX, quantize_rows

    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(33, 80, generator=gen) * torch.logspace(-3, 3, 33).unsqueeze(1)).to(
        device, torch.bfloat16
    )
    x[5] = 0.0  # an all-zero row must not divide by zero
    q, s = quantize_rows(x)
    assert (
        q.dtype == torch.float8_e4m3fn
        and q.shape == (33, 80)
        and s.shape == (33, 1)
        and s.dtype == torch.float32
    )
    amax = x.float().abs().amax(dim=1, keepdim=True)
    assert torch.allclose(s[amax > 0], (amax / E4M3_MAX)[amax > 0], rtol=1e-6)
    assert (q.float().abs().amax(dim=1) <= E4M3_MAX).all()
    back = q.float() * s
    assert torch.equal(back[5], torch.zeros(80, device=device))
    # e4m3 has a 3-bit mantissa: each element within 1/16 of itself (or of the row's tiny-value floor)
    err = (back - x.float()).abs()
    assert (err <= x.float().abs() / 16 + s * 2**-9 + 1e-30).all()
    # the CUDA kernel and the eager path agree
    if device == "cuda":
        from flywheel_trainer import fp8

        q_cpu, s_cpu = fp8.quantize_rows(x.cpu())
        assert torch.allclose(s.cpu(), s_cpu, rtol=1e-6)
        differ = q.cpu().float() != q_cpu.float()  # a division rounded differently may flip a tie
        assert differ.float().mean() < 1e-2
        assert ((q.cpu().float() - q_cpu.float()).abs()[differ] <= q_cpu.float().abs()[differ] / 8).all()


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_weight_forward_and_backward_products(device: str) -> None:
    from flywheel_trainer.fp8 import Fp8Weight

    gen = torch.Generator().manual_seed(1)
    w = (torch.randn(48, 64, generator=gen) / 8).to(device, torch.bfloat16)
    x = torch.randn(40, 64, generator=gen).to(device, torch.bfloat16)
    g = torch.randn(40, 48, generator=gen).to(device, torch.bfloat16)
    w8 = Fp8Weight.of(w)
    y, dx = w8.forward(x), w8.backward(g)
    assert y.dtype == dx.dtype == torch.bfloat16 and y.shape == (40, 48) and dx.shape == (40, 64)
    assert _rel(y, x.double() @ w.double().t()) < 0.06
    assert _rel(dx, g.double() @ w.double()) < 0.06
    assert _rel(y, x.double() @ w.double().t()) > 1e-4  # it really is rounded to FP8


def test_a_shared_input_is_quantized_once_and_again_after_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel_trainer import fp8

    calls = []
    real = fp8.quantize_rows
    monkeypatch.setattr(fp8, "quantize_rows", lambda t: calls.append(t.shape) or real(t))
    fp8._LastInput.clear()
    w1, w2 = fp8.Fp8Weight.of(torch.randn(16, 32)), fp8.Fp8Weight.of(torch.randn(32, 32))
    x = torch.randn(2, 3, 32)
    calls.clear()  # (the weights' own quantisation)
    y1 = w1.forward(x.reshape(-1, 32), x)
    w2.forward(x.reshape(-1, 32), x)  # same input (q, k, v): no new quantisation
    assert len(calls) == 1
    x.mul_(2.0)  # changed in place: quantised again, and the product follows
    y1_again = w1.forward(x.reshape(-1, 32), x)
    assert len(calls) == 2 and _rel(y1_again, 2 * y1.double()) < 1e-2
    other = x.clone()  # another tensor with equal values is not assumed equal
    w1.forward(other.reshape(-1, 32), other)
    assert len(calls) == 3
    fp8._LastInput.clear()


@pytest.mark.parametrize("device", DEVICES)
def test_a_model_with_fp8_base_matmuls_trains_like_bf16(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loss and LoRA gradients of a small Qwen2 with FP8 base matmuls are close to, not equal to, bf16's."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from flywheel_trainer import fused_lora
    from flywheel_trainer.fused_lora import fuse_lora

    monkeypatch.setattr(fused_lora, "FP8_MIN_FEATURES", 16)  # this model's layers are 64-96 wide

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = Qwen2ForCausalLM(config).to(device, torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(1)).to(device)

    def step() -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.eval()
    assert fuse_lora(model) == 2 * len(TARGETS)
    loss_bf16, grads_bf16 = step()
    for module in model.modules():  # the same layers, now with FP8 copies of their base weights
        vars(module).pop("_flywheel_fused", None)
    assert fuse_lora(model, fp8=True) == 2 * len(TARGETS)
    assert sum("_flywheel_fp8" in vars(m) for m in model.modules()) == 2 * len(TARGETS)
    loss_fp8, grads_fp8 = step()
    assert loss_fp8 != loss_bf16  # FP8 really ran
    assert abs(loss_fp8 - loss_bf16) < 0.02 * loss_bf16
    assert grads_fp8.keys() == grads_bf16.keys() and len(grads_fp8) == 4 * len(TARGETS)
    for name, grad in grads_bf16.items():
        assert _rel(grads_fp8[name], grad) < 0.15, name


def test_narrow_layers_keep_bf16_base_matmuls() -> None:
    """Under fp8, only layers at least FP8_MIN_FEATURES wide get FP8 copies (k/v projections were slower in FP8)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from flywheel_trainer.fused_lora import FP8_MIN_FEATURES, fp8_copy_bytes, fuse_lora

    config = Qwen2Config(
        vocab_size=64,
        hidden_size=FP8_MIN_FEATURES,
        intermediate_size=FP8_MIN_FEATURES + 16,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=1,  # k/v project to 128 features
        max_position_embeddings=32,
    )
    base = Qwen2ForCausalLM(config)
    wide = FP8_MIN_FEATURES * FP8_MIN_FEATURES
    # q and o (1024 x 1024), gate and up (1024 x 1040 each), down (1040 x 1024): two bytes a weight
    expected = 2 * (2 * wide + 3 * (FP8_MIN_FEATURES + 16) * FP8_MIN_FEATURES)
    assert fp8_copy_bytes(base, TARGETS) == expected
    assert fp8_copy_bytes(base, ["k_proj", "v_proj"]) == 0
    model = get_peft_model(base, LoraConfig(r=4, target_modules=TARGETS, task_type="CAUSAL_LM"))
    assert fuse_lora(model, fp8=True) == len(TARGETS)
    with_fp8 = sorted(n.rsplit(".", 1)[-1] for n, m in model.named_modules() if "_flywheel_fp8" in vars(m))
    assert with_fp8 == ["down_proj", "gate_proj", "o_proj", "q_proj", "up_proj"]


def test_fp8_is_offered_only_where_a_trial_matmul_runs() -> None:
    from flywheel_trainer import fp8

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        assert fp8.supported() is False  # no FP8 hardware (CI: no GPU at all)
    elif torch.cuda.get_device_capability() >= (9, 0):
        assert fp8.supported() is True  # Hopper runs PyTorch's row-wise FP8 matmul
    else:  # Ada: whichever PyTorch's build says, supported() must answer without raising
        assert isinstance(fp8.supported(), bool)
