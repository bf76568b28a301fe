"""The ML-engineering figures of an evaluation (``Evaluation.ml_metrics``) and their report section.

Computed from the stored trajectories' labels (``mle.*``, written by mle.py), never from memory,
like every other evaluation metric: per model and ML task, the best and mean held-out metric of
the episodes' best nodes, the mean normalised score (0 = the task's baseline, 1 = its reference;
an episode without a valid submission counts 0), the fraction of episodes with a valid
submission, nodes per episode and wall time.

The report also draws every ML episode's search tree (operator, validation metric or bug,
held-out score, the best node) and its validation metric per step with the best so far
(:func:`trees_markdown`), from the stored trajectories.
"""

from __future__ import annotations

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


async def trees_markdown(runs: Any, e: epb.Evaluation) -> str:
    """The search-tree section of evaluation ``e``'s report (``runs``: the RunManager)."""
    if not e.ml_metrics:
        return ""
    per_model = []
    for m in e.model_metrics:
        if not m.run_id:
            continue
        found: list[tpb.Trajectory] = []
        token = ""
        while True:
            reply = await runs.trajectories.ListTrajectories(
                tpb.ListTrajectoriesRequest(
                    filter=tpb.TrajectoryFilter(run_ids=[m.run_id]),
                    view=tpb.TRAJECTORY_VIEW_FULL,
                    page_size=100,
                    page_token=token,
                ),
                timeout=runs.settings.trajectory_timeout_s,
            )
            found.extend(reply.trajectories)
            token = reply.next_page_token
            if not token:
                break
        per_model.append((m.model, found))
    return trees_section(per_model)
