"""``flywheel eval …``: compare models on a suite and print the report, or list, show, cancel
and watch evaluations.

Like ``run``, ``eval`` is a group that starts an evaluation when given no sub-command. The report
is printed from the Evaluation resource: per-model metrics, deltas against the baseline, the
per-task table, and where the Markdown/PNG/JSON report objects are (with the filesystem object
store, also their local paths).
"""

from __future__ import annotations

import os
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceStub
from flywheel_cli import rpc
from flywheel_cli.job_options import (
    SPLITS,
    cancel_after_interrupt,
    episode_options,
    fill_episode,
    reject_job_options,
)
from flywheel_cli.mle import SearchRows, ml_table, node_line
from flywheel_cli.render import (
    STATES,
    console,
    duration,
    elapsed,
    episode_line,
    episodes_reward_text,
    failure_name,
    job_state,
    out,
    settings_line,
    split_name,
    when,
)
from flywheel_cli.stack import STACK_FILE, StackInfo


@click.group("eval", invoke_without_command=True)
@rpc.connection_options(rpc.ORCHESTRATOR)
@click.option("--suite", default=None, help="Suite name (see `flywheel suites`).")
@click.option("--split", type=click.Choice(sorted(SPLITS)), default="test", show_default=True)
@click.option("--model", "models", multiple=True, help="Model to evaluate (repeatable, 1 to 8).")
@click.option("--baseline", default=None, help="The model the others are compared with (one of --model).")
@click.option("--confidence", type=float, default=0.0, help="Confidence level of the intervals (0 = 0.95).")
@episode_options
@click.pass_context
def eval_cmd(
    ctx: click.Context,
    /,
    address: str | None,
    state_dir: Path,
    suite: str | None,
    split: str,
    models: tuple[str, ...],
    baseline: str | None,
    confidence: float,
    **opts: Any,
) -> None:
    """Compare models on a suite: `flywheel eval --suite S --model A --model B --baseline B`.

    Follows the evaluation with a progress bar, then prints the report: per-model metrics, the
    deltas against the baseline, the per-task table and where the Markdown/PNG/JSON report is.
    Ctrl-C cancels it. Manage evaluations with `flywheel eval list|show|cancel|watch`.
    """
    rpc.remember_connection(ctx, address, state_dir)
    if ctx.invoked_subcommand is not None:
        reject_job_options(ctx)
        return
    if not suite:
        raise click.UsageError(
            "--suite is required to start an evaluation (or use `flywheel eval list|show|cancel|watch`)"
        )
    if not models:
        raise click.UsageError("give at least one --model NAME")
    if baseline and baseline not in models:
        raise click.UsageError(
            f"--baseline {baseline!r} must be one of the --model names ({', '.join(models)})"
        )
    if not baseline and len(models) > 1:
        raise click.UsageError("--baseline is required with more than one --model")
    evaluation = epb.Evaluation(
        suite=suite,
        split=SPLITS[split],
        models=list(models),
        baseline_model=baseline or "",
        confidence_level=confidence,
    )
    fill_episode(evaluation, opts)
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        request = opb.CreateEvaluationRequest(evaluation=evaluation, request_id=opts["request_id"])
        created = stub.CreateEvaluation(request).evaluation
        console.print(
            f"started [bold]{created.id}[/]: {escape(', '.join(created.models))} on {escape(created.suite)}"
            f"@{created.suite_version} {split_name(created.split)}"
            + (f", {created.progress.episodes_total} episodes" if created.progress.episodes_total else "")
        )
        out.print(created.id, soft_wrap=True)
        if opts["watch"]:
            sys.exit(follow_evaluation(stub, created.id, ctx.obj["state_dir"], quiet=opts["quiet"]))


