"""Episode rewards (rule ``flywheel-reward/v1``) and adapter pinning.

The rule's unit tests check hand-computed totals. The run tests go through the real
orchestrator, sandbox runner and trajectory store; the model is the scripted OpenAI-compatible
server (a hosted model cannot run here), whose ``/v1/models`` listing is made to show an adapter
with a digest for the pinning tests.
"""

from __future__ import annotations

import json
import math
from typing import Any

import grpc
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.errors import InvalidArgument
from flywheel_orchestrator import validation
from flywheel_orchestrator.rewards import (
    DEFAULTS,
    RULE,
    EpisodeFacts,
    episode_reward,
    lowest_reward,
    resolve,
)
from flywheel_orchestrator.runs import count_result, result_from_basic
from flywheel_testing.scripted_model import Fail, json_call, text

from .conftest import Backends, Harness, orchestrator
from .test_runs import FIXED_ADD, stored

TRAIN = common_pb2.TASK_SPLIT_TRAIN
FINAL = text('{"type": "final", "answer": "fixed"}')
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64

# ---------------------------------------------------------------------------------- the rule


def test_resolved_episode_with_default_weights() -> None:
    r = episode_reward(EpisodeFacts(resolved=True, tests_passed=2, tests_total=2, tool_calls_executed=3))
    # correctness 1·1.0 + test_runs 0·0.3 + tool_use 1·0.05
    assert r.total == pytest.approx(1.05)
    assert r.rule == RULE and not r.masked and not r.integrity
    assert r.components == tpb.RewardComponents(correctness=1.0, tool_use=1.0)
    assert r.weights == DEFAULTS and r.weights.HasField("test_runs")


def test_partial_episode_with_debug_attempts_and_parse_errors() -> None:
    facts = EpisodeFacts(
        resolved=False,
        tests_passed=1,
        tests_total=2,
        failure_category=tpb.FAILURE_CATEGORY_TESTS_FAILED,
        test_runs=0.5,
        tool_calls_executed=2,
        failed_runs=3,
        parse_errors=1,
    )
    r = episode_reward(facts)
    assert (r.components.correctness, r.components.debug_attempts, r.components.parse_errors) == (0.5, 2, 1)
    # 0.5 + 0.3·0.5 + 0.05 - 0.1·2 - 0.1·1
    assert r.total == pytest.approx(0.4)


def test_penalties_are_capped_and_the_floor_is_the_lowest_reward() -> None:
    facts = EpisodeFacts(resolved=False, tests_passed=0, tests_total=0, failed_runs=40, parse_errors=9)
    r = episode_reward(facts)
    assert (r.components.debug_attempts, r.components.parse_errors) == (5, 5)
    assert r.total == pytest.approx(-1.0) == pytest.approx(lowest_reward(None))
    # one failed run is the first attempt, never penalised
    assert episode_reward(EpisodeFacts(False, 0, 2, failed_runs=1)).components.debug_attempts == 0


def test_integrity_outcome_gets_the_integrity_reward() -> None:
    facts = EpisodeFacts(
        resolved=False,
        tests_passed=2,
        tests_total=2,
        failure_category=tpb.FAILURE_CATEGORY_INTEGRITY,
        tool_calls_executed=1,
    )
    r = episode_reward(facts)
    assert r.integrity and r.total == -2.0 and not r.masked
    assert r.components.correctness == 1.0  # what the forged run claimed, kept for the reader


@pytest.mark.parametrize(
    ("category", "name"),
    [
        (tpb.FAILURE_CATEGORY_MODEL_ERROR, "MODEL_ERROR"),
        (tpb.FAILURE_CATEGORY_SANDBOX_ERROR, "SANDBOX_ERROR"),
    ],
)
def test_infrastructure_outcomes_are_masked(category: int, name: str) -> None:
    facts = EpisodeFacts(
        resolved=False,
        tests_passed=0,
        tests_total=0,
        failure_category=category,
        failure_detail="gateway answered HTTP 503: busy",
        tool_calls_executed=2,
    )
    r = episode_reward(facts)
    assert r.masked and r.total == 0.0 and not r.integrity
    assert r.masked_reason == f"{name}: gateway answered HTTP 503: busy"


