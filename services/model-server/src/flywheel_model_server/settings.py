"""Settings of the embedded model server: every variable starts with ``FLYWHEEL_MODEL_SERVER_``."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings


class ModelServerSettings(ServiceSettings):
    """HTTP server settings; ``port`` is the OpenAI-compatible HTTP port (vLLM's default is 8000)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_MODEL_SERVER_", extra="ignore")

    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one (see ready_file).")
