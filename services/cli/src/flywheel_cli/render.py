"""Shared rendering of the orchestrator's resources: job states, splits, times, episodes.

Used by ``flywheel run``, ``flywheel eval`` and ``flywheel suites`` (and the demo's tables); each
command group keeps the tables that only it prints.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any, cast

from google.protobuf.duration_pb2 import Duration
from rich.console import Console
from rich.markup import escape

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb

#: Progress, errors and prompts go to stderr; what a script reads (ids, tables, JSON) to stdout.
console = Console(stderr=True)
out = Console()

#: ``--state`` choices: queued, running, succeeded, failed, cancelled. (The stubs type the enum
#: wrapper's items() as plain ints; the values are the enum's numbers.)
STATES = cast(
    dict[str, common_pb2.JobState],
    {name.removeprefix("JOB_STATE_").lower(): value for name, value in common_pb2.JobState.items() if value},
)
STATE_STYLE: dict[int, str] = {
    common_pb2.JOB_STATE_QUEUED: "yellow",
    common_pb2.JOB_STATE_RUNNING: "cyan",
    common_pb2.JOB_STATE_SUCCEEDED: "green",
    common_pb2.JOB_STATE_FAILED: "red",
    common_pb2.JOB_STATE_CANCELLED: "magenta",
}


def enum_name(value: int, enum: Any, prefix: str) -> str:
    """A protobuf enum value as users type it: ``JOB_STATE_SUCCEEDED`` → ``succeeded``."""
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def job_state(state: int) -> str:
    name = enum_name(state, common_pb2.JobState, "JOB_STATE_")
    return f"[{STATE_STYLE.get(state, 'white')}]{name}[/]"


def split_name(split: int) -> str:
    return enum_name(split, common_pb2.TaskSplit, "TASK_SPLIT_")


def failure_name(category: int) -> str:
    return enum_name(category, tpb.FailureCategory, "FAILURE_CATEGORY_")


def when(stamp: Any) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    return str(stamp.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"))


def seconds_text(seconds: float) -> str:
    """``12.3 s``, ``4m05s`` or ``1h02m03s``."""
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{sign}{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{sign}{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{sign}{minutes}m{rest:02d}s"


def duration(d: Duration) -> str:
    return seconds_text(d.ToNanoseconds() / 1e9)


def elapsed(start: Any, end: Any) -> str:
    if not start.seconds or not end.seconds:
        return "-"
    return seconds_text((end.ToNanoseconds() - start.ToNanoseconds()) / 1e9)


def rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else f"{part}/0"


def reward_stats(n: int, total: float, squares: float) -> tuple[float, float]:
    """Mean and (population) standard deviation from a count, a sum and a sum of squares."""
    if n <= 0:
        return 0.0, 0.0
    mean = total / n
    return mean, math.sqrt(max(0.0, squares / n - mean * mean))


def reward_text(counters: run_pb2.RunCounters) -> str:
    """``reward 0.950 ± 0.100 (2 episodes, 1 masked)`` from a run's counters; empty before any."""
    n = counters.episodes_rewarded
    masked = counters.episodes_finished - n
    if n == 0 and masked <= 0:
        return ""
    mean, std = reward_stats(n, counters.reward_sum, counters.reward_sq_sum)
    head = f"reward {mean:.3f} ± {std:.3f}" if n else "reward -"
    return f"{head} ({n} episode{'' if n == 1 else 's'}" + (f", {masked} masked)" if masked > 0 else ")")


def episodes_reward_text(episodes: Sequence[run_pb2.EpisodeResult]) -> str:
    """The same figures from finished episodes (what WatchEvaluation streams per model)."""
    kept = [e.reward for e in episodes if not e.reward_masked]
    counters = run_pb2.RunCounters(
        episodes_finished=len(episodes),
        episodes_rewarded=len(kept),
        reward_sum=sum(kept),
        reward_sq_sum=sum(r * r for r in kept),
    )
    return reward_text(counters)


def episode_line(ep: run_pb2.EpisodeResult, with_model: bool = False) -> str:
    """One finished episode on one line: what ran, how it ended, and what it cost."""
    mark = "[green]✓[/]" if ep.resolved else "[red]✗[/]"
    outcome = "[green]resolved[/]" if ep.resolved else f"[red]{failure_name(ep.failure_category)}[/]"
    who = f"[bold]{escape(ep.model or 'reference')}[/] " if with_model else ""
    extras = [f"{ep.steps} step{'' if ep.steps == 1 else 's'}"]
    if ep.parse_errors:
        extras.append(f"{ep.parse_errors} parse error{'s' if ep.parse_errors > 1 else ''}")
    if ep.loop_detections:
        extras.append(f"{ep.loop_detections} loop{'s' if ep.loop_detections > 1 else ''}")
    tokens = ep.usage.prompt_tokens + ep.usage.completion_tokens
    if tokens:
        extras.append(f"{tokens:,} tok")
    extras.append(duration(ep.wall_time))
    extras.append("reward masked" if ep.reward_masked else f"reward {ep.reward:.2f}")
    return (
        f"{mark} {who}{escape(ep.task_id)} #{ep.attempt}  {outcome}  "
        f"[dim]{escape(', '.join(extras))}  {escape(ep.trajectory_id)}[/]"
    )


def settings_line(job: run_pb2.Run | epb.Evaluation) -> str:
    """A run's or an evaluation's episode settings on one line (only what differs from defaults)."""
    ep = job.episode
    lim, sp = ep.limits, ep.sampling
    parts = [
        f"rollouts {job.rollouts_per_task or 1}",
        f"protocol {enum_name(ep.protocol, common_pb2.ToolProtocol, 'TOOL_PROTOCOL_') if ep.protocol else 'by task kind'}",
        f"tests {enum_name(ep.test_policy, run_pb2.TestPolicy, 'TEST_POLICY_') if ep.test_policy else 'end'}",
        f"concurrency {job.concurrency or 'default'}",
    ]
    if lim.max_iterations:
        parts.append(f"max {lim.max_iterations} iterations")
    if lim.max_tokens:
        parts.append(f"max {lim.max_tokens:,} tokens")
    if lim.max_wall_time.ToNanoseconds():
        parts.append(f"max {duration(lim.max_wall_time)}")
    if lim.max_consecutive_parse_errors:
        parts.append(f"max {lim.max_consecutive_parse_errors} parse errors in a row")
    for field in ("temperature", "top_p", "max_tokens", "seed"):
        if sp.HasField(field):
            parts.append(
                f"{'max_completion_tokens' if field == 'max_tokens' else field} {getattr(sp, field):g}"
            )
    if ep.record_tokens:
        parts.append("token ids recorded")
    weights = [
        f"{f.name}={value:g}"
        for f, value in ep.reward.ListFields()
        if not (f.name == "max_penalised" and not value)
    ]
    if weights:
        parts.append(f"reward {' '.join(weights)}")
    return ", ".join(parts)