def test_custom_weights_are_resolved_and_applied() -> None:
    weights = tpb.RewardWeights(correctness=2.0, test_runs=0.0, debug_penalty=0.5, max_penalised=2)
    facts = EpisodeFacts(
        resolved=False,
        tests_passed=3,
        tests_total=4,
        failure_category=tpb.FAILURE_CATEGORY_TESTS_FAILED,
        test_runs=1.0,
        tool_calls_executed=1,
        failed_runs=9,
        parse_errors=1,
    )
    r = episode_reward(facts, weights)
    # 2·0.75 + 0·1 + 0.05·1 - 0.5·2 (capped at 2) - 0.1·1
    assert r.total == pytest.approx(0.45)
    assert r.weights == tpb.RewardWeights(
        correctness=2.0,
        test_runs=0.0,
        tool_use=0.05,
        debug_penalty=0.5,
        format_penalty=0.1,
        integrity=-2.0,
        max_penalised=2,
    )
    assert resolve(weights).HasField("test_runs")  # an explicit 0 stays 0, not the default


# ---------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("weights", "field", "message"),
    [
        (
            tpb.RewardWeights(integrity=-0.5),
            "integrity",
            "must be below the lowest other reward these weights allow (-1.0)",
        ),
        (
            tpb.RewardWeights(debug_penalty=1.0, integrity=-5.0),
            "integrity",
            "must be below the lowest other reward these weights allow (-5.5)",
        ),
        (tpb.RewardWeights(debug_penalty=-0.1), "debug_penalty", "must be >= 0"),
        (tpb.RewardWeights(tool_use=-1.0), "tool_use", "must be >= 0"),
        (tpb.RewardWeights(correctness=math.nan), "correctness", "must be a finite number"),
        (tpb.RewardWeights(integrity=-math.inf), "integrity", "must be a finite number"),
        (tpb.RewardWeights(max_penalised=-1), "max_penalised", "must be >= 0"),
    ],
)
def test_bad_reward_weights_name_the_field(weights: tpb.RewardWeights, field: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validation.episode(run_pb2.EpisodeSettings(reward=weights), [], "run")
    assert str(err.value).startswith(f"run.episode.reward.{field}: {message}"), str(err.value)


def test_usable_reward_weights_pass() -> None:
    for weights in (
        tpb.RewardWeights(),
        tpb.RewardWeights(integrity=-1.01),
        tpb.RewardWeights(debug_penalty=0, format_penalty=0, integrity=-0.01),
    ):
        validation.episode(run_pb2.EpisodeSettings(reward=weights), [], "loop")


# ---------------------------------------------------------------------------------- runs


def by_episode(*scripts: tuple[Any, ...]):
    """A responder playing ``scripts[k]`` in the k-th episode (runs with concurrency 1, so
    episodes come one after the other; an episode starts with a call that has no assistant turn)."""
    state = {"episode": -1}

    def respond(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        n = sum(m["role"] == "assistant" for m in messages)
        if n == 0:
            state["episode"] += 1
        script = scripts[min(state["episode"], len(scripts) - 1)]
        return script[n] if n < len(script) else FINAL

    return respond


async def watch(h: Harness, run: run_pb2.Run) -> tuple[run_pb2.Run, list[run_pb2.EpisodeResult]]:
    created = await h.stub.CreateRun(opb.CreateRunRequest(run=run))
    last, episodes = None, []
    async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.run.id), timeout=120):
        if update.WhichOneof("update") == "run":
            last = update.run
        else:
            episodes.append(update.episode)
    assert last is not None and last.state == common_pb2.JOB_STATE_SUCCEEDED, last
    return last, sorted(episodes, key=lambda e: e.attempt)


async def rebuilt_counters(backends: Backends, run: run_pb2.Run) -> run_pb2.RunCounters:
    """The counters a resumed run rebuilds, from the store's BASIC view (what runs.py reads)."""
    async with auth.channel(backends.trajectory) as ch:
        stub = trajectory_pb2_grpc.TrajectoryServiceStub(ch)
        listing = await stub.ListTrajectories(
            tpb.ListTrajectoriesRequest(
                filter=tpb.TrajectoryFilter(run_ids=[run.id]), view=tpb.TRAJECTORY_VIEW_BASIC, page_size=100
            )
        )
    counters = run_pb2.RunCounters(tasks=run.counters.tasks, episodes_total=run.counters.episodes_total)
    for t in listing.trajectories:
        count_result(counters, result_from_basic(t))
    return counters