def follow_evaluation(
    stub: OrchestratorServiceStub, eval_id: str, state_dir: Path, *, quiet: bool = False
) -> int:
    """Follow WatchEvaluation, then print the report; returns the exit status (Ctrl-C cancels)."""
    # The evaluation's bar, then (ML tasks) one row per episode's search tree (SearchRows).
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    last: epb.Evaluation | None = None
    resolved: Counter[str] = Counter()
    finished: Counter[str] = Counter()
    parse_errors = 0
    episodes: dict[str, list[run_pb2.EpisodeResult]] = defaultdict(list)
    stream: Any = None
    trees: SearchRows | None = None
    try:
        stream = stub.WatchEvaluation(opb.WatchEvaluationRequest(evaluation_id=eval_id))
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task(f"{'…':<9}", total=None, info="episodes")
            trees = SearchRows(progress, with_model=True)
            for update in stream:
                which = update.WhichOneof("update")
                if which == "ml_node":
                    trees.node(update.ml_node)
                    # Piped output shows no live rows: a line per node tells the same story.
                    if not quiet and not console.is_terminal:
                        progress.console.print(
                            escape(node_line(update.ml_node, with_model=True)), soft_wrap=True
                        )
                    continue
                if which == "episode":
                    ep = update.episode
                    finished[ep.model] += 1
                    resolved[ep.model] += ep.resolved
                    parse_errors += ep.parse_errors
                    episodes[ep.model].append(ep)
                    trees.finished(ep)
                    if not quiet:
                        progress.console.print(episode_line(ep, with_model=True))
                else:
                    last = update.evaluation
                per_model = "  ".join(
                    f"{escape(m)} [green]{resolved[m]}[/]/{finished[m]}"
                    for m in (last.models if last else ())
                )
                progress.update(
                    bar,
                    description=f"{job_state(last.state) if last else '…':<9}",
                    total=(last.progress.episodes_total or None) if last else None,
                    completed=last.progress.episodes_finished if last else 0,
                    info=f"episodes · {per_model} resolved · {parse_errors} parse errors",
                )
    except KeyboardInterrupt:
        if stream is not None:
            stream.cancel()
        return cancel_after_interrupt(
            "evaluation",
            eval_id,
            lambda: stub.CancelEvaluation(opb.CancelEvaluationRequest(evaluation_id=eval_id)).evaluation,
        )
    if last is None:
        return 1
    final = stub.GetEvaluation(opb.GetEvaluationRequest(evaluation_id=eval_id)).evaluation
    print_evaluation(final, state_dir)
    trees_table = trees.summary() if trees is not None else None
    if trees_table is not None:
        out.print(trees_table)
    for model, eps in episodes.items():  # rewards of the episodes seen while following
        out.print(f"{escape(model or 'reference')}: {episodes_reward_text(eps)}")
    if final.state == common_pb2.JOB_STATE_SUCCEEDED:
        return 0
    reason = f": {escape(final.error.message)}" if final.HasField("error") else ""
    console.print(f"evaluation {final.id} {job_state(final.state)}{reason}")
    return 1


def _delta(value: float, fmt: str, better_when_higher: bool) -> str:
    text = format(value, fmt)
    if value == 0:
        return f"[dim]{text}[/]"
    good = (value > 0) == better_when_higher
    return f"[{'green' if good else 'red'}]{text}[/]"


def model_table(e: epb.Evaluation) -> Table:
    """Per-model metrics: the headline of an evaluation."""
    level = e.model_metrics[0].pass_rate_ci.level if e.model_metrics else 0.95
    table = Table(title=f"models on {escape(e.suite)} {split_name(e.split)}")
    columns = (
        "model",
        "episodes",
        "resolved",
        "pass rate",
        f"{level or 0.95:.0%} CI",
        "pass@k",
        "parse err/ep",
        "write rate",
        "loops/ep",
        "steps",
        "tokens/ep",
        "wall/ep",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "pass@k") else "right")
    for m in e.model_metrics:
        name = escape(m.model) + (" [yellow](baseline)[/]" if m.baseline else "")
        if m.adapter_name:
            name += f"\n[dim]{escape(m.adapter_name)} v{m.adapter_version}[/]"
        ci = m.pass_rate_ci
        table.add_row(
            name,
            str(m.episodes),
            str(m.resolved),
            f"{m.pass_rate:.3f}",
            f"{ci.lower:.2f}-{ci.upper:.2f}" if ci.method else "-",
            " ".join(f"@{p.k} {p.value:.2f}" for p in m.pass_at_k) or "-",
            f"{m.parse_errors_per_episode:.2f}",
            f"{m.write_rate:.2f}",
            f"{m.loop_detections_per_episode:.2f}",
            f"{m.mean_steps:.1f}",
            f"{m.mean_prompt_tokens + m.mean_completion_tokens:,.0f}",
            duration(m.mean_wall_time),
        )
    return table


