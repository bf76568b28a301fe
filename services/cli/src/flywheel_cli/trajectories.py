"""``flywheel trajectories list|show|export|import``: the trajectory store from the command line.

Talks to ``flywheel.trajectory.v1.TrajectoryService`` over gRPC only. The address comes from
``--address``, else ``FLYWHEEL_TRAJECTORY_ADDRESS``, else the running embedded stack's
``stack.json`` (``--state-dir``), else ``127.0.0.1:50053``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel.trajectory.v1.trajectory_pb2_grpc import TrajectoryServiceStub
from flywheel_cli import rpc
from flywheel_cli.job_options import parse_labels
from flywheel_cli.render import console, out
from flywheel_common.server import MAX_MESSAGE_BYTES

F = TypeVar("F", bound=Callable[..., Any])
#: The server accepts requests up to 64 MiB (the request's other fields need a little of it); a
#: larger file must be put in the object store first.
MAX_IMPORT_BYTES = MAX_MESSAGE_BYTES - 4 * 1024 * 1024
FORMATS = {
    "aide": pb.IMPORT_FORMAT_AIDE_JOURNAL,
    "swe": pb.IMPORT_FORMAT_SWE_JSONL,
    "chat": pb.IMPORT_FORMAT_CHAT_JSONL,
}
ROLE_STYLE = {
    pb.ROLE_SYSTEM: ("system", "magenta"),
    pb.ROLE_USER: ("user", "blue"),
    pb.ROLE_ASSISTANT: ("assistant", "green"),
    pb.ROLE_TOOL: ("tool", "yellow"),
}


@click.group("trajectories")
@rpc.connection_options(rpc.TRAJECTORY_STORE)
@click.pass_context
def trajectories(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """List, show, export and import agent trajectories."""
    rpc.remember_connection(ctx, address, state_dir)


# ------------------------------------------------------------------------------- filters


def _filter_options(fn: F) -> F:
    options = [
        click.option("--run", "runs", multiple=True, help="Run id (repeatable)."),
        click.option("--suite", default="", help="Suite name."),
        click.option("--task", "tasks", multiple=True, help="Task id (repeatable)."),
        click.option("--split", type=click.Choice(["train", "test"]), default=None, help="Task split."),
        click.option("--model", default="", help="Gateway model name."),
        click.option("--adapter", default="", help="Adapter name, optionally NAME:VERSION."),
        click.option("--outcome", type=click.Choice(["resolved", "unresolved"]), default=None),
        click.option("--since", default=None, help="Stored at or after (ISO 8601, e.g. 2026-11-21T10:00Z)."),
        click.option("--until", default=None, help="Stored before (ISO 8601)."),
        click.option(
            "--label", "labels", multiple=True, help="KEY=VALUE label that must match (repeatable)."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _timestamp(value: str, name: str) -> Timestamp:
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=name) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def build_filter(**kw: Any) -> pb.TrajectoryFilter:
    flt = pb.TrajectoryFilter(
        run_ids=list(kw["runs"]),
        suite=kw["suite"],
        task_ids=list(kw["tasks"]),
        model=kw["model"],
        labels=parse_labels(kw["labels"]),
    )
    if kw["split"]:
        flt.split = common_pb2.TASK_SPLIT_TRAIN if kw["split"] == "train" else common_pb2.TASK_SPLIT_TEST
    if kw["adapter"]:
        name, _, version = kw["adapter"].partition(":")
        flt.adapter_name = name
        if version:
            if not version.isdigit():
                raise click.BadParameter(f"version {version!r} must be a number", param_hint="--adapter")
            flt.adapter_version = int(version)
    if kw["outcome"]:
        flt.outcome = (
            pb.OUTCOME_FILTER_RESOLVED if kw["outcome"] == "resolved" else pb.OUTCOME_FILTER_UNRESOLVED
        )
    if kw["since"]:
        flt.create_time_range.start_time.CopyFrom(_timestamp(kw["since"], "--since"))
    if kw["until"]:
        flt.create_time_range.end_time.CopyFrom(_timestamp(kw["until"], "--until"))
    return flt


# ------------------------------------------------------------------------------ commands


@trajectories.command("list")
@_filter_options
@click.option("--limit", default=50, show_default=True, help="Show at most this many (0 = all).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
@click.pass_context
def list_cmd(ctx: click.Context, limit: int, as_json: bool, **kw: Any) -> None:
    """List trajectories, oldest stored first."""
    flt = build_filter(**kw)
    rows: list[pb.Trajectory] = []
    with rpc.stub(ctx, rpc.TRAJECTORY_STORE, TrajectoryServiceStub) as stub:
        token = ""
        while True:
            size = 1000 if limit == 0 else min(1000, limit - len(rows))
            page = stub.ListTrajectories(
                pb.ListTrajectoriesRequest(filter=flt, page_size=size, page_token=token)
            )
            rows.extend(page.trajectories)
            token = page.next_page_token
            if not token or (limit and len(rows) >= limit):
                break
    if as_json:
        for t in rows:
            click.echo(json_format.MessageToJson(t, indent=None))
        return
    table = Table(title=f"{len(rows)} trajectories" + (" (more: raise --limit)" if token else ""))
    for column in ("id", "run", "suite / task", "model", "outcome", "steps", "stored"):
        table.add_column(column, no_wrap=column in ("id", "run"), overflow="fold")
    for t in rows:
        outcome = "[green]resolved[/]" if t.outcome.resolved else "[red]unresolved[/]"
        if t.outcome.tests_total:
            outcome += f" {t.outcome.tests_passed}/{t.outcome.tests_total}"
        table.add_row(
            t.id,
            t.run_id,
            f"{t.task.suite} / {t.task.task_id}",
            t.policy.model or pb.TeacherKind.Name(t.teacher_kind).removeprefix("TEACHER_KIND_").lower(),
            outcome,
            str(t.stats.step_count),
            t.create_time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


@trajectories.command("show")
@click.argument("trajectory_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole trajectory as JSON.")
@click.option(
    "--max-chars",
    default=4000,
    show_default=True,
    help="Cut each message to this many characters (0 = no cut).",
)
@click.pass_context
def show_cmd(ctx: click.Context, trajectory_id: str, as_json: bool, max_chars: int) -> None:
    """Show one trajectory with its conversation."""
    with rpc.stub(ctx, rpc.TRAJECTORY_STORE, TrajectoryServiceStub) as stub:
        t = stub.GetTrajectory(pb.GetTrajectoryRequest(trajectory_id=trajectory_id)).trajectory
    if as_json:
        out.print_json(json_format.MessageToJson(t))
        return
    out.print(render_header(t))
    for step in t.steps:
        out.print(render_step(step, max_chars))


def render_header(t: pb.Trajectory) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    outcome = (
        "[green]resolved[/]"
        if t.outcome.resolved
        else f"[red]unresolved[/] {escape(pb.FailureCategory.Name(t.outcome.failure_category))}"
    )
    if t.outcome.tests_total:
        outcome += f"  tests {t.outcome.tests_passed}/{t.outcome.tests_total}"
    if t.outcome.failure_detail:
        outcome += f"  ({escape(t.outcome.failure_detail)})"
    policy = t.policy.model or "-"
    if t.policy.adapter_name:
        policy += f"  adapter {t.policy.adapter_name} v{t.policy.adapter_version}"
    facts = [
        (
            "task",
            f"{t.task.suite} / {t.task.task_id}  {common_pb2.TaskSplit.Name(t.task.split).removeprefix('TASK_SPLIT_').lower()}",
        ),
        ("policy", policy),
        ("teacher", pb.TeacherKind.Name(t.teacher_kind).removeprefix("TEACHER_KIND_").lower()),
        ("protocol", common_pb2.ToolProtocol.Name(t.tool_protocol).removeprefix("TOOL_PROTOCOL_").lower()),
        ("run", f"{t.run_id or '-'}  attempt {t.attempt}"),
        ("outcome", outcome),
        (
            "stats",
            f"{t.stats.step_count} steps, {t.stats.assistant_turns} turns, {t.stats.tool_calls} tool calls, "
            f"{t.stats.parse_errors} parse errors, tokens {t.stats.usage.prompt_tokens}+{t.stats.usage.completion_tokens}",
        ),
        ("stored", f"{t.create_time.ToDatetime(dt.UTC).isoformat()}  {t.object.key}"),
    ]
    if t.HasField("import_origin"):
        o = t.import_origin
        facts.append(("imported", f"{o.source}" + (f":{o.line}" if o.line else "")))
    if t.labels:
        facts.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(t.labels.items()))))
    for name, value in facts:
        grid.add_row(name, value if name == "outcome" else escape(value))
    return Panel(grid, title=f"[bold]{escape(t.id)}[/]", border_style="cyan")


def render_step(step: pb.Step, max_chars: int) -> Panel:
    role, colour = ROLE_STYLE.get(step.role, ("?", "white"))
    title = f"#{step.index} {role}" + (f" ({step.name})" if step.name else "")
    if step.HasField("parent_index"):
        title += f" ← #{step.parent_index}"
    content = step.content
    if max_chars and len(content) > max_chars:
        content = content[:max_chars] + f"\n… ({len(step.content) - max_chars} more characters)"
    parts: list[RenderableType] = [Text(content)]
    for call in step.tool_calls:
        parts.append(Text(f"→ {call.name}({call.arguments_json})", style="bold green"))
    if step.HasField("parse_error"):
        kind = pb.ParseErrorKind.Name(step.parse_error.kind).removeprefix("PARSE_ERROR_KIND_")
        parts.append(Text(f"✗ parse error {kind}: {step.parse_error.message}", style="bold red"))
    if step.HasField("tool_result"):
        r = step.tool_result
        status = pb.ToolResultStatus.Name(r.status).removeprefix("TOOL_RESULT_STATUS_")
        line = f"tool result {r.tool_name or r.tool_call_id}: {status}" + (f" — {r.error}" if r.error else "")
        if r.written_paths:
            line += f"  wrote {', '.join(r.written_paths)}"
        parts.append(Text(line, style="yellow"))
    if step.HasField("test_run"):
        tr = step.test_run
        trigger = pb.TestTrigger.Name(tr.trigger).removeprefix("TEST_TRIGGER_").lower()
        style = "green" if tr.total and tr.passed == tr.total else "red"
        parts.append(Text(f"tests ({trigger}): {tr.passed}/{tr.total} passed", style=style))
    extras = []
    if step.loop_detected:
        extras.append("loop detected")
    if step.usage.prompt_tokens or step.usage.completion_tokens:
        extras.append(f"tokens {step.usage.prompt_tokens}+{step.usage.completion_tokens}")
    if step.HasField("duration"):
        extras.append(f"{step.duration.ToMilliseconds()} ms")
    extras.extend(f"{k}={v}" for k, v in sorted(step.attributes.items()))
    if extras:
        parts.append(Text("  ".join(extras), style="dim"))
    return Panel(Group(*parts), title=title, title_align="left", border_style=colour)


@trajectories.command("export")
@_filter_options
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="JSONL file to write ('-' = stdout).",
)
@click.option("--view", type=click.Choice(["full", "basic"]), default="full", show_default=True)
@click.pass_context
def export_cmd(ctx: click.Context, output: Path, view: str, **kw: Any) -> None:
    """Export matching trajectories as JSONL (one trajectory per line, protobuf JSON mapping)."""
    flt = build_filter(**kw)
    request = pb.ExportTrajectoriesRequest(
        filter=flt, view=pb.TRAJECTORY_VIEW_FULL if view == "full" else pb.TRAJECTORY_VIEW_BASIC
    )
    to_stdout = str(output) == "-"
    # Written next to the target and renamed at the end: an interrupted export leaves no half file.
    partial = output.with_name(output.name + ".partial")
    count = 0
    with rpc.stub(ctx, rpc.TRAJECTORY_STORE, TrajectoryServiceStub) as stub, contextlib.ExitStack() as stack:
        if not to_stdout:
            stack.callback(partial.unlink, missing_ok=True)  # a no-op once renamed
        sink = sys.stdout if to_stdout else stack.enter_context(open(partial, "w", encoding="utf-8"))
        progress = stack.enter_context(
            Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=to_stdout,
            )
        )
        task = progress.add_task("exporting…", total=None)
        for message in stub.ExportTrajectories(request):
            sink.write(json_format.MessageToJson(message.trajectory, indent=None) + "\n")
            count += 1
            if count % 100 == 0:
                progress.update(task, description=f"exported {count} trajectories")
        progress.update(task, description=f"exported {count} trajectories")
        if not to_stdout:
            sink.close()
            partial.replace(output)
    if not to_stdout:
        console.print(f"[green]exported {count} trajectories[/] to {output}")


@trajectories.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(sorted(FORMATS)))
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--suite", default="", help="Suite name for records that have none.")
@click.option("--run-id", default="", help="Run id to group them under (default: derived from the file).")
@click.option(
    "--label", "labels", multiple=True, help="KEY=VALUE label added to every trajectory (repeatable)."
)
@click.option("--validate-only", is_flag=True, help="Check the file; store nothing.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any record was skipped.")
@click.pass_context
def import_cmd(
    ctx: click.Context,
    fmt: str,
    path: Path,
    suite: str,
    run_id: str,
    labels: tuple[str, ...],
    validate_only: bool,
    strict: bool,
) -> None:
    """Import a foreign log: FORMAT is aide (journal.json), swe (SWE-style JSONL) or chat (chat JSONL)."""
    size = path.stat().st_size
    if size > MAX_IMPORT_BYTES:
        console.print(
            f"[red]error:[/] {path} is {size:,} bytes; the RPC takes at most {MAX_IMPORT_BYTES:,} (split the file)"
        )
        sys.exit(1)
    request = pb.ImportTrajectoriesRequest(
        format=FORMATS[fmt],
        content=path.read_bytes(),
        source_name=str(path),
        suite=suite,
        run_id=run_id,
        labels=parse_labels(labels),
        validate_only=validate_only,
    )
    with (
        rpc.stub(ctx, rpc.TRAJECTORY_STORE, TrajectoryServiceStub) as stub,
        console.status(f"importing {path}…"),
    ):
        reply = stub.ImportTrajectories(request)
    for err in reply.errors:
        where = f"{err.source}:{err.line}" if err.line else err.source
        pointer = f" {err.pointer}" if err.pointer else ""
        console.print(f"[red]skipped[/] {escape(where)}{escape(pointer)}: {escape(err.message)}")
    if reply.errors_truncated:
        console.print(f"[red]… and {reply.skipped_count - len(reply.errors)} more skipped records[/]")
    verb = "would import" if validate_only else "imported"
    click.echo(
        json.dumps(
            {
                "run_id": reply.run_id,
                "created": reply.created_count,
                "unchanged": reply.unchanged_count,
                "skipped": reply.skipped_count,
            }
        )
    )
    console.print(
        f"[green]{verb}[/] {path}: {reply.created_count} new, {reply.unchanged_count} already stored, {reply.skipped_count} skipped  run {reply.run_id}"
    )
    if strict and reply.skipped_count:
        sys.exit(1)
