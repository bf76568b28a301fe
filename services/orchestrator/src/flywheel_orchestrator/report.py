"""Evaluation reports: the JSON result, a Markdown report and a PNG chart."""

from __future__ import annotations

import io
import math
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb

#: (field, label, higher is better) of the headline metrics, in chart order.
HEADLINE = (
    ("pass_rate", "pass rate", True),
    ("parse_errors_per_episode", "parse errors / episode", False),
    ("write_rate", "write rate", True),
    ("loop_detections_per_episode", "loop detections / episode", False),
    ("mean_steps", "steps / episode", False),
)


def _secs(d: Duration) -> float:
    return d.seconds + d.nanos / 1e9


def to_json(evaluation: epb.Evaluation) -> bytes:
    return json_format.MessageToJson(evaluation, preserving_proto_field_name=True, indent=2).encode()


def to_markdown(e: epb.Evaluation) -> str:
    split = common_pb2.TaskSplit.Name(e.split).removeprefix("TASK_SPLIT_").lower()
    lines = [
        f"# Evaluation {e.id}",
        "",
        f"Suite `{e.suite}` (version `{e.suite_version}`), {split} split, "
        f"{len(e.task_results)} tasks, {e.rollouts_per_task or 1} rollout(s) per task and model. "
        f"Baseline: `{e.baseline_model or e.models[0]}`.",
        "",
        "| model | episodes | pass rate | CI | mean reward | parse errors/ep | write rate | loops/ep | steps/ep | tokens/ep | wall s/ep |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in e.model_metrics:
        ci = m.pass_rate_ci
        name = f"`{m.model}`" + (" (baseline)" if m.baseline else "")
        lines.append(
            f"| {name} | {m.episodes} | {m.pass_rate:.3f} | {ci.lower:.2f}-{ci.upper:.2f} ({ci.level:.0%}) "
            f"| {m.mean_reward:+.3f}{f' ({m.masked_episodes} masked)' if m.masked_episodes else ''} "
            f"| {m.parse_errors_per_episode:.2f} | {m.write_rate:.2f} | {m.loop_detections_per_episode:.2f} "
            f"| {m.mean_steps:.1f} | {m.mean_prompt_tokens + m.mean_completion_tokens:.0f} | {_secs(m.mean_wall_time):.1f} |"
        )
    others = [m for m in e.model_metrics if not m.baseline]
    if others:
        lines += [
            "",
            "## Against the baseline",
            "",
            "| model | Δ pass rate | Δ parse errors/ep | Δ write rate | Δ loops/ep | Δ steps/ep |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for m in others:
            d = m.delta_vs_baseline
            lines.append(
                f"| `{m.model}` | {d.pass_rate:+.3f} | {d.parse_errors_per_episode:+.2f} | {d.write_rate:+.2f} "
                f"| {d.loop_detections_per_episode:+.2f} | {d.mean_steps:+.1f} |"
            )
    pass_k = [m for m in e.model_metrics if m.pass_at_k]
    if pass_k:
        lines += ["", "## pass@k", ""]
        for m in pass_k:
            lines.append(f"- `{m.model}`: " + ", ".join(f"pass@{p.k} = {p.value:.3f}" for p in m.pass_at_k))
    lines += [
        "",
        "## Per task",
        "",
        "| task | " + " | ".join(f"`{m}`" for m in e.models) + " |",
        "|---|" + "---|" * len(e.models),
    ]
    for row in e.task_results:
        cells = []
        for cell in row.models:
            text = f"{cell.resolved}/{cell.rollouts}"
            if cell.failure_categories:
                cats = sorted(
                    {
                        tpb.FailureCategory.Name(c).removeprefix("FAILURE_CATEGORY_").lower()
                        for c in cell.failure_categories
                    }
                )
                text += " (" + ", ".join(cats) + ")"
            cells.append(text)
        lines.append(f"| {row.task_id} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def chart_png(e: epb.Evaluation) -> bytes:
    """One panel per headline metric, a bar per model (the pass rate with its interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m.model for m in e.model_metrics]
    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(3.2 * len(HEADLINE), 3.6))
    colours = ["#7f7f7f" if m.baseline else "#1f77b4" for m in e.model_metrics]
    for ax, (fld, label, higher) in zip(axes, HEADLINE, strict=True):
        values = [getattr(m, fld) for m in e.model_metrics]
        kwargs: dict[str, Any] = {}
        if fld == "pass_rate":
            kwargs["yerr"] = [
                [v - m.pass_rate_ci.lower for v, m in zip(values, e.model_metrics, strict=True)],
                [m.pass_rate_ci.upper - v for v, m in zip(values, e.model_metrics, strict=True)],
            ]
            kwargs["capsize"] = 4
        ax.bar(range(len(models)), values, color=colours, **kwargs)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(
            [m if len(m) <= 18 else m[:16] + "…" for m in models], rotation=20, ha="right", fontsize=8
        )
        ax.set_title(f"{label} ({'↑' if higher else '↓'} better)", fontsize=9)
        for i, v in enumerate(values):
            ax.annotate(f"{v:.2f}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle(
        f"{e.suite} · {common_pb2.TaskSplit.Name(e.split).removeprefix('TASK_SPLIT_').lower()} split",
        fontsize=10,
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def loop_markdown(loop, e: epb.Evaluation) -> str:
    """The loop's report: stage times, artefacts, the evaluation and the gate's decision."""
    from flywheel.common.v1 import common_pb2 as c
    from flywheel.orchestrator.v1 import loop_pb2 as lpb

    g = loop.gate_result
    decision = lpb.GateDecision.Name(g.decision).removeprefix("GATE_DECISION_").lower()
    lines = [
        f"# Loop {loop.id}",
        "",
        f"Suite `{loop.suite}`, base model `{loop.base_model}`, adapter `{loop.adapter_name}`; "
        f"incumbent `{loop.incumbent_model}`, candidate `{loop.candidate_model}`.",
        "",
        f"**Gate: {decision}** - {g.reason}.",
        "",
        "| stage | state | seconds | artefacts |",
        "|---|---|---:|---|",
    ]
    for s in loop.stages:
        secs = (
            (s.end_time.ToNanoseconds() - s.start_time.ToNanoseconds()) / 1e9
            if s.HasField("end_time")
            else 0.0
        )
        arts = ", ".join(
            f"{c.ResourceKind.Name(a.kind).removeprefix('RESOURCE_KIND_').lower()} `{a.id}`"
            for a in s.artefacts
        )
        lines.append(
            f"| {lpb.LoopStage.Name(s.stage).removeprefix('LOOP_STAGE_').lower()} "
            f"| {c.JobState.Name(s.state).removeprefix('JOB_STATE_').lower()} | {secs:.1f} | {arts} |"
        )
    lines += ["", "## Evaluation", "", to_markdown(e)]
    return "\n".join(lines)


def rl_markdown(loop: Any, *, with_plot: bool) -> str:
    """An RL loop's iterations: rewards of the rollouts, masking, training figures, evaluations."""
    lines = ["## RL iterations", ""]
    if with_plot:
        lines += ["![reward per iteration and held-out pass rate](rl.png)", ""]
    lines += [
        "| iteration | policy | episodes | masked | reward mean ± std | train pass rate | adapter | "
        "KL | clip | TEST pass rate (start) |",
        "|---:|---|---:|---:|---|---:|---|---:|---:|---|",
    ]
    for it in loop.iterations:
        extra = it.train_metrics.extra
        # A GRPO job computes KL only with a KL coefficient (rl.grpo.beta > 0); the warm start has none.
        absent = "off" if it.index and "clip_ratio/region_mean" in extra else "—"
        adapter = (
            f"{it.adapter.name}/v{it.adapter.version}"
            if it.adapter.name
            else ("— (no reward spread)" if it.index and it.run_id and not it.dataset_build_id else "")
        )
        evaluated = (
            f"{it.eval_pass_rate:.2f} ({it.eval_baseline_pass_rate:.2f})"
            if it.HasField("eval_pass_rate")
            else ""
        )
        lines.append(
            f"| {it.index}{' (SFT warm start)' if it.index == 0 else ''} | {it.policy_model or 'reference'} "
            f"| {it.episodes} | {it.masked_episodes} | {it.reward_mean:.3f} ± {it.reward_std:.3f} "
            f"| {it.train_pass_rate:.2f} | {adapter} | {_figure(extra, 'kl', 4, absent)} "
            f"| {_figure(extra, 'clip_ratio/region_mean', 3, '—')} | {evaluated} |"
        )
    return "\n".join(lines) + "\n"


def _figure(metrics: Any, key: str, digits: int, absent: str) -> str:
    value = metrics.get(key)
    return absent if value is None or math.isnan(value) else f"{value:.{digits}f}"


def rl_plot(loop: Any) -> bytes:
    """Reward of the rollouts per iteration (mean ± std) and the held-out pass rates; empty
    when there is nothing to plot."""
    rows = [it for it in loop.iterations if it.index > 0 and it.episodes]
    if not rows:
        return b""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    xs = [it.index for it in rows]
    means = [it.reward_mean for it in rows]
    stds = [it.reward_std for it in rows]
    left.errorbar(xs, means, yerr=stds, marker="o", capsize=3)
    left.set_xlabel("iteration")
    left.set_title("rollout reward (mean ± std)", fontsize=9)
    evaluated = [it for it in loop.iterations if it.HasField("eval_pass_rate")]
    if evaluated:
        right.plot([it.index for it in evaluated], [it.eval_pass_rate for it in evaluated], marker="o",
                   label="policy")  # fmt: skip
        right.plot([it.index for it in evaluated], [it.eval_baseline_pass_rate for it in evaluated],
                   marker="s", linestyle="--", label="starting policy")  # fmt: skip
        right.legend(fontsize=8)
    right.set_ylim(-0.02, 1.02)
    right.set_xlabel("iteration")
    right.set_title("TEST pass rate", fontsize=9)
    fig.suptitle(f"RL loop {loop.id} · {loop.suite}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _when(ts: Any) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else ""


def alias_history_markdown(name: str, history: list[Any]) -> str:
    """An alias's revisions, newest first, as a table."""
    from flywheel.orchestrator.v1 import alias_pb2 as apb

    lines = [
        f"### Alias `{name}`",
        "",
        "| revision | time (UTC) | change | serves | canary | actor | reason |",
        "|---:|---|---|---|---|---|---|",
    ]
    for r in history:
        change = apb.AliasChange.Name(r.change).removeprefix("ALIAS_CHANGE_").lower().replace("_", " ")
        canary = ""
        if r.HasField("canary"):
            p = r.canary.policy
            canary = f"`{r.canary.candidate.model}` ({'shadow' if p.shadow else f'{p.fraction or 0.1:.0%}'})"
        reason = r.reason.replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {r.revision} | {_when(r.create_time)} | {change} | `{r.target.model or '-'}` | {canary} "
            f"| {r.actor} | {reason} |"
        )
    return "\n".join(lines) + "\n"


def _arm_lines(stats: list[Any]) -> list[str]:
    if not stats:
        return []
    lines = [
        "",
        "| arm | model | requests | errors | error rate | median latency (ms) | feedback | success rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for arm, s in zip(("incumbent", "candidate"), stats, strict=False):
        lines.append(
            f"| {arm} | `{s.model}` | {s.requests} | {s.errors} | {s.error_rate:.3f} | {s.latency_p50_ms:.0f} "
            f"| {s.feedback} | {s.success_rate:.2f} |"
        )
    return lines


def promotion_markdown(loop: Any, history: list[Any]) -> str:
    """The PROMOTION stage's outcome, a canary's signals and the alias's history."""
    from flywheel.orchestrator.v1 import loop_pb2 as lpb

    p = loop.promotion
    outcome = (
        lpb.PromotionOutcome.Name(p.outcome).removeprefix("PROMOTION_OUTCOME_").lower().replace("_", " ")
    )
    lines = [
        "## Promotion",
        "",
        f"**{outcome or 'pending'}** - alias `{p.alias}`, revisions {p.revision} to {p.final_revision}: {p.reason}",
        *_arm_lines(list(p.canary_stats)),
        "",
        alias_history_markdown(p.alias, history),
    ]
    return "\n".join(lines)


def rounds_markdown(parent: Any, evaluations: dict[int, Any], history: list[Any], *, with_plot: bool) -> str:
    """A loop of several rounds: one line per round, the chart, and the alias's history."""
    from flywheel.orchestrator.v1 import loop_pb2 as lpb

    lines = [
        f"# Loop {parent.id}: {len(parent.round_results)} of {parent.rounds} rounds",
        "",
        f"Suite `{parent.suite}`, base model `{parent.base_model}`, adapter `{parent.adapter_name}`, alias "
        f"`{parent.alias}`; rounds start from "
        f"{'the base model' if parent.round_start == lpb.ROUND_START_FROM_BASE else 'the incumbent adapter'}. "
        f"The alias serves `{parent.candidate_model or parent.incumbent_model}` now.",
        "",
    ]
    if with_plot:
        lines += ["![TEST pass rate per round](rounds.png)", ""]
    lines += [
        "| round | loop | incumbent | started from | candidate | runs | incumbent pass rate | candidate pass rate "
        "| gate | promotion |",
        "|---:|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in parent.round_results:
        g = r.gate_result
        decision = lpb.GateDecision.Name(g.decision).removeprefix("GATE_DECISION_").lower()
        outcome = lpb.PromotionOutcome.Name(r.promotion.outcome).removeprefix("PROMOTION_OUTCOME_").lower()
        reason = g.reason.replace("|", "/")
        verdict = reason if reason.startswith(decision) else f"{decision}: {reason}"
        e = evaluations.get(r.index)
        rates = {m.model: m.pass_rate for m in e.model_metrics} if e is not None else {}
        inc = f"{rates[r.incumbent_model]:.2f}" if r.incumbent_model in rates else ""
        cand = f"{rates[r.candidate_model]:.2f}" if r.candidate_model in rates else ""
        lines.append(
            f"| {r.index} | `{r.loop_id}` | `{r.incumbent_model}` | {r.init_adapter or 'base'} "
            f"| `{r.candidate_model}` | {len(r.run_ids)} | {inc} | {cand} | {verdict} "
            f"| {outcome if outcome != 'unspecified' else '-'} |"
        )
    lines += ["", alias_history_markdown(parent.alias, history)]
    return "\n".join(lines)


def rounds_plot(parent: Any, evaluations: dict[int, Any]) -> bytes:
    """TEST pass rate of each round's incumbent and candidate; empty when nothing was evaluated."""
    points = []
    for r in parent.round_results:
        e = evaluations.get(r.index)
        if e is None:
            continue
        rates = {m.model: m.pass_rate for m in e.model_metrics}
        if r.incumbent_model in rates and r.candidate_model in rates:
            points.append(
                (r.index, rates[r.incumbent_model], rates[r.candidate_model], r.promotion.outcome == 1)
            )
    if not points:
        return b""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    xs = [p[0] for p in points]
    ax.plot(xs, [p[1] for p in points], marker="s", linestyle="--", label="incumbent")
    ax.plot(xs, [p[2] for p in points], marker="o", label="candidate")
    for x, _inc, cand, promoted in points:
        ax.annotate("promoted" if promoted else "kept", (x, cand), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=7)  # fmt: skip
    ax.set_xticks(xs)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("TEST pass rate")
    ax.legend(fontsize=8)
    ax.set_title(f"loop {parent.id} · alias {parent.alias}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
