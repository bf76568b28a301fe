"""Evaluation metrics: pass rate with a Wilson interval, unbiased pass@k, behaviour metrics.

Every number here is computed from :class:`EpisodeResult` summaries, so the same function
produces a run's live counters and an evaluation's report, and a test can check them against
values worked out by hand.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from statistics import NormalDist

from google.protobuf.duration_pb2 import Duration

from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import run_pb2


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) when there is no data.

    Chosen over the normal approximation because it stays inside [0, 1] and behaves at 0 and n
    successes, which are common with a handful of held-out tasks.
    """
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - level) / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k rollouts drawn without replacement from n resolves), c resolved."""
    if k > n:
        raise ValueError(f"k={k} is more than the {n} rollouts made")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _seconds(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> Duration:
    out = Duration()
    out.FromNanoseconds(round(seconds * 1e9))
    return out


def model_metrics(
    model: str, results: Sequence[run_pb2.EpisodeResult], *, rollouts_per_task: int, level: float
) -> epb.ModelMetrics:
    n = len(results)
    resolved = sum(r.resolved for r in results)
    lo, hi = wilson_interval(resolved, n, level)
    out = epb.ModelMetrics(
        model=model,
        episodes=n,
        resolved=resolved,
        pass_rate=resolved / n if n else 0.0,
        pass_rate_ci=epb.ConfidenceInterval(lower=lo, upper=hi, level=level, method="wilson"),
    )
    if n:
        out.parse_errors_per_episode = sum(r.parse_errors for r in results) / n
        out.write_rate = sum(r.wrote_file for r in results) / n
        out.loop_detections_per_episode = sum(r.loop_detections for r in results) / n
        out.mean_steps = sum(r.steps for r in results) / n
        out.mean_prompt_tokens = sum(r.usage.prompt_tokens for r in results) / n
        out.mean_completion_tokens = sum(r.usage.completion_tokens for r in results) / n
        out.mean_wall_time.CopyFrom(_duration(sum(_seconds(r.wall_time) for r in results) / n))
        rewarded = [r.reward for r in results if not r.reward_masked]
        out.masked_episodes = n - len(rewarded)
        out.mean_reward = sum(rewarded) / len(rewarded) if rewarded else 0.0
    if rollouts_per_task > 1:
        per_task: dict[str, list[bool]] = defaultdict(list)
        for r in results:
            per_task[r.task_id].append(r.resolved)
        for k in range(1, rollouts_per_task + 1):
            values = [pass_at_k(len(v), sum(v), k) for v in per_task.values() if len(v) >= k]
            if values:
                out.pass_at_k.append(epb.PassAtK(k=k, value=sum(values) / len(values)))
    return out


def deltas(model: epb.ModelMetrics, baseline: epb.ModelMetrics) -> epb.MetricDeltas:
    return epb.MetricDeltas(
        pass_rate=model.pass_rate - baseline.pass_rate,
        parse_errors_per_episode=model.parse_errors_per_episode - baseline.parse_errors_per_episode,
        write_rate=model.write_rate - baseline.write_rate,
        loop_detections_per_episode=model.loop_detections_per_episode - baseline.loop_detections_per_episode,
        mean_steps=model.mean_steps - baseline.mean_steps,
        mean_tokens=(model.mean_prompt_tokens + model.mean_completion_tokens)
        - (baseline.mean_prompt_tokens + baseline.mean_completion_tokens),
        mean_wall_time=_duration(_seconds(model.mean_wall_time) - _seconds(baseline.mean_wall_time)),
    )


def task_table(
    models: Sequence[str], results: dict[str, Sequence[run_pb2.EpisodeResult]]
) -> list[epb.TaskResult]:
    """One row per task (sorted by id), one cell per model in the given order."""
    tasks = sorted({r.task_id for rs in results.values() for r in rs})
    rows = []
    for task in tasks:
        row = epb.TaskResult(task_id=task)
        for model in models:
            mine = sorted((r for r in results.get(model, ()) if r.task_id == task), key=lambda r: r.attempt)
            row.models.append(
                epb.TaskModelResult(
                    model=model,
                    rollouts=len(mine),
                    resolved=sum(r.resolved for r in mine),
                    mean_steps=sum(r.steps for r in mine) / len(mine) if mine else 0.0,
                    parse_errors=sum(r.parse_errors for r in mine),
                    failure_categories=[r.failure_category for r in mine if not r.resolved],
                    trajectory_ids=[r.trajectory_id for r in mine],
                )
            )
        rows.append(row)
    return rows


def add_to_counters(counters: run_pb2.RunCounters, r: run_pb2.EpisodeResult, *, errored: bool) -> None:
    counters.episodes_finished += 1
    counters.episodes_resolved += int(r.resolved)
    counters.episodes_errored += int(errored)
    counters.episodes_with_write += int(r.wrote_file)
    counters.steps += r.steps
    counters.parse_errors += r.parse_errors
    counters.loop_detections += r.loop_detections
    counters.usage.prompt_tokens += r.usage.prompt_tokens
    counters.usage.completion_tokens += r.usage.completion_tokens
    counters.trajectories_stored += 1
