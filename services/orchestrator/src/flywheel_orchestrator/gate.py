"""The promotion gate: does the candidate replace the incumbent?

A gate is a list of rules, all measured in one evaluation, each on one metric of the two models
(:data:`HIGHER_IS_BETTER`). A rule either needs the candidate to beat the incumbent by strictly
more than its margin (MUST_IMPROVE) or to be no worse by more than its margin (MUST_NOT_WORSEN).
"Improvement" is signed so that positive always means the candidate is better: candidate -
incumbent for higher-is-better metrics, incumbent - candidate for the others.

A pass-rate rule may be judged with the candidate's Wilson interval instead of its point value,
so a handful of held-out episodes cannot promote (or block) a candidate by luck: MUST_IMPROVE then
needs the interval's lower bound above incumbent + margin, and MUST_NOT_WORSEN fails only when its
upper bound is below incumbent - margin.

A gate without rules is the original single-rule gate (``metric`` and ``margin``, MUST_IMPROVE);
its reason text is unchanged. Every gate also needs ``min_episodes`` episodes (0 means 1) from
each model, so an evaluation in which a model played nothing never promotes anything.

Pure functions of protobuf messages: no I/O, no clock.
"""

from __future__ import annotations

import math

from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel_common.errors import InvalidArgument
from flywheel_orchestrator.metrics import wilson_interval

#: metric → (ModelMetrics field, words used in reasons, whether higher is better).
HIGHER_IS_BETTER: dict[int, tuple[str, str, bool]] = {
    lpb.GATE_METRIC_PASS_RATE: ("pass_rate", "pass rate", True),
    lpb.GATE_METRIC_PARSE_ERRORS_PER_EPISODE: ("parse_errors_per_episode", "parse errors per episode", False),
    lpb.GATE_METRIC_WRITE_RATE: ("write_rate", "write rate", True),
    lpb.GATE_METRIC_LOOP_DETECTIONS_PER_EPISODE: (
        "loop_detections_per_episode",
        "loop detections per episode",
        False,
    ),
}
KINDS = (lpb.GATE_RULE_KIND_MUST_IMPROVE, lpb.GATE_RULE_KIND_MUST_NOT_WORSEN)
#: More rules than this is a mistake in the request, not a policy.
MAX_RULES = 16
#: Confidence level of the interval computed when an evaluation left ``pass_rate_ci`` unset.
DEFAULT_LEVEL = 0.95
#: Slack on every comparison, so that 0.1 + 0.2 vs 0.3 is "equal", not "worse by 5e-17".
EPS = 1e-12


def effective_rules(gate: lpb.PromotionGate) -> list[lpb.GateRule]:
    """The gate's rules with unset enums filled in; one MUST_IMPROVE rule of ``metric`` and
    ``margin`` when ``rules`` is empty."""
    source = list(gate.rules) or [lpb.GateRule(metric=gate.metric, margin=gate.margin)]
    rules = []
    for rule in source:
        filled = lpb.GateRule()
        filled.CopyFrom(rule)
        filled.metric = rule.metric or lpb.GATE_METRIC_PASS_RATE
        filled.kind = rule.kind or lpb.GATE_RULE_KIND_MUST_IMPROVE
        rules.append(filled)
    return rules


def candidate_interval(candidate: epb.ModelMetrics) -> tuple[float, float, float]:
    """(lower, upper, level) of the candidate's pass rate: the evaluation's Wilson interval, or a
    95% one worked out from its episodes when the evaluation left it unset."""
    ci = candidate.pass_rate_ci
    if candidate.HasField("pass_rate_ci") and ci.level > 0:
        return ci.lower, ci.upper, ci.level
    lower, upper = wilson_interval(candidate.resolved, candidate.episodes, DEFAULT_LEVEL)
    return lower, upper, DEFAULT_LEVEL


def judge(rule: lpb.GateRule, incumbent: epb.ModelMetrics, candidate: epb.ModelMetrics) -> lpb.GateRuleResult:
    """One (filled-in) rule against the two models' metrics, with a one-line reason."""
    fld, label, higher = HIGHER_IS_BETTER[rule.metric]
    inc, cand = float(getattr(incumbent, fld)), float(getattr(candidate, fld))
    improvement = (cand - inc) if higher else (inc - cand)
    margin = rule.margin
    improve = rule.kind == lpb.GATE_RULE_KIND_MUST_IMPROVE
    need = "must improve" if improve else "must not worsen"
    if rule.use_interval:
        lower, upper, level = candidate_interval(candidate)
        head = f"{label} {need}: {cand:.3f} ({level:.0%} CI {lower:.3f}-{upper:.3f}) vs {inc:.3f}"
        if improve:
            passed = lower > inc + margin + EPS
            tail = f"CI lower {lower:.3f} {'>' if passed else '<='} {inc:.3f} + margin {margin:.3f}"
        else:
            passed = not upper < inc - margin - EPS
            tail = f"CI upper {upper:.3f} {'>=' if passed else '<'} {inc:.3f} - margin {margin:.3f}"
    else:
        head = f"{label} {need}: {cand:.3f} vs {inc:.3f}"
        if improve:
            passed = improvement > margin + EPS
            tail = f"{improvement:+.3f} {'>' if passed else '<='} margin {margin:.3f}"
        else:
            passed = improvement >= -margin - EPS
            # 0.0 - margin keeps a zero margin from printing as "-0.000".
            tail = f"{improvement:+.3f} {'>=' if passed else '<'} {0.0 - margin:+.3f}"
    return lpb.GateRuleResult(
        rule=rule,
        incumbent_value=inc,
        candidate_value=cand,
        improvement=improvement,
        passed=passed,
        reason=f"{head} ({tail})",
    )


