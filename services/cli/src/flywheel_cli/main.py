"""The ``flywheel`` command: ``up``, ``down`` and ``status`` of the embedded stack.

Later commands (suites, runs, datasets, fine-tunes) talk to the services over gRPC.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from flywheel_cli.dataset import dataset
from flywheel_cli.demo import demo, loop_cmd
from flywheel_cli.finetune import finetune
from flywheel_cli.health import grpc_health, http_health, tcp_open
from flywheel_cli.orchestrator_cmds import eval_cmd, run_cmd, suites
from flywheel_cli.stack import STACK_FILE, Running, Stack, StackError, StackInfo, log_tail, wait_for_signal
from flywheel_cli.trajectories import trajectories

console = Console(stderr=True)
DEFAULT_STATE_DIR = Path(os.environ.get("FLYWHEEL_STATE_DIR", "~/.flywheel"))

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the embedded stack keeps NATS data, objects, logs and stack.json (env FLYWHEEL_STATE_DIR).",
)


@click.group()
def cli() -> None:
    """Flywheel: improve coding agents in a closed loop."""


cli.add_command(trajectories)
cli.add_command(dataset)
cli.add_command(finetune)
cli.add_command(suites)
cli.add_command(run_cmd)
cli.add_command(eval_cmd)
cli.add_command(loop_cmd)
cli.add_command(demo)


@cli.command()
@state_dir_option
@click.option(
    "--timeout", default=60.0, show_default=True, help="Seconds to wait for every service to be healthy."
)
@click.option(
    "--grace", default=10.0, show_default=True, help="Seconds each service gets to stop before SIGKILL."
)
def up(state_dir: Path, timeout: float, grace: float) -> None:
    """Start NATS, the object store and every service on this machine; Ctrl-C stops them all."""

    def event(name: str, message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] [bold]{name:<16}[/] {message}")

    stack = Stack(state_dir, grace_s=grace, on_event=event)
    try:
        with console.status("starting the stack…"):
            info = stack.start(timeout_s=timeout)
    except StackError as err:
        console.print(f"[red]error:[/] {err}")
        sys.exit(1)
    console.print(_table(info))
    console.print(
        f"NATS: {info.nats_url} ({'embedded' if info.nats_embedded else 'external'})  "
        f"objects: {info.object_store}\nlogs: {info.state_dir}/logs/<service>.log\n"
        f"Try: [cyan]grpcurl -plaintext {info.services[0]['address']} list[/]   "
        f"Stop with Ctrl-C or [cyan]flywheel down --state-dir {info.state_dir}[/]"
    )

    def died(child: Running) -> None:
        console.print(
            f"[red]{child.component.name} exited with status {child.proc.returncode}[/]; "
            f"last lines of {child.log_path}:\n{log_tail(child.log_path)}"
        )

    try:
        wait_for_signal(stack, died)
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("[green]stopped[/]: no process of the stack is left")


@cli.command()
@state_dir_option
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the stack to stop.")
def down(state_dir: Path, timeout: float) -> None:
    """Stop a stack started by `flywheel up` in another terminal."""
    path = state_dir.expanduser() / STACK_FILE
    if not path.exists():
        console.print(f"no stack is running from {state_dir} ({path} does not exist)")
        return
    info = StackInfo.load(path)
    try:
        os.kill(info.supervisor_pid, signal.SIGTERM)
    except ProcessLookupError:
        console.print(f"the supervisor (pid {info.supervisor_pid}) is gone; removing the stale {path}")
        path.unlink(missing_ok=True)
        return
    deadline = time.monotonic() + timeout
    with console.status("stopping…"):
        while path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    if path.exists():
        console.print(
            f"[red]the stack did not stop within {timeout:.0f} s[/] (supervisor pid {info.supervisor_pid})"
        )
        sys.exit(1)
    console.print("[green]stopped[/]")


@cli.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def status(state_dir: Path, as_json: bool) -> None:
    """Show each service's address and health; exits 1 if any is not SERVING."""
    path = state_dir.expanduser() / STACK_FILE
    if not path.exists():
        console.print(f"no stack is running from {state_dir} (start one with `flywheel up`)")
        sys.exit(1)
    info = StackInfo.load(path)
    for service in info.services:
        if service["protocol"] == "grpc":
            service["health"] = grpc_health(service["address"])
        else:
            service["health"] = http_health(
                f"http://{service['address']}{service.get('health_path', '/health')}"
            )
    host, _, port = info.nats_url.removeprefix("nats://").rpartition(":")
    nats_health = "SERVING" if tcp_open(host or "127.0.0.1", int(port or 4222)) else "UNREACHABLE"
    healthy = nats_health == "SERVING" and all(s["health"] == "SERVING" for s in info.services)
    if as_json:
        click.echo(json.dumps({**info.__dict__, "nats_health": nats_health, "healthy": healthy}, indent=2))
    else:
        table = _table(info, with_health=True)
        table.add_row(
            "nats", info.nats_url, "", nats_health, "embedded" if info.nats_embedded else "external"
        )
        console.print(table)
        console.print(f"objects: {info.object_store}")
        key_file = Path(info.gateway_key_file) if info.gateway_key_file else None
        if key_file is not None and key_file.exists():
            console.print(f"gateway key ({key_file}): {key_file.read_text().strip()}")
    sys.exit(0 if healthy else 1)


def _table(info: StackInfo, with_health: bool = False) -> Table:
    table = Table(title=f"Flywheel stack ({info.state_dir})")
    for column in ("service", "address", "pid", "health" if with_health else "api"):
        table.add_column(column)
    for service in info.services:
        api = service.get("grpc_service") or "HTTP (OpenAI API)"
        last = _colour(service["health"]) if with_health else api
        table.add_row(service["name"], service["address"], str(service["pid"]), last)
    return table


def _colour(health: str) -> str:
    return f"[green]{health}[/]" if health == "SERVING" else f"[red]{health}[/]"
