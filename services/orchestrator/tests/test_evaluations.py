"""Evaluations on a hand-checked fixture: every metric equals a value worked out by hand.

Two scripted models (a hosted model cannot run here) on the mini suite's TEST split — the repo
task ``greet-bug`` and the I/O problem ``upper`` — with 2 rollouts each, through the real
sandbox and trajectory store:

``cand``: greet-bug: 1st episode writes the fix, 2nd writes a wrong one (2 steps each);
          upper: submits a right program at once (1 step) → 3/4 resolved.
``base``: greet-bug: an invalid turn, then a final answer (2 steps, 1 parse error, no write);
          upper: submits a wrong program (1 step) → 0/4 resolved.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import grpc
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.events import Event, EventBus
from flywheel_orchestrator.metrics import pass_at_k, wilson_interval
from flywheel_testing.scripted_model import json_call, text

from .conftest import Backends, orchestrator

GREET_FIX = 'def greet(name):\n    return "Hello, " + name + "!"\n'


def make_responder() -> Any:
    greet_episodes: Counter[str] = Counter()

    def respond(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        turn = sum(m["role"] == "assistant" for m in messages)
        io = "run_code" in messages[0]["content"]
        if io:
            code = "print(input().upper())" if model == "cand" else "print(input())"
            return text(json.dumps({"type": "final", "code": code}))
        if model == "base":
            return text("let me think") if turn == 0 else text('{"type":"final","answer":"?"}')
        if turn == 0:
            greet_episodes[model] += 1
            content = GREET_FIX if greet_episodes[model] == 1 else "def greet(name):\n    return name\n"
            return json_call("write_file", {"rel_path": "greet.py", "content": content})
        return text('{"type":"final","answer":"done"}')

    return respond


def test_hand_computed_helpers() -> None:
    lo, hi = wilson_interval(3, 4, 0.95)
    assert (round(lo, 4), round(hi, 4)) == (0.3006, 0.9544)
    assert wilson_interval(0, 4, 0.95)[0] == 0.0 and round(wilson_interval(0, 4, 0.95)[1], 4) == 0.4899
    assert pass_at_k(2, 1, 1) == 0.5 and pass_at_k(2, 1, 2) == 1.0 and pass_at_k(5, 0, 3) == 0.0
    assert round(pass_at_k(5, 2, 2), 4) == 0.7  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


async def test_evaluation_metrics_match_the_hand_computed_values(
    backends: Backends, service_env: dict[str, str], event_bus: EventBus
) -> None:
    events: list[Event] = []

    async def on(event: Event) -> None:
        events.append(event)

    await event_bus.subscribe("eval-test", "flywheel.eval.completed", on)
    async with orchestrator(backends, service_env, make_responder(), models=("cand", "base")) as h:
        request = epb.Evaluation(
            suite="mini",
            split=common_pb2.TASK_SPLIT_TEST,
            models=["cand", "base"],
            baseline_model="base",
            rollouts_per_task=2,
            concurrency=1,
        )
        created = (await h.stub.CreateEvaluation(opb.CreateEvaluationRequest(evaluation=request))).evaluation
        episodes = 0
        final = None
        rewards: dict[str, list[float]] = {"cand": [], "base": []}
        async for update in h.stub.WatchEvaluation(
            opb.WatchEvaluationRequest(evaluation_id=created.id), timeout=180
        ):
            if update.WhichOneof("update") == "episode":
                episodes += 1
                rewards[update.episode.model].append(update.episode.reward)
            else:
                final = update.evaluation
        assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
        assert episodes == 8 and final.progress.episodes_total == 8 == final.progress.episodes_finished
        cand, base = final.model_metrics
        assert (cand.model, cand.baseline, base.model, base.baseline) == ("cand", False, "base", True)
        assert (cand.episodes, cand.resolved, cand.pass_rate) == (4, 3, 0.75)
        assert (round(cand.pass_rate_ci.lower, 4), round(cand.pass_rate_ci.upper, 4)) == (0.3006, 0.9544)
        assert cand.pass_rate_ci.method == "wilson" and cand.pass_rate_ci.level == 0.95
        assert [(p.k, p.value) for p in cand.pass_at_k] == [(1, 0.75), (2, 1.0)]
        assert (
            cand.parse_errors_per_episode,
            cand.write_rate,
            cand.mean_steps,
            cand.loop_detections_per_episode,
        ) == (0.0, 0.5, 1.5, 0.0)
        assert (base.resolved, base.parse_errors_per_episode, base.write_rate, base.mean_steps) == (
            0,
            0.5,
            0.0,
            1.5,
        )
        assert [(p.k, p.value) for p in base.pass_at_k] == [(1, 0.0), (2, 0.0)]
        d = cand.delta_vs_baseline
        assert (d.pass_rate, d.parse_errors_per_episode, d.write_rate, d.mean_steps) == (0.75, -0.5, 0.5, 0.0)
        assert not base.HasField("delta_vs_baseline")
        # mean reward: the episodes' own rewards (none masked here), higher for the better model
        for m in (cand, base):
            assert m.mean_reward == pytest.approx(sum(rewards[m.model]) / 4) and m.masked_episodes == 0
        assert cand.mean_reward > base.mean_reward
        rows = {r.task_id: r for r in final.task_results}
        assert set(rows) == {"greet-bug", "upper"}
        g_cand, g_base = rows["greet-bug"].models
        assert (g_cand.rollouts, g_cand.resolved, g_cand.mean_steps) == (2, 1, 2.0)
        assert list(g_cand.failure_categories) == [tpb.FAILURE_CATEGORY_TESTS_FAILED]
        assert (
            list(g_base.failure_categories) == [tpb.FAILURE_CATEGORY_NO_CHANGE] * 2
            and g_base.parse_errors == 2
        )
        u_base = rows["upper"].models[1]
        assert list(u_base.failure_categories) == [tpb.FAILURE_CATEGORY_WRONG_ANSWER] * 2
        # the report objects
        root = h.objects
        md = (root / final.report.markdown.key).read_text()
        assert (
            f"| `cand` | 4 | 0.750 | 0.30-0.95 (95%) | {cand.mean_reward:+.3f} |" in md
            and "| `cand` | +0.750 | -0.50 | +0.50" in md
        )
        assert (root / final.report.charts[0].key).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        as_json = json.loads((root / final.report.json.key).read_text())
        assert as_json["model_metrics"][0]["pass_rate"] == 0.75
        # listed without the per-task table
        listed = (await h.stub.ListEvaluations(opb.ListEvaluationsRequest(suite="mini"))).evaluations
        assert [e.id for e in listed] == [created.id] and not listed[0].task_results
    for _ in range(50):
        if events:
            break
        await asyncio.sleep(0.1)
    [event] = events
    done = event.parse(events_pb2.EvaluationCompleted)
    assert done.evaluation_id == created.id and done.state == common_pb2.JOB_STATE_SUCCEEDED
    assert done.baseline_model == "base" and [m.pass_rate for m in done.model_metrics] == [0.75, 0.0]


async def test_evaluation_requests_are_checked(backends: Backends, service_env: dict[str, str]) -> None:
    async with orchestrator(backends, service_env, make_responder(), models=("cand", "base")) as h:
        cases = [
            (epb.Evaluation(suite="mini", split=common_pb2.TASK_SPLIT_TEST), "evaluation.models"),
            (
                epb.Evaluation(
                    suite="mini", split=common_pb2.TASK_SPLIT_TEST, models=["a", "a"], baseline_model="a"
                ),
                "distinct",
            ),
            (
                epb.Evaluation(suite="mini", split=common_pb2.TASK_SPLIT_TEST, models=["a", "b"]),
                "evaluation.baseline_model",
            ),
            (
                epb.Evaluation(
                    suite="mini", split=common_pb2.TASK_SPLIT_TEST, models=["a"], baseline_model="z"
                ),
                "not one of",
            ),
            (epb.Evaluation(suite="mini", models=["a"]), "evaluation.split"),
            (
                epb.Evaluation(
                    suite="mini", split=common_pb2.TASK_SPLIT_TEST, models=["a"], confidence_level=1.5
                ),
                "confidence_level",
            ),
        ]
        for e, needle in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.stub.CreateEvaluation(opb.CreateEvaluationRequest(evaluation=e))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert needle in err.value.details(), err.value.details()