def legacy_reason(result: lpb.GateRuleResult) -> str:
    """The single-rule gate's reason, worded as it always was (reports and tests quote it)."""
    _, label, _ = HIGHER_IS_BETTER[result.rule.metric]
    sign = ">" if result.passed else "<="
    return (
        f"{label} {result.candidate_value:.3f} (candidate) vs {result.incumbent_value:.3f} (incumbent): "
        f"improvement {result.improvement:+.3f} {sign} margin {result.rule.margin:.3f}"
    )


def decide(
    gate: lpb.PromotionGate, incumbent: epb.ModelMetrics, candidate: epb.ModelMetrics, evaluation_id: str
) -> lpb.GateResult:
    """PROMOTE when each model has ``min_episodes`` episodes and every rule holds, else REJECT.

    ``rule_results`` holds every rule's outcome in the gate's order; the top-level metric, margin,
    values and improvement are the first rule's. ``reason`` is one sentence: the decision, then
    the rules' reasons, failing ones first.
    """
    results = [judge(rule, incumbent, candidate) for rule in effective_rules(gate)]
    first = results[0]
    need = max(gate.min_episodes, 1)
    short = [
        f"the {who} has {metrics.episodes}"
        for who, metrics in (("candidate", candidate), ("incumbent", incumbent))
        if metrics.episodes < need
    ]
    failed = [r.reason for r in results if not r.passed]
    held = [r.reason for r in results if r.passed]
    if short:
        promote = False
        body = legacy_reason(first) if not gate.rules else "; ".join(failed + held)
        reason = (
            f"reject: too few episodes ({' and '.join(short)}; the gate needs at least {need} from each)"
            f"; {body}"
        )
    elif not gate.rules:
        promote = first.passed
        reason = legacy_reason(first)
    else:
        promote = not failed
        if promote:
            reason = "promote: " + "; ".join(held)
        else:
            reason = "reject: " + "; ".join(failed) + (f"; held: {'; '.join(held)}" if held else "")
    return lpb.GateResult(
        metric=first.rule.metric,
        margin=first.rule.margin,
        incumbent_value=first.incumbent_value,
        candidate_value=first.candidate_value,
        improvement=first.improvement,
        decision=lpb.GATE_DECISION_PROMOTE if promote else lpb.GATE_DECISION_REJECT,
        reason=reason,
        evaluation_id=evaluation_id,
        rule_results=results,
    )


def _margin(value: float, field: str) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(field, f"must be a finite number >= 0, got {value}")


def _metric(value: int, field: str) -> None:
    if value != lpb.GATE_METRIC_UNSPECIFIED and value not in HIGHER_IS_BETTER:
        known = ", ".join(lpb.GateMetric.Name(m) for m in HIGHER_IS_BETTER)
        raise InvalidArgument(field, f"unknown metric {value} (known: {known})")


def validate_gate(gate: lpb.PromotionGate, field: str = "gate") -> None:
    """:class:`InvalidArgument` naming the bad field (``gate.rules[1].margin``) of a gate that
    :func:`decide` could not judge."""
    _metric(gate.metric, f"{field}.metric")
    _margin(gate.margin, f"{field}.margin")
    if gate.min_episodes < 0:
        raise InvalidArgument(f"{field}.min_episodes", f"must be >= 0 (0 means 1), got {gate.min_episodes}")
    if len(gate.rules) > MAX_RULES:
        raise InvalidArgument(f"{field}.rules", f"at most {MAX_RULES} rules, got {len(gate.rules)}")
    for i, rule in enumerate(gate.rules):
        path = f"{field}.rules[{i}]"
        _metric(rule.metric, f"{path}.metric")
        if rule.kind != lpb.GATE_RULE_KIND_UNSPECIFIED and rule.kind not in KINDS:
            known = ", ".join(lpb.GateRuleKind.Name(k) for k in KINDS)
            raise InvalidArgument(f"{path}.kind", f"unknown kind {rule.kind} (known: {known})")
        _margin(rule.margin, f"{path}.margin")
        if rule.use_interval and rule.metric not in (lpb.GATE_METRIC_UNSPECIFIED, lpb.GATE_METRIC_PASS_RATE):
            raise InvalidArgument(
                f"{path}.use_interval",
                f"only for GATE_METRIC_PASS_RATE (the Wilson interval is of a pass rate), "
                f"not {lpb.GateMetric.Name(rule.metric)}",
            )
