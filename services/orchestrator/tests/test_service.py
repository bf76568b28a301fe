"""The agent orchestrator boots on its own, serves health and reflection, and says what it lacks."""

from __future__ import annotations

import grpc
import pytest

from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc
from flywheel_common import auth
from flywheel_orchestrator.service import DESCRIPTOR, build_app
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_testing.services import boot_service, unserved_rpcs


async def test_serves_health_and_suites(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, OrchestratorSettings, service_env) as address:
        async with auth.channel(address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            pending = await unserved_rpcs(channel, stub, DESCRIPTOR)
            assert pending == []  # every RPC is served
            suites = (await stub.ListSuites(opb.ListSuitesRequest())).suites
            assert {"repo-bugs", "io-problems"} <= {s.name for s in suites}
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetSuite(opb.GetSuiteRequest(suite="nope"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "known: " in err.value.details()


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_PORT", "6123")
    monkeypatch.setenv("FLYWHEEL_GATEWAY_ADDRESS", "127.0.0.1:4100")
    monkeypatch.setenv("FLYWHEEL_GATEWAY_MASTER_KEY", "sk-test")
    s = OrchestratorSettings()
    assert s.port == 6123 and s.base_url == "http://127.0.0.1:4100/v1"
    assert s.gateway_api_key.get_secret_value() == "sk-test"
    monkeypatch.setenv("FLYWHEEL_ORCHESTRATOR_GATEWAY_BASE_URL", "https://api.example.com/v1/")
    assert OrchestratorSettings().base_url == "https://api.example.com/v1"
