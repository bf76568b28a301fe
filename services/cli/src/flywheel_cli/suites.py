"""``flywheel suites [show NAME | import PATH | reload]``: the task suites the orchestrator knows."""

from __future__ import annotations

import json
import re
import sys
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
        listed: list[suite_pb2.Suite] = list(rpc.pages(stub.ListSuites, opb.ListSuitesRequest(), "suites"))
    if as_json:
        for s in listed:
            click.echo(json_format.MessageToJson(s, indent=None))
        return
    found = [s for s in listed if not s.load_error]
    failed = [s for s in listed if s.load_error]
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
    for s in failed:
        out.print(
            f"[red]suite {escape(s.name)} failed to load[/] from {escape(s.source)}:\n  "
            + escape(s.load_error).replace("; ", "\n  "),
            soft_wrap=True,
        )


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


#: Most bytes one import may send (the orchestrator's limit, ImportSuiteRequest.files).
MAX_IMPORT_BYTES = 48 * 1024 * 1024
#: Names a suite may have (the orchestrator's rule, repeated to pick a default name here).
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def _read_tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative POSIX path, without caches and hidden entries."""
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or path.suffix == ".pyc":
            continue
        if path.is_file():
            files[rel.as_posix()] = path.read_bytes()
    return files


def _parquet_as_jsonl(path: Path) -> bytes:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise click.ClickException(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow), or convert it to JSONL"
        ) from None
    rows = pq.read_table(path).to_pylist()
    return "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows).encode()


def suite_files(source: Path) -> tuple[dict[str, bytes], str]:
    """The files of a suite in the layout of SUITES.md, and the name the source suggests.

    ``source`` is a suite folder (with suite.toml), a folder of task folders (each with
    task.toml), one task folder, or a JSONL / Parquet file of input/output problems.
    """
    if source.is_file():
        if source.suffix == ".jsonl":
            return {"problems.jsonl": source.read_bytes()}, source.stem
        if source.suffix == ".parquet":
            return {"problems.jsonl": _parquet_as_jsonl(source)}, source.stem
        raise click.ClickException(f"{source}: a file to import must be .jsonl or .parquet (I/O problems)")
    if not source.is_dir():
        raise click.ClickException(f"{source}: no such file or folder")
    if (source / "suite.toml").is_file():
        return _read_tree(source), ""
    if (source / "task.toml").is_file():
        return {f"tasks/{source.name}/{p}": d for p, d in _read_tree(source).items()}, source.name
    tasks = sorted(p for p in source.iterdir() if (p / "task.toml").is_file())
    if not tasks:
        raise click.ClickException(
            f"{source}: not a suite (no suite.toml), a task (no task.toml) or a folder of tasks "
            "(no sub-folder with a task.toml); see SUITES.md for the layout"
        )
    files = {}
    for task in tasks:
        files.update({f"tasks/{task.name}/{p}": d for p, d in _read_tree(task).items()})
    return files, source.name


def _print_problems(problems: list[suite_pb2.SuiteProblem]) -> None:
    for p in problems:
        style, label = ("yellow", "warning") if p.warning else ("red", "error")
        where = f"{escape(p.path)}: " if p.path else ""
        out.print(f"[{style}]{label}:[/] {where}{escape(p.message)}", soft_wrap=True)


@suites.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--name", default="", help="Suite name (default: suite.toml's name, else the folder or file name)."
)
@click.option("--replace", is_flag=True, help="Replace a suite of the same name.")
@click.option(
    "--check", "check_only", is_flag=True, help="Only validate: list every problem, import nothing."
)
@click.pass_context
def suites_import(ctx: click.Context, source: Path, name: str, replace: bool, check_only: bool) -> None:
    """Validate a suite and import it into the orchestrator's object store.

    SOURCE is a suite folder (suite.toml, tasks/, problems.jsonl), a folder of task folders,
    one task folder, or a .jsonl / .parquet file of input/output problems. Every problem is
    listed at once (unknown keys, missing files, test ids that name no test); nothing is
    imported while any remains. The suite is then usable at once, without a restart.
    """
    files, suggested = suite_files(source)
    total = sum(len(d) for d in files.values())
    if total > MAX_IMPORT_BYTES:
        raise click.ClickException(
            f"{source}: {len(files)} files, {total:,} bytes; a suite may hold {MAX_IMPORT_BYTES:,} "
            "(is this the folder you meant?)"
        )
    if not name and "suite.toml" not in files:
        name = suggested.lower()
        if not NAME_RE.match(name):
            raise click.ClickException(f"{suggested!r} is not a valid suite name: give one with --name")
    request = opb.ImportSuiteRequest(
        name=name, files=[suite_pb2.SuiteFile(path=p, content=c) for p, c in files.items()], replace=replace
    )
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        request.validate_only = True
        checked = stub.ImportSuite(request)
        _print_problems(list(checked.problems))
        errors = sum(not p.warning for p in checked.problems)
        if errors:
            out.print(f"[red]{errors} problem{'s' if errors != 1 else ''}[/]: nothing was imported")
            sys.exit(1)
        if check_only:
            s = checked.suite
            out.print(
                f"{escape(s.name)}: no problems ({s.task_count} tasks: {s.train_task_count} train, "
                f"{s.test_task_count} test)"
            )
            return
        request.validate_only = False
        s = stub.ImportSuite(request).suite
    out.print(
        f"imported [bold]{escape(s.name)}[/] version {s.version}: {s.task_count} tasks "
        f"({s.train_task_count} train, {s.test_task_count} test) into {escape(s.source)}"
    )


@suites.command("reload")
@click.pass_context
def suites_reload(ctx: click.Context) -> None:
    """Read every suite again now (ListSuites already picks up changed folders and objects)."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        reply = stub.ReloadSuites(opb.ReloadSuitesRequest())
    out.print(f"{reply.suite_count} suites loaded")
    for s in reply.failed:
        out.print(
            f"[red]suite {escape(s.name)} failed to load[/] from {escape(s.source)}: {escape(s.load_error)}",
            soft_wrap=True,
        )
    if reply.failed:
        sys.exit(1)
