"""Generate the LiteLLM proxy configuration from :class:`GatewaySettings`.

Routing, in the order LiteLLM matches it:

* ``<adapter_prefix>*`` (``ft/*`` by default) → ``hosted_vllm/*`` on the model server, so every
  LoRA adapter the model server has loaded is reachable without a config entry of its own;
* each base model by its own name → the model server;
* ``openai/*`` and ``anthropic/*`` → the hosted provider, only when its key is set.

Secrets never go into the file: LiteLLM reads them from the environment through its
``os.environ/NAME`` references.
"""

from __future__ import annotations

from typing import Any

import yaml

from flywheel_gateway.settings import GatewaySettings


def build_config(settings: GatewaySettings) -> dict[str, Any]:
    """The LiteLLM config as a dict (``yaml.safe_dump`` it for ``litellm --config``)."""
    upstream = {"api_base": settings.model_server_url, "api_key": "none"}
    models: list[dict[str, Any]] = [
        {
            "model_name": f"{settings.adapter_prefix}*",
            "litellm_params": {"model": "hosted_vllm/*", **upstream},
        }
    ]
    models += [
        {"model_name": name, "litellm_params": {"model": f"hosted_vllm/{name}", **upstream}}
        for name in settings.base_models
    ]
    if settings.openai_api_key is not None:
        params = {"model": "openai/*", "api_key": "os.environ/OPENAI_API_KEY"}
        if settings.openai_api_base:
            params["api_base"] = "os.environ/OPENAI_API_BASE"
        models.append({"model_name": "openai/*", "litellm_params": params})
    if settings.anthropic_api_key is not None:
        models.append(
            {
                "model_name": "anthropic/*",
                "litellm_params": {"model": "anthropic/*", "api_key": "os.environ/ANTHROPIC_API_KEY"},
            }
        )
    router: dict[str, Any] = {"num_retries": settings.num_retries, "timeout": settings.request_timeout_s}
    if settings.fallbacks:
        router["fallbacks"] = [{model: list(targets)} for model, targets in settings.fallbacks.items()]
    general: dict[str, Any] = {"master_key": "os.environ/FLYWHEEL_GATEWAY_MASTER_KEY"}
    if settings.database_url is not None:
        general["database_url"] = "os.environ/DATABASE_URL"
    litellm_settings: dict[str, Any] = {}
    callbacks = list(settings.callbacks)
    if settings.capture:
        callbacks.append("flywheel_gateway.capture.capture_logger")
    if callbacks:
        litellm_settings["callbacks"] = callbacks
    return {
        "model_list": models,
        "router_settings": router,
        "litellm_settings": litellm_settings,
        "general_settings": general,
    }


def render_config(settings: GatewaySettings) -> str:
    return yaml.safe_dump(build_config(settings), sort_keys=False)
