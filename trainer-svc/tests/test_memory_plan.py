"""The trainer's memory model (`flywheel_trainer.memory_plan`): it reproduces the 1.5B H200
measurements it was fitted to, and its plans move the right way with quantisation, sharding,
recomputation and memory. Plain arithmetic: no GPU involved."""

from __future__ import annotations

import pytest

from flywheel_trainer.memory_plan import SHAPES, fitted_check, plan


def test_the_model_reproduces_the_measured_peaks() -> None:
    for rows, model, measured in fitted_check():
        assert model == pytest.approx(measured, rel=0.03), rows


def test_shapes_count_parameters_like_their_model_cards() -> None:
    # Qwen2.5-32B's card: 32.5 B parameters, 31.0 B outside the embeddings (biases are not counted
    # here, hence the 1% tolerance); Qwen2-1.5B: 1.54 B.
    big, small = SHAPES["qwen2.5-32b"], SHAPES["qwen2-1.5b"]
    assert big.params == pytest.approx(32.5e9, rel=0.01)
    assert big.params - big.embedding_params == pytest.approx(31.0e9, rel=0.01)
    assert small.params == pytest.approx(1.54e9, rel=0.01)


def test_plans_move_the_right_way() -> None:
    big = SHAPES["qwen2.5-32b"]
    bf16, nf4 = plan(big, gpu_gib=80), plan(big, gpu_gib=80, qlora=True)
    assert nf4.fixed_gib < bf16.fixed_gib / 2 and nf4.max_rows > bf16.max_rows
    one, eight = plan(big, gpus=1, gpu_gib=141), plan(big, gpus=8, gpu_gib=80)
    assert eight.fixed_gib < one.fixed_gib / 4 and eight.tokens_per_s == pytest.approx(8 * one.tokens_per_s)
    keep_all = plan(big, gpus=8, gpu_gib=80, recompute=False)
    assert keep_all.per_row_gib > 10 * eight.per_row_gib
    assert plan(big, gpu_gib=40).max_rows == 0  # bf16 weights alone are 61 GiB
    assert plan(big, gpu_gib=141).max_rows > plan(big, gpu_gib=80).max_rows
