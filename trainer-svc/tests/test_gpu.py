"""The trainer's CUDA path: its fused LoRA layer (CPU and GPU) and real jobs on a GPU.

* ``test_fused_lora_*``: the fused LoRA layer that the worker puts in place of PEFT's on a GPU
  (``fused_lora.fuse_lora``) against float64 arithmetic and against PEFT's own layers. They run on the
  CPU in CI (float32) and again on a GPU (bfloat16 under autocast, as in training).
* ``test_jobs_on_a_gpu_through_the_service``: the production path on a GPU: a real gRPC service and
  nats-server, ``CreateFineTuneJob`` for SFT with LoRA, SFT with QLoRA and DPO on a randomly
  initialised 1.45 B-parameter Qwen2-style model, each job in its own worker process, each adapter
  published to the object store.
* ``test_bench_variant_trains_on_a_large_model``: the benchmark's variants for a few steps.

CI has no GPU, so the gpu-marked tests are skipped there; they run on the device tool's GPU machine
(``bench/RESULTS.md`` has the command and the last outcome).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

CUDA = torch.cuda.is_available()
needs_gpu = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)"),
]
DEVICES = ["cpu", pytest.param("cuda", marks=needs_gpu)]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sft_gpu.py"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double().reshape(ref.shape), ref.detach().double()
    assert torch.isfinite(got).all()
    return ((got - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("p", [0.0, 0.1])
@pytest.mark.parametrize(
    ("device", "low"),
    [
        ("cpu", torch.float32),
        ("cpu", torch.bfloat16),  # the GPU's dtypes, on a CPU: the adapters' bf16 copies are made
        pytest.param("cuda", torch.bfloat16, marks=needs_gpu),  # PyTorch's dropout and its mask
        pytest.param("cuda-seeded", torch.bfloat16, marks=needs_gpu),  # dropout drawn in the kernels
        pytest.param("cuda-seeded-1pass", torch.bfloat16, marks=needs_gpu),  # and its one-pass backward
    ],
)
def test_fused_lora_layer_matches_float64(
    device: str, low: torch.dtype, p: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output and the gradients of input, A and B against float64 with the very dropout mask drawn.

    ``low`` is the base weights' and activations' dtype; the adapters stay float32, as PEFT keeps them."""
    from flywheel_trainer import fused_lora
    from flywheel_trainer.fused_lora import fused_lora_function

    seeded = device.startswith("cuda-seeded")
    if device.startswith("cuda"):
        monkeypatch.setattr(fused_lora, "DROPOUT_IN_KERNELS", seeded)
        monkeypatch.setattr(fused_lora, "SEEDED_ONE_PASS_BACKWARD", device.endswith("1pass"))
        device = "cuda"

    gen = torch.Generator().manual_seed(int(p * 10))
    n_in, n_out, rank, scaling = 64, 48, 8, 2.0
    x = torch.randn(3, 5, n_in, generator=gen).to(device, low).requires_grad_()
    weight = (torch.randn(n_out, n_in, generator=gen) / 8).to(device, low)
    bias = torch.randn(n_out, generator=gen).to(device, low)
    a = (
        (torch.randn(rank, n_in, generator=gen) / 8).to(device).requires_grad_()
    )  # float32, as PEFT keeps them
    b = (torch.randn(n_out, rank, generator=gen) / 8).to(device).requires_grad_()
    grad_y = torch.randn(3, 5, n_out, generator=gen).to(device, low)

    torch.manual_seed(123)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=low == torch.bfloat16):
        y = fused_lora_function().apply(x, weight, bias, a, b, scaling, p)
    y.backward(grad_y)
    keep = torch.ones(15, n_in, dtype=torch.bool, device=device)
    if p:
        torch.manual_seed(123)  # the layer's dropout is the first draw after the seed: draw it again
        if seeded:
            keep = fused_lora.seeded_dropout_keep(15, n_in, fused_lora._draw_seed(), p, device)
        else:
            _, keep = torch.native_dropout(x.detach().reshape(15, n_in), p, True)
        assert 0 < (~keep).sum() < 15 * n_in * 3 * p

    x64 = x.detach().double().requires_grad_()
    a64 = a.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_()
    flat = x64.reshape(15, n_in)
    if seeded and p:
        from flywheel_trainer.lora_kernels import keep_scale

        dropped = flat * keep.double() * keep_scale(p)  # p rounded to 2**-16 (lora_kernels)
    else:
        dropped = flat * keep.double() / (1 - p)
    ref = flat @ weight.double().t() + bias.double() + scaling * (dropped @ a64.t()) @ b64.t()
    ref.backward(grad_y.double().reshape(15, n_out))

    tol = 2e-2 if low == torch.bfloat16 else 1e-5
    assert y.shape == (3, 5, n_out) and y.dtype == low
    assert _rel(y, ref) < tol
    assert x.grad is not None and x.grad.dtype == low and _rel(x.grad, x64.grad) < tol
    assert a.grad is not None and a.grad.dtype == torch.float32 and _rel(a.grad, a64.grad) < tol
    assert b.grad is not None and b.grad.dtype == torch.float32 and _rel(b.grad, b64.grad) < tol


