"""The `grpo_groups` recipe through the real builder (files, manifest, rl_stats): advantages equal
hand-computed values, masked and token-less episodes are left out and counted, zero-advantage
groups are dropped, and a stale or mixed source is refused. The trajectories are hand-written
here (what the orchestrator stores with `record_tokens`); the whole path through the services
is tests/test_rl_loop_e2e.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import InvalidArgument
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_dataset.rl import PolicyMismatch

from .dataset_fixtures import ListSource, build_now, make_build, sys_, trajectory, user

V1 = tpb.AdapterIdentity(adapter_id="rl/v1", name="rl", version=1, digest="sha256:" + "a" * 64)
V2 = tpb.AdapterIdentity(adapter_id="rl/v2", name="rl", version=2, digest="sha256:" + "b" * 64)


def turn(prompt: list[int], completion: list[int], adapter: tpb.AdapterIdentity | None = V1) -> tpb.Step:
    step = tpb.Step(role=tpb.ROLE_ASSISTANT, content="x")
    step.tokens.CopyFrom(
        tpb.TurnTokens(
            prompt_token_ids=prompt,
            completion_token_ids=completion,
            completion_logprobs=[-0.5 - i / 10 for i in range(len(completion))],
        )
    )
    if adapter is not None:
        step.adapter.CopyFrom(adapter)
    return step


def episode(
    tid: str,
    task: str,
    reward: float,
    *,
    masked: bool = False,
    turns: int = 1,
    adapter: tpb.AdapterIdentity | None = V1,
    tokens: bool = True,
) -> tpb.Trajectory:
    steps = [sys_(), user(f"solve {task}")]
    for k in range(turns):
        step = turn([1, 2, 3 + k], [10 + k, 11], adapter)
        if not tokens:
            step.ClearField("tokens")
        steps += [step, user("[tool_result] ok")]
    t = trajectory(
        tid,
        task,
        steps,
        resolved=reward >= 1,
        suite="io-mini",
        kind=common_pb2.TASK_KIND_IO,
        protocol=common_pb2.TOOL_PROTOCOL_IO,
        failure=tpb.FAILURE_CATEGORY_MODEL_ERROR if masked else 0,
    )
    t.outcome.reward = 0.0 if masked else reward
    t.outcome.reward_detail.CopyFrom(
        tpb.EpisodeReward(total=t.outcome.reward, masked=masked, rule="flywheel-reward/v1")
    )
    return t


def records(store: FilesystemObjectStore, ds: dpb.Dataset) -> list[dict]:
    [f] = [f for f in ds.files if f.split == dpb.DATASET_SPLIT_TRAIN]
    return [json.loads(line) for line in store.get_bytes(f.object.key).decode().splitlines()]


def rl_build(**params: str) -> dpb.DatasetBuild:
    return make_build("grpo_groups", parameters=params, split=dpb.SplitConfig(train_ratio=1.0))


def test_advantages_are_group_normalised_and_records_are_the_stored_tokens(tmp_path: Path) -> None:
    store = FilesystemObjectStore(tmp_path)
    source = ListSource(
        [
            episode("t1", "a", 1.0, turns=2),
            episode("t2", "a", 0.0),
            episode("t3", "a", -0.1),
            episode("t4", "b", 0.3),
            episode("t5", "b", 0.3),  # no spread: dropped
            episode("t6", "a", 0.0, masked=True),  # infrastructure: masked, not a 0 reward
            episode("t7", "a", 1.0, tokens=False),  # no token record: the whole episode is out
        ]
    )
    ds = build_now(store, rl_build(policy_adapter="rl/v1", policy_digest=V1.digest), source)
    assert ds.kind == dpb.DATASET_KIND_RL
    rows = records(store, ds)
    mean = (1.0 + 0.0 - 0.1) / 3
    std = math.sqrt(((1 - mean) ** 2 + mean**2 + (-0.1 - mean) ** 2) / 3)
    by_traj = {r["trajectory_id"]: r for r in rows}
    assert [r["trajectory_id"] for r in rows] == ["t1", "t1", "t2", "t3"]
    assert by_traj["t2"]["advantage"] == pytest.approx((0.0 - mean) / (std + 1e-6))
    assert rows[0]["advantage"] == rows[1]["advantage"] == pytest.approx((1.0 - mean) / (std + 1e-6))
    assert [r["turn"] for r in rows[:2]] == [0, 1]
    assert rows[1]["prompt_token_ids"] == [1, 2, 4] and rows[1]["completion_token_ids"] == [11, 11]
    assert rows[1]["behaviour_logprobs"] == pytest.approx([-0.5, -0.6])
    assert rows[0]["adapter"] == {"adapter_id": "rl/v1", "digest": V1.digest}
    assert rows[0]["group_id"] == "io-mini/a" and rows[0]["reward"] == 1.0
    reasons = dict(ds.filter_reasons)
    assert reasons["zero_advantage"] == 2 and reasons["no_token_record"] == 1
    assert reasons["infrastructure_failure"] == 1
    s = ds.rl_stats
    assert (s.groups, s.episodes, s.samples, s.zero_advantage_groups) == (1, 3, 4, 1)
    assert s.masked_episodes == 1 and s.masked_fraction == pytest.approx(1 / 7)
    assert s.reward_mean == pytest.approx(mean) and s.reward_std == pytest.approx(std)
    assert s.policy.adapter_id == "rl/v1" and s.policy.digest == V1.digest
    assert ds.token_stats.total_train_tokens == 4 * 5
    # Dr. GRPO: advantages are only centred.
    ds2 = build_now(FilesystemObjectStore(tmp_path / "b"), rl_build(normalize_std="false"), source)
    centred = {
        r["trajectory_id"]: r["advantage"] for r in records(FilesystemObjectStore(tmp_path / "b"), ds2)
    }
    assert centred["t2"] == pytest.approx(-mean) and centred["t1"] == pytest.approx(1.0 - mean)


def test_zero_advantage_groups_can_be_kept(tmp_path: Path) -> None:
    store = FilesystemObjectStore(tmp_path)
    source = ListSource([episode("t1", "a", 0.5), episode("t2", "a", 0.5)])
    ds = build_now(store, rl_build(drop_zero_advantage_groups="false"), source)
    assert [r["advantage"] for r in records(store, ds)] == [0.0, 0.0]


def test_a_stale_or_mixed_source_is_refused(tmp_path: Path) -> None:
    mixed = ListSource([episode("t1", "a", 1.0), episode("t2", "a", 0.0, adapter=V2)])
    with pytest.raises(PolicyMismatch, match=r"t2 was sampled from rl/v2 .*not from rl/v1"):
        build_now(FilesystemObjectStore(tmp_path / "1"), rl_build(), mixed)
    same = ListSource([episode("t1", "a", 1.0), episode("t2", "a", 0.0)])
    with pytest.raises(PolicyMismatch, match=r"t1 was sampled from rl/v1 .*not from rl/v2"):
        build_now(FilesystemObjectStore(tmp_path / "2"), rl_build(policy_adapter="rl/v2"), same)
    stale_digest = "sha256:" + "c" * 64
    with pytest.raises(PolicyMismatch, match="policy_digest"):
        build_now(
            FilesystemObjectStore(tmp_path / "3"),
            rl_build(policy_adapter="rl/v1", policy_digest=stale_digest),
            same,
        )
    with pytest.raises(PolicyMismatch, match="the base model"):
        build_now(FilesystemObjectStore(tmp_path / "4"), rl_build(policy_adapter="base"), same)
    base = ListSource([episode("t1", "a", 1.0, adapter=None), episode("t2", "a", 0.0, adapter=None)])
    ds = build_now(FilesystemObjectStore(tmp_path / "5"), rl_build(policy_adapter="base"), base)
    assert ds.rl_stats.episodes == 2 and not ds.rl_stats.policy.adapter_id


def test_bad_pins_are_parameter_errors() -> None:
    with pytest.raises(InvalidArgument, match=r"build.parameters.policy_adapter: 'rl-v1' must match"):
        rl_build(policy_adapter="rl-v1")
    with pytest.raises(InvalidArgument, match=r"build\.parameters\.policy_digest"):
        rl_build(policy_digest="abc")
