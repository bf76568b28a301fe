"""Settings of the gateway: ``FLYWHEEL_GATEWAY_*``, plus the providers' usual key variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_model_server() -> str:
    address = os.environ.get("FLYWHEEL_MODEL_SERVER_ADDRESS")
    return f"http://{address}/v1" if address else "http://127.0.0.1:8000/v1"


class GatewaySettings(BaseSettings):
    """What the LiteLLM configuration is generated from."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = Field("0.0.0.0", description="Address the proxy binds to.")
    port: int = Field(4000, ge=0, le=65535, description="HTTP port of the OpenAI-compatible endpoint.")
    master_key: SecretStr = Field(
        ...,
        min_length=8,
        description="Required. Bearer key every caller must send; LiteLLM wants it to start with 'sk-'.",
    )
    model_server_url: str = Field(
        default_factory=_default_model_server,
        description="OpenAI base URL of the model server (vLLM or the embedded one). Default: "
        "http://$FLYWHEEL_MODEL_SERVER_ADDRESS/v1 (set by `flywheel up`), else http://127.0.0.1:8000/v1.",
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
    openai_api_base: str | None = Field(
        None,
        validation_alias="OPENAI_API_BASE",
        description="Another OpenAI-compatible endpoint for the openai/* route (Azure proxy, a test stand-in).",
    )
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias="ANTHROPIC_API_KEY", description="Enables the anthropic/* route when set."
    )
    num_retries: int = Field(2, ge=0, le=10, description="Retries of a failed upstream call.")
    request_timeout_s: float = Field(600.0, gt=0, description="Upstream timeout per request (seconds).")
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Fallback models per model name, tried in order when it fails after its retries "
        '(JSON, e.g. {"ft/coder-v3": ["gemma-3-270m"]}).',
    )
    database_url: SecretStr | None = Field(
        None,
        validation_alias="DATABASE_URL",
        description="PostgreSQL URL; enables LiteLLM's virtual keys, budgets and per-key rate limits.",
    )
    fast_path: bool = Field(
        True,
        description="Serve chat/completions for model-server routes with master-key auth from our own "
        "forwarding layer (same auth, routing, callbacks and error shapes, a fraction of the cost); "
        "false sends every request through LiteLLM.",
    )
    callbacks: list[str] = Field(
        default_factory=list,
        description="Extra LiteLLM CustomLogger instances as `module.instance` (JSON list); both LiteLLM "
        "and the fast path call them.",
    )
    capture: bool = Field(
        False, description="Store every request/response as a trajectory (traffic capture)."
    )
    trajectory_address: str = Field(
        "127.0.0.1:50053",
        validation_alias="FLYWHEEL_TRAJECTORY_ADDRESS",
        description="host:port of the trajectory store's gRPC API, used by traffic capture.",
    )
    config_dir: Path | None = Field(
        None, description="Where `serve` writes the generated LiteLLM config; a temporary folder when unset."
    )
    ready_file: Path | None = Field(
        None,
        description="Written (JSON: pid, port) once the proxy serves; how `flywheel up` learns the port.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line; text: human.")
    grace_period_s: float = Field(
        10.0, gt=0, description="On SIGTERM, seconds in-flight requests get to finish."
    )
    adapter_sync: bool = Field(
        False, description="Also run adapter sync inside the `serve` process (as `flywheel up` does)."
    )
    aliases: bool = Field(
        True,
        description="Serve the alias table (`aliases/` in the object store); on only when the object "
        "store is configured (FLYWHEEL_OBJECT_STORE_BACKEND or _ROOT set).",
    )
    alias_refresh_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between two reads of the alias table (also re-read on flywheel.alias.changed).",
    )
    alias_stats_flush_s: float = Field(
        2.0, gt=0, description="Seconds between two writes of this replica's canary live signals."
    )
    alias_shadow_max_in_flight: int = Field(
        4, ge=1, description="Shadow copies in flight at most; more are dropped (and counted in the log)."
    )
    alias_feedback_memory: int = Field(
        100_000, ge=1, description="Alias answers remembered (by completion id) for feedback on them."
    )
    replica_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,128}$",
        description="This replica's name in the live-signal files; default <hostname>-<pid>.",
    )
    fine_tuning: bool = Field(
        True,
        description="Serve OpenAI's /v1/files and /v1/fine_tuning/jobs on our dataset builder and trainer; "
        "on only when the object store is configured (FLYWHEEL_OBJECT_STORE_BACKEND or _ROOT set).",
    )
    dataset_address: str = Field(
        "127.0.0.1:50054",
        validation_alias="FLYWHEEL_DATASET_ADDRESS",
        description="host:port of dataset-svc's gRPC API (file checks and imports; set by `flywheel up`).",
    )
    trainer_address: str = Field(
        "127.0.0.1:50055",
        validation_alias="FLYWHEEL_TRAINER_ADDRESS",
        description="host:port of trainer-svc's gRPC API (fine-tuning jobs; set by `flywheel up`).",
    )
    orchestrator_address: str = Field(
        "127.0.0.1:50051",
        validation_alias="FLYWHEEL_ORCHESTRATOR_ADDRESS",
        description="host:port of the orchestrator's gRPC API (the console's runs, evaluations, loops; "
        "set by `flywheel up`).",
    )
    console: bool = Field(True, description="Serve the web console at /console.")
    console_page_size: int = Field(50, ge=1, le=500, description="Rows per console listing.")
    files_max_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="Largest file POST /v1/files accepts, in bytes."
    )
    fine_tuning_ready_wait_s: float = Field(
        120.0,
        ge=0,
        description="Seconds a finished job waits for the model server to serve its adapter before it is "
        "reported succeeded anyway (no adapter sync running, or a failed load).",
    )
