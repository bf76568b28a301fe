"""``flywheel run …``: start a rollout run and follow it, or list, show, cancel and watch runs.

``run`` is a click group that also acts as a command: ``flywheel run --suite S …`` starts a run
(no sub-command given), ``flywheel run list|show|cancel|watch`` manages runs. Starting follows the
server's watch stream with a progress bar, prints one line per finished episode, and ends with a
summary; Ctrl-C while following cancels the run on the server (it would otherwise keep running
with nobody watching).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceStub
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_cli import rpc
from flywheel_cli.job_options import (
    SPLITS,
    cancel_after_interrupt,
    episode_options,
    fill_episode,
    reject_job_options,
)
from flywheel_cli.mle import SearchRows, node_line
from flywheel_cli.render import (
    STATES,
    console,
    elapsed,
    episode_line,
    failure_name,
    job_state,
    out,
    rate,
    reward_text,
    settings_line,
    split_name,
    when,
)


@click.group("run", invoke_without_command=True)
@rpc.connection_options(rpc.ORCHESTRATOR)
@click.option("--suite", default=None, help="Suite name (see `flywheel suites`).")
@click.option("--split", type=click.Choice(sorted(SPLITS)), default=None, help="Side of the suite's split.")
@click.option("--model", default=None, help="Model name the gateway serves.")
@click.option("--reference", is_flag=True, help="Replay the tasks' reference fixes (no model needed).")
@episode_options
@click.pass_context
def run_cmd(
    ctx: click.Context,
    /,
    address: str | None,
    state_dir: Path,
    suite: str | None,
    split: str | None,
    model: str | None,
    reference: bool,
    **opts: Any,
) -> None:
    """Roll out a model (or the reference teacher) on a suite: `flywheel run --suite S --split train --model M`.

    Follows the run with a progress bar and a line per finished episode, then prints a summary;
    Ctrl-C cancels the run. Manage runs with `flywheel run list|show|cancel|watch`.
    """
    rpc.remember_connection(ctx, address, state_dir)
    if ctx.invoked_subcommand is not None:
        reject_job_options(ctx)
        return
    if not suite:
        raise click.UsageError(
            "--suite is required to start a run (or use `flywheel run list|show|cancel|watch`)"
        )
    if not split:
        raise click.UsageError("--split train|test is required to start a run")
    if bool(model) == reference:
        raise click.UsageError("give either --model NAME or --reference (the tasks' reference fixes)")
    run = run_pb2.Run(suite=suite, split=SPLITS[split])
    if reference:
        run.teacher_kind = tpb.TEACHER_KIND_REFERENCE
    else:
        run.teacher_kind = tpb.TEACHER_KIND_MODEL
        run.model = model or ""
    fill_episode(run, opts)
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        created = stub.CreateRun(opb.CreateRunRequest(run=run, request_id=opts["request_id"])).run
        console.print(
            f"started [bold]{created.id}[/]: {escape(policy(created))} on {escape(created.suite)}"
            f"@{created.suite_version} {split_name(created.split)}, {created.counters.episodes_total} episodes"
            f" ({created.counters.tasks} tasks x {created.rollouts_per_task or 1})"
        )
        out.print(created.id, soft_wrap=True)
        if opts["watch"]:
            sys.exit(follow_run(stub, created.id, quiet=opts["quiet"]))


def follow_run(stub: OrchestratorServiceStub, run_id: str, *, quiet: bool = False) -> int:
    """Follow WatchRun to the terminal snapshot; returns the exit status (Ctrl-C cancels the run)."""
    # The run's bar, then (runs with ML tasks) one row per episode's search tree (SearchRows).
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    last: run_pb2.Run | None = None
    episodes: list[run_pb2.EpisodeResult] = []
    stream: Any = None
    trees: SearchRows | None = None
    try:
        stream = stub.WatchRun(opb.WatchRunRequest(run_id=run_id))
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"{'…':<9}", total=None, info="episodes")
            trees = SearchRows(progress)
            for update in stream:
                which = update.WhichOneof("update")
                if which == "ml_node":
                    trees.node(update.ml_node)
                    # Piped output shows no live rows: a line per node tells the same story.
                    if not quiet and not console.is_terminal:
                        progress.console.print(escape(node_line(update.ml_node)), soft_wrap=True)
                    continue
                if which == "episode":
                    episodes.append(update.episode)
                    trees.finished(update.episode)
                    if not quiet:
                        progress.console.print(episode_line(update.episode))
                    continue
                last = update.run
                c = last.counters
                progress.update(
                    bar,
                    description=f"{job_state(last.state):<9}",
                    total=c.episodes_total or None,
                    completed=c.episodes_finished,
                    info=(
                        f"episodes · [green]{c.episodes_resolved} resolved[/] · {c.parse_errors} parse"
                        f" errors · {c.episodes_errored} errored"
                    ),
                )
    except KeyboardInterrupt:
        if stream is not None:
            stream.cancel()
        return cancel_after_interrupt(
            "run", run_id, lambda: stub.CancelRun(opb.CancelRunRequest(run_id=run_id)).run
        )
    if last is None:
        return 1
    out.print(run_summary(last, episodes))
    trees_table = trees.summary() if trees is not None else None
    if trees_table is not None:
        out.print(trees_table)
    if last.state == common_pb2.JOB_STATE_SUCCEEDED:
        return 0
    reason = f": {escape(last.error.message)}" if last.HasField("error") else ""
    console.print(f"run {last.id} {job_state(last.state)}{reason}")
    return 1


def run_summary(run: run_pb2.Run, episodes: list[run_pb2.EpisodeResult]) -> Table:
    """The end-of-run table: one row per task seen finishing, and a total row from the counters."""
    c = run.counters
    title = (
        f"{run.id} · {escape(policy(run))} on {escape(run.suite)} {split_name(run.split)} · "
        f"{job_state(run.state)} in {elapsed(run.start_time, run.end_time)}"
    )
    table = Table(title=title, show_footer=True)
    by_task: dict[str, list[run_pb2.EpisodeResult]] = defaultdict(list)
    for ep in episodes:
        by_task[ep.task_id].append(ep)
    steps = c.steps / c.episodes_finished if c.episodes_finished else 0.0
    tokens = c.usage.prompt_tokens + c.usage.completion_tokens
    footer = {
        "task": "all",
        "episodes": f"{c.episodes_finished}/{c.episodes_total}",
        "resolved": rate(c.episodes_resolved, c.episodes_finished),
        "failures": f"{c.episodes_errored} errored" if c.episodes_errored else "",
        "steps": f"{steps:.1f}",
        "parse errors": str(c.parse_errors),
        "loops": str(c.loop_detections),
        "wrote": str(c.episodes_with_write),
        "tokens": f"{tokens:,}",
    }
    for name, text in footer.items():
        table.add_column(name, footer=text, justify="left" if name in ("task", "failures") else "right")
    for task_id in sorted(by_task):
        eps = by_task[task_id]
        failures = Counter(failure_name(e.failure_category) for e in eps if not e.resolved)
        table.add_row(
            escape(task_id),
            str(len(eps)),
            rate(sum(e.resolved for e in eps), len(eps)),
            escape(", ".join(f"{n}x{k}" if n > 1 else k for k, n in sorted(failures.items()))),
            f"{sum(e.steps for e in eps) / len(eps):.1f}",
            str(sum(e.parse_errors for e in eps)),
            str(sum(e.loop_detections for e in eps)),
            str(sum(e.wrote_file for e in eps)),
            f"{sum(e.usage.prompt_tokens + e.usage.completion_tokens for e in eps):,}",
        )
    table.caption = f"{c.trajectories_stored} trajectories stored: flywheel trajectories list --run {run.id}"
    if reward_text(c):
        table.caption = f"{reward_text(c)}\n{table.caption}"
    return table


@run_cmd.command("list")
@click.option("--suite", default="", help="Only runs on this suite.")
@click.option("--model", default="", help="Only runs of this model.")
@click.option("--state", type=click.Choice(sorted(STATES)), default=None, help="Only runs in this state.")
@click.option("--limit", default=50, show_default=True, help="Show at most this many (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def run_list(
    ctx: click.Context, suite: str, model: str, state: str | None, limit: int, as_json: bool
) -> None:
    """List runs, newest first."""
    request = opb.ListRunsRequest(suite=suite, model=model, state=STATES[state] if state else None)
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        runs: list[run_pb2.Run] = list(rpc.pages(stub.ListRuns, request, "runs", limit))
    if as_json:
        for r in runs:
            click.echo(json_format.MessageToJson(r, indent=None))
        return
    table = Table(title=f"{len(runs)} runs")
    for column in ("id", "state", "suite / split", "policy", "episodes", "resolved", "created"):
        table.add_column(column, no_wrap=column == "id")
    for r in runs:
        c = r.counters
        table.add_row(
            r.id,
            job_state(r.state),
            f"{escape(r.suite)} / {split_name(r.split)}",
            escape(policy(r)),
            f"{c.episodes_finished}/{c.episodes_total}",
            rate(c.episodes_resolved, c.episodes_finished),
            when(r.create_time),
        )
    out.print(table)


@run_cmd.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.pass_context
def run_show(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Show one run: settings, state and counters."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        r = stub.GetRun(opb.GetRunRequest(run_id=run_id)).run
    if as_json:
        out.print_json(json_format.MessageToJson(r))
        return
    out.print(run_panel(r))


def run_panel(r: run_pb2.Run) -> Panel:
    c = r.counters
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    facts = [
        (
            "state",
            job_state(r.state) + (f"  [red]{escape(r.error.message)}[/]" if r.HasField("error") else ""),
        ),
        ("suite", escape(f"{r.suite}@{r.suite_version} {split_name(r.split)}")),
        ("policy", escape(policy(r))),
        ("tasks", escape(", ".join(r.task_ids)) or f"all {c.tasks} of the split"),
        ("settings", escape(settings_line(r))),
        (
            "episodes",
            f"{c.episodes_finished}/{c.episodes_total} finished, resolved {rate(c.episodes_resolved, c.episodes_finished)}, "
            f"{c.episodes_errored} errored, {c.episodes_with_write} wrote a file",
        ),
        (
            "agent",
            f"{c.steps} steps, {c.parse_errors} parse errors, {c.loop_detections} loop detections, "
            f"tokens {c.usage.prompt_tokens:,}+{c.usage.completion_tokens:,}",
        ),
        ("reward", reward_text(c) or "-"),
        ("stored", f"{c.trajectories_stored} trajectories (flywheel trajectories list --run {r.id})"),
        ("time", f"created {when(r.create_time)}, ran {elapsed(r.start_time, r.end_time)}"),
    ]
    if r.labels:
        facts.append(("labels", escape(", ".join(f"{k}={v}" for k, v in sorted(r.labels.items())))))
    if r.loop_id:
        facts.append(("loop", r.loop_id))
    for name, value in facts:
        grid.add_row(name, value)
    return Panel(grid, title=f"[bold]{r.id}[/]", border_style="cyan")


@run_cmd.command("cancel")
@click.argument("run_id")
@click.pass_context
def run_cancel(ctx: click.Context, run_id: str) -> None:
    """Ask a run to stop; finished trajectories stay stored."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        r = stub.CancelRun(opb.CancelRunRequest(run_id=run_id)).run
    console.print(f"{r.id}: {job_state(r.state)} (cancellation requested)")


@run_cmd.command("watch")
@click.argument("run_id")
@click.option("-q", "--quiet", is_flag=True, help="No line per finished episode.")
@click.pass_context
def run_watch(ctx: click.Context, run_id: str, quiet: bool) -> None:
    """Follow a run to its end; exits 1 unless it succeeds, and Ctrl-C cancels it."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        sys.exit(follow_run(stub, run_id, quiet=quiet))


def policy(run: run_pb2.Run) -> str:
    """Who acted in a run: its model, or "reference" for the reference teacher."""
    return "reference" if run.teacher_kind == tpb.TEACHER_KIND_REFERENCE else run.model
