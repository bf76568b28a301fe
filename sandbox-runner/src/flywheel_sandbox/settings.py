"""Settings of the sandbox runner: every variable starts with ``FLYWHEEL_SANDBOX_``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings


class SandboxSettings(ServiceSettings):
    """Read from ``FLYWHEEL_SANDBOX_*`` (plus the shared ``FLYWHEEL_NATS_*`` and ``FLYWHEEL_OBJECT_STORE_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_SANDBOX_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")
