"""Settings of the dataset builder: every variable starts with ``FLYWHEEL_DATASET_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings


class DatasetSettings(ServiceSettings):
    """Read from ``FLYWHEEL_DATASET_*`` (plus the shared ``FLYWHEEL_NATS_*`` and ``FLYWHEEL_OBJECT_STORE_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_DATASET_", extra="ignore", populate_by_name=True)

    port: int = Field(50054, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")
    trajectory_address: str = Field(
        "localhost:50053",
        validation_alias=AliasChoices("FLYWHEEL_TRAJECTORY_ADDRESS", "trajectory_address"),
        description="host:port of the trajectory store (env FLYWHEEL_TRAJECTORY_ADDRESS, set by `flywheel up`).",
    )
    default_base_model: str = Field(
        "gemma-3-270m",
        description="Base model whose tokenizer (base-models/<name>/tokenizer.json) measures token statistics "
        "when a build names none.",
    )
    price_usd_per_million_tokens: float = Field(
        0.48, ge=0, description="Training price assumed by the cost estimate, in USD per 1M training tokens."
    )
    decontamination_ngram: int = Field(
        13, ge=3, le=50, description="Word n-gram length of the content-overlap decontamination check."
    )
    max_concurrent_builds: int = Field(1, ge=1, le=16, description="Builds that run at the same time.")
    work_dir: Path | None = Field(
        None,
        description="Folder for a build's temporary files (spill buckets, output files); unset = system temp.",
    )
    export_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="Deadline of one ExportTrajectories call to the trajectory store, in seconds.",
    )