async def test_runs_store_rewards_and_count_them(backends: Backends, service_env: dict[str, str]) -> None:
    resolved = (json_call("write_file", {"rel_path": "calc.py", "content": FIXED_ADD}), FINAL)
    sloppy = (text("I will fix it."), text("{not json"), *resolved)
    broken = (Fail(400, "context window exceeded"),)
    bodies = ("def add(a, b):\n    return 0\n", "def add(a, b):\n    return a * b\n", FIXED_ADD)
    writes = [json_call("write_file", {"rel_path": "calc.py", "content": b}) for b in bodies]
    debugging = (*writes, FINAL)
    io_script = (
        json_call("run_code", {"code": "print(int(input()) + 2)", "test_case_index": 1}),
        json_call("run_code", {"code": "print(2 * int(input()))", "test_case_index": 1}),
        text(json.dumps({"type": "final", "code": "print(2 * int(input()))"})),
    )
    respond = by_episode(resolved, sloppy, broken, debugging, io_script)
    async with orchestrator(backends, service_env, respond) as h:
        base = {"suite": "mini", "model": "scripted", "split": TRAIN, "concurrency": 1}
        run, episodes = await watch(h, run_pb2.Run(task_ids=["add-bug"], rollouts_per_task=3, **base))
        after_write = run_pb2.EpisodeSettings(test_policy=run_pb2.TEST_POLICY_AFTER_WRITE)
        run2, _ = await watch(h, run_pb2.Run(task_ids=["add-bug"], episode=after_write, **base))
        run3, _ = await watch(h, run_pb2.Run(task_ids=["double"], **base))
        ref = run_pb2.Run(
            suite="mini", split=TRAIN, task_ids=["add-bug", "double"], teacher_kind=tpb.TEACHER_KIND_REFERENCE
        )
        run4, _ = await watch(h, ref)
    trajectories = await stored(backends, run.id)
    details = [t.outcome.reward_detail for t in trajectories]
    assert [t.outcome.reward for t in trajectories] == pytest.approx([1.05, 0.85, 0.0])
    assert [d.total for d in details] == pytest.approx([1.05, 0.85, 0.0])
    assert details[1].components.parse_errors == 2 and details[1].components.tool_use == 1
    assert trajectories[2].outcome.failure_category == tpb.FAILURE_CATEGORY_MODEL_ERROR
    assert details[2].masked and details[2].masked_reason.startswith("MODEL_ERROR: gateway answered HTTP 400")
    assert all(d.rule == RULE and d.weights == DEFAULTS for d in details)
    # what WatchRun streams, and the counters (the masked episode left out)
    assert [(e.reward, e.reward_masked) for e in episodes] == [
        pytest.approx((1.05, False)),
        pytest.approx((0.85, False)),
        (0.0, True),
    ]
    c = run.counters
    assert (c.episodes_rewarded, c.episodes_errored) == (2, 1)
    assert c.reward_sum == pytest.approx(1.9) and c.reward_sq_sum == pytest.approx(1.05**2 + 0.85**2)
    assert await rebuilt_counters(backends, run) == c  # a resumed run counts the same
    # AFTER_WRITE: two failing writes (1/2 each), then the fix (2/2): best run 1.0, one retry penalised
    [t2] = await stored(backends, run2.id)
    comp = t2.outcome.reward_detail.components
    assert (comp.test_runs, comp.debug_attempts, comp.tool_use) == (1.0, 1.0, 1.0)
    assert t2.outcome.reward == pytest.approx(1.0 + 0.3 - 0.1 + 0.05)
    # I/O: case 1 fails then passes: 1 of 3 cases, no retry penalised
    [t3] = await stored(backends, run3.id)
    assert t3.outcome.reward_detail.components.test_runs == pytest.approx(1 / 3)
    assert t3.outcome.reward == pytest.approx(1.0 + 0.1 + 0.05)
    # the reference teacher's episodes are rewarded too (repo: 1.05; I/O: case 0 passed, 1.15)
    ref_rewards = {t.task.task_id: t.outcome.reward for t in await stored(backends, run4.id)}
    assert ref_rewards == {"add-bug": pytest.approx(1.05), "double": pytest.approx(1.15)}
    assert run4.counters.episodes_rewarded == 2 and run4.counters.reward_sum == pytest.approx(2.2)


