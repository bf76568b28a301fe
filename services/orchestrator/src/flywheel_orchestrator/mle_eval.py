"""The ML-engineering figures of an evaluation (``Evaluation.ml_metrics``) and their report section.

Computed from the stored trajectories' labels (``mle.*``, written by mle.py), never from memory,
like every other evaluation metric: per model and ML task, the best and mean held-out metric of
the episodes' best nodes, the mean normalised score (0 = the task's baseline, 1 = its reference;
an episode without a valid submission counts 0), the fraction of episodes with a valid
submission, nodes per episode and wall time.

The report also draws every ML episode's search tree (operator, validation metric or bug,
held-out score, the best node) and its validation metric per step with the best so far, and a
chart (``ml_search.png``) of each episode's normalised held-out score per step — the score of the
node the search would pick at that step (best validation metric so far) — one panel per model
(:func:`search_report`), from the stored trajectories.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.duration_pb2 import Duration

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import mle_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.journal import journal_of, metric_steps_line, tree_lines
from flywheel_orchestrator.mle import summary
from flywheel_orchestrator.mltasks import MlTask


def _dur(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(max(0, int(seconds * 1e9)))
    return d


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def model_metrics(
    model: str, trajectories: Iterable[tpb.Trajectory], tasks: Mapping[str, MlTask]
) -> mle_pb2.MlModelMetrics:
    """One model's ML figures from its run's stored trajectories (tasks not in ``tasks`` are skipped)."""
    by_task: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for traj in trajectories:
        if traj.task.task_id in tasks:
            by_task[traj.task.task_id].append(summary(traj))
    out = mle_pb2.MlModelMetrics(model=model)
    everyone: list[Mapping[str, Any]] = []
    for task_id in sorted(by_task):
        task, rows = tasks[task_id], by_task[task_id]
        everyone += rows
        valid = [r for r in rows if r["valid"] and r["heldout"] is not None]
        heldout = [float(r["heldout"]) for r in valid]
        m = mle_pb2.MlTaskMetrics(
            task_id=task_id,
            metric=task.metric,
            maximize=task.maximize,
            episodes=len(rows),
            valid_episodes=len(valid),
            mean_normalised=_mean([float(r["normalised"] or 0.0) if r in valid else 0.0 for r in rows]),
            baseline_score=task.baseline_score or 0.0,
            reference_score=task.reference_score or 0.0,
            mean_nodes=_mean([float(r["nodes"]) for r in rows]),
            mean_wall_time=_dur(_mean([float(r["wall_s"]) for r in rows])),
        )
        if heldout:
            m.best_heldout = max(heldout) if task.maximize else min(heldout)
            m.mean_heldout = _mean(heldout)
        out.tasks.append(m)
    if everyone:
        out.episodes = len(everyone)
        out.valid_fraction = sum(1 for r in everyone if r["valid"] and r["heldout"] is not None) / len(
            everyone
        )
        out.mean_normalised = _mean(
            [
                float(r["normalised"] or 0.0) if r["valid"] and r["heldout"] is not None else 0.0
                for r in everyone
            ]
        )
        out.mean_nodes = _mean([float(r["nodes"]) for r in everyone])
        out.mean_wall_time.CopyFrom(_dur(_mean([float(r["wall_s"]) for r in everyone])))
    return out


def markdown(e: epb.Evaluation) -> str:
    """The report's ML section ("" when the evaluation had no ML tasks)."""
    if not any(m.episodes for m in e.ml_metrics):
        return ""
    lines = [
        "",
        "## ML-engineering tasks",
        "",
        "Held-out metric of each episode's best node (chosen by its own validation metric); "
        "normalised: 0 = the task's baseline, 1 = its reference solution (no valid submission = 0).",
        "",
        "| model | episodes | valid | normalised | nodes/episode | wall time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in e.ml_metrics:
        lines.append(
            f"| {m.model} | {m.episodes} | {m.valid_fraction:.0%} | {m.mean_normalised:.3f} | "
            f"{m.mean_nodes:.1f} | {m.mean_wall_time.ToNanoseconds() / 1e9:.1f} s |"
        )
    lines += [
        "",
        "| model | task | metric | baseline | reference | best held-out | normalised | valid |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in e.ml_metrics:
        for t in m.tasks:
            best = f"{t.best_heldout:.4g}" if t.HasField("best_heldout") else "-"
            lines.append(
                f"| {m.model} | {t.task_id} | {t.metric} ({'max' if t.maximize else 'min'}) | "
                f"{t.baseline_score:.4g} | {t.reference_score:.4g} | {best} | {t.mean_normalised:.3f} | "
                f"{t.valid_episodes}/{t.episodes} |"
            )
    return "\n".join(lines) + "\n"


async def evaluation_metrics(runs: Any, e: epb.Evaluation) -> list[mle_pb2.MlModelMetrics]:
    """Every model's ML figures for the evaluation ``e`` (empty when its suite has no ML task).

    ``runs`` is the RunManager (typed loosely: runs.py imports this module's neighbours)."""
    suite = runs.catalog.get(e.suite)
    tasks = {t.id: t for t in suite.tasks.values() if isinstance(t, MlTask)} if suite is not None else {}
    if not tasks:
        return []
    return [model_metrics(m.model, await runs._stored(m.run_id), tasks) for m in e.model_metrics]


#: Most episodes whose trees one report draws (the rest are named, with `flywheel mle show`).
MAX_TREES = 60


def episode_tree_markdown(model: str, traj: tpb.Trajectory) -> list[str]:
    """One episode's search tree and metric per step, as Markdown lines."""
    journal = journal_of(traj)
    labels = traj.labels
    best = labels.get("aide.best_node", "")
    head = f"#### {model} · {traj.task.task_id} #{traj.attempt} — {len(journal['nodes'])} nodes"
    if "mle.best_heldout" in labels:
        head += f", best {best}: held-out {float(labels['mle.best_heldout']):.4g}"
        if "mle.normalised" in labels:
            head += f" (normalised {float(labels['mle.normalised']):.2f})"
    else:
        head += ", no valid submission"
    tree = tree_lines(journal, best) or ["(no node)"]
    return [
        "",
        head,
        "",
        "```",
        *tree,
        "```",
        "",
        f"Validation metric per step (→ best so far): `{metric_steps_line(journal) or '-'}`",
    ]


def trees_section(per_model: list[tuple[str, list[tpb.Trajectory]]]) -> str:
    """The report's search-tree section from each model's ML trajectories ("" when there are none)."""
    episodes = [
        (model, t)
        for model, trajectories in per_model
        for t in sorted(trajectories, key=lambda t: (t.task.task_id, t.attempt))
        if t.task.kind == common_pb2.TASK_KIND_ML
    ]
    if not episodes:
        return ""
    lines = [
        "",
        "### Search trees",
        "",
        "Each ML episode's tree, children under their parent (node ids give the search order): "
        "operator, the validation metric the script printed (or its bug), the held-out score; "
        "`← best` marks the node the episode is scored by.",
    ]
    for model, traj in episodes[:MAX_TREES]:
        lines += episode_tree_markdown(model, traj)
    if len(episodes) > MAX_TREES:
        rest = episodes[MAX_TREES:]
        lines += [
            "",
            f"{len(rest)} more episodes not drawn; see them with `flywheel mle show <trajectory id>`: "
            + ", ".join(t.id for _, t in rest),
        ]
    return "\n".join(lines) + "\n"


#: The search chart's file name, next to the report.
CHART_NAME = "ml_search.png"


def picked_per_step(journal: dict[str, Any]) -> list[tuple[int, float | None]]:
    """Per node in search order: (step, held-out score of the node the search would pick then).

    The pick is the best working node so far by *validation* metric, as the search ranks; None
    while no node works or the pick has no held-out score."""
    best: dict[str, Any] | None = None
    out: list[tuple[int, float | None]] = []
    for node in journal["nodes"]:
        metric = node["metric"]
        if metric is not None and not node["is_buggy"]:
            value, maximize = metric["value"], metric["maximize"]
            if best is None or (
                value > best["metric"]["value"] if maximize else value < best["metric"]["value"]
            ):
                best = node
        out.append((node["step"], best.get("heldout_metric") if best is not None else None))
    return out


def search_chart_png(
    per_model: list[tuple[str, list[tpb.Trajectory]]], tasks: Mapping[str, MlTask]
) -> bytes | None:
    """One panel per model: each ML episode's normalised held-out score per step (the pick so far)."""
    panels = []
    for model, trajectories in per_model:
        lines = []
        for t in sorted(trajectories, key=lambda t: (t.task.task_id, t.attempt)):
            task = tasks.get(t.task.task_id)
            if t.task.kind != common_pb2.TASK_KIND_ML or task is None:
                continue
            points = [
                (step, task.normalised(h) if h is not None else None)
                for step, h in picked_per_step(journal_of(t))
            ]
            lines.append((f"{t.task.task_id} #{t.attempt}", points))
        if lines:
            panels.append((model, lines))
    if not panels:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    for ax, (model, lines) in zip(axes[0], panels, strict=True):
        for label, points in lines:
            xs = [x for x, y in points if y is not None]
            ys = [y for _, y in points if y is not None]
            missed = [x for x, y in points if y is None]
            (drawn,) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, label=label)
            # Steps with no working node yet: an x on the baseline line, in the episode's colour.
            ax.plot(missed, [0.0] * len(missed), "x", color=drawn.get_color(), markersize=4)
        ax.axhline(0.0, color="#7f7f7f", linewidth=0.8, linestyle="--")
        ax.axhline(1.0, color="#2ca02c", linewidth=0.8, linestyle="--")
        ax.set_title(model if len(model) <= 30 else model[:28] + "…", fontsize=9)
        ax.set_xlabel("step (node)", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("normalised held-out (0 baseline, 1 reference)", fontsize=7)
        if len(lines) <= 12:
            ax.legend(fontsize=6, loc="best")
    fig.suptitle("ML search: the held-out score of the node picked so far, per step", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


async def search_report(runs: Any, e: epb.Evaluation) -> tuple[str, bytes | None]:
    """Evaluation ``e``'s search section (trees, metric per step) and chart; ("", None) without ML
    tasks. ``runs`` is the RunManager."""
    if not e.ml_metrics:
        return "", None
    suite = runs.catalog.get(e.suite)
    tasks = {t.id: t for t in suite.tasks.values() if isinstance(t, MlTask)} if suite is not None else {}
    per_model = [
        (m.model, await runs._stored(m.run_id, tpb.TRAJECTORY_VIEW_FULL)) for m in e.model_metrics if m.run_id
    ]
    md = trees_section(per_model)
    png = await asyncio.to_thread(search_chart_png, per_model, tasks)
    if md and png is not None:
        head = "### Search trees\n"
        md = md.replace(head, f"{head}\n![normalised held-out score per step]({CHART_NAME})\n", 1)
    return md, png
