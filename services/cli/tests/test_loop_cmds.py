"""``flywheel loop create|show|watch`` for rounds, aliases, canaries, gate rules and captured
traffic, against a scripted orchestrator (a real gRPC server, see conftest.py).

A real multi-round loop with a canary needs every service and a model that trains (the
orchestrator's end-to-end tests run one); these tests check the CLI's half: each option lands in
the right Loop field of CreateLoop, bad options are refused (exit 2, naming the option) before any
call, and a loop's rounds, gate rules and promotion are printed.
"""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner, Result

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel_cli.main import cli

BASE = ("--suite", "mini", "--base-model", "tiny", "--adapter-name", "fixer", "--reference", "--no-watch")
SUCCEEDED, RUNNING = common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_RUNNING


def flywheel(address: str, *args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "300"})
    return runner.invoke(cli, ["loop", "--address", address, *args], catch_exceptions=False)


def created(orch: Any, *args: str) -> lpb.Loop:
    """The Loop that ``flywheel loop create BASE… args`` sent."""
    orch.answers["CreateLoop"] = opb.CreateLoopResponse(
        loop=lpb.Loop(id="loop-01", suite="mini", base_model="tiny")
    )
    result = flywheel(orch.address, "create", *BASE, *args)
    assert result.exit_code == 0, result.output
    assert "loop-01" in result.output
    request: opb.CreateLoopRequest = orch.asked("CreateLoop")[-1]
    return request.loop


def test_create_sends_every_new_field(scripted_orchestrator: Any) -> None:
    loop = created(
        scripted_orchestrator,
        "--alias", "agent/fixer",
        "--rounds", "3",
        "--stop-after-rejections", "2",
        "--round-start", "from-base",
        "--incumbent-rollouts",
        "--init-adapter", "fixer/v1",
        "--canary-fraction", "0.2", "--canary-min-requests", "30", "--canary-max-duration", "15m",
        "--gate-rule", "pass_rate:must_not_worsen:0.0:interval",
        "--gate-rule", "parse_errors:must_improve:0.1",
        "--min-episodes", "6",
        "--captured-alias", "agent/fixer",
        "--captured-since", "2026-12-01T09:30:00+01:00",
        "--captured-until", "2026-12-02",
        "--captured-feedback", "not_failed",
    )  # fmt: skip
    assert (loop.alias, loop.rounds, loop.stop_after_rejections) == ("agent/fixer", 3, 2)
    assert loop.round_start == lpb.ROUND_START_FROM_BASE and loop.incumbent_rollouts
    assert loop.init_adapter == "fixer/v1" and not loop.HasField("rl")
    assert loop.canary.fraction == 0.2 and loop.canary.min_requests == 30
    assert loop.canary.max_duration.seconds == 900 and not loop.canary.shadow
    assert list(loop.gate.rules) == [
        lpb.GateRule(
            metric=lpb.GATE_METRIC_PASS_RATE, kind=lpb.GATE_RULE_KIND_MUST_NOT_WORSEN, use_interval=True
        ),
        lpb.GateRule(
            metric=lpb.GATE_METRIC_PARSE_ERRORS_PER_EPISODE, kind=lpb.GATE_RULE_KIND_MUST_IMPROVE, margin=0.1
        ),
    ]
    assert loop.gate.min_episodes == 6
    (captured,) = loop.captured_traffic
    assert captured.alias == "agent/fixer" and captured.feedback == dpb.FEEDBACK_FILTER_NOT_FAILED
    # 09:30 at +01:00 is 08:30 UTC; a date without an offset is midnight UTC.
    assert captured.time_range.start_time.ToJsonString() == "2026-12-01T08:30:00Z"
    assert captured.time_range.end_time.ToJsonString() == "2026-12-02T00:00:00Z"


def test_create_without_the_new_options_leaves_them_unset(scripted_orchestrator: Any) -> None:
    loop = created(scripted_orchestrator)
    assert not loop.HasField("canary") and not loop.captured_traffic and not loop.gate.rules
    assert (loop.alias, loop.rounds, loop.round_start, loop.init_adapter) == ("", 0, 0, "")
    shadow = created(scripted_orchestrator, "--shadow")
    assert shadow.canary == apb.CanaryPolicy(shadow=True)


def test_init_adapter_of_an_rl_loop_is_its_starting_policy(scripted_orchestrator: Any) -> None:
    loop = created(scripted_orchestrator, "--kind", "rl", "--iterations", "2", "--init-adapter", "fixer/v4")
    assert loop.rl.init_adapter == "fixer/v4" and loop.init_adapter == ""


def test_gpus_are_the_loop_s_train_gpus(scripted_orchestrator: Any) -> None:
    loop = created(scripted_orchestrator, "--kind", "rl", "--iterations", "2", "--gpus", "4")
    assert loop.train_gpus == 4
    assert created(scripted_orchestrator).train_gpus == 0


