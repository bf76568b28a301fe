"""The promotion gate (flywheel_orchestrator.gate) on hand-made ModelMetrics.

Pure functions: every expected value below is worked out by hand from the metrics given, and the
Wilson bounds from the formula (z = 1.959964).
"""

from __future__ import annotations

import math
from typing import Any, cast

import pytest

from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel_common.errors import InvalidArgument
from flywheel_orchestrator.gate import decide, validate_gate

PROMOTE, REJECT = lpb.GATE_DECISION_PROMOTE, lpb.GATE_DECISION_REJECT
PASS, PARSE = lpb.GATE_METRIC_PASS_RATE, lpb.GATE_METRIC_PARSE_ERRORS_PER_EPISODE
IMPROVE, KEEP = lpb.GATE_RULE_KIND_MUST_IMPROVE, lpb.GATE_RULE_KIND_MUST_NOT_WORSEN


def metrics(
    episodes: int, resolved: int, parse_errors: float = 0.0, ci: tuple[float, float] | None = None
) -> epb.ModelMetrics:
    m = epb.ModelMetrics(
        model="m",
        episodes=episodes,
        resolved=resolved,
        pass_rate=resolved / episodes if episodes else 0.0,
        parse_errors_per_episode=parse_errors,
    )
    if ci is not None:
        m.pass_rate_ci.CopyFrom(epb.ConfidenceInterval(lower=ci[0], upper=ci[1], level=0.95, method="wilson"))
    return m


def gate(*rules: lpb.GateRule, min_episodes: int = 0) -> lpb.PromotionGate:
    return lpb.PromotionGate(rules=rules, min_episodes=min_episodes)


def test_without_rules_the_single_rule_gate_is_unchanged() -> None:
    inc, cand = metrics(6, 2, parse_errors=0.9), metrics(6, 3, parse_errors=0.2)
    result = decide(lpb.PromotionGate(metric=PARSE, margin=0.1), inc, cand, "eval-1")
    assert result.decision == PROMOTE and result.evaluation_id == "eval-1"
    assert result.metric == PARSE and result.margin == pytest.approx(0.1)
    assert (result.incumbent_value, result.candidate_value) == (pytest.approx(0.9), pytest.approx(0.2))
    assert result.improvement == pytest.approx(0.7)
    assert result.reason == (
        "parse errors per episode 0.200 (candidate) vs 0.900 (incumbent): improvement +0.700 > margin 0.100"
    )
    assert len(result.rule_results) == 1 and result.rule_results[0].passed
    assert result.rule_results[0].rule == lpb.GateRule(metric=PARSE, kind=IMPROVE, margin=0.1)

    # Unset metric means pass rate; an equal pass rate is not an improvement over margin 0.
    same = decide(lpb.PromotionGate(), metrics(6, 2), metrics(6, 2), "eval-2")
    assert same.decision == REJECT and same.metric == PASS
    assert (
        same.reason == "pass rate 0.333 (candidate) vs 0.333 (incumbent): improvement +0.000 <= margin 0.000"
    )


def test_every_rule_must_hold_and_the_reason_names_each() -> None:
    inc, cand = metrics(6, 2, parse_errors=0.9), metrics(6, 3, parse_errors=0.2)
    g = gate(lpb.GateRule(metric=PASS, kind=KEEP), lpb.GateRule(metric=PARSE, kind=IMPROVE, margin=0.5))
    result = decide(g, inc, cand, "eval-1")
    assert result.decision == PROMOTE
    assert [r.passed for r in result.rule_results] == [True, True]
    # The top-level fields mirror the first rule.
    assert result.metric == PASS and result.improvement == pytest.approx(1 / 6)
    assert result.reason == (
        "promote: pass rate must not worsen: 0.500 vs 0.333 (+0.167 >= +0.000); "
        "parse errors per episode must improve: 0.200 vs 0.900 (+0.700 > margin 0.500)"
    )

    # Parse errors fall by 0.7, not by more than 0.8: rejected, and that rule is named first.
    g.rules[1].margin = 0.8
    result = decide(g, inc, cand, "eval-1")
    assert result.decision == REJECT
    assert [r.passed for r in result.rule_results] == [True, False]
    assert result.reason == (
        "reject: parse errors per episode must improve: 0.200 vs 0.900 (+0.700 <= margin 0.800); "
        "held: pass rate must not worsen: 0.500 vs 0.333 (+0.167 >= +0.000)"
    )


def test_must_not_worsen_allows_a_drop_up_to_the_margin() -> None:
    inc, cand = metrics(10, 5), metrics(10, 4)  # pass rate 0.5 → 0.4: worse by 0.1
    assert decide(gate(lpb.GateRule(kind=KEEP, margin=0.1)), inc, cand, "e").decision == PROMOTE
    worse = decide(gate(lpb.GateRule(kind=KEEP, margin=0.05)), inc, cand, "e")
    assert worse.decision == REJECT and worse.improvement == pytest.approx(-0.1)
    assert worse.rule_results[0].reason == "pass rate must not worsen: 0.400 vs 0.500 (-0.100 < -0.050)"


def test_lower_is_better_metrics_count_a_rise_as_worse() -> None:
    inc, cand = metrics(5, 1, parse_errors=0.2), metrics(5, 1, parse_errors=0.6)
    result = decide(gate(lpb.GateRule(metric=PARSE, kind=KEEP, margin=0.3)), inc, cand, "e")
    assert result.decision == REJECT and result.improvement == pytest.approx(-0.4)


