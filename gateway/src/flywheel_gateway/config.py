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
        models.append(
            {
                "model_name": "openai/*",
                "litellm_params": {"model": "openai/*", "api_key": "os.environ/OPENAI_API_KEY"},
            }
        )
    if settings.anthropic_api_key is not None:
        models.append(
            {
                "model_name": "anthropic/*",
                "litellm_params": {"model": "anthropic/*", "api_key": "os.environ/ANTHROPIC_API_KEY"},
            }
        )
    return {
        "model_list": models,
        "router_settings": {"num_retries": settings.num_retries, "timeout": settings.request_timeout_s},
        "general_settings": {"master_key": "os.environ/FLYWHEEL_GATEWAY_MASTER_KEY"},
    }


def render_config(settings: GatewaySettings) -> str:
    return yaml.safe_dump(build_config(settings), sort_keys=False)
