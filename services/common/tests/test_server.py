"""The gRPC scaffold: health, reflection, request ids, logs, metrics, error mapping, shutdown.

A tiny service with raw-bytes methods is registered through a generic handler, so these tests
exercise the scaffold itself and depend on no service's proto.
"""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from flywheel_common import auth
from flywheel_common.errors import InvalidArgument, NotFound
from flywheel_common.logs import JsonFormatter, request_id_var
from flywheel_common.server import GrpcApp, Metrics, ServiceBinding
from flywheel_common.settings import ServiceSettings

SERVICE = "flywheel.test.v1.EchoService"
seen_request_ids: list[str | None] = []


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    seen_request_ids.append(request_id_var.get())
    match request:
        case b"not-found":
            raise NotFound("trajectory t-1 does not exist")
        case b"bad":
            raise InvalidArgument("limits.memory_bytes", "must be at most 4 GiB")
        case b"boom":
            raise RuntimeError("secret internals")
        case b"unsupported":
            raise NotImplementedError("no GPU path yet")
        case b"slow":
            await asyncio.sleep(0.5)
            return b"finished"
    return b"echo:" + request


async def stream(request: bytes, context: grpc.aio.ServicerContext):
    for i in range(3):
        yield b"%d" % i
    if request == b"fail-late":
        raise NotFound("gone after three")


def add_echo(servicer: object, server: grpc.aio.Server) -> None:
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(unary),
                    "Stream": grpc.unary_stream_rpc_method_handler(stream),
                },
            ),
        )
    )


@pytest.fixture
async def app():
    settings = ServiceSettings(host="127.0.0.1", port=0, grace_period_s=2.0)
    app = GrpcApp(
        "echo",
        settings,
        [ServiceBinding(None, add_echo, SimpleNamespace(full_name=SERVICE))],
        metrics=Metrics(CollectorRegistry()),
    )
    await app.start()
    yield app
    await app.stop(grace=0.5)


@pytest.fixture
async def channel(app: GrpcApp):
    async with auth.channel(f"127.0.0.1:{app.port}") as channel:
        yield channel


def call(channel: grpc.aio.Channel, payload: bytes, metadata=None):
    return channel.unary_unary(f"/{SERVICE}/Unary")(payload, metadata=metadata, timeout=5)


async def test_health_serving_for_server_and_service(channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="flywheel.nope.v1.Nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = []
    async for reply in stub.ServerReflectionInfo(requests()):
        names = [s.name for s in reply.list_services_response.service]
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


async def test_request_id_is_propagated_and_returned(channel: grpc.aio.Channel) -> None:
    seen_request_ids.clear()
    reply = call(channel, b"hi", metadata=(("x-request-id", "req-42"),))
    assert await reply == b"echo:hi"
    assert seen_request_ids == ["req-42"]
    assert ("x-request-id", "req-42") in tuple(await reply.trailing_metadata())
    made_up = call(channel, b"again")
    await made_up
    generated = dict(await made_up.trailing_metadata())["x-request-id"]
    assert len(generated) == 32 and seen_request_ids[-1] == generated


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b"not-found", grpc.StatusCode.NOT_FOUND, "trajectory t-1 does not exist"),
        (b"bad", grpc.StatusCode.INVALID_ARGUMENT, "limits.memory_bytes: must be at most 4 GiB"),
        (b"unsupported", grpc.StatusCode.UNIMPLEMENTED, "no GPU path yet"),
    ],
)
async def test_domain_errors_map_to_status_codes(
    channel: grpc.aio.Channel, payload: bytes, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel, payload)
    assert err.value.code() == code
    assert err.value.details() == message


async def test_unexpected_error_is_internal_without_internals(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel, b"boom", metadata=(("x-request-id", "req-boom"),))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in err.value.details()
    assert "req-boom" in err.value.details()


async def test_streaming_errors_after_messages(channel: grpc.aio.Channel) -> None:
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for item in channel.unary_stream(f"/{SERVICE}/Stream")(b"fail-late", timeout=5):
            got.append(item)
    assert got == [b"0", b"1", b"2"]
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_metrics_count_by_method_and_code(app: GrpcApp, channel: grpc.aio.Channel) -> None:
    await call(channel, b"x")
    with pytest.raises(grpc.aio.AioRpcError):
        await call(channel, b"not-found")
    registry = app.metrics.registry
    ok = registry.get_sample_value(
        "flywheel_grpc_requests_total", {"service": SERVICE, "method": "Unary", "code": "OK"}
    )
    missing = registry.get_sample_value(
        "flywheel_grpc_requests_total", {"service": SERVICE, "method": "Unary", "code": "NOT_FOUND"}
    )
    assert (ok, missing) == (1.0, 1.0)
    count = registry.get_sample_value(
        "flywheel_grpc_request_duration_seconds_count", {"service": SERVICE, "method": "Unary"}
    )
    assert count == 2.0


async def test_one_json_log_line_per_rpc(channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flywheel.server")
    with pytest.raises(grpc.aio.AioRpcError):
        await call(channel, b"not-found", metadata=(("x-request-id", "req-log"),))
    records = [r for r in caplog.records if r.getMessage().startswith("rpc ")]
    assert len(records) == 1
    line = json.loads(JsonFormatter("echo").format(records[0]))
    assert line["code"] == "NOT_FOUND" and line["rpc"] == f"{SERVICE}/Unary"
    assert line["error"] == "trajectory t-1 does not exist"
    assert line["duration_ms"] >= 0 and line["level"] == "warning"


async def test_graceful_shutdown_finishes_in_flight_and_goes_not_serving(app: GrpcApp) -> None:
    async with auth.channel(f"127.0.0.1:{app.port}") as channel:
        in_flight = asyncio.ensure_future(call(channel, b"slow"))
        await asyncio.sleep(0.1)
        stopping = asyncio.ensure_future(app.stop(grace=3.0))
        await asyncio.sleep(0.05)
        assert await in_flight == b"finished"
        await stopping
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(channel, b"after")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_ready_file_has_the_bound_port(tmp_path) -> None:
    ready = tmp_path / "run" / "echo.ready"
    settings = ServiceSettings(host="127.0.0.1", port=0, ready_file=ready, metrics_port=0)
    app = GrpcApp(
        "echo",
        settings,
        [ServiceBinding(None, add_echo, SimpleNamespace(full_name=SERVICE))],
        metrics=Metrics(CollectorRegistry()),
    )
    port = await app.start()
    try:
        info = json.loads(ready.read_text())
        assert info["port"] == port and port > 0
        assert info["metrics_port"] and info["metrics_port"] == app.metrics_port
    finally:
        await app.stop(grace=0.1)
    assert not ready.exists()
