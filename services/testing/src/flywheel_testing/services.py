"""Boot a service in-process on port 0 and check the parts every service must have.

Used by each service's own ``tests/test_service.py``; the cross-service tests in ``tests/``
start the services as real processes instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel_common.server import GrpcApp
from flywheel_common.settings import ServiceSettings, load_settings

S = TypeVar("S", bound=ServiceSettings)


def pytest_configure(config: pytest.Config) -> None:
    """One service token for the whole test session, in the environment.

    Every service refuses to start without one (flywheel_common.auth); services started
    in-process read it, subprocesses inherit it, and every client channel
    (``flywheel_common.auth.channel``) sends it.
    """
    os.environ.setdefault("FLYWHEEL_SERVICE_TOKEN", f"test-{secrets.token_urlsafe(16)}")


@pytest.fixture
def service_env(nats_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a service under test: the session's nats-server, a fresh object-store root."""
    return {
        "FLYWHEEL_NATS_URL": nats_url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(tmp_path / "objects"),
    }


@contextlib.asynccontextmanager
async def boot_service(
    build: Callable[[S], GrpcApp], settings_cls: type[S], env: dict[str, str], **overrides: Any
) -> AsyncIterator[str]:
    """Start the service's app on 127.0.0.1:0 with ``env`` applied; yield its address; stop it."""
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        settings = load_settings(settings_cls, host="127.0.0.1", port=0, **overrides)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    app = build(settings)
    port = await app.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await app.stop(grace=1.0)


async def health_status(channel: grpc.aio.Channel, service: str = "") -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service=service)
    reply = await stub.Check(request)  # type: ignore[attr-defined]  # the stub package's HealthStub lists no RPCs
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


async def unserved_rpcs(channel: grpc.aio.Channel, stub: object, descriptor: ServiceDescriptor) -> list[str]:
    """Assert health is SERVING (overall and for the service); return the RPCs of the contract
    that answer UNIMPLEMENTED to an empty request (a served RPC answers anything else, usually
    INVALID_ARGUMENT; its behaviour is left to the service's own tests)."""
    assert await health_status(channel) == "SERVING"
    assert await health_status(channel, descriptor.full_name) == "SERVING"
    unserved = []
    for method in descriptor.methods:
        call = getattr(stub, method.name)
        request = message_factory.GetMessageClass(method.input_type)()
        try:
            if method.client_streaming:

                async def one(req: Any = request) -> AsyncIterator[Any]:
                    yield req

                result = call(one())
            else:
                result = call(request)
            if method.server_streaming:
                async for _ in result:
                    pass
            else:
                await result
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                unserved.append(method.name)
    return unserved
