"""``flywheel mle show|export``: the search trees of the ML-engineering agent's episodes.

``show`` draws each episode's node tree (operator, validation metric or bug, held-out score, the
best node) and the metric per step with the best so far; ``export`` writes an episode's journal in
AIDE's ``journal.json`` format (``flywheel trajectories import --format aide`` reads it back).

:class:`SearchRows` is the live side: while ``flywheel run`` follows a run with ML tasks, each
episode gets a row in the progress display that grows with every node WatchRun streams
(``MlNodeProgress``): nodes so far out of the search's maximum, one mark per node (operator and
whether it worked), and the best validation metric so far.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import mle_pb2, run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1.trajectory_pb2_grpc import TrajectoryServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import console, out
from flywheel_common.journal import export_journal, journal_of, metric_steps_line, tree_lines


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
    lines.append("  metric per step (→ best so far): " + metric_steps_line(journal))
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


# ------------------------------------------------------------------------------- live search trees

#: One letter per operator in a row's node marks (the legend is printed above the rows).
OPERATOR_MARKS = {
    mle_pb2.ML_OPERATOR_DRAFT: "D",
    mle_pb2.ML_OPERATOR_DEBUG: "d",
    mle_pb2.ML_OPERATOR_IMPROVE: "I",
    mle_pb2.ML_OPERATOR_REFLECT: "R",
}
LEGEND = "search trees: D draft · d debug · I improve · R reflect; ✓ works, ✗ buggy"


def operator_name(op: int) -> str:
    return mle_pb2.MlOperator.Name(op).removeprefix("ML_OPERATOR_").lower() if op else "?"


def node_mark(p: mle_pb2.MlNodeProgress) -> str:
    """A node as two characters: its operator's letter, then ✓ (works) or ✗ (buggy)."""
    return OPERATOR_MARKS.get(p.operator, "?") + ("✗" if p.buggy else "✓")


def best_text(p: mle_pb2.MlNodeProgress) -> str:
    """The episode's best node so far, as of the node ``p``."""
    if not p.best_node_id:
        return "no working node yet"
    text = f"best {p.metric_name} {p.best_metric:.4g} ({p.best_node_id})"
    if p.HasField("best_heldout"):
        text += f", held-out {p.best_heldout:.4g}"
    return text


def node_line(p: mle_pb2.MlNodeProgress, with_model: bool = False) -> str:
    """One node on one line (what ``flywheel run`` prints when its output is not a terminal)."""
    parent = f" ← {p.parent_id}" if p.parent_id else ""
    if p.buggy:
        what = "bug: " + (p.analysis.splitlines()[0][:70] if p.analysis else "buggy")
    else:
        what = f"metric {p.metric:.4g}" + (f" (held-out {p.heldout:.4g})" if p.HasField("heldout") else "")
    who = f"{p.model or 'reference'} · " if with_model else ""
    return (
        f"  {who}{p.task_id} #{p.attempt} {p.node_id} {operator_name(p.operator)}{parent}: {what}"
        f" · {p.nodes}/{p.max_nodes} nodes · {best_text(p)}"
    )


class SearchRows:
    """One row per ML episode in a rich Progress, updated from WatchRun's (or WatchEvaluation's)
    ML node updates; ``with_model`` names each episode's model (evaluations play several).

    The Progress's columns must show ``{task.description}`` and a ``{task.fields[info]}`` text.
    """

    def __init__(self, progress: Progress, *, with_model: bool = False) -> None:
        self.progress = progress
        self.with_model = with_model
        self.rows: dict[tuple[str, str, int], TaskID] = {}
        #: Every node seen, per episode (model, task, attempt), in arrival order.
        self.nodes: dict[tuple[str, str, int], list[mle_pb2.MlNodeProgress]] = {}

    def _name(self, model: str, task_id: str, attempt: int) -> str:
        who = f"{escape(model or 'reference')} · " if self.with_model else ""
        return f"{who}{escape(task_id)} #{attempt}"

    def node(self, p: mle_pb2.MlNodeProgress) -> None:
        key = (p.model, p.task_id, p.attempt)
        seen = self.nodes.setdefault(key, [])
        seen.append(p)
        if key not in self.rows:
            if not self.rows:
                self.progress.console.print(f"[dim]{LEGEND}[/]")
            self.rows[key] = self.progress.add_task(f"  {self._name(*key)}", info="")
        marks = " ".join(node_mark(n) for n in seen)
        self.progress.update(
            self.rows[key],
            total=max(p.max_nodes, p.nodes),
            completed=p.nodes,
            info=f"nodes · {marks} · {escape(best_text(p))}",
        )

    def finished(self, ep: run_pb2.EpisodeResult) -> None:
        """The episode's result arrived: its row is complete, marked by how it ended."""
        key = (ep.model, ep.task_id, ep.attempt)
        row = self.rows.get(key)
        if row is None:
            return
        mark = "[green]✓[/]" if ep.resolved else "[red]✗[/]"
        task = self.progress.tasks[row]
        self.progress.update(
            row,
            description=f"{mark} {self._name(*key)}",
            total=task.completed or 1,
            completed=task.completed or 1,
        )

    def summary(self) -> Table | None:
        """One row per ML episode seen: its nodes, their marks, the best node's metrics."""
        if not self.nodes:
            return None
        table = Table(title=f"ML search trees ({LEGEND.removeprefix('search trees: ')})")
        for column in ("task", "nodes", "tree (in order)", "best node", "validation", "held-out"):
            table.add_column(
                column, justify="right" if column in ("nodes", "validation", "held-out") else "left"
            )
        for key, seen in sorted(self.nodes.items()):
            last = seen[-1]
            table.add_row(
                self._name(*key),
                str(last.nodes),
                " ".join(node_mark(n) for n in seen),
                last.best_node_id or "-",
                f"{last.best_metric:.4g}" if last.HasField("best_metric") else "-",
                f"{last.best_heldout:.4g}" if last.HasField("best_heldout") else "-",
            )
        return table
