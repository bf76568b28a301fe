"""The GPU benchmark's code paths, checked on the CPU so a GPU session does not find them broken.

`bench/bench_sft_gpu.py --smoke` runs each variant (and a data-parallel one, two processes over
gloo) with a tiny model of the same family (no flex
attention, Liger or bf16, which need CUDA), in its own process as on the GPU: tuned plain TRL,
the worker's SFT path (fused LoRA layers) and the worker's GRPO trainer on synthetic stored
rollouts. Its figures mean nothing for speed; that each variant trains and is summarised does.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_sft_gpu.py"


def test_the_benchmark_runs_tuned_trl_ours_and_grpo(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--smoke",
            "--steps",
            "3",
            "--variants",
            "trl4,ours4,ours4_group,grpo,grpo_full,ours4x2",
            "--json-out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = json.loads(out.read_text())
    (trl,), (ours,), (grpo,), (two,) = runs["trl4"], runs["ours4"], runs["grpo"], runs["ours4x2"]
    (grpo_full,) = runs["grpo_full"]
    assert trl["fused_lora_layers"] == 0 and ours["fused_lora_layers"] == 14  # 7 projections x 2 layers
    assert grpo["fused_lora_layers"] == 14  # the worker fuses GRPO's layers too
    # With _group, q/k/v and gate/up of each layer ran as one node each, every step (gate/up in
    # the concat form); by default they are separate layers.
    (grouped,) = runs["ours4_group"]
    groups, concat, calls = grouped["shared_input_groups"]
    assert groups == 4 and concat >= 2 and calls >= 4 * 3, grouped
    assert ours["shared_input_groups"] == [0, 0, 0], ours
    assert math.isfinite(grouped["train_loss"]) and grouped["tokens_per_s"] > 0, grouped
    assert trl["rows_a_step"] == ours["rows_a_step"] == 4 and grpo["rows_a_step"] == 8
    for run in (trl, ours, grpo, grpo_full):
        assert run["tokens_per_s"] > 0 and math.isfinite(run["train_loss"]), run
    # Every step's time after the first, the early ones among them.
    assert len(ours["steps_s"]) == ours["steps"] - 1 and all(t > 0 for t in ours["steps_s"]), ours
    assert [round(t, 2) for t in ours["steps_s"][:6]] == pytest.approx(ours["early_steps_s"], abs=0.011), ours
    # The LM head a slice at a time trains as TRL's full logits do: same data, same seed, same loss.
    assert grpo["last5_loss"] == pytest.approx(grpo_full["last5_loss"], rel=1e-3, abs=1e-6), (grpo, grpo_full)
    # Two processes (torch.distributed.run, DDP over gloo here, NCCL on GPUs), 4 rows each.
    assert two["gpus"] == 2 and two["rows_a_step"] == 8 and two["batch_rows"] == 4
    # The summary compares ours with tuned TRL at equal rows, and two processes with one.
    assert "| ours4 | trl4 |" in proc.stdout, proc.stdout[-2000:]
    assert "| ours4x2 | 2 | ours4 |" in proc.stdout, proc.stdout[-2000:]


def test_a_lever_ending_in_x_and_digits_is_not_a_process_count() -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench_sft_gpu import split_world
    finally:
        sys.path.remove(str(BENCH.parent))
    assert split_world("ours8x2") == ("ours8", 2)
    assert split_world("ours8_philox10") == ("ours8_philox10", 1)  # it once ran ten processes
    assert split_world("ours8_philox10x2") == ("ours8_philox10", 2)
    assert split_world("ours8_fp8") == ("ours8_fp8", 1)


def test_the_summary_reports_medians_and_ratios() -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench_sft_gpu import summarise
    finally:
        sys.path.remove(str(BENCH.parent))

    def run(tps: int) -> dict:
        return {"tokens_per_s": tps, "mfu": tps / 1e6, "peak_memory_gib": 1.0, "last5_loss": 2.0,
                "batch_rows": 4, "rows_a_step": 4}  # fmt: skip

    lines = summarise({"trl4": [run(100), run(300), run(120)], "ours4": [run(240), run(250), run(900)]})
    table = "\n".join(lines)
    assert "| trl4 | 4 | 4 | 3 | 120 | 100-300 |" in table, table
    assert "| ours4 | 4 | 4 | 3 | 250 | 240-900 |" in table, table
    assert "| ours4 | trl4 | 2.08x |" in table, table  # 250 / 120: medians, not means or bests


def test_gpu_gaps_takes_the_union_of_streams_and_names_each_gap() -> None:
    sys.path.insert(0, str(BENCH.parent))
    try:
        from bench_sft_gpu import gpu_gaps
    finally:
        sys.path.remove(str(BENCH.parent))

    kernels = [
        ("void gemm<float, 128>(Params)", 0.0, 100.0),
        ("side_stream_copy", 50.0, 80.0),  # overlaps the gemm and outlasts it: busy to 130
        ("rms_norm_kernel", 140.0, 10.0),  # 10 us gap after the copy
        ("embedding_kernel", 2150.0, 50.0),  # 2 ms gap: the host between steps
        ("rms_norm_kernel", 2203.0, 7.0),  # 3 us gap
        ("side_stream_copy", 2212.0, 8.0),  # 2 us gap, same pair of names as none before
    ]
    figures, lines = gpu_gaps(kernels, wall_us=4000.0)
    assert figures["busy_us"] == 130.0 + 10.0 + 50.0 + 7.0 + 8.0
    assert figures["idle_between_kernels_us"] == 10.0 + 2000.0 + 3.0 + 2.0
    assert figures["gpu_busy"] == round(205.0 / 4000.0, 4)
    sizes = figures["gaps_by_size"]
    assert sizes["<5us"] == {"count": 2, "us": 5.0}
    assert sizes["5-20us"] == {"count": 1, "us": 10.0}
    assert sizes[">1ms"] == {"count": 1, "us": 2000.0}
    # The largest total first, named by the kernel that ended before the gap (the copy, which
    # outlasted the gemm) and the one after it, without template arguments.
    assert lines[0].split()[-3:] == ["rms_norm_kernel", "->", "embedding_kernel"], lines
    assert lines[1].split()[-3:] == ["side_stream_copy", "->", "rms_norm_kernel"], lines
    assert len(lines) == 4 + 2 + 4  # four pairs, a blank and a heading, the four gaps
    # The single gaps by time: the 2 ms one 0.15 ms after the first kernel began.
    assert lines[4:6] == ["", "largest single gaps, in time order (ms from the first kernel):"]
    assert lines[7].split()[:4] == ["0.15", "ms", "2000.0", "us"], lines
    assert gpu_gaps([], wall_us=10.0)[0]["busy_us"] == 0.0