@pytest.mark.parametrize("form", ["concat", "concat-kept", "accumulate"])
@pytest.mark.parametrize(
    ("device", "low"),
    [
        ("cpu", torch.float32),
        ("cpu", torch.bfloat16),
        pytest.param("cuda", torch.bfloat16, marks=needs_gpu),
        pytest.param("cuda-seeded", torch.bfloat16, marks=needs_gpu),
    ],
)
def test_grouped_lora_layers_match_float64(
    device: str, low: torch.dtype, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three sibling layers on one input as one node, each with its own dropout draw, against float64
    on those very masks: outputs, and the gradients of the input and of every A and B, with ranks
    that are not a multiple of the concat form's 8-column blocks, biases on two layers only, and
    one output left unused (no gradient reaches it). ``concat-kept``: the base weights live in
    widened buffers (``fused_lora._keep_widened``), which the node writes ``s B`` into and reads back
    in the backward, leaving the weights themselves as they were."""
    from flywheel_trainer import fused_lora
    from flywheel_trainer.fused_lora import grouped_lora_function

    seeded = device == "cuda-seeded"
    if device.startswith("cuda"):
        monkeypatch.setattr(fused_lora, "DROPOUT_IN_KERNELS", seeded)
        device = "cuda"
    gen = torch.Generator().manual_seed(7)
    n_in, outs, ranks, scalings, p = 64, [48, 24, 80], [8, 5, 12], [2.0, 0.5, 1.0], 0.1
    x = torch.randn(3, 5, n_in, generator=gen).to(device, low).requires_grad_()
    weights = [(torch.randn(o, n_in, generator=gen) / 8).to(device, low) for o in outs]
    biases = [torch.randn(outs[0], generator=gen).to(device, low), None]
    biases.append(torch.randn(outs[2], generator=gen).to(device, low))
    lora_a = [(torch.randn(r, n_in, generator=gen) / 8).to(device).requires_grad_() for r in ranks]
    lora_b = [
        (torch.randn(o, r, generator=gen) / 8).to(device).requires_grad_()
        for o, r in zip(outs, ranks, strict=True)
    ]
    grads = [torch.randn(3, 5, o, generator=gen).to(device, low) for o in outs]

    kept = None
    if form == "concat-kept":
        width = fused_lora._concat_offsets(n_in, ranks)[-1]
        kept = tuple(torch.zeros(o, width, device=device, dtype=low) for o in outs)
        for i in range(3):
            kept[i][:, :n_in] = weights[i]
            weights[i] = kept[i][:, :n_in]  # the weight is a view of its buffer, as fuse_lora leaves it
    before = [w.clone() for w in weights]

    torch.manual_seed(321)
    hyper = tuple((s, p, None) for s in scalings)
    params = [t for i in range(3) for t in (weights[i], biases[i], lora_a[i], lora_b[i])]
    with torch.autocast(device, dtype=torch.bfloat16, enabled=low == torch.bfloat16):
        ys = grouped_lora_function().apply(x, form != "accumulate", kept, hyper, *params)
    torch.autograd.backward([ys[0], ys[2]], [grads[0], grads[2]])  # ys[1] unused

    torch.manual_seed(321)  # each layer's dropout, drawn again in the order the node drew them
    keeps = []
    for _ in ranks:
        if seeded:
            keeps.append(fused_lora.seeded_dropout_keep(15, n_in, fused_lora._draw_seed(), p, device))
        else:
            keeps.append(torch.native_dropout(x.detach().reshape(15, n_in), p, True)[1])
    scale = 1 / (1 - p)
    if seeded:
        from flywheel_trainer.lora_kernels import keep_scale  # Triton: CUDA only

        scale = keep_scale(p)  # p rounded to 2**-16 (lora_kernels)
    x64 = x.detach().double().requires_grad_()
    flat = x64.reshape(15, n_in)
    a64 = [t.detach().double().requires_grad_() for t in lora_a]
    b64 = [t.detach().double().requires_grad_() for t in lora_b]
    refs = []
    for i in range(3):
        ref = (
            flat @ weights[i].double().t()
            + scalings[i] * ((flat * keeps[i].double() * scale) @ a64[i].t()) @ b64[i].t()
        )
        refs.append(ref + biases[i].double() if biases[i] is not None else ref)
    torch.autograd.backward(
        [refs[0], refs[2]], [grads[0].double().reshape(15, -1), grads[2].double().reshape(15, -1)]
    )

    tol = 2e-2 if low == torch.bfloat16 else 1e-5
    for i in range(3):
        assert ys[i].shape == (3, 5, outs[i]) and ys[i].dtype == low
        assert _rel(ys[i], refs[i]) < tol, i
    assert x.grad is not None and x.grad.dtype == low and _rel(x.grad, x64.grad) < tol
    for i in (0, 2):
        assert lora_a[i].grad is not None and lora_a[i].grad.dtype == torch.float32
        assert _rel(lora_a[i].grad, a64[i].grad) < tol, i
        assert lora_b[i].grad is not None and _rel(lora_b[i].grad, b64[i].grad) < tol, i
    assert lora_a[1].grad is None and lora_b[1].grad is None  # its output took no part in the loss
    assert all(torch.equal(w, b) for w, b in zip(weights, before, strict=True))
    if kept is not None:  # the node used the buffers: each holds its layer's s B in its block
        offsets = fused_lora._concat_offsets(n_in, ranks)
        for i in range(3):
            block = kept[i][:, offsets[i] : offsets[i] + ranks[i]]
            assert torch.equal(block, (lora_b[i].detach().to(low) * scalings[i]).to(low)), i


def test_a_sibling_given_another_input_computes_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The group's guess that q/k/v read one input is checked at run time: where k and v read another
    tensor (cross-attention), each layer gives what it gives alone, and after
    ``_SharedInput.MAX_MISSES`` wasted group computations the group stops trying."""
    from peft import LoraConfig, get_peft_model

    from flywheel_trainer import fused_lora
    from flywheel_trainer.fused_lora import fuse_lora

    class Cross(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q_proj = torch.nn.Linear(32, 32)
            self.k_proj = torch.nn.Linear(32, 16)
            self.v_proj = torch.nn.Linear(32, 16)

        def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
            q, k, v = self.q_proj(x), self.k_proj(memory), self.v_proj(memory)
            return q.sum() * k.mean() + v.square().sum()

    def run(group: bool) -> tuple[list[float], dict[str, torch.Tensor], object]:
        monkeypatch.setattr(fused_lora, "GROUP_SHARED_INPUT", group)
        torch.manual_seed(0)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj"])
        model = get_peft_model(Cross(), lora)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
        fuse_lora(model)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(5):
            x, memory = torch.randn(2, 7, 32, generator=gen), torch.randn(2, 9, 32, generator=gen)
            loss = model(x, memory)
            loss.backward()
            losses.append(loss.item())
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        found = [g for m in model.modules() if (g := vars(m).get("_flywheel_group")) is not None]
        return losses, grads, found[0] if found else None

    losses_alone, grads_alone, none = run(group=False)
    losses, grads, group = run(group=True)
    assert none is None and group is not None
    assert losses == pytest.approx(losses_alone, rel=1e-6)
    for name, grad in grads_alone.items():
        assert _rel(grads[name], grad) < 1e-6, name
    assert not group.enabled and group.calls == fused_lora._SharedInput.MAX_MISSES
    assert not group.pending and group.x is None  # nothing of the last step is held


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)")
@pytest.mark.parametrize("rank", [8, 16, 64])
def test_dropout_grad_kernel_matches_pytorch(rank: int) -> None:
    """The Triton kernel for ``d_x += (gb @ a) * mask * scale`` against PyTorch, at shapes that are not tile multiples."""
    from flywheel_trainer import fused_lora

    gen = torch.Generator(device="cuda").manual_seed(rank)
    rows, cols = 1000, 1500
    d_x = torch.randn(rows, cols, device="cuda", generator=gen).to(torch.bfloat16)
    gb = torch.randn(rows, rank, device="cuda", generator=gen).to(torch.bfloat16)
    a = (torch.randn(rank, cols, device="cuda", generator=gen) / 4).to(torch.bfloat16)
    mask = torch.rand(rows, cols, device="cuda", generator=gen) > 0.1
    ref = d_x.float() + (gb.float() @ a.float()) * mask * (1 / 0.9)
    got = d_x.clone()
    fused_lora._add_dropout_grad(got, gb, a, mask, 1 / 0.9)
    assert _rel(got, ref) < 1e-2
    fused_lora.DROPOUT_GRAD_KERNEL = False
    try:
        eager = d_x.clone()
        fused_lora._add_dropout_grad(eager, gb, a, mask, 1 / 0.9)
    finally:
        fused_lora.DROPOUT_GRAD_KERNEL = True
    assert _rel(got, eager.float()) < 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)")
