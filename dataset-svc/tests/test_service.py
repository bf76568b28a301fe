"""The dataset builder boots on its own, serves health and reflection, and says what it lacks."""

from __future__ import annotations

import grpc
import pytest

from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel_common.testing.services import boot_service, check_unimplemented_rpcs
from flywheel_dataset.service import DESCRIPTOR, build_app
from flywheel_dataset.settings import DatasetSettings


async def test_serves_health_and_reflection(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, DatasetSettings, service_env) as address:
        async with grpc.aio.insecure_channel(address) as channel:
            await check_unimplemented_rpcs(
                channel, dataset_pb2_grpc.DatasetServiceStub(channel), DESCRIPTOR, "issue #6"
            )


def test_settings_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DATASET_PORT", "6123")
    assert DatasetSettings().port == 6123