def delta_table(e: epb.Evaluation) -> Table | None:
    """Each model minus the baseline; green is better, red worse."""
    rows = [m for m in e.model_metrics if m.HasField("delta_vs_baseline")]
    if not rows:
        return None
    table = Table(title=f"deltas vs baseline {escape(e.baseline_model)}")
    columns = (
        "model",
        "pass rate",
        "parse err/ep",
        "write rate",
        "loops/ep",
        "steps",
        "tokens/ep",
        "wall/ep",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for m in rows:
        d = m.delta_vs_baseline
        wall = d.mean_wall_time.ToNanoseconds() / 1e9
        table.add_row(
            escape(m.model),
            _delta(d.pass_rate, "+.3f", True),
            _delta(d.parse_errors_per_episode, "+.2f", False),
            _delta(d.write_rate, "+.2f", True),
            _delta(d.loop_detections_per_episode, "+.2f", False),
            _delta(d.mean_steps, "+.1f", False),
            _delta(d.mean_tokens, "+,.0f", False),
            _delta(wall, "+.1f", False) + " s" if wall else "[dim]0[/]",
        )
    return table


def task_table(e: epb.Evaluation) -> Table | None:
    """One row per task, one column per model: resolved/rollouts and why the others failed."""
    if not e.task_results:
        return None
    table = Table(title="per task")
    table.add_column("task")
    for model in e.models:
        table.add_column(escape(model))
    for row in e.task_results:
        cells = []
        for r in row.models:
            failures = Counter(failure_name(f) for f in r.failure_categories)
            why = ", ".join(f"{n}x{k}" if n > 1 else k for k, n in sorted(failures.items()))
            style = (
                "green"
                if r.resolved == r.rollouts and r.rollouts
                else ("red" if not r.resolved else "yellow")
            )
            cells.append(
                f"[{style}]{r.resolved}/{r.rollouts}[/]" + (f" [dim]{escape(why)}[/]" if why else "")
            )
        table.add_row(escape(row.task_id), *cells)
    return table


def report_locations(e: epb.Evaluation, root: Path | None) -> list[tuple[str, str, str]]:
    """(what, object key, local file path or '') of each report object."""
    refs = [
        ("markdown", e.report.markdown),
        *(("chart", c) for c in e.report.charts),
        ("json", e.report.json),
    ]
    found = []
    for what, ref in refs:
        if not ref.key:
            continue
        path = root / ref.key if root is not None else None
        found.append((what, ref.key, str(path) if path is not None and path.is_file() else ""))
    return found


def print_evaluation(e: epb.Evaluation, state_dir: Path, *, with_tasks: bool = True) -> None:
    """The readable report: header, per-model table, deltas, per-task table, report objects."""
    header = (
        f"[bold]{e.id}[/] {job_state(e.state)} · {escape(e.suite)}@{e.suite_version} {split_name(e.split)} · "
        f"baseline {escape(e.baseline_model or (e.models[0] if e.models else '-'))} · "
        f"{e.progress.episodes_finished}/{e.progress.episodes_total} episodes in "
        f"{elapsed(e.start_time, e.end_time)}\n[dim]{escape(settings_line(e))}[/]"
    )
    if e.HasField("error"):
        header += f"\n[red]{escape(e.error.message)}[/]"
    out.print(header)
    if e.model_metrics and e.state == common_pb2.JOB_STATE_SUCCEEDED:
        out.print(model_table(e))
        deltas = delta_table(e)
        if deltas is not None:
            out.print(deltas)
        tasks = task_table(e) if with_tasks else None
        if tasks is not None:
            out.print(tasks)
        ml = ml_table(e)
        if ml is not None:
            out.print(ml)
    locations = report_locations(e, objects_root(state_dir))
    if locations:
        out.print("[bold]report[/]")
        for what, key, path in locations:
            out.print(
                f"  {what:<8} {escape(key)}" + (f"\n           {escape(path)}" if path else ""),
                soft_wrap=True,
            )


@eval_cmd.command("list")
@click.option("--suite", default="", help="Only evaluations on this suite.")
@click.option(
    "--state", type=click.Choice(sorted(STATES)), default=None, help="Only evaluations in this state."
)
@click.option("--limit", default=50, show_default=True, help="Show at most this many (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def eval_list(ctx: click.Context, suite: str, state: str | None, limit: int, as_json: bool) -> None:
    """List evaluations, newest first, with each model's pass rate."""
    request = opb.ListEvaluationsRequest(suite=suite, state=STATES[state] if state else None)
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        items: list[epb.Evaluation] = list(rpc.pages(stub.ListEvaluations, request, "evaluations", limit))
    if as_json:
        for e in items:
            click.echo(json_format.MessageToJson(e, indent=None))
        return
    table = Table(title=f"{len(items)} evaluations")
    for column in ("id", "state", "suite / split", "pass rate per model", "episodes", "created"):
        table.add_column(column, no_wrap=column == "id")
    for e in items:
        rates = "\n".join(
            f"{escape(m.model)}{'*' if m.baseline else ''} {m.pass_rate:.3f}"
            if e.state == common_pb2.JOB_STATE_SUCCEEDED
            else f"{escape(m.model)}{'*' if m.baseline else ''}"
            for m in e.model_metrics
        ) or escape(", ".join(e.models))
        table.add_row(
            e.id,
            job_state(e.state),
            f"{escape(e.suite)} / {split_name(e.split)}",
            rates,
            f"{e.progress.episodes_finished}/{e.progress.episodes_total}",
            when(e.create_time),
        )
    table.caption = "* baseline"
    out.print(table)


@eval_cmd.command("show")
@click.argument("evaluation_id")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
@click.option("--no-tasks", is_flag=True, help="Leave out the per-task table.")
@click.pass_context
def eval_show(ctx: click.Context, evaluation_id: str, as_json: bool, no_tasks: bool) -> None:
    """Show one evaluation's report."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        e = stub.GetEvaluation(opb.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    if as_json:
        out.print_json(json_format.MessageToJson(e))
        return
    print_evaluation(e, ctx.obj["state_dir"], with_tasks=not no_tasks)


@eval_cmd.command("cancel")
@click.argument("evaluation_id")
@click.pass_context
def eval_cancel(ctx: click.Context, evaluation_id: str) -> None:
    """Ask an evaluation to stop; its runs are cancelled and no report is written."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        e = stub.CancelEvaluation(opb.CancelEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    console.print(f"{e.id}: {job_state(e.state)} (cancellation requested)")


@eval_cmd.command("watch")
@click.argument("evaluation_id")
@click.option("-q", "--quiet", is_flag=True, help="No line per finished episode.")
@click.pass_context
def eval_watch(ctx: click.Context, evaluation_id: str, quiet: bool) -> None:
    """Follow an evaluation to its end and print the report; Ctrl-C cancels it."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        sys.exit(follow_evaluation(stub, evaluation_id, ctx.obj["state_dir"], quiet=quiet))


def objects_root(state_dir: Path) -> Path | None:
    """Where the filesystem object store keeps its files, or None when the stack uses S3.

    Same order the services use: ``FLYWHEEL_OBJECT_STORE_ROOT``, else the embedded stack's
    ``<state>/objects`` (what ``flywheel up`` hands its children), else ``~/.flywheel/objects``.
    """
    if os.environ.get("FLYWHEEL_OBJECT_STORE_BACKEND", "fs") != "fs":
        return None
    env = os.environ.get("FLYWHEEL_OBJECT_STORE_ROOT")
    if env:
        return Path(env).expanduser()
    stack_file = state_dir.expanduser() / STACK_FILE
    if stack_file.exists():
        info = StackInfo.load(stack_file)
        if not info.object_store.startswith("filesystem"):
            return None
        return Path(info.state_dir) / "objects"
    return Path("~/.flywheel/objects").expanduser()
