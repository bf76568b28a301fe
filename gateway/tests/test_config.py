"""The generated LiteLLM configuration routes adapters, base models and hosted providers."""

from __future__ import annotations

import pytest
import yaml

from flywheel_common.settings import SettingsError, load_settings
from flywheel_gateway.__main__ import main
from flywheel_gateway.config import build_config
from flywheel_gateway.settings import GatewaySettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_API_BASE", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FLYWHEEL_GATEWAY_MASTER_KEY", "sk-test-master")


def test_adapter_wildcard_and_base_routes() -> None:
    config = build_config(GatewaySettings(model_server_url="http://ms:8000/v1"))
    routes = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert routes["ft/*"] == {"model": "hosted_vllm/*", "api_base": "http://ms:8000/v1", "api_key": "none"}
    assert routes["gemma-3-270m"]["model"] == "hosted_vllm/gemma-3-270m"
    assert "openai/*" not in routes and "anthropic/*" not in routes


def test_hosted_providers_only_with_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    config = build_config(GatewaySettings())
    routes = {m["model_name"]: m["litellm_params"] for m in config["model_list"]}
    assert routes["openai/*"]["api_key"] == "os.environ/OPENAI_API_KEY"
    assert "anthropic/*" not in routes


def test_secrets_never_written(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-secret")
    assert main(["config"]) == 0
    text = capsys.readouterr().out
    assert "sk-test-master" not in text and "sk-openai-secret" not in text
    assert yaml.safe_load(text)["general_settings"]["master_key"] == "os.environ/FLYWHEEL_GATEWAY_MASTER_KEY"


def test_missing_master_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLYWHEEL_GATEWAY_MASTER_KEY")
    with pytest.raises(SettingsError, match="FLYWHEEL_GATEWAY_MASTER_KEY"):
        load_settings(GatewaySettings)


def test_bad_adapter_prefix_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_GATEWAY_ADAPTER_PREFIX", "Bad Prefix")
    with pytest.raises(SettingsError, match="FLYWHEEL_GATEWAY_ADAPTER_PREFIX='Bad Prefix'"):
        load_settings(GatewaySettings)


def test_fallbacks_database_and_callbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_GATEWAY_FALLBACKS", '{"ft/coder-v3": ["gemma-3-270m"]}')
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@db/litellm")
    monkeypatch.setenv("FLYWHEEL_GATEWAY_CAPTURE", "true")
    monkeypatch.setenv("FLYWHEEL_GATEWAY_CALLBACKS", '["my_hooks.audit_logger"]')
    config = build_config(load_settings(GatewaySettings))
    assert config["router_settings"]["fallbacks"] == [{"ft/coder-v3": ["gemma-3-270m"]}]
    assert config["general_settings"]["database_url"] == "os.environ/DATABASE_URL"
    assert config["litellm_settings"]["callbacks"] == [
        "my_hooks.audit_logger",
        "flywheel_gateway.capture.capture_logger",
    ]
    assert "secret" not in yaml.safe_dump(config)


def test_capture_off_by_default() -> None:
    config = build_config(GatewaySettings())
    assert "callbacks" not in config["litellm_settings"]
    assert "database_url" not in config["general_settings"]