def test_sft_tasks_of_an_rl_warm_start(scripted_orchestrator: Any) -> None:
    loop = created(
        scripted_orchestrator, "--kind", "rl", "--iterations", "2", "--sft-warm-start",
        "--train-task", "a", "--sft-task", "a", "--sft-task", "b",
    )  # fmt: skip
    assert loop.rl.sft_warm_start and list(loop.rl.sft_task_ids) == ["a", "b"]
    assert list(loop.train_task_ids) == ["a"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--gate-rule", "pass_rate"), "is not METRIC:KIND[:MARGIN[:interval]]"),
        (("--gate-rule", "speed:must_improve"), "unknown metric 'speed'"),
        (("--gate-rule", "pass_rate:better"), "unknown kind 'better'"),
        (("--gate-rule", "pass_rate:must_improve:lots"), "margin 'lots' is not a number"),
        (("--gate-rule", "pass_rate:must_improve:0:wilson"), "the fourth part can only be `interval`"),
        (("--gate-rule", "pass_rate:must_improve", "--gate-metric", "pass_rate"), "give one or the other"),
        (("--captured-since", "2026-12-01"), "--captured-since: only with --captured-alias"),
        (("--captured-alias", "a/b", "--captured-since", "yesterday"), "'yesterday' is not an ISO 8601 time"),
        (
            ("--captured-alias", "a/b", "--captured-since", "2026-12-02", "--captured-until", "2026-12-01"),
            "must be after --captured-since",
        ),
        (("--canary-max-duration", "soon"), "--canary-max-duration"),
        (("--round-start", "sideways"), "--round-start"),
    ],
)
def test_bad_options_are_refused_before_any_call(
    scripted_orchestrator: Any, args: tuple[str, ...], words: str
) -> None:
    result = flywheel(scripted_orchestrator.address, "create", *BASE, *args)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert scripted_orchestrator.asked("CreateLoop") == []


def test_gate_rule_kinds_accept_dashes(scripted_orchestrator: Any) -> None:
    loop = created(scripted_orchestrator, "--gate-rule", "write-rate:must-not-worsen:0.05")
    assert loop.gate.rules[0] == lpb.GateRule(
        metric=lpb.GATE_METRIC_WRITE_RATE, kind=lpb.GATE_RULE_KIND_MUST_NOT_WORSEN, margin=0.05
    )


def gate(decision: int, reason: str, *rules: tuple[bool, str]) -> lpb.GateResult:
    return lpb.GateResult(
        decision=decision,  # type: ignore[arg-type]
        reason=reason,
        rule_results=[lpb.GateRuleResult(passed=ok, reason=why) for ok, why in rules],
    )


def multi_round_loop(state: int, rounds: int) -> lpb.Loop:
    """A 3-round loop after ``rounds`` rounds: round 1 promoted through a canary, round 2 rejected."""
    loop = lpb.Loop(id="loop-P", suite="mini", rounds=3, state=state, alias="agent/fixer")  # type: ignore[arg-type]
    played = [
        lpb.LoopRound(
            index=1,
            loop_id="loop-R1",
            state=SUCCEEDED,
            incumbent_model="tiny",
            candidate_model="ft/fixer-v1",
            train_examples=64,
            gate_result=gate(lpb.GATE_DECISION_PROMOTE, "promote: pass rate must improve: 0.500 vs 0.333"),
            promotion=lpb.PromotionResult(
                alias="agent/fixer",
                revision=2,
                final_revision=3,
                outcome=lpb.PROMOTION_OUTCOME_PROMOTED,
                reason="canary healthy",
            ),
        ),
        lpb.LoopRound(
            index=2,
            loop_id="loop-R2",
            state=SUCCEEDED,
            incumbent_model="ft/fixer-v1",
            init_adapter="fixer/v1",
            candidate_model="ft/fixer-v2",
            gate_result=gate(
                lpb.GATE_DECISION_REJECT,
                "parse errors per episode 0.900 (candidate) vs 0.200 (incumbent): improvement -0.700 <= margin 0.100",
            ),
        ),
    ][:rounds]
    loop.round_results.extend(played)
    for r in played:
        loop.stages.append(lpb.LoopStageStatus(stage=lpb.LOOP_STAGE_ROUND, state=r.state))
    loop.stage = lpb.LOOP_STAGE_ROUND
    return loop