def test_interval_must_improve_needs_the_lower_bound_above_the_incumbent() -> None:
    # Point value 0.6 beats 0.4, but with 10 episodes the interval reaches far below it.
    inc, cand = metrics(10, 4, ci=(0.0, 1.0)), metrics(10, 6, ci=(0.3127, 0.8318))
    rule = lpb.GateRule(metric=PASS, kind=IMPROVE, use_interval=True)
    noisy = decide(gate(rule), inc, cand, "e")
    assert noisy.decision == REJECT
    assert noisy.rule_results[0].reason == (
        "pass rate must improve: 0.600 (95% CI 0.313-0.832) vs 0.400 (CI lower 0.313 <= 0.400 + margin 0.000)"
    )
    # The point-value rule would have promoted it.
    assert decide(gate(lpb.GateRule(metric=PASS)), inc, cand, "e").decision == PROMOTE
    # A lower bound above incumbent + margin promotes.
    sure = metrics(100, 90, ci=(0.8256, 0.9448))
    assert decide(gate(lpb.GateRule(use_interval=True, margin=0.4)), inc, sure, "e").decision == PROMOTE
    assert decide(gate(lpb.GateRule(use_interval=True, margin=0.43)), inc, sure, "e").decision == REJECT


def test_interval_must_not_worsen_fails_only_on_a_drop_the_episodes_show() -> None:
    rule = lpb.GateRule(metric=PASS, kind=KEEP, use_interval=True)
    inc = metrics(10, 6)
    # 0.4 < 0.6 by point value, but the interval's upper bound (0.687) is above 0.6: not shown.
    small = decide(gate(rule), inc, metrics(10, 4, ci=(0.1682, 0.6873)), "e")
    assert small.decision == PROMOTE and small.improvement == pytest.approx(-0.2)
    # 0.1 with an upper bound of 0.404 is a real drop.
    big = decide(gate(rule), inc, metrics(10, 1, ci=(0.0179, 0.4042)), "e")
    assert big.decision == REJECT
    assert big.rule_results[0].reason.endswith("(CI upper 0.404 < 0.600 - margin 0.000)")
    # ... unless the margin forgives it.
    rule.margin = 0.2
    assert decide(gate(rule), inc, metrics(10, 1, ci=(0.0179, 0.4042)), "e").decision == PROMOTE


def test_unset_interval_is_worked_out_from_the_episodes() -> None:
    # 6 of 10 resolved: Wilson 95% is (0.3127, 0.8318), so lower > 0.3 but not > 0.32.
    cand = metrics(10, 6)
    assert not cand.HasField("pass_rate_ci")
    rule = lpb.GateRule(use_interval=True)
    assert decide(gate(rule), metrics(10, 3), cand, "e").decision == PROMOTE
    result = decide(gate(rule), metrics(25, 8), cand, "e")  # incumbent 0.32
    assert result.decision == REJECT and "95% CI 0.313-0.832" in result.reason


def test_too_few_episodes_reject_whatever_the_rules_say() -> None:
    inc, cand = metrics(6, 0), metrics(3, 3)
    result = decide(gate(lpb.GateRule(metric=PASS), min_episodes=5), inc, cand, "e")
    assert result.decision == REJECT and result.rule_results[0].passed
    assert result.reason.startswith(
        "reject: too few episodes (the candidate has 3; the gate needs at least 5 from each); "
    )
    # min_episodes 0 means 1: a model with no episodes at all never wins, even on a
    # lower-is-better metric where its zero would look perfect.
    empty = decide(lpb.PromotionGate(metric=PARSE), metrics(4, 0, parse_errors=1.0), metrics(0, 0), "e")
    assert empty.decision == REJECT
    assert "the candidate has 0; the gate needs at least 1" in empty.reason
    both = decide(gate(lpb.GateRule(), min_episodes=2), metrics(1, 1), metrics(1, 1), "e")
    assert "the candidate has 1 and the incumbent has 1" in both.reason
    assert decide(gate(lpb.GateRule(), min_episodes=3), metrics(3, 0), metrics(3, 3), "e").decision == PROMOTE


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        (lpb.PromotionGate(margin=-0.1), "loop.gate.margin", ">= 0"),
        (lpb.PromotionGate(metric=cast(Any, 99)), "loop.gate.metric", "unknown metric 99"),
        (lpb.PromotionGate(min_episodes=-1), "loop.gate.min_episodes", ">= 0"),
        (gate(lpb.GateRule(), lpb.GateRule(margin=-1)), "loop.gate.rules[1].margin", ">= 0"),
        (gate(lpb.GateRule(margin=math.nan)), "loop.gate.rules[0].margin", "finite"),
        (gate(lpb.GateRule(margin=math.inf)), "loop.gate.rules[0].margin", "finite"),
        (
            gate(lpb.GateRule(metric=cast(Any, 42))),
            "loop.gate.rules[0].metric",
            "unknown metric 42",
        ),
        (gate(lpb.GateRule(kind=cast(Any, 7))), "loop.gate.rules[0].kind", "unknown kind 7"),
        (gate(lpb.GateRule(metric=PARSE, use_interval=True)), "loop.gate.rules[0].use_interval", "PASS_RATE"),
        (gate(*[lpb.GateRule()] * 17), "loop.gate.rules", "at most 16"),
    ],
)
def test_validate_gate_names_the_bad_field(bad: lpb.PromotionGate, field: str, words: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_gate(bad, "loop.gate")
    assert err.value.field == field and words in str(err.value)


def test_validate_gate_accepts_good_gates() -> None:
    validate_gate(lpb.PromotionGate())
    validate_gate(
        gate(
            lpb.GateRule(use_interval=True, kind=KEEP, margin=0.05),
            lpb.GateRule(metric=PARSE, margin=0.1),
            min_episodes=6,
        )
    )
    with pytest.raises(InvalidArgument) as err:
        validate_gate(lpb.PromotionGate(margin=-1))
    assert err.value.field == "gate.margin"
