"""Service tokens: the server interceptor every GrpcApp installs, the client channels, the settings.

A raw-bytes echo service (as in test_server.py, no proto) stands in for a Flywheel service; the
per-service checks (every real service, with grpcurl) are in tests/test_services_grpcurl.py.
"""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from flywheel_common import auth
from flywheel_common.server import GrpcApp, Metrics, ServiceBinding
from flywheel_common.settings import ServiceSettings

SERVICE = "flywheel.test.v1.EchoService"


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"echo:" + request


async def count(request: bytes, context: grpc.aio.ServicerContext):
    for i in range(3):
        yield b"%d" % i


def add_echo(servicer: object, server: grpc.aio.Server) -> None:
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(echo),
        "Stream": grpc.unary_stream_rpc_method_handler(count),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))


TOKEN = "tok-current-0123456789"
NEXT = "tok-next-9876543210"


def make_app(monkeypatch: pytest.MonkeyPatch, **env: str) -> GrpcApp:
    for name in ("FLYWHEEL_SERVICE_TOKEN", "FLYWHEEL_SERVICE_TOKEN_NEXT", "FLYWHEEL_AUTH_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return GrpcApp(
        "echo",
        ServiceSettings(host="127.0.0.1", port=0),
        [ServiceBinding(None, add_echo, SimpleNamespace(full_name=SERVICE))],
        metrics=Metrics(CollectorRegistry()),
    )


@pytest.fixture
async def address(monkeypatch: pytest.MonkeyPatch):
    app = make_app(monkeypatch, FLYWHEEL_SERVICE_TOKEN=TOKEN, FLYWHEEL_SERVICE_TOKEN_NEXT=NEXT)
    await app.start()
    yield f"127.0.0.1:{app.port}"
    await app.stop(grace=0.5)


async def unary(address: str, token: str | None, metadata: tuple = ()) -> bytes:
    async with auth.channel(address, token=token) as channel:
        return await channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", metadata=metadata, timeout=5)


async def refused(address: str, token: str | None, metadata: tuple = ()) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unary(address, token, metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
    return err.value.details() or ""


async def test_a_call_without_a_token_is_refused_with_how_to_pass_one(address: str) -> None:
    details = await refused(address, None)
    assert "carries no service token" in details
    assert 'grpcurl -H "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN"' in details
    assert "service.token" in details


async def test_a_wrong_or_malformed_token_is_refused(address: str) -> None:
    assert "not one this service accepts" in await refused(address, "tok-wrong")
    assert "not one this service accepts" in await refused(address, TOKEN[:-1])
    details = await refused(address, None, ((auth.AUTHORIZATION_KEY, f"Basic {TOKEN}"),))
    assert 'must be "Bearer <token>"' in details


async def test_the_current_and_the_next_token_are_accepted(address: str) -> None:
    assert await unary(address, TOKEN) == b"echo:hi"
    assert await unary(address, NEXT) == b"echo:hi"
    # Written by hand, as grpcurl -H sends it (any case of "Bearer", spaces around).
    assert await unary(address, None, ((auth.AUTHORIZATION_KEY, f"bearer  {TOKEN} "),)) == b"echo:hi"


async def test_server_streams_are_checked_too(address: str) -> None:
    async with auth.channel(address, token=None) as channel:
        call = channel.unary_stream(f"/{SERVICE}/Stream")(b"x", timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [item async for item in call]
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with auth.channel(address, token=TOKEN) as channel:
        call = channel.unary_stream(f"/{SERVICE}/Stream")(b"x", timeout=5)
        assert [item async for item in call] == [b"0", b"1", b"2"]


async def test_health_and_reflection_need_no_token(address: str) -> None:
    async with auth.channel(address, token=None) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        names = [
            s.name
            async for reply in stub.ServerReflectionInfo(requests())
            for s in reply.list_services_response.service
        ]
        assert SERVICE in names


async def test_the_blocking_channel_sends_the_token(address: str) -> None:
    def call(token: str) -> bytes:
        with auth.sync_channel(address, token=token) as channel:
            return channel.unary_unary(f"/{SERVICE}/Unary")(b"hi", timeout=5)

    # In a thread: the server runs on this test's event loop.
    assert await asyncio.to_thread(call, TOKEN) == b"echo:hi"
    with pytest.raises(grpc.RpcError) as err:
        await asyncio.to_thread(call, "tok-wrong")
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_token_configured_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(monkeypatch, FLYWHEEL_SERVICE_TOKEN="  ")
    with pytest.raises(
        auth.MissingServiceToken, match=r"set FLYWHEEL_SERVICE_TOKEN.*FLYWHEEL_AUTH_DISABLED=1"
    ):
        await app.start()
    assert app.server is None


async def test_auth_disabled_serves_every_call_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(monkeypatch, FLYWHEEL_AUTH_DISABLED="1")
    with caplog.at_level(logging.WARNING, logger="flywheel.auth"):
        await app.start()
    try:
        assert "WITHOUT AUTHENTICATION" in caplog.text
        assert await unary(f"127.0.0.1:{app.port}", None) == b"echo:hi"
    finally:
        await app.stop(grace=0.5)


def test_settings_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SERVICE_TOKEN", f" {TOKEN}\n")
    monkeypatch.delenv("FLYWHEEL_SERVICE_TOKEN_NEXT", raising=False)
    settings = auth.AuthSettings()
    assert settings.token() == TOKEN
    assert settings.accepted() == [TOKEN]
    assert TOKEN not in repr(settings)  # a SecretStr: never in a log line
    assert auth.http_headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert auth.http_headers(None) == {}
    assert auth.bearer_problem(f"Bearer {TOKEN}", [NEXT, TOKEN]) is None
    assert auth.bearer_problem("", [TOKEN]) is not None