def test_show_prints_the_rounds(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    orch.answers["GetLoop"] = opb.GetLoopResponse(loop=multi_round_loop(SUCCEEDED, 2))
    result = flywheel(orch.address, "show", "loop-P")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    stage_rows = [line for line in lines if "round " in line and ("vs" in line or "not reached" in line)]
    assert len(stage_rows) == 3, result.output
    assert "tiny vs ft/fixer-v1" in stage_rows[0] and "promoted" in stage_rows[0]
    assert "from fixer/v1" in stage_rows[1] and "reject" in stage_rows[1]
    assert "not reached" in stage_rows[2]  # the loop stopped before round 3
    table_rows = [line for line in lines if "loop-R" in line]
    assert len(table_rows) == 2
    assert "promote: pass rate must improve" in table_rows[0] and "promote: promote" not in table_rows[0]
    assert "agent/fixer rev 2 → 3: promoted (canary healthy)" in table_rows[0]
    assert "ft/fixer-v2 (from fixer/v1)" in table_rows[1]
    assert "reject: parse errors per episode 0.900 (candidate)" in table_rows[1]


def single_loop() -> lpb.Loop:
    loop = lpb.Loop(id="loop-S", suite="mini", state=SUCCEEDED, stage=lpb.LOOP_STAGE_PROMOTION)
    for stage in range(lpb.LOOP_STAGE_ROLLOUTS, lpb.LOOP_STAGE_PROMOTION + 1):
        loop.stages.append(lpb.LoopStageStatus(stage=stage, state=SUCCEEDED))  # type: ignore[arg-type]
    loop.gate_result.CopyFrom(
        gate(
            lpb.GATE_DECISION_PROMOTE,
            "promote: pass rate must not worsen: 0.500 vs 0.500 (+0.000 >= +0.000); parse errors fell",
            (True, "pass rate must not worsen: 0.500 vs 0.500 (+0.000 >= +0.000)"),
            (True, "parse errors per episode must improve: 0.200 vs 0.900 (+0.700 > margin 0.100)"),
        )
    )
    loop.promotion.CopyFrom(
        lpb.PromotionResult(
            alias="agent/fixer",
            revision=4,
            final_revision=5,
            outcome=lpb.PROMOTION_OUTCOME_ROLLED_BACK,
            reason="candidate error rate 0.30 vs 0.00",
            canary_stats=[
                apb.ArmStats(model="ft/fixer-v1", requests=40, error_rate=0.0, latency_p50_ms=30),
                apb.ArmStats(model="ft/fixer-v2", requests=20, errors=6, error_rate=0.3, latency_p50_ms=35),
            ],
        )
    )
    return loop


def test_show_prints_the_gate_rules_and_the_promotion(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    orch.answers["GetLoop"] = opb.GetLoopResponse(loop=single_loop())
    result = flywheel(orch.address, "show", "loop-S")
    assert result.exit_code == 0, result.output
    text = result.output
    promotion_row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("promotion "))
    assert "agent/fixer rev 4 → 5: rolled back (candidate error rate 0.30 vs 0.00)" in promotion_row
    assert "gate: promote: pass rate must not worsen" in text
    assert "✓ parse errors per episode must improve: 0.200 vs 0.900" in text
    assert "promotion: agent/fixer rev 4 → 5: rolled back" in text
    arm = next(line for line in text.splitlines() if "ft/fixer-v2" in line and "candidate" in line)
    assert "30.0%" in arm and "35 ms" in arm


def test_a_rejected_loop_never_reaches_the_promotion(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    loop = single_loop()
    del loop.stages[-1]
    loop.ClearField("promotion")
    loop.gate_result.decision = lpb.GATE_DECISION_REJECT
    orch.answers["GetLoop"] = opb.GetLoopResponse(loop=loop)
    result = flywheel(orch.address, "show", "loop-S")
    promotion_row = next(
        line for line in result.output.splitlines() if line.lstrip("│ ").startswith("promotion ")
    )
    assert "not reached" in promotion_row
    assert "promotion:" not in result.output
    # The single-rule gate's reason has no decision word of its own: it gets one.
    loop.gate_result.CopyFrom(
        lpb.GateResult(
            decision=lpb.GATE_DECISION_REJECT, reason="pass rate 0.333 (candidate) vs 0.500 (incumbent)"
        )
    )
    orch.answers["GetLoop"] = opb.GetLoopResponse(loop=loop)
    result = flywheel(orch.address, "show", "loop-S")
    assert "gate: reject: pass rate 0.333 (candidate) vs 0.500 (incumbent)" in result.output


def test_watch_prints_each_round_once_and_the_outcome(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    running = multi_round_loop(RUNNING, 1)
    again = multi_round_loop(RUNNING, 1)  # an update that changes nothing in the rounds
    done = multi_round_loop(SUCCEEDED, 2)
    orch.answers["WatchLoop"] = [opb.WatchLoopResponse(loop=lp) for lp in (running, again, done)]
    result = flywheel(orch.address, "watch", "loop-P")
    assert result.exit_code == 0, result.output
    assert orch.asked("WatchLoop") == [opb.WatchLoopRequest(loop_id="loop-P")]
    lines = result.output.splitlines()
    round_one = [line for line in lines if line.startswith("  round 1 (loop-R1)")]
    assert len(round_one) == 1 and "promote" in round_one[0] and "promoted" in round_one[0]
    assert sum(line.startswith("  round 2 (loop-R2)") for line in lines) == 1
    # Then the rounds table.
    assert sum("loop-R2" in line and "reject: parse errors" in line for line in lines) == 1