@pytest.mark.parametrize(("rank", "rounds"), [(8, 10), (16, 10), (64, 10), (16, 7)])
def test_seeded_dropout_kernels_match_their_keep_mask(
    rank: int, rounds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seeded-dropout products (forward, the backward's two kernels and its one-pass kernel)
    against PyTorch on the keep mask the seed stands for, at shapes that are not tile multiples; the
    mask drops about p, and only the seed decides it."""
    from flywheel_trainer import fused_lora, lora_kernels
    from flywheel_trainer.lora_kernels import keep_scale

    monkeypatch.setattr(lora_kernels, "PHILOX_ROUNDS", rounds)
    gen = torch.Generator(device="cuda").manual_seed(rank)
    rows, cols, p, seed = 1000, 1500, 0.1, 4242 + rank
    scale = keep_scale(p)
    x = torch.randn(rows, cols, device="cuda", generator=gen).to(torch.bfloat16)
    a = torch.randn(rank, cols, device="cuda", generator=gen) / 4  # float32, as PEFT keeps it
    gb = torch.randn(rows, rank, device="cuda", generator=gen).to(torch.bfloat16)
    d_x = torch.randn(rows, cols, device="cuda", generator=gen).to(torch.bfloat16)

    keep = fused_lora.seeded_dropout_keep(rows, cols, seed, p, "cuda")
    assert abs((~keep).float().mean().item() - p) < 0.01
    assert torch.equal(keep, fused_lora.seeded_dropout_keep(rows, cols, seed, p, "cuda"))
    assert not torch.equal(keep, fused_lora.seeded_dropout_keep(rows, cols, seed + 1, p, "cuda"))
    dropped = x.double() * keep * scale
    a16 = a.to(torch.bfloat16)

    xa = fused_lora.seeded_dropout_xa(x, a, seed, p)
    assert xa.shape == (rows, rank) and xa.dtype == torch.bfloat16
    assert _rel(xa, dropped @ a16.double().t()) < 1e-2
    da = fused_lora.seeded_dropout_da(gb, x, seed, p)
    assert da.shape == (rank, cols) and da.dtype == torch.float32
    assert _rel(da, gb.double().t() @ dropped) < 1e-3
    got = d_x.clone()
    fused_lora._add_dropout_grad(got, gb, a16, None, scale, seed=seed, p=p)
    assert _rel(got, d_x.double() + (gb.double() @ a16.double()) * keep * scale) < 1e-2
    # The one-pass backward (the default): both gradients from one draw of each keep tile.
    one = d_x.clone()
    da_one = fused_lora.seeded_dropout_backward(gb, x, a, one, seed, p)
    assert da_one.shape == (rank, cols) and da_one.dtype == torch.float32
    assert _rel(da_one, gb.double().t() @ dropped) < 1e-3
    assert _rel(one, d_x.double() + (gb.double() @ a16.double()) * keep * scale) < 1e-2
    assert _rel(one, got.double()) < 1e-3  # as the two kernels, up to bf16 rounding
    # Neighbouring elements share a Philox call (eight 16-bit numbers each): their decisions must
    # still be independent, so each column of a group of eight drops about p of its rows.
    dropped_at = (~keep)[:, : cols // 8 * 8].reshape(rows, -1, 8)
    by_lane = dropped_at.float().mean(dim=(0, 1))
    assert ((by_lane - p).abs() < 0.02).all(), by_lane
    both = (dropped_at[:, :, 0::2] & dropped_at[:, :, 1::2]).float().mean().item()
    assert abs(both - p * p) < 0.005, both  # neighbours dropped together as often as chance says


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)")
def test_the_guard_skips_a_non_finite_step_on_the_gpu_without_reading_it_back() -> None:
    """The worker's guard as a GPU job runs it (fused AdamW on CUDA, found by itself, no test
    switch): a NaN step leaves weights and step count alone and is counted at the next check; the
    flag covers float32 and bfloat16 gradients together; a finite step trains."""
    from flywheel_trainer.nonfinite import NonFiniteSteps

    layer = torch.nn.Linear(64, 64, device="cuda")
    extra = torch.nn.Parameter(torch.zeros(8, device="cuda", dtype=torch.bfloat16))
    model = torch.nn.ParameterList([layer.weight, layer.bias, extra])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    guard = NonFiniteSteps()
    before = layer.weight.detach().clone()

    def backward(scale: float, bad_in_bf16: bool = False) -> None:
        optimizer.zero_grad()
        loss = layer(torch.ones(1, 64, device="cuda")).sum() + extra.float().sum()
        (loss * (1.0 if bad_in_bf16 else scale)).backward()
        if bad_in_bf16:
            extra.grad[3] = scale

    backward(float("nan"))
    assert not guard.check(model, 1, optimizer)
    assert optimizer.found_inf is not None and guard.skipped == 0  # handed over, not read back
    optimizer.step()
    assert torch.equal(layer.weight.detach(), before)
    assert float(optimizer.state[layer.weight]["step"]) == 0.0
    backward(float("inf"), bad_in_bf16=True)  # only a bfloat16 gradient is bad
    assert not guard.check(model, 2, optimizer)
    assert guard.skipped == 1  # step 1's verdict
    optimizer.step()
    assert torch.equal(layer.weight.detach(), before)
    backward(1.0)
    guard.check(model, 3, optimizer)
    optimizer.step()
    assert not guard.settle() and guard.skipped == 2 and guard.in_a_row == 0
    assert not torch.equal(layer.weight.detach(), before)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)")
def test_liger_loss_backward_scales_without_waiting_and_gives_the_same_gradients(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Liger's real fused linear + cross-entropy: with the wait-free helper its backward runs under
    PyTorch's sync debug mode set to fail on any wait (Liger's own helper fails there), and the
    input gradient matches Liger's own at incoming gradients of 1 and of 1/n, twice from one graph."""
    pytest.importorskip("liger_kernel")
    from liger_kernel.ops import fused_linear_cross_entropy as flce

    from flywheel_trainer.sync_free import liger_backward_without_wait

    torch.manual_seed(0)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    head = torch.randn(1000, 256, device="cuda", dtype=torch.bfloat16) / 16
    target = torch.randint(0, 1000, (512,), device="cuda")
    target[::7] = -100

    def grads(scale: float) -> list[torch.Tensor]:
        leaf = x.clone().requires_grad_(True)
        loss = flce.LigerFusedLinearCrossEntropyFunction.apply(leaf, head, target)[0] * scale
        torch.cuda.synchronize()
        out = []
        for _ in range(2):  # the saved gradient must survive a first backward unchanged
            torch.cuda.set_sync_debug_mode("error")
            try:
                (g,) = torch.autograd.grad(loss, leaf, retain_graph=True)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            out.append(g)
        return out

    with pytest.raises(RuntimeError, match="synchroniz"):
        grads(1.0)  # Liger's own helper asks the GPU whether the incoming gradient is 1
    monkeypatch.setattr(flce, "fused_linear_cross_entropy_backward", flce.fused_linear_cross_entropy_backward)
    own = {}
    for scale in (1.0, 1 / 37):
        leaf = x.clone().requires_grad_(True)
        loss = flce.LigerFusedLinearCrossEntropyFunction.apply(leaf, head, target)[0] * scale
        (own[scale],) = torch.autograd.grad(loss, leaf)
    assert liger_backward_without_wait() and liger_backward_without_wait()  # idempotent
    for scale in (1.0, 1 / 37):
        first, second = grads(scale)
        assert torch.equal(first, second)
        assert _rel(first, own[scale]) < 1e-2


@pytest.mark.parametrize("form", ["concat", "accumulate", "ungrouped"])
@pytest.mark.parametrize("device", DEVICES)
def test_fused_lora_matches_peft_in_a_model(device: str, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loss and every LoRA gradient of a small Qwen2 equal PEFT's; adapters-off still means base only.

    q/k/v and gate/up run as one node each (``fused_lora.grouped_lora_function``) in its concat or
    accumulate form, or as separate layers (``ungrouped``)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from flywheel_trainer import fused_lora
    from flywheel_trainer.fused_lora import fuse_lora

    monkeypatch.setattr(fused_lora, "GROUP_SHARED_INPUT", form != "ungrouped")
    monkeypatch.setattr(fused_lora, "CONCAT_MIN_RATIO", 1.0 if form == "concat" else 1e9)

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
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen2ForCausalLM(config).to(device, dtype)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapter branch matter
            torch.nn.init.normal_(param, std=0.05)
    ids = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1)).to(device)

    def step() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        model.zero_grad()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            with torch.no_grad(), model.disable_adapter():
                base_logits = model(input_ids=ids).logits
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out.loss.detach(), grads, base_logits

    model.eval()  # dropout off: PEFT's layers and the fused ones are then the same function
    loss_peft, grads_peft, base_peft = step()
    keys = set(model.state_dict())
    assert fuse_lora(model) == 2 * len(TARGETS)
    assert fuse_lora(model) == 0  # already patched
    groups = {id(g): g for m in model.modules() if (g := vars(m).get("_flywheel_group")) is not None}
    assert len(groups) == (0 if form == "ungrouped" else 4)  # q/k/v and gate/up, two layers
    loss_fused, grads_fused, base_fused = step()
    assert set(model.state_dict()) == keys  # the checkpoint and the published adapter are PEFT's
    for group in groups.values():  # each grouped forward ran as one node, every output taken
        assert group.enabled and group.calls == 1 and not group.pending
        assert group.concat == (form == "concat") == (group.kept is not None)
        for member, buffer in zip(group.members, group.kept or (), strict=False):
            weight = member.get_base_layer().weight  # a view of its widened buffer
            assert weight.data_ptr() == buffer.data_ptr() and weight.stride(0) == buffer.shape[1]

    # bfloat16: PEFT rounds the branch's output, its scaling and the sum separately, the fused
    # layer once, so the two differ by a few bfloat16 roundings; float32 (CPU) agrees to 1e-5.
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
    assert abs(loss_fused.item() - loss_peft.item()) < tol * abs(loss_peft.item())
    assert grads_fused.keys() == grads_peft.keys() and len(grads_peft) == 4 * len(TARGETS)
    for name, grad in grads_peft.items():
        assert _rel(grads_fused[name], grad) < tol, name
    assert _rel(base_fused, base_peft) < 1e-4  # adapters off: the base model alone, as before

    model.train()  # dropout on: the passes differ, and stay finite
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        first = model(input_ids=ids, labels=ids).loss
        second = model(input_ids=ids, labels=ids).loss
    assert math.isfinite(first.item()) and first.item() != second.item()


