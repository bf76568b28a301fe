"""The `grpo_groups` recipe through the real builder (files, manifest, rl_stats): advantages equal
hand-computed values, masked and token-less episodes are left out and counted, zero-advantage
groups are dropped, and a stale or mixed source is refused. The trajectories are hand-written
here (what the orchestrator stores with `record_tokens`); the in-process builds read them from a
list, the service test at the end puts them into the REAL trajectory store (a process) and builds
through the real dataset service. The whole path through every service is
tests/test_rl_loop_e2e.py."""

from __future__ import annotations

import asyncio
import io
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.errors import InvalidArgument
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_dataset.rl import PolicyMismatch
from flywheel_dataset.service import build_app
from flywheel_dataset.settings import DatasetSettings
from flywheel_testing.processes import start_module
from flywheel_testing.services import boot_service

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
    assert dict(ds.filter_reasons) == {"zero_advantage": 2, "no_token_record": 1, "masked_infrastructure": 1}
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


def test_two_digests_of_one_version_are_a_mixed_source(tmp_path: Path) -> None:
    """The same `name/vN` with two contents (a re-published version) is two policies."""
    republished = tpb.AdapterIdentity(adapter_id="rl/v1", name="rl", version=1, digest="sha256:" + "d" * 64)
    source = ListSource([episode("t1", "a", 1.0), episode("t2", "a", 0.0, adapter=republished)])
    with pytest.raises(PolicyMismatch) as err:
        build_now(FilesystemObjectStore(tmp_path), rl_build(), source)
    message = str(err.value)
    assert "trajectory t2" in message and republished.digest in message and V1.digest in message


def test_unrewarded_masked_and_lonely_episodes_are_counted(tmp_path: Path) -> None:
    """A reward masked without an infrastructure failure category still goes; so do episodes
    without a reward and groups below min_group_size."""
    reward_masked = episode("t3", "a", 0.5)
    reward_masked.outcome.reward_detail.masked = True
    unrewarded = episode("t4", "a", 0.5)
    unrewarded.outcome.ClearField("reward_detail")
    source = ListSource(
        [
            episode("t1", "a", 1.0),
            episode("t2", "a", 0.0),
            reward_masked,
            unrewarded,
            episode("t5", "b", 1.0),  # alone in its group
            episode("t6", "c", 1.0),
            episode("t7", "c", 0.0),
            episode("t8", "c", 0.5),
        ]
    )
    store = FilesystemObjectStore(tmp_path)
    ds = build_now(store, rl_build(), source)
    assert dict(ds.filter_reasons) == {"masked_infrastructure": 1, "no_reward": 1, "group_too_small": 1}
    assert ds.rl_stats.masked_episodes == 1 and ds.rl_stats.masked_fraction == pytest.approx(1 / 7)
    assert ds.rl_stats.groups == 2 and ds.rl_stats.episodes == 5
    ds3 = build_now(FilesystemObjectStore(tmp_path / "3"), rl_build(min_group_size="3"), source)
    assert ds3.filter_reasons["group_too_small"] == 3 and ds3.rl_stats.groups == 1
    assert {r["trajectory_id"] for r in records(FilesystemObjectStore(tmp_path / "3"), ds3)} == {
        "t6",
        "t7",
        "t8",
    }


def test_no_deduplication_but_decontamination_by_task_id(tmp_path: Path) -> None:
    """Identical episodes of a group are all samples; episodes of an evaluation task are not."""
    held_out = [episode("t4", "b", 1.0), episode("t5", "b", 0.0)]
    for t in held_out:
        t.task.split = common_pb2.TASK_SPLIT_TEST
    source = ListSource(
        [episode("t1", "a", 1.0), episode("t2", "a", 1.0), episode("t3", "a", 0.0), *held_out]
    )
    store = FilesystemObjectStore(tmp_path)
    build = make_build(
        "grpo_groups",
        split=dpb.SplitConfig(train_ratio=1.0),
        # A low near-duplicate threshold: a de-duplicating build would keep one of t1 and t2.
        hygiene=dpb.HygieneConfig(decontaminate_suites=["io-mini"], near_duplicate_threshold=0.1),
    )
    ds = build_now(store, build, source)
    rows = records(store, ds)
    assert [r["trajectory_id"] for r in rows] == ["t1", "t2", "t3"]
    assert rows[0]["completion_token_ids"] == rows[1]["completion_token_ids"]
    h = ds.hygiene_stats
    assert (h.exact_duplicates_removed, h.near_duplicates_removed, h.decontaminated_by_task_id) == (0, 0, 2)


def test_only_the_grpo_tokens_format() -> None:
    assert list(rl_build().formats) == [dpb.OUTPUT_FORMAT_GRPO_TOKENS]
    with pytest.raises(InvalidArgument, match=r"build\.formats\[0\].*OUTPUT_FORMAT_GRPO_TOKENS"):
        make_build("grpo_groups", formats=[dpb.OUTPUT_FORMAT_CHAT_MESSAGES])
    with pytest.raises(InvalidArgument, match=r"build\.formats\[0\]"):
        make_build("step_sft", formats=[dpb.OUTPUT_FORMAT_GRPO_TOKENS])


