"""The trajectory store boots on its own, serves health and reflection, and serves every RPC."""

from __future__ import annotations

import pytest

from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_testing.services import boot_service, unserved_rpcs
from flywheel_trajectory.service import DESCRIPTOR, build_app
from flywheel_trajectory.settings import TrajectorySettings


async def test_serves_health_and_reflection(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, TrajectorySettings, service_env, write_processes=0) as address:
        async with auth.channel(address) as channel:
            pending = await unserved_rpcs(
                channel, trajectory_pb2_grpc.TrajectoryServiceStub(channel), DESCRIPTOR
            )
            assert pending == []


def test_settings_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TRAJECTORY_PORT", "6123")
    assert TrajectorySettings().port == 6123
