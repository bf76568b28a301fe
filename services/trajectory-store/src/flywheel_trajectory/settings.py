"""Settings of the trajectory store: every variable starts with ``FLYWHEEL_TRAJECTORY_``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings


class TrajectorySettings(ServiceSettings):
    """Read from ``FLYWHEEL_TRAJECTORY_*`` (plus the shared ``FLYWHEEL_NATS_*`` and ``FLYWHEEL_OBJECT_STORE_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAJECTORY_", extra="ignore")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")
