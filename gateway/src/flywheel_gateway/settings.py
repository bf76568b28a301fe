"""Settings of the gateway: ``FLYWHEEL_GATEWAY_*``, plus the providers' usual key variables."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    """What the LiteLLM configuration is generated from."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_GATEWAY_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the proxy binds to.")
    port: int = Field(4000, ge=0, le=65535, description="HTTP port of the OpenAI-compatible endpoint.")
    master_key: SecretStr = Field(
        ...,
        min_length=8,
        description="Required. Bearer key every caller must send; LiteLLM wants it to start with 'sk-'.",
    )
    model_server_url: str = Field(
        "http://127.0.0.1:8000/v1",
        description="OpenAI base URL of the model server (vLLM or the embedded one).",
    )
    adapter_prefix: str = Field(
        "ft/",
        pattern=r"^[a-z0-9][a-z0-9_.-]*/$",
        description="Model names starting with this reach LoRA adapters.",
    )
    base_models: list[str] = Field(
        default_factory=lambda: ["gemma-3-270m"],
        description="Base model names served by the model server, routed under their own name (JSON list).",
    )
    openai_api_key: SecretStr | None = Field(
        None, validation_alias="OPENAI_API_KEY", description="Enables the openai/* route when set."
    )
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias="ANTHROPIC_API_KEY", description="Enables the anthropic/* route when set."
    )
    num_retries: int = Field(2, ge=0, le=10, description="Retries of a failed upstream call.")
    request_timeout_s: float = Field(600.0, gt=0, description="Upstream timeout per request (seconds).")