async def test_custom_weights_reach_the_stored_reward(
    backends: Backends, service_env: dict[str, str]
) -> None:
    weights = tpb.RewardWeights(correctness=2.0, tool_use=0.0)
    respond = by_episode((json_call("write_file", {"rel_path": "calc.py", "content": FIXED_ADD}), FINAL))
    async with orchestrator(backends, service_env, respond) as h:
        run, _ = await watch(
            h,
            run_pb2.Run(
                suite="mini",
                model="scripted",
                split=TRAIN,
                task_ids=["add-bug"],
                episode=run_pb2.EpisodeSettings(reward=weights),
            ),
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            bad = run_pb2.EpisodeSettings(reward=tpb.RewardWeights(integrity=-0.5))
            await h.stub.CreateRun(
                opb.CreateRunRequest(
                    run=run_pb2.Run(suite="mini", model="scripted", split=TRAIN, episode=bad)
                )
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "run.episode.reward.integrity: must be below the lowest other reward these weights allow (-1.0); "
        "got -0.5"
    )
    [t] = await stored(backends, run.id)
    assert t.outcome.reward == pytest.approx(2.0)
    assert t.outcome.reward_detail.weights.correctness == 2.0
    assert t.outcome.reward_detail.weights.tool_use == 0.0


# ---------------------------------------------------------------------------------- pinning


async def test_a_run_pins_its_adapter_and_masks_turns_from_another_digest(
    backends: Backends, service_env: dict[str, str]
) -> None:
    model = "ft/coder-v1"
    listing = {model: {"parent": "base-model", "digest": DIGEST_A}}
    started = [0]

    def reload_mid_episode(m: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        # The second episode's first turn is answered by digest A; then the adapter is reloaded
        # as B (what a forced reload does), so its next turn must not be taken.
        n = sum(x["role"] == "assistant" for x in messages)
        if n == 0:
            started[0] += 1
            if started[0] == 2:
                listing[model]["digest"] = DIGEST_B
        return json_call("read_file", {"rel_path": "calc.py"}) if n == 0 else FINAL

    # The identity is asked at every turn (TTL 0), so the reload is seen at the next turn.
    async with orchestrator(
        backends, service_env, reload_mid_episode, models=(model,), model_identity_ttl_s=0.0
    ) as h:
        h.model.listing = listing
        spec = {"suite": "mini", "model": model, "split": TRAIN, "task_ids": ["add-bug"], "concurrency": 1}
        run, episodes = await watch(h, run_pb2.Run(rollouts_per_task=2, **spec))
        # a run started after the reload pins the new digest and runs normally
        again, again_episodes = await watch(h, run_pb2.Run(**spec))
        got = (await h.stub.GetRun(opb.GetRunRequest(run_id=run.id))).run
    assert got.adapter == tpb.AdapterIdentity(adapter_id="coder/v1", name="coder", version=1, digest=DIGEST_A)
    first, second = await stored(backends, run.id)
    assert first.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE  # unchanged digest: fine
    assert not first.outcome.reward_detail.masked
    assert all(s.adapter.digest == DIGEST_A for s in first.steps if s.role == tpb.ROLE_ASSISTANT)
    assert second.outcome.failure_category == tpb.FAILURE_CATEGORY_MODEL_ERROR
    assert second.outcome.failure_detail.startswith(
        f"adapter {model} changed during the run: pinned {DIGEST_A} now {DIGEST_B}"
    )
    assert second.outcome.reward_detail.masked and second.outcome.reward == 0.0
    # only the turn answered by the pinned digest is in the trajectory
    assert [s.adapter.digest for s in second.steps if s.role == tpb.ROLE_ASSISTANT] == [DIGEST_A]
    assert [e.reward_masked for e in episodes] == [False, True]
    assert run.counters.episodes_rewarded == 1 and run.counters.episodes_errored == 1
    assert again.adapter.digest == DIGEST_B and not again_episodes[0].reward_masked


async def test_models_that_are_not_adapters_pin_nothing(
    backends: Backends, service_env: dict[str, str]
) -> None:
    async with orchestrator(backends, service_env, by_episode((FINAL,))) as h:
        run, _ = await watch(
            h, run_pb2.Run(suite="mini", model="scripted", split=TRAIN, task_ids=["add-bug"])
        )
    assert not run.HasField("adapter")
