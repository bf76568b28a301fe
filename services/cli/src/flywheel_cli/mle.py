"""``flywheel mle show|export``: the search trees of the ML-engineering agent's episodes.

``show`` draws each episode's node tree (operator, validation metric or bug, held-out score, the
best node) and the metric per step with the best so far; ``export`` writes an episode's journal in
AIDE's ``journal.json`` format (``flywheel trajectories import --format aide`` reads it back).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1.trajectory_pb2_grpc import TrajectoryServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import console, out
from flywheel_common.journal import export_journal, journal_of, tree_lines


@click.group("mle")
@rpc.connection_options(rpc.TRAJECTORY_STORE)
@click.pass_context
def mle_cmd(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Search trees of ML-engineering episodes (suite ml-tasks and other ML tasks)."""
    rpc.remember_connection(ctx, address, state_dir)


def _trajectories(stub: TrajectoryServiceStub, run: str, ids: tuple[str, ...]) -> list[pb.Trajectory]:
    wanted = list(ids)
    if run:
        listing = rpc.pages(
            stub.ListTrajectories,
            pb.ListTrajectoriesRequest(filter=pb.TrajectoryFilter(run_ids=[run])),
            "trajectories",
        )
        wanted += [t.id for t in listing]
    found = [stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id=i)).trajectory for i in wanted]
    return sorted(
        (t for t in found if t.task.kind == common_pb2.TASK_KIND_ML),
        key=lambda t: (t.task.task_id, t.attempt),
    )


def render(t: pb.Trajectory) -> list[str]:
    """The text ``show`` prints for one episode (also used by tests)."""
    journal = journal_of(t)
    labels = t.labels
    wall = (t.end_time.ToNanoseconds() - t.start_time.ToNanoseconds()) / 1e9
    head = f"{t.task.suite}/{t.task.task_id} · {t.id} · {len(journal['nodes'])} nodes · {wall:.1f} s"
    if "mle.best_heldout" in labels:
        head += (
            f" · best {labels.get('aide.best_node', '?')}: held-out {float(labels['mle.best_heldout']):.4g}"
        )
        if "mle.normalised" in labels:
            head += f" (normalised {float(labels['mle.normalised']):.2f})"
    elif not t.outcome.resolved:
        head += " · no valid submission"
    lines = [head, *("  " + line for line in tree_lines(journal, labels.get("aide.best_node", "")))]
    best: float | None = None
    steps = []
    for node in journal["nodes"]:
        metric = node["metric"]["value"] if node["metric"] and not node["is_buggy"] else None
        if metric is not None:
            maximize = node["metric"]["maximize"]
            if best is None or (metric > best if maximize else metric < best):
                best = metric
        shown = f"{metric:.4g}" if metric is not None else "bug"
        steps.append(f"{node['step']}:{shown}" + (f"→{best:.4g}" if best is not None else ""))
    lines.append("  metric per step (→ best so far): " + "  ".join(steps))
    return lines


@mle_cmd.command("show")
@click.argument("trajectory_ids", nargs=-1)
@click.option("--run", default="", help="Every ML episode of this run.")
@click.pass_context
def show_cmd(ctx: click.Context, trajectory_ids: tuple[str, ...], run: str) -> None:
    """Draw the search tree and the metric per step of ML episodes: `flywheel mle show --run RUN`."""
    if not trajectory_ids and not run:
        raise click.UsageError("give trajectory ids or --run RUN")
    with rpc.stub(ctx, rpc.TRAJECTORY_STORE, TrajectoryServiceStub) as stub:
        found = _trajectories(stub, run, trajectory_ids)
    if not found:
        console.print("no ML trajectories found")
        sys.exit(1)
    for t in found:
        for line in render(t):
            out.print(escape(line), soft_wrap=True)


@mle_cmd.command("export")
@click.argument("trajectory_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File (default stdout).",
)
@click.pass_context
def export_cmd(ctx: click.Context, trajectory_id: str, output: Path | None) -> None:
    """Write an ML episode's journal (AIDE journal.json format)."""
    with rpc.stub(ctx, rpc.TRAJECTORY_STORE, TrajectoryServiceStub) as stub:
        t = stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id=trajectory_id)).trajectory
    if t.task.kind != common_pb2.TASK_KIND_ML:
        raise click.UsageError(f"{trajectory_id} is not an ML trajectory")
    data = export_journal(t)
    if output is None:
        sys.stdout.buffer.write(data + b"\n")
    else:
        output.write_bytes(data)
        console.print(f"wrote {output} ({len(journal_of(t)['nodes'])} nodes)")


def ml_table(e: epb.Evaluation) -> Table | None:
    """An evaluation's ML-engineering figures (``Evaluation.ml_metrics``): one row per model and task."""
    if not any(m.episodes for m in e.ml_metrics):
        return None
    table = Table(title="ML-engineering tasks (held-out metric of each episode's best node)")
    for column in (
        "model",
        "task",
        "metric",
        "baseline",
        "reference",
        "best held-out",
        "normalised",
        "valid",
        "nodes",
        "wall",
    ):
        table.add_column(column, justify="left" if column in ("model", "task", "metric") else "right")
    for m in e.ml_metrics:
        for t in m.tasks:
            table.add_row(
                escape(m.model),
                escape(t.task_id),
                f"{t.metric} ({'max' if t.maximize else 'min'})",
                f"{t.baseline_score:.4g}",
                f"{t.reference_score:.4g}",
                f"{t.best_heldout:.4g}" if t.HasField("best_heldout") else "-",
                f"{t.mean_normalised:.2f}",
                f"{t.valid_episodes}/{t.episodes}",
                f"{t.mean_nodes:.1f}",
                f"{t.mean_wall_time.ToNanoseconds() / 1e9:.1f} s",
            )
        table.add_row(
            f"[bold]{escape(m.model)}[/]",
            "all",
            "",
            "",
            "",
            "",
            f"[bold]{m.mean_normalised:.2f}[/]",
            f"{m.valid_fraction:.0%}",
            f"{m.mean_nodes:.1f}",
            f"{m.mean_wall_time.ToNanoseconds() / 1e9:.1f} s",
        )
    return table
