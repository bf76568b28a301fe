"""The trainer boots on its own, serves health and reflection, and serves every RPC of its contract."""

from __future__ import annotations

import pytest

from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel_common import auth
from flywheel_testing.services import boot_service, unserved_rpcs
from flywheel_trainer.service import DESCRIPTOR, build_app
from flywheel_trainer.settings import TrainerSettings


async def test_serves_health_reflection_and_every_rpc(trainer_env: dict[str, str]) -> None:
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        async with auth.channel(address) as channel:
            pending = await unserved_rpcs(channel, trainer_pb2_grpc.TrainerServiceStub(channel), DESCRIPTOR)
    assert pending == []


def test_settings_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_TRAINER_PORT", "6123")
    monkeypatch.setenv("FLYWHEEL_TRAINER_SLOTS", "3")
    monkeypatch.setenv("FLYWHEEL_TRAINER_MAX_LORA_RANK", "32")
    settings = TrainerSettings()
    assert (settings.port, settings.slots, settings.max_lora_rank) == (6123, 3, 32)
