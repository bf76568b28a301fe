"""Typed settings shared by every service.

Each service subclasses :class:`ServiceSettings` with its own environment prefix
(``FLYWHEEL_SANDBOX_``, ``FLYWHEEL_TRAINER_`` …). Infrastructure that every service shares is
configured once, under its own prefix, for the whole stack: NATS (``FLYWHEEL_NATS_*``) and the
object store (``FLYWHEEL_OBJECT_STORE_*``).

:func:`load_settings` is the only way services read their settings: a bad value stops the
process at boot with one line per problem that names the environment variable to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel_common.auth import AuthSettings
from flywheel_common.events import NatsSettings
from flywheel_common.objectstore import ObjectStoreSettings


class ServiceSettings(BaseSettings):
    """Settings every gRPC service has. Subclasses must set ``model_config`` with an ``env_prefix``."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_SERVICE_", extra="ignore")

    host: str = Field("0.0.0.0", description="Address the gRPC server binds to.")
    port: int = Field(50050, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint; unset = off, 0 = any."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="json: one object per line; text: human.")
    grace_period_s: float = Field(
        10.0,
        gt=0,
        description="On SIGTERM, seconds in-flight RPCs get to finish before they are cancelled; at most "
        "half of shutdown_timeout_s (the rest is for closing the service's own resources).",
    )
    shutdown_timeout_s: float = Field(
        5.0,
        gt=0,
        description="On SIGTERM, seconds the whole shutdown may take (in-flight RPCs, then the shutdown "
        "hooks); past it the process stops its children and exits with status 1. Keep it well under "
        "the supervisor's grace (`flywheel up --grace`, 15 s; terminationGracePeriodSeconds, 30 s).",
    )
    ready_file: Path | None = Field(
        None,
        description="If set, written (atomically, JSON: pid, port, metrics_port) once the server is serving. "
        "How `flywheel up` and the tests learn a port that was picked with port=0.",
    )
    nats: NatsSettings = Field(default_factory=NatsSettings, description="Shared: FLYWHEEL_NATS_* variables.")
    object_store: ObjectStoreSettings = Field(
        default_factory=ObjectStoreSettings, description="Shared: FLYWHEEL_OBJECT_STORE_* variables."
    )
    auth: AuthSettings = Field(
        default_factory=AuthSettings,
        description="Shared: FLYWHEEL_SERVICE_TOKEN, FLYWHEEL_SERVICE_TOKEN_NEXT, FLYWHEEL_AUTH_DISABLED "
        "(flywheel_common.auth).",
    )


class SettingsError(Exception):
    """Raised by :func:`load_settings`; its message lists every bad variable, one per line."""


S = TypeVar("S", bound=BaseSettings)


def _env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", ""))


def _settings_classes(cls: type[BaseSettings]) -> dict[str, type[BaseSettings]]:
    """The class and every nested settings class, by name (a ValidationError's ``title``)."""
    found = {cls.__name__: cls}
    for field in cls.model_fields.values():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseSettings):
            found.update(_settings_classes(ann))
    return found


def describe_validation_error(cls: type[BaseSettings], err: ValidationError) -> str:
    """One line per problem, naming the environment variable, e.g. ``FLYWHEEL_SANDBOX_PORT='x': …``."""
    owner = _settings_classes(cls).get(err.title, cls)
    prefix = _env_prefix(owner)
    lines = []
    for problem in err.errors():
        loc = [str(part) for part in problem.get("loc", ())]
        name = (prefix + "__".join(loc)).upper() if loc else f"{prefix}*"
        value = problem.get("input")
        field = owner.model_fields.get(loc[0]) if len(loc) == 1 else None
        if field is not None and "SecretStr" in repr(field.annotation):
            value = "***"  # a secret (a password, a URL with credentials) is never echoed
        shown = f"={value!r}" if loc and not isinstance(value, dict) else ""
        lines.append(f"{name}{shown}: {problem.get('msg', 'invalid')}")
    return "\n".join(lines)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Read ``cls`` from the environment (plus explicit overrides) or raise :class:`SettingsError`."""
    try:
        return cls(**overrides)
    except ValidationError as err:
        raise SettingsError(
            f"invalid {cls.__name__} configuration:\n{describe_validation_error(cls, err)}"
        ) from None
