"""The agent orchestrator boots on its own, serves health and reflection, and says what it lacks."""

from __future__ import annotations

import grpc
import pytest

from flywheel.orchestrator.v1 import orchestrator_pb2_grpc
from flywheel_common.testing.services import boot_service, check_unimplemented_rpcs
from flywheel_orchestrator.service import DESCRIPTOR, build_app
from flywheel_orchestrator.settings import OrchestratorSettings


async def test_serves_health_and_reflection(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, OrchestratorSettings, service_env) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            await check_unimplemented_rpcs(
                channel,
                orchestrator_pb2_grpc.OrchestratorServiceStub(channel),
                DESCRIPTOR,
                "issue #5 (loops: issue #10)",
            )


def test_settings_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_PORT", "6123")
    assert OrchestratorSettings().port == 6123