@pytest.fixture
def rl_store(service_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, list[tpb.Trajectory]]]:
    """The real trajectory store holding run `rl-1` (one policy) and `rl-mixed` (two digests)."""
    stale = tpb.AdapterIdentity(adapter_id="rl/v1", name="rl", version=1, digest="sha256:" + "e" * 64)
    kept = [episode("rl1-a-0", "a", 1.0, turns=2), episode("rl1-a-1", "a", 0.0), episode("rl1-a-2", "a", 0.5)]
    masked = episode("rl1-a-3", "a", 0.0, masked=True)
    mixed = [episode("mix-a-0", "a", 1.0), episode("mix-a-1", "a", 0.0, adapter=stale)]
    for n, t in enumerate([*kept, masked]):
        t.run_id = "rl-1"
        for step in t.steps:  # log-probs of their own per trajectory, to see them travel
            if step.HasField("tokens"):
                step.tokens.completion_logprobs[:] = [-(n + 1) / 7, -(n + 2) / 3]
    for t in mixed:
        t.run_id = "rl-mixed"
    env = {**service_env, "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(tmp_path / "index")}
    proc, info, _ = start_module("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_", env, tmp_path)
    address = f"127.0.0.1:{info['port']}"
    try:
        with auth.sync_channel(address) as channel:
            reply = trajectory_pb2_grpc.TrajectoryServiceStub(channel).BatchPutTrajectories(
                iter([tpb.BatchPutTrajectoriesRequest(trajectory=t) for t in [*kept, masked, *mixed]]),
                timeout=60,
            )
            assert not reply.errors, reply.errors
        yield address, kept
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _build(stub: dataset_pb2_grpc.DatasetServiceStub, run_id: str) -> dpb.DatasetBuild:
    build = dpb.DatasetBuild(
        recipe="grpo_groups",
        source=dpb.DatasetSource(run_ids=[run_id]),
        split=dpb.SplitConfig(train_ratio=1.0),
        file_formats=[dpb.FILE_FORMAT_JSONL, dpb.FILE_FORMAT_PARQUET],
    )
    created = (await stub.CreateDatasetBuild(dpb.CreateDatasetBuildRequest(build=build))).build
    last = created
    async for update in stub.WatchDatasetBuild(dpb.WatchDatasetBuildRequest(build_id=created.id), timeout=60):
        last = update.build
    return last


async def test_through_the_service_over_the_real_trajectory_store(
    service_env: dict[str, str], rl_store: tuple[str, list[tpb.Trajectory]]
) -> None:
    """Records carry the stored trajectories' own ids and log-probs; rl_stats reach GetDataset
    (the manifest); a mixed source fails the build FAILED_PRECONDITION naming the trajectory."""
    from click.testing import CliRunner

    from flywheel_cli.main import cli

    address_store, kept = rl_store
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": address_store}
    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            final = await _build(stub, "rl-1")
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
            ds = (await stub.GetDataset(dpb.GetDatasetRequest(dataset_id=final.dataset_id))).dataset
            refused = await _build(stub, "rl-mixed")
        shown = await asyncio.to_thread(
            CliRunner(env={"COLUMNS": "240"}).invoke, cli, ["dataset", "--address", address, "show", ds.id]
        )
    assert ds.kind == dpb.DATASET_KIND_RL and dict(ds.filter_reasons) == {"masked_infrastructure": 1}
    s = ds.rl_stats
    assert (s.groups, s.episodes, s.samples, s.masked_episodes) == (1, 3, 4, 1)
    assert s.masked_fraction == pytest.approx(0.25) and s.policy.digest == V1.digest
    assert shown.exit_code == 0 and "rl: 1 groups, 3 episodes, 4 samples" in shown.output
    store = FilesystemObjectStore(Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]))
    [jsonl] = [f for f in ds.files if f.file_format == dpb.FILE_FORMAT_JSONL]
    [parquet] = [f for f in ds.files if f.file_format == dpb.FILE_FORMAT_PARQUET]
    rows = [json.loads(line) for line in store.get_bytes(jsonl.object.key).decode().splitlines()]
    assert pq.read_table(io.BytesIO(store.get_bytes(parquet.object.key))).to_pylist() == rows
    expected = [
        (t.id, k, list(s.tokens.prompt_token_ids), list(s.tokens.completion_token_ids))
        for t in kept
        for k, s in enumerate(x for x in t.steps if x.role == tpb.ROLE_ASSISTANT)
    ]
    got = [(r["trajectory_id"], r["turn"], r["prompt_token_ids"], r["completion_token_ids"]) for r in rows]
    assert got == expected
    logprobs = [list(s.tokens.completion_logprobs) for t in kept for s in t.steps if s.HasField("tokens")]
    assert [r["behaviour_logprobs"] for r in rows] == logprobs  # float32 in the proto: exact
    assert refused.state == common_pb2.JOB_STATE_FAILED
    assert refused.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "mix-a-1" in refused.error.message and "sha256:" + "e" * 64 in refused.error.message
    assert V1.digest in refused.error.message
