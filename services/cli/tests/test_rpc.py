"""The one way the CLI calls services: channel options, default deadline, one-line errors."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from click.testing import CliRunner

from flywheel_cli import rpc
from flywheel_cli.main import cli

METHOD = "/flywheel.test.v1.Clock/Remaining"


def _remaining(request: bytes, context: grpc.ServicerContext) -> bytes:
    left = context.time_remaining()
    return struct.pack("!d", -1.0 if left is None else left)


@pytest.fixture
def clock() -> Iterator[str]:
    """A real gRPC server whose one method answers the deadline it was given (seconds left)."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.method_handlers_generic_handler(
        "flywheel.test.v1.Clock", {"Remaining": grpc.unary_unary_rpc_method_handler(_remaining)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def test_unary_calls_get_the_default_deadline_unless_they_name_one(clock: str) -> None:
    with rpc.channel(clock) as channel:
        call = channel.unary_unary(METHOD)
        (default,) = struct.unpack("!d", call(b""))
        (own,) = struct.unpack("!d", call(b"", timeout=5))
    # gRPC sends the timeout in whole units and the server rounds the deadline: a second over is
    # the clocks' rounding, not another deadline.
    assert rpc.UNARY_TIMEOUT_S - 30 < default <= rpc.UNARY_TIMEOUT_S + 2
    assert 0 < own < 10  # its own 5 s (give or take the clocks' rounding), not the default


def test_channel_options_match_the_servers() -> None:
    options = dict(rpc.CHANNEL_OPTIONS)
    assert options["grpc.max_receive_message_length"] == options["grpc.max_send_message_length"]
    # The servers accept a ping this often; a client pinging faster would be disconnected.
    assert options["grpc.keepalive_time_ms"] >= rpc.MIN_CLIENT_PING_INTERVAL_S * 1000


@pytest.mark.parametrize(
    ("group", "label"),
    [
        ("finetune", "the trainer"),
        ("dataset", "the dataset builder"),
        ("trajectories", "the trajectory store"),
        ("run", "the orchestrator"),
        ("loop", "the orchestrator"),
    ],
)
def test_every_group_reports_an_unreachable_service_the_same_way(group: str, label: str) -> None:
    verb = {"dataset": "recipes"}.get(group, "list")
    result = CliRunner(env={"COLUMNS": "80"}).invoke(cli, [group, "--address", "127.0.0.1:1", verb])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error (UNAVAILABLE): cannot reach {label} at 127.0.0.1:1 ("), (
        result.output
    )
    assert result.output.rstrip().endswith("is `flywheel up` running?") and result.output.count("\n") == 1
