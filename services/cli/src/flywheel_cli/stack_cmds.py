"""``flywheel up``, ``flywheel down`` and ``flywheel status``: the embedded stack on this machine."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from flywheel_cli.health import grpc_health, http_health, tcp_open
from flywheel_cli.render import console
from flywheel_cli.stack import (
    DEFAULT_GRACE_S,
    DEFAULT_STATE_DIR,
    STACK_FILE,
    Running,
    Stack,
    StackError,
    StackInfo,
    drain_budget,
    log_tail,
)
from flywheel_cli.supervisor import Supervisor

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the embedded stack keeps NATS data, objects, logs and stack.json (env FLYWHEEL_STATE_DIR).",
)


@click.command()
@state_dir_option
@click.option(
    "--timeout", default=60.0, show_default=True, help="Seconds to wait for every service to be healthy."
)
@click.option(
    "--grace",
    default=DEFAULT_GRACE_S,
    show_default=True,
    help="Seconds each process gets to stop before SIGKILL; services are told to finish their own "
    "shutdown in a third of it (at most 5 s).",
)
def up(state_dir: Path, timeout: float, grace: float) -> None:
    """Start NATS, the object store and every service on this machine; Ctrl-C stops them all.

    While it runs, a service that exits is started again (after 1 s, 2 s, 4 s … up to 30 s while
    it keeps crashing), and so is the embedded nats-server.
    """

    def event(name: str, message: str) -> None:
        # Messages quote logs and errors: print them as they are, not as markup.
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] [bold]{name:<16}[/] {escape(message)}")

    stack = Stack(state_dir, grace_s=grace, on_event=event)
    try:
        with console.status("starting the stack…"):
            info = stack.start(timeout_s=timeout)
    except StackError as err:
        console.print(f"[red]error:[/] {escape(str(err))}")
        sys.exit(1)
    console.print(_table(info))
    console.print(
        f"NATS: {info.nats_url} ({'embedded' if info.nats_embedded else 'external'})  "
        f"objects: {info.object_store}\nlogs: {info.state_dir}/logs/<service>.log\n"
        f"grace: {grace:g} s per process (services drain in {drain_budget(grace):g} s)\n"
        f"Stop with Ctrl-C or [cyan]flywheel down --state-dir {info.state_dir}[/]"
    )
    console.print(escape(token_hint(info)), soft_wrap=True)
    if url := console_url(info):
        console.print(f"console: [cyan]{url}[/] (sign in with the gateway key in {info.gateway_key_file})")

    def crashed(child: Running) -> None:
        console.print(
            f"[red]{child.component.name} died[/]; last lines of {child.log_path}:\n"
            + escape(log_tail(child.log_path))
        )

    try:
        Supervisor(stack, on_crash=crashed).run_until_signal()
    finally:
        console.print("stopping…")
        stack.stop()
        console.print("[green]stopped[/]: no process of the stack is left")


@click.command()
@state_dir_option
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="Seconds to wait for the stack to stop (default: enough for every process to use its whole grace).",
)
def down(state_dir: Path, timeout: float | None) -> None:
    """Stop a stack started by `flywheel up` in another terminal."""
    path = state_dir.expanduser() / STACK_FILE
    if not path.exists():
        console.print(f"no stack is running from {state_dir} ({path} does not exist)")
        return
    info = StackInfo.load(path)
    if timeout is None:
        # The supervisor stops the services one after the other (then NATS), each within its grace.
        timeout = info.grace_s * (len(info.services) + 1) + 5
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


@click.command()
@state_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of a table.")
def status(state_dir: Path, as_json: bool) -> None:
    """Show each service's address, health and restarts; exits 1 if any is not SERVING."""
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
        where = "embedded" if info.nats_embedded else "external"
        table.add_row("nats", f"{info.nats_url} ({where})", "", _colour(nats_health), str(info.nats_restarts))
        console.print(table)
        console.print(f"objects: {info.object_store}")
        key_file = Path(info.gateway_key_file) if info.gateway_key_file else None
        if key_file is not None and key_file.exists():
            console.print(f"gateway key ({key_file}): {key_file.read_text().strip()}")
        if url := console_url(info):
            console.print(f"console: {url}")
        console.print(escape(token_hint(info)), soft_wrap=True)
    sys.exit(0 if healthy else 1)


def token_hint(info: StackInfo) -> str:
    """Where the service token is and how grpcurl passes it (every gRPC call but health and
    reflection needs it; the `flywheel` commands find it by themselves)."""
    grpc_service = next((s for s in info.services if s.get("protocol") == "grpc"), None)
    address = grpc_service["address"] if grpc_service else "127.0.0.1:50051"
    if info.service_token_file:
        where = f"service token: {info.service_token_file}"
        value = f"$(cat {info.service_token_file})"
    else:
        where = "service token: FLYWHEEL_SERVICE_TOKEN (from the environment of `flywheel up`)"
        value = "$FLYWHEEL_SERVICE_TOKEN"
    return (
        f'{where}\nTry: grpcurl -plaintext -H "authorization: Bearer {value}" {address} list '
        "(list and describe also work without it; every other call needs it)"
    )


def console_url(info: StackInfo) -> str | None:
    """The gateway's web console, when the stack has a gateway."""
    gateway = next((s for s in info.services if s.get("name") == "gateway"), None)
    return f"http://{gateway['address']}/console/" if gateway else None


def _table(info: StackInfo, with_health: bool = False) -> Table:
    """One row per service: with ``with_health`` its health and restarts, else its API."""
    table = Table(title=f"Flywheel stack ({info.state_dir})")
    for column in ("service", "address", "pid"):
        table.add_column(column)
    if with_health:
        table.add_column("health")
        table.add_column("restarts", justify="right")
    else:
        table.add_column("api")
    for service in info.services:
        cells = [service["name"], service["address"], str(service["pid"])]
        if with_health:
            cells += [_colour(service["health"]), str(service.get("restarts", 0))]
        else:
            cells.append(service.get("grpc_service") or "HTTP (OpenAI API)")
        table.add_row(*cells)
    return table


def _colour(health: str) -> str:
    return f"[green]{health}[/]" if health == "SERVING" else f"[red]{health}[/]"
