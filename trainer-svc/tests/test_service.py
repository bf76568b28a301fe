"""The trainer boots on its own, serves health and reflection, and says what it lacks."""

from __future__ import annotations

import grpc
import pytest

from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_common.testing.services import boot_service, check_unimplemented_rpcs
from flywheel_trainer.service import DESCRIPTOR, build_app
from flywheel_trainer.settings import TrainerSettings


async def test_serves_health_and_reflection(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, TrainerSettings, service_env) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            await check_unimplemented_rpcs(
                channel, trainer_pb2_grpc.TrainerServiceStub(channel), DESCRIPTOR, "issue #7"
            )


def test_settings_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TRAINER_PORT", "6123")
    assert TrainerSettings().port == 6123
