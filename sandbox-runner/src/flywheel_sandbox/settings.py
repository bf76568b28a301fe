"""Settings of the sandbox runner: every variable starts with ``FLYWHEEL_SANDBOX_``."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings

MiB = 1024 * 1024


class SandboxSettings(ServiceSettings):
    """Read from ``FLYWHEEL_SANDBOX_*`` (plus the shared ``FLYWHEEL_NATS_*`` and ``FLYWHEEL_OBJECT_STORE_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_SANDBOX_", extra="ignore")

    port: int = Field(50052, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")

    unsafe_local: bool = Field(
        False,
        description="Run code WITHOUT bubblewrap, seccomp or cgroups (loudly logged). Only for machines where "
        "isolation cannot work and the code is trusted; without it a missing mechanism stops the runner.",
    )
    python: str = Field(
        "/usr/bin/python3", description="Interpreter inside the sandbox (from the host's /usr)."
    )
    max_concurrency: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="Runs at once (default: cores).",
    )
    queue_size: int = Field(
        64, ge=0, le=100_000, description="Requests that may wait; beyond: RESOURCE_EXHAUSTED."
    )
    warm_pool_size: int = Field(
        -1, ge=-1, le=256, description="Ready sandboxes kept started; -1 = max_concurrency."
    )
    cgroup_version: Literal["auto", "v1", "v2"] = Field(
        "auto",
        description="cgroup hierarchy to drive: auto (v2 where /sys/fs/cgroup is a cgroup2 mount, else v1), v1, v2.",
    )
    cpu_cores_per_run: float = Field(1.0, gt=0, le=64, description="CFS CPU quota of one run, in cores.")

    # Defaults (used when a request leaves a limit at zero) and maxima (above: INVALID_ARGUMENT).
    default_wall_time_s: float = Field(10.0, gt=0)
    max_wall_time_s: float = Field(300.0, gt=0)
    default_cpu_time_s: float = Field(10.0, gt=0)
    max_cpu_time_s: float = Field(300.0, gt=0)
    default_memory_bytes: int = Field(256 * MiB, ge=16 * MiB)
    max_memory_bytes: int = Field(4096 * MiB, ge=16 * MiB)
    default_max_processes: int = Field(64, ge=1)
    max_max_processes: int = Field(1024, ge=1)
    default_output_bytes: int = Field(1 * MiB, ge=1)
    max_output_bytes: int = Field(64 * MiB, ge=1)
    default_file_size_bytes: int = Field(16 * MiB, ge=1)
    max_file_size_bytes: int = Field(1024 * MiB, ge=1)
    default_max_open_files: int = Field(256, ge=16)
    max_max_open_files: int = Field(4096, ge=16)
    default_workspace_bytes: int = Field(64 * MiB, ge=1 * MiB)
    max_workspace_bytes: int = Field(1024 * MiB, ge=1 * MiB)

    # Request shape.
    max_files: int = Field(1000, ge=1, description="Files per request.")
    max_file_bytes: int = Field(8 * MiB, ge=1, description="Size of one request file.")
    max_request_bytes: int = Field(48 * MiB, ge=1, description="All files of one request together.")
    max_judge_cases: int = Field(1000, ge=1, description="Cases per Judge request.")

    @model_validator(mode="after")
    def _defaults_within_maxima(self) -> SandboxSettings:
        for name in (
            "wall_time_s",
            "cpu_time_s",
            "memory_bytes",
            "output_bytes",
            "file_size_bytes",
            "workspace_bytes",
        ):
            if getattr(self, f"default_{name}") > getattr(self, f"max_{name}"):
                raise ValueError(f"default_{name} is above max_{name}")
        for name in ("max_processes", "max_open_files"):
            if getattr(self, f"default_{name}") > getattr(self, f"max_{name}"):
                raise ValueError(f"default_{name} is above max_{name}")
        return self

    @property
    def pool_size(self) -> int:
        return self.max_concurrency if self.warm_pool_size < 0 else self.warm_pool_size
