"""Settings of the trajectory store: every variable starts with ``FLYWHEEL_TRAJECTORY_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings


class TrajectorySettings(ServiceSettings):
    """Read from ``FLYWHEEL_TRAJECTORY_*`` (plus the shared ``FLYWHEEL_NATS_*`` and ``FLYWHEEL_OBJECT_STORE_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAJECTORY_", extra="ignore")

    port: int = Field(50053, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")
    index_dir: Path | None = Field(
        None,
        description="Folder of the listing index (SQLite, rebuildable from the objects). Unset: "
        "`<object-store root>/../trajectory-store` on the fs backend, `~/.flywheel/trajectory-store/<bucket>` on S3.",
    )
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL URL (`postgresql://user:password@host:5432/db`) of a listing index that "
        "several replicas share; unset: the SQLite index in `index_dir` (one replica only).",
    )
    database_schema: str = Field(
        "trajectory_store",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="Schema of the PostgreSQL index (created if missing): one per object store, so a "
        "database can hold several stores' indexes, or live next to another service's tables.",
    )
    rebuild_index_on_start: bool = Field(
        False, description="Rebuild the index from the objects at start-up (it is also rebuilt when missing)."
    )
    write_processes: int = Field(
        2,
        ge=0,
        le=64,
        description="Writer processes that validate, serialise and write trajectories (see writer.py); "
        "0 = threads of the service process. Around the number of cores.",
    )
    write_threads: int = Field(
        16, ge=1, le=256, description="Parallel object writes per writer (a put blocks on fsync or HTTP)."
    )
    batch_chunk: int = Field(
        128,
        ge=1,
        le=4096,
        description="BatchPutTrajectories stores its stream in chunks of this many trajectories.",
    )

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            # The value itself is not repeated: it may hold a password.
            raise ValueError("must be a postgresql:// (or postgres://) URL")
        return value

    def resolved_index_dir(self) -> Path:
        """Where the index lives (see ``index_dir``)."""
        if self.index_dir is not None:
            return self.index_dir.expanduser()
        store = self.object_store
        if store.backend == "fs":
            return Path(store.root).expanduser().absolute().parent / "trajectory-store"
        return Path("~/.flywheel/trajectory-store").expanduser() / store.bucket
