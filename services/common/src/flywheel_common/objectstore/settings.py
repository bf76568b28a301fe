"""Object-store settings: the ``FLYWHEEL_OBJECT_STORE_*`` environment variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "FLYWHEEL_OBJECT_STORE_"
MIB = 1024 * 1024
#: S3 multipart limits: every part but the last is at least 5 MiB and at most 5 GiB.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_ENDPOINT_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


class ObjectStoreSettings(BaseSettings):
    """Where trajectories, datasets and adapters are stored; one bucket (or folder) for the stack."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    backend: Literal["fs", "s3"] = Field(
        "fs", description="fs: files under `root` (one machine); s3: any S3 endpoint (MinIO, AWS, Garage)."
    )
    root: Path = Field(
        default_factory=lambda: Path.home() / ".flywheel" / "objects",
        description="fs backend only: the folder that holds the objects ('~' is expanded).",
    )
    endpoint: str | None = Field(
        None,
        description="s3 backend: host:port of the S3 API, without scheme (see `secure`), e.g. minio:9000.",
    )
    access_key: str | None = Field(None, description="s3 backend: access key id.")
    secret_key: SecretStr | None = Field(None, description="s3 backend: secret access key.")
    bucket: str = Field("flywheel", description="s3 backend: bucket name; ensure_ready() creates it.")
    secure: bool = Field(False, description="s3 backend: true = https, false = plain http.")
    region: str | None = Field(
        None, description="s3 backend: region; unset = ask the server (one extra request per bucket)."
    )
    part_size_bytes: int = Field(
        16 * MIB,
        ge=MIN_PART_SIZE,
        le=MAX_PART_SIZE,
        description="s3 backend: multipart part size, and the memory one upload buffers. "
        "Objects of unknown length can reach 10,000 parts of this size.",
    )

    @field_validator("root")
    @classmethod
    def _expand_root(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("bucket")
    @classmethod
    def _check_bucket(cls, value: str) -> str:
        if not _BUCKET_RE.fullmatch(value) or ".." in value:
            raise ValueError(
                f"{_env('bucket')}={value!r} is not a valid bucket name: 3-63 characters of lower-case "
                "letters, digits, '.' and '-', starting and ending with a letter or digit"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _check_endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if "://" in value:
            raise ValueError(
                f"{_env('endpoint')}={value!r} must be host:port without a scheme; "
                f"set {_env('secure')}=true for https"
            )
        if not _ENDPOINT_RE.fullmatch(value):
            raise ValueError(f"{_env('endpoint')}={value!r} is not host:port (no path), e.g. minio:9000")
        return value

    @model_validator(mode="after")
    def _check_s3_complete(self) -> ObjectStoreSettings:
        if self.backend != "s3":
            return self
        missing = [
            _env(name)
            for name, value in (
                ("endpoint", self.endpoint),
                ("access_key", self.access_key),
                ("secret_key", self.secret_key.get_secret_value() if self.secret_key else None),
            )
            if not value
        ]
        if missing:
            raise ValueError(f"{_env('backend')}=s3 needs {', '.join(missing)} to be set")
        return self
