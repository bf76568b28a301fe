"""The sandbox runner boots on its own, serves health and reflection, and says what it lacks."""

from __future__ import annotations

import grpc
import pytest

from flywheel.sandbox.v1 import sandbox_pb2_grpc
from flywheel_common.testing.services import boot_service, check_unimplemented_rpcs
from flywheel_sandbox.service import DESCRIPTOR, build_app
from flywheel_sandbox.settings import SandboxSettings


async def test_serves_health_and_reflection(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, SandboxSettings, service_env) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            await check_unimplemented_rpcs(
                channel, sandbox_pb2_grpc.SandboxServiceStub(channel), DESCRIPTOR, "issue #3"
            )


def test_settings_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SANDBOX_PORT", "6123")
    assert SandboxSettings().port == 6123
