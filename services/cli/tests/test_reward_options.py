"""``--reward KEY=VALUE`` and the reward figures the CLI prints (no server needed: bad options are
refused before any call, and the figures are pure functions of counters)."""

from __future__ import annotations

import math
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_cli.job_options import parse_rewards
from flywheel_cli.main import cli
from flywheel_cli.render import episodes_reward_text, reward_text, settings_line


def test_reward_pairs_fill_the_weights() -> None:
    weights = parse_rewards(("integrity=-3", "test_runs=0", "max_penalised=2"))
    assert weights == tpb.RewardWeights(integrity=-3.0, test_runs=0.0, max_penalised=2)
    assert weights.HasField("test_runs")  # an explicit 0 is sent, not the default


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("bonus=1", "unknown key 'bonus' (known: correctness, test_runs"),
        ("integrity=low", "integrity: 'low' is not a number"),
        ("max_penalised=2.5", "max_penalised: '2.5' is not an integer"),
        ("integrity", "'integrity' must be KEY=VALUE"),
    ],
)
def test_bad_reward_pairs_are_usage_errors(pair: str, message: str) -> None:
    with pytest.raises(click.BadParameter) as err:
        parse_rewards((pair,))
    assert message in err.value.format_message()


def test_run_refuses_an_unknown_reward_key_before_calling_the_server(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "run",
            "--address",
            "127.0.0.1:1",
            "--state-dir",
            str(tmp_path),
            "--suite",
            "mini",
            "--split",
            "train",
            "--model",
            "m",
            "--reward",
            "bonus=1",
        ],
    )
    assert result.exit_code == 2, result.output
    assert "unknown key 'bonus'" in result.output


def test_reward_text_gives_mean_and_std_without_masked_episodes() -> None:
    counters = run_pb2.RunCounters(
        episodes_finished=3, episodes_rewarded=2, reward_sum=1.9, reward_sq_sum=1.05**2 + 0.85**2
    )
    assert reward_text(counters) == "reward 0.950 ± 0.100 (2 episodes, 1 masked)"
    assert reward_text(run_pb2.RunCounters()) == ""
    episodes = [
        run_pb2.EpisodeResult(reward=1.0),
        run_pb2.EpisodeResult(reward=-1.0),
        run_pb2.EpisodeResult(reward_masked=True),
    ]
    assert episodes_reward_text(episodes) == f"reward 0.000 ± {math.sqrt(1.0):.3f} (2 episodes, 1 masked)"


def test_settings_line_names_the_reward_weights_given() -> None:
    run = run_pb2.Run(
        episode=run_pb2.EpisodeSettings(reward=tpb.RewardWeights(integrity=-3.0, test_runs=0.0))
    )
    assert settings_line(run).endswith("reward test_runs=0 integrity=-3")
