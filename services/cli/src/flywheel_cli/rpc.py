"""How every command talks to a service: one channel setup, one way to show a failed RPC.

A command group declares which service it talks to (:class:`Service`), takes ``--address`` and
``--state-dir`` through :func:`connection_options`, and calls RPCs inside :func:`stub`::

    with rpc.stub(ctx, rpc.TRAINER, trainer_pb2_grpc.TrainerServiceStub) as trainer:
        job = trainer.GetFineTuneJob(request).job

Every channel has the same options (:data:`CHANNEL_OPTIONS`); every unary RPC that names no
deadline gets :data:`UNARY_TIMEOUT_S` (streams have none: they follow jobs for hours, and
keepalive notices a server that went away); every call carries the service token
(:func:`flywheel_cli.stack.service_token`: ``FLYWHEEL_SERVICE_TOKEN``, else the stack's
``<state>/service.token``). Any ``grpc.RpcError`` leaving the block is printed
as one line, ``error (CODE): details`` (with a hint when the service cannot be reached), and the
command exits with status 1.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import grpc
from click.core import ParameterSource
from rich.console import Console
from rich.markup import escape

from flywheel_cli.components import by_name
from flywheel_cli.stack import DEFAULT_STATE_DIR, NoStackError, service_address, service_token
from flywheel_common import auth
from flywheel_common.server import MAX_MESSAGE_BYTES, MIN_CLIENT_PING_INTERVAL_S

console = Console(stderr=True)

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: Deadline of a unary RPC that names none (seconds): long enough for a 60 MiB import on a busy
#: machine, short enough that a wedged server does not hang a script forever.
UNARY_TIMEOUT_S = 120.0
#: Seconds between keepalive pings on a connection with a call in flight, and how long the
#: answer may take before the call fails UNAVAILABLE. The servers accept pings every
#: ``MIN_CLIENT_PING_INTERVAL_S`` (flywheel_common.server), so this must not be shorter.
KEEPALIVE_TIME_S = 2 * MIN_CLIENT_PING_INTERVAL_S
KEEPALIVE_TIMEOUT_S = 20

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # Trajectories and evaluations with every step are large; the servers take up to this much.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_S * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
    # Keep pinging through a quiet Watch stream (gRPC's default stops after two pings).
    ("grpc.http2.max_pings_without_data", 0),
)


@dataclass(frozen=True)
class Service:
    """A service the CLI talks to: its component name (components.py) and how messages name it."""

    component: str  #: e.g. "orchestrator"; finds its address (see stack.service_address)
    label: str  #: e.g. "the orchestrator", as in "cannot reach the orchestrator at …"

    @property
    def address_variable(self) -> str:
        return by_name(self.component).address_variable


ORCHESTRATOR = Service("orchestrator", "the orchestrator")
TRAJECTORY_STORE = Service("trajectory-store", "the trajectory store")
DATASET_BUILDER = Service("dataset-svc", "the dataset builder")
TRAINER = Service("trainer-svc", "the trainer")


def connection_options(service: Service) -> Callable[[F], F]:
    """``--address`` and ``--state-dir`` of a command group talking to ``service``."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=DEFAULT_STATE_DIR,
            show_default=True,
            help=f"Embedded stack whose {service.label.removeprefix('the ')} to use when no address "
            "is given (env FLYWHEEL_STATE_DIR).",
        )(fn)
        return click.option(
            "--address",
            default=None,
            help=f"host:port of {service.label} (env {service.address_variable}).",
        )(fn)

    return decorate


def remember_connection(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Keep a group's ``--address``/``--state-dir`` for its sub-commands (in ``ctx.obj``), and
    whether the state folder was named (option or FLYWHEEL_STATE_DIR) rather than the default."""
    ctx.ensure_object(dict)
    source = ctx.get_parameter_source("state_dir")
    named = source not in (None, ParameterSource.DEFAULT) or bool(os.environ.get("FLYWHEEL_STATE_DIR"))
    ctx.obj.update(address=address, state_dir=state_dir, state_dir_named=named)


def resolve(ctx: click.Context, service: Service) -> str:
    """The address of ``service`` for this invocation (see :func:`flywheel_cli.stack.service_address`).

    A named ``--state-dir`` with no stack running from it ends the command with an error saying
    so, rather than a call to whatever listens on the default port.
    """
    try:
        return service_address(
            service.component,
            ctx.obj.get("address"),
            ctx.obj["state_dir"],
            state_dir_named=ctx.obj.get("state_dir_named", False),
        )
    except NoStackError as err:
        console.print(f"[red]error:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(1)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, base: grpc.ClientCallDetails, timeout: float) -> None:
        self.method = base.method
        self.timeout = timeout
        self.metadata = base.metadata
        self.credentials = base.credentials
        self.wait_for_ready = base.wait_for_ready
        self.compression = base.compression


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor):
    """Gives a unary call that names no timeout :data:`UNARY_TIMEOUT_S`."""

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        if client_call_details.timeout is None:
            client_call_details = _CallDetails(client_call_details, UNARY_TIMEOUT_S)
        return continuation(client_call_details, request)


@contextlib.contextmanager
def channel(address: str, state_dir: Path = DEFAULT_STATE_DIR) -> Iterator[grpc.Channel]:
    """A plaintext channel to ``address`` with :data:`CHANNEL_OPTIONS`, the default deadline, and
    the service token (of ``state_dir``'s stack unless ``FLYWHEEL_SERVICE_TOKEN`` is set)."""
    raw = auth.sync_channel(address, token=service_token(state_dir), options=CHANNEL_OPTIONS)
    try:
        yield grpc.intercept_channel(raw, _DefaultDeadline())
    finally:
        raw.close()


def status_of(err: grpc.RpcError) -> tuple[str, str]:
    """(status code name, details) of a failed call."""
    if isinstance(err, grpc.Call):
        return err.code().name, err.details() or ""
    return grpc.StatusCode.UNKNOWN.name, str(err)


def fail(err: grpc.RpcError, service: Service | None = None, address: str = "") -> NoReturn:
    """Print a failed RPC as one line, ``error (CODE): details``, and exit with status 1.

    UNAVAILABLE names the service and its address and asks whether the stack is running.
    """
    code, details = status_of(err)
    if code == grpc.StatusCode.UNAVAILABLE.name and service is not None:
        details = f"cannot reach {service.label} at {address} ({details}); is `flywheel up` running?"
    console.print(f"[red]error ({code}):[/] {escape(details)}", soft_wrap=True)
    sys.exit(1)


@contextlib.contextmanager
def errors(service: Service | None = None, address: str = "") -> Iterator[None]:
    """Any ``grpc.RpcError`` raised in the block is shown by :func:`fail`."""
    try:
        yield
    except grpc.RpcError as err:
        fail(err, service, address)


@contextlib.contextmanager
def stub(ctx: click.Context, service: Service, make: Callable[[grpc.Channel], T]) -> Iterator[T]:
    """A stub on ``service`` (address from the group's options); RPC errors end the command."""
    address = resolve(ctx, service)
    with channel(address, ctx.obj["state_dir"]) as ch, errors(service, address):
        yield make(ch)


def pages(call: Callable[[Any], Any], request: Any, field: str, limit: int = 0) -> Iterator[Any]:
    """Every item of a paginated List RPC (AIP-158), up to ``limit`` items (0 = all)."""
    seen = 0
    while True:
        request.page_size = 1000 if limit == 0 else min(1000, limit - seen)
        reply = call(request)
        for item in getattr(reply, field):
            yield item
            seen += 1
        if not reply.next_page_token or (limit and seen >= limit):
            return
        request.page_token = reply.next_page_token
