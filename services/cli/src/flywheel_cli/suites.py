"""``flywheel suites [show NAME]``: the task suites the orchestrator knows."""

from __future__ import annotations

from pathlib import Path

import click
from google.protobuf import json_format
from rich.markdown import Markdown
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import suite_pb2
from flywheel.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import enum_name, out


@click.group("suites", invoke_without_command=True)
@rpc.connection_options(rpc.ORCHESTRATOR)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per suite instead of a table.")
@click.pass_context
def suites(ctx: click.Context, address: str | None, state_dir: Path, as_json: bool) -> None:
    """List the task suites the orchestrator knows (`flywheel suites show NAME` for one)."""
    rpc.remember_connection(ctx, address, state_dir)
    if ctx.invoked_subcommand is not None:
        return
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        found: list[suite_pb2.Suite] = list(rpc.pages(stub.ListSuites, opb.ListSuitesRequest(), "suites"))
    if as_json:
        for s in found:
            click.echo(json_format.MessageToJson(s, indent=None))
        return
    table = Table(title=f"{len(found)} task suites")
    for column in ("name", "version", "kinds", "tasks", "train", "test", "bundled", "source"):
        table.add_column(column, justify="right" if column in ("tasks", "train", "test") else "left")
    for s in found:
        table.add_row(
            s.name,
            s.version,
            ", ".join(enum_name(k, common_pb2.TaskKind, "TASK_KIND_") for k in s.kinds),
            str(s.task_count),
            str(s.train_task_count),
            str(s.test_task_count),
            "yes" if s.bundled else "no",
            escape(s.source),
        )
    out.print(table)


@suites.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the suite as JSON.")
@click.pass_context
def suites_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one suite: its split, source and description."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        s = stub.GetSuite(opb.GetSuiteRequest(suite=name)).suite
    if as_json:
        out.print_json(json_format.MessageToJson(s))
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in (
        ("version", s.version),
        ("kinds", ", ".join(enum_name(k, common_pb2.TaskKind, "TASK_KIND_") for k in s.kinds)),
        ("tasks", f"{s.task_count}: {s.train_task_count} train, {s.test_task_count} test"),
        ("split", f"train ratio {s.train_ratio:g}, seed {s.split_seed!r}"),
        ("bundled", "yes" if s.bundled else "no"),
        ("source", s.source),
    ):
        grid.add_row(key, escape(value))
    out.print(Panel(grid, title=f"[bold]{escape(s.name)}[/]", border_style="cyan"))
    if s.description:
        out.print(Markdown(s.description))
