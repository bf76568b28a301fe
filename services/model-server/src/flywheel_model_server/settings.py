"""Settings of the embedded model server: every variable starts with ``FLYWHEEL_MODEL_SERVER_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings


class ModelServerSettings(ServiceSettings):
    """HTTP server settings; ``port`` is the OpenAI-compatible HTTP port (vLLM's default is 8000)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_MODEL_SERVER_", extra="ignore")

    port: int = Field(8000, ge=0, le=65535, description="HTTP port; 0 picks a free one (see ready_file).")
    base_model: str = Field(
        "gemma-3-270m",
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="Name of the base model in the trainer's registry: the object-store prefix "
        "base-models/<name>/ (Hugging Face folder + flywheel-base-model.json + _COMPLETE marker).",
    )
    model_path: Path | None = Field(
        None,
        description="A local Hugging Face folder to serve instead of the registry's copy (tests, development). "
        "When set, the object store is not consulted.",
    )
    served_model_name: str | None = Field(
        None,
        description="Name clients use for the base model (vLLM's --served-model-name); unset = base_model.",
    )
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".flywheel" / "model-server" / "cache",
        description="Where base models downloaded from the object store are kept, one folder per upload "
        "(<name>-<manifest digest>), so a restart does not download them again.",
    )
    device: str = Field(
        "auto", description="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1 …"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Weights dtype; auto = bfloat16 on a GPU or CPU that computes it natively (AVX-512 BF16, AMX), "
        "else float32.",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads torch uses for one generation; unset = torch's default."
    )
    max_model_len: int | None = Field(
        None, ge=16, description="Context length (prompt + completion tokens); unset = the model config's."
    )
    default_max_tokens: int = Field(
        512,
        ge=1,
        description="Completion tokens of a chat request that sets no max_tokens. vLLM allows the rest of "
        "the context; on a CPU that can take hours, hence a bound. /v1/completions defaults to 16 (as OpenAI).",
    )
    max_n: int = Field(16, ge=1, le=128, description="Largest `n` (choices per request) accepted.")
    max_adapters: int = Field(
        32, ge=1, description="LoRA adapters loaded at once; loading one more is a 400 until one is unloaded."
    )
    max_queued_requests: int = Field(
        64, ge=1, description="Requests waiting for the model (generation is serialised); beyond: 429."
    )
    max_batch_size: int = Field(
        8,
        ge=1,
        le=256,
        description="Choices generated together in one forward pass: waiting requests for the same model "
        "with the same sampling settings share a batch up to this many rows (static batching).",
    )
    merged_adapters: int = Field(
        2,
        ge=0,
        description="Adapters kept as merged copies of the model (least recently used dropped first); each "
        "costs the memory of the projections it targets. 0 = always PEFT's unmerged forward.",
    )
    model_poll_interval_s: float = Field(
        30.0,
        gt=0,
        description="While the base model is missing from the registry, look for it again this often, so an "
        "import by the trainer is picked up without a restart.",
    )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
            raise ValueError(f"device {value!r} is not auto, cpu, cuda, cuda:<index> or mps")
        return value

    @property
    def model_name(self) -> str:
        """The id of the base model in /v1/models and in requests."""
        return self.served_model_name or self.base_model
