"""The RL loop report's iteration table: figures a job did not compute are shown as such, never as
``nan`` (KL exists only with a KL coefficient; the SFT warm start has neither KL nor clipping)."""

from __future__ import annotations

from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel_orchestrator.report import rl_markdown


def _rows(loop: lpb.Loop) -> list[list[str]]:
    table = [line for line in rl_markdown(loop, with_plot=False).splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table[1:]]  # [0]: header


def test_iteration_table_shows_missing_figures_as_absent_not_nan() -> None:
    loop = lpb.Loop()
    warm = loop.iterations.add(index=0, episodes=16, reward_mean=1.1)
    warm.adapter.name, warm.adapter.version = "io-rl", 1
    no_kl = loop.iterations.add(index=1, policy_model="io-rl-v1", episodes=16, reward_mean=-0.09)
    no_kl.train_metrics.extra["clip_ratio/region_mean"] = 0.0131
    with_kl = loop.iterations.add(index=2, policy_model="io-rl-v2", episodes=16, eval_pass_rate=0.5,
                                  eval_baseline_pass_rate=0.25)  # fmt: skip
    with_kl.train_metrics.extra.update({"clip_ratio/region_mean": 0.02, "kl": 0.00123})
    rows = _rows(loop)
    assert len(rows) == 3
    assert "nan" not in rl_markdown(loop, with_plot=False)
    kl, clip = 7, 8
    assert rows[0][0] == "0 (SFT warm start)" and rows[0][kl] == "—" and rows[0][clip] == "—"
    assert rows[0][6] == "io-rl/v1"
    assert rows[1][kl] == "off" and rows[1][clip] == "0.013"
    assert rows[2][kl] == "0.0012" and rows[2][clip] == "0.020" and rows[2][9] == "0.50 (0.25)"
