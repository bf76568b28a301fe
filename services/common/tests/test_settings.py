"""Typed settings fail fast and name the variable that is wrong."""

from __future__ import annotations

import pytest
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings, SettingsError, load_settings


class DemoSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_DEMO_", extra="ignore")

    port: int = Field(50099, ge=0, le=65535)


def test_defaults_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DEMO_PORT", "6000")
    monkeypatch.setenv("FLYWHEEL_DEMO_LOG_LEVEL", "debug")
    settings = load_settings(DemoSettings)
    assert settings.port == 6000
    assert settings.log_level == "debug"
    assert settings.grace_period_s == 10.0


def test_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DEMO_PORT", "eighty")
    with pytest.raises(SettingsError) as err:
        load_settings(DemoSettings)
    assert "FLYWHEEL_DEMO_PORT='eighty'" in str(err.value)


def test_every_bad_variable_is_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_DEMO_PORT", "70000")
    monkeypatch.setenv("FLYWHEEL_DEMO_LOG_FORMAT", "xml")
    with pytest.raises(SettingsError) as err:
        load_settings(DemoSettings)
    message = str(err.value)
    assert "FLYWHEEL_DEMO_PORT='70000'" in message
    assert "FLYWHEEL_DEMO_LOG_FORMAT='xml'" in message


def test_shared_nats_setting_named_with_its_own_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_NATS_ACK_WAIT_S", "soon")
    with pytest.raises(SettingsError) as err:
        load_settings(DemoSettings)
    assert "FLYWHEEL_NATS_ACK_WAIT_S='soon'" in str(err.value)


def test_shared_settings_come_from_their_own_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("FLYWHEEL_NATS_URL", "nats://10.0.0.5:4222")
    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_ROOT", str(tmp_path))
    settings = load_settings(DemoSettings)
    assert settings.nats.url == "nats://10.0.0.5:4222"
    assert settings.object_store.root == tmp_path