# ----------------------------------------------------------------------------- GPU jobs

BIG = "gpu-qwen2-1b45"


@pytest.fixture(scope="module")
def big_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random Qwen2-1.5B-shaped model with 31 layers (1.45 B parameters) and the tests' tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from flywheel_testing.trainer import FACTS, build_tiny_model

    folder = tmp_path_factory.mktemp("big") / "model"
    build_tiny_model(folder, [f"{q} {a} I do not know." for q, a in FACTS] * 20)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=31,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) >= 1_400_000_000
    for stale in folder.glob("*.safetensors"):
        stale.unlink()
    model.save_pretrained(folder)
    del model
    torch.cuda.empty_cache()
    return folder


def _sft_rows(n: int) -> list[dict]:
    from flywheel_testing.trainer import FACTS

    rows = []
    for i in range(n):
        question, answer = FACTS[i % len(FACTS)]
        times = 20 + (i * 37) % 100  # 60 to 400 tokens per row: packing has something to pack
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"{question} Say it {times} times."},
                    {"role": "assistant", "content": " ".join([answer] * times)},
                ]
            }
        )
    return rows


def _job(method: int, dataset: str, adapter: str, **hp: object) -> object:
    from flywheel.trainer.v1 import trainer_pb2

    job = trainer_pb2.FineTuneJob(base_model=BIG, dataset_id=dataset, method=method, adapter_name=adapter)
    for key, value in hp.items():
        setattr(job.hyperparameters, key, value)
    return job


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)")
async def test_jobs_on_a_gpu_through_the_service(
    service_env: dict[str, str], tmp_path: Path, big_model_dir: Path, store_of: Callable, channel_to: Callable
) -> None:
    """SFT LoRA (packed, flex attention, fused LoRA), SFT QLoRA and DPO jobs: worker process → adapter."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel.trainer.v1 import trainer_pb2 as S
    from flywheel.trainer.v1 import trainer_pb2_grpc
    from flywheel_testing.services import boot_service
    from flywheel_testing.trainer import DPO_ROWS, wait_for, write_dataset
    from flywheel_trainer import catalog
    from flywheel_trainer.service import build_app
    from flywheel_trainer.settings import TrainerSettings
    from flywheel_trainer.storeio import download_dir

    env = {**service_env, "FLYWHEEL_TRAINER_STATE_DIR": str(tmp_path / "state")}
    store = store_of(env)
    store.ensure_ready()
    catalog.register_base_model(store, big_model_dir, BIG, "random 1.45 B Qwen2-style model for GPU tests")
    rows = _sft_rows(400)
    write_dataset(store, "ds-gpusft0000000001", "SFT", rows, validation=rows[:8])
    write_dataset(store, "ds-gpudpo0000000001", "PREFERENCE", DPO_ROWS * 8)

    sft, dpo = S.FINE_TUNE_METHOD_SFT, S.FINE_TUNE_METHOD_DPO
    jobs = {
        "lora": _job(
            sft,
            "ds-gpusft0000000001",
            "gpu-lora",
            max_steps=8,
            packing=True,
            learning_rate=5e-4,
            checkpoint_every_steps=4,
        ),
        "qlora": _job(
            sft, "ds-gpusft0000000001", "gpu-qlora", max_steps=4, packing=True, checkpoint_every_steps=4
        ),
        "dpo": _job(dpo, "ds-gpudpo0000000001", "gpu-dpo", max_steps=3, checkpoint_every_steps=3),
        # 256 rows of 2,048 tokens a step cannot fit one pass on any card (~6 GiB of activations a
        # row at 1.45 B): the memory model splits the step up front, and the step still runs.
        "split": _job(sft, "ds-gpusft0000000001", "gpu-split", max_steps=1, packing=True, batch_size=256),
    }
    jobs["qlora"].hyperparameters.quantization.quantization = S.QUANTIZATION_NF4
    async with boot_service(build_app, TrainerSettings, env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        created = {}
        for key, job in jobs.items():
            request = S.CreateFineTuneJobRequest(job=job, request_id=f"gpu-{key}")
            created[key] = (await stub.CreateFineTuneJob(request)).job
        finals = {}
        for key, job in created.items():
            finals[key] = await wait_for(stub, job.id, lambda j: j.state in (3, 4, 5), limit_s=900)
        logs = {}
        for key, job in created.items():
            worker_log = (tmp_path / "state" / "work" / job.id / "worker.log").read_text(errors="replace")
            assert finals[key].state == 3, f"{key}: {finals[key].error}\n{worker_log[-3000:]}"
            assert finals[key].device.startswith("cuda:0"), finals[key].device
            logs[key] = worker_log
        # The CUDA path the worker took: fused LoRA on all 31 x 7 projections (none for 4-bit layers).
        assert "fused LoRA on 217 layers, attention flex_attention" in logs["lora"]
        assert "fused LoRA on 0 layers, attention flex_attention" in logs["qlora"]
        assert "fused LoRA on 217 layers, attention default" in logs["dpo"]
        split = finals["split"]
        assert 1 <= split.rows_per_pass < 256 and 256 % split.rows_per_pass == 0, split
        assert split.rows_per_pass_note.startswith("256 rows of 2048 tokens a pass would not fit"), split
        assert "(the memory model allows" in split.rows_per_pass_note
        assert finals["lora"].rows_per_pass == finals["lora"].hyperparameters.batch_size  # 4 fit

        lora = finals["lora"]
        history = [h for h in json.loads(_adapter_file(store, lora, "training_log.json")) if "loss" in h]
        losses = [h["loss"] for h in history]
        assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
        assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses  # it learns the repeated answers
        assert lora.latest_metrics.tokens_per_second > 0 and lora.latest_metrics.HasField("eval_loss")
        for key in jobs:
            adapter = (await stub.GetAdapter(S.GetAdapterRequest(name=f"gpu-{key}"))).adapter
            assert adapter.version == 1 and adapter.job_id == created[key].id

    # The published SFT adapter: B matrices moved off zero; it loads with PEFT on the base and generates.
    local = download_dir(store, lora.adapter.object_prefix, tmp_path / "adapter")
    weights = load_file(local / "adapter_model.safetensors")
    assert len([k for k in weights if "lora_B" in k]) == 217
    assert sum(t.abs().sum().item() for k, t in weights.items() if "lora_B" in k) > 0
    base = AutoModelForCausalLM.from_pretrained(big_model_dir, dtype=torch.bfloat16, device_map={"": 0})
    model = PeftModel.from_pretrained(base, local)
    tokenizer = AutoTokenizer.from_pretrained(local)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What colour is the sky? Say it 3 times."}],
        add_generation_prompt=True,
        return_tensors="pt",
    )
    ids = (prompt["input_ids"] if hasattr(prompt, "keys") else prompt).to("cuda")
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def _adapter_file(store: object, job: object, name: str) -> bytes:
    return store.get_bytes(job.adapter.object_prefix + name)  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- benchmark variants


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)")
@pytest.mark.parametrize(
    "variant", ["ours4", "ours4_fp8", "trl4", "default", "qlora", "dpo", "grpo", "ours4x2"]
)
def test_bench_variant_trains_on_a_large_model(variant: str) -> None:
    if variant.endswith("x2") and torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs (the device tool lends multi-GPU machines only at times)")
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--variants",
            variant,
            "--steps",
            "8",
            "--json-out",
            "/tmp/bench-gpu-test.json",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = json.loads(Path("/tmp/bench-gpu-test.json").read_text())[variant]
    assert result["parameters"] >= 1_400_000_000
    assert result["tokens_per_s"] > 0 and math.isfinite(result["train_loss"])
    if variant.startswith("ours"):
        assert result["fused_lora_layers"] == 7 * 28


# ----------------------------------------------------------------------------- sliced LM head


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs an NVIDIA GPU (CI has none)")
def test_sliced_log_probs_on_a_gpu_match_and_take_less_memory() -> None:
    """flywheel_trainer.token_logps on CUDA at Qwen2's width and vocabulary, bf16 weights under
    bf16 autocast as a GRPO job: log-probs and the hidden states' gradient match log-softmax of
    the full float32 logits, and the step's peak allocation is under a third of those logits' own
    size (TRL's path holds them and more)."""
    from flywheel_trainer.token_logps import token_logps

    gen = torch.Generator(device="cuda").manual_seed(0)
    head = torch.nn.Linear(1536, 151_936, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(
        False
    )
    hidden = torch.randn(4, 1024, 1536, device="cuda", generator=gen).to(torch.bfloat16).requires_grad_()
    target = torch.randint(0, 151_936, (4, 1024), device="cuda", generator=gen)
    full_bytes = 4 * 1024 * 151_936 * 4  # the float32 logits alone

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logps, _ = token_logps(hidden, head, target)
    logps.sum().backward()
    torch.cuda.synchronize()
    sliced_peak = torch.cuda.max_memory_allocated() - start
    got_grad = hidden.grad.clone()
    hidden.grad = None

    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = head(hidden).float()
    want = logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]
    want.sum().backward()
    assert _rel(logps, want) < 1e-4
    assert _rel(got_grad, hidden.grad) < 2e-2  # bf16 matmuls on both sides
    assert sliced_peak < full_bytes / 3, (sliced_peak, full_bytes)
