"""The episode reward, rule ``flywheel-reward/v1``: a pure function of what happened in an episode.

Components (raw, before weighting; see ``RewardComponents`` in trajectory.proto):

- ``correctness``: 1 when resolved, else passed / total of the final tests or I/O cases (0 when
  none ran);
- ``test_runs``: the fraction of the task's tests or cases the agent's own runs passed during the
  episode. I/O problems: distinct case indexes whose ``run_code`` verdict passed / number of cases.
  Repository tasks: the best passed / total over the driver's mid-episode test runs (test policy
  AFTER_WRITE); the final run is not one of them (it is ``correctness``). 0 when none ran;
- ``tool_use``: 1 when at least one tool call executed (was not rejected), else 0;
- ``debug_attempts``: failed test or code runs during the episode beyond the first, at most
  ``max_penalised``;
- ``parse_errors``: turns that failed to parse, at most ``max_penalised``.

``total = correctness·w.correctness + test_runs·w.test_runs + tool_use·w.tool_use
- debug_attempts·w.debug_penalty - parse_errors·w.format_penalty``, except:

- an INTEGRITY outcome (the tests were tampered with) gets ``w.integrity`` and ``integrity=true``;
- an infrastructure outcome (MODEL_ERROR, SANDBOX_ERROR) says nothing about the policy: it is
  ``masked`` (left out of training and of the run's reward counters), ``total = 0``, with
  ``masked_reason = "<CATEGORY>: <detail>"``.

The components are filled in every case, so a reader sees what the episode did even when the
total is the integrity reward or masked. Weights left unset take :data:`DEFAULTS`, resolved into
the stored ``EpisodeReward.weights`` so every trajectory says exactly what it was scored with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flywheel.trajectory.v1 import trajectory_pb2 as tpb

RULE = "flywheel-reward/v1"
#: Outcomes of an infrastructure failure: the episode is masked, never rewarded or penalised.
INFRA = frozenset({tpb.FAILURE_CATEGORY_MODEL_ERROR, tpb.FAILURE_CATEGORY_SANDBOX_ERROR})
#: The optional (double) weights of ``RewardWeights``, in proto order.
WEIGHT_FIELDS = ("correctness", "test_runs", "tool_use", "debug_penalty", "format_penalty", "integrity")
DEFAULTS = tpb.RewardWeights(
    correctness=1.0,
    test_runs=0.3,
    tool_use=0.05,
    debug_penalty=0.1,
    format_penalty=0.1,
    integrity=-2.0,
    max_penalised=5,
)


@dataclass(frozen=True)
class EpisodeFacts:
    """What the reward is computed from; the driver collects it as the episode runs."""

    resolved: bool
    tests_passed: int  #: final tests (or I/O cases) that passed
    tests_total: int  #: final tests (or I/O cases) that ran; 0 when none ran
    failure_category: int = tpb.FAILURE_CATEGORY_UNSPECIFIED
    failure_detail: str = ""
    test_runs: float = 0.0  #: fraction in [0, 1] of the task's tests/cases the agent's own runs passed
    tool_calls_executed: int = 0  #: tool calls that ran (not rejected)
    failed_runs: int = 0  #: failed mid-episode test runs / run_code cases
    parse_errors: int = 0  #: assistant turns that failed to parse


def resolve(weights: tpb.RewardWeights | None) -> tpb.RewardWeights:
    """The weights with every unset field replaced by its default."""
    out = tpb.RewardWeights()
    out.CopyFrom(DEFAULTS)
    if weights is None:
        return out
    for name in WEIGHT_FIELDS:
        if weights.HasField(name):
            setattr(out, name, getattr(weights, name))
    if weights.max_penalised:
        out.max_penalised = weights.max_penalised
    return out


def lowest_reward(weights: tpb.RewardWeights | None) -> float:
    """The lowest reward a non-integrity, unmasked episode can get under ``weights``: every
    positive component 0 and both penalties at their cap. (Assumes non-negative weights, which
    validation requires.)"""
    w = resolve(weights)
    return -(w.debug_penalty + w.format_penalty) * w.max_penalised


def category_name(category: int) -> str:
    try:
        return str(tpb.FailureCategory.Name(category)).removeprefix("FAILURE_CATEGORY_")
    except ValueError:
        return str(category)


def episode_reward(facts: EpisodeFacts, weights: tpb.RewardWeights | None = None) -> tpb.EpisodeReward:
    """The reward of one episode under rule ``flywheel-reward/v1``."""
    w = resolve(weights)
    cap = w.max_penalised
    if facts.resolved:
        correctness = 1.0
    elif facts.tests_total > 0:
        correctness = facts.tests_passed / facts.tests_total
    else:
        correctness = 0.0
    components = tpb.RewardComponents(
        correctness=correctness,
        test_runs=min(1.0, max(0.0, facts.test_runs)),
        tool_use=1.0 if facts.tool_calls_executed > 0 else 0.0,
        debug_attempts=float(min(cap, max(0, facts.failed_runs - 1))),
        parse_errors=float(min(cap, max(0, facts.parse_errors))),
    )
    out = tpb.EpisodeReward(rule=RULE, components=components, weights=w)
    if facts.failure_category in INFRA:
        out.masked = True
        out.masked_reason = f"{category_name(facts.failure_category)}: {facts.failure_detail}"
        return out
    if facts.failure_category == tpb.FAILURE_CATEGORY_INTEGRITY:
        out.integrity = True
        out.total = w.integrity
        return out
    c = components
    out.total = (
        w.correctness * c.correctness
        + w.test_runs * c.test_runs
        + w.tool_use * c.tool_use
        - w.debug_penalty * c.debug_attempts
        - w.format_penalty * c.parse_errors
    )
    return out


def weight_problems(weights: tpb.RewardWeights) -> list[tuple[str, str]]:
    """What is wrong with ``weights`` as (field, message) pairs; empty when they are usable.
    Used by validation.py, which adds the field path and the gRPC status."""
    problems: list[tuple[str, str]] = []
    for name in WEIGHT_FIELDS:
        if not weights.HasField(name):
            continue
        value = getattr(weights, name)
        if not math.isfinite(value):
            problems.append((name, f"must be a finite number, not {value}"))
        elif name != "integrity" and value < 0:
            what = "penalties are subtracted" if name.endswith("_penalty") else "weights are added"
            problems.append((name, f"must be >= 0 ({what}; got {value:g})"))
    if weights.max_penalised < 0:
        problems.append(("max_penalised", f"must be >= 0 (0 means {DEFAULTS.max_penalised})"))
    if problems:
        return problems
    w = resolve(weights)
    lowest = lowest_reward(w)
    if not w.integrity < lowest:
        problems.append(
            (
                "integrity",
                f"must be below the lowest other reward these weights allow ({round(lowest, 6)}); "
                f"got {round(w.integrity, 6)}",
            )
        )
    return problems
