"""Settings of the trainer: every variable starts with ``FLYWHEEL_TRAINER_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings
from flywheel_trainer.memory_plan import DEFAULT_GPU_STEP_TOKENS


class TrainerSettings(ServiceSettings):
    """Read from ``FLYWHEEL_TRAINER_*`` (plus the shared ``FLYWHEEL_NATS_*`` and ``FLYWHEEL_OBJECT_STORE_*``)."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_TRAINER_", extra="ignore")

    port: int = Field(50055, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")
    state_dir: Path = Field(
        default_factory=lambda: Path.home() / ".flywheel" / "trainer",
        description="Local folder for job work folders (work/<id>/) and the base-model cache. Job records "
        "and checkpoints are in the object store, so a new pod with an empty folder resumes every job; "
        "records an earlier trainer kept in jobs/<id>.json here are imported once at start-up.",
    )
    model_roots: list[Path] = Field(
        default_factory=list,
        description="Folders under which RegisterBaseModel's local sources (source_folder, "
        "source_gguf_path) must lie, after symlinks are resolved; empty: any absolute path (the "
        "embedded stack, where the caller owns the machine). The Helm chart sets the model volume's "
        "mount path, so a caller with the service token cannot copy other trainer files into the "
        "object store.",
    )
    slots: int = Field(
        1, ge=1, le=64, description="Jobs that train at the same time (GPU slots); the rest wait QUEUED."
    )
    max_lora_rank: int = Field(
        64,
        ge=1,
        le=1024,
        description="Serving limit: the model server's --max-lora-rank. Higher ranks are refused.",
    )
    serving_target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        description="Module names the model server can apply LoRA to (JSON list); other targets are refused.",
    )
    default_batch_size: int = Field(
        4,
        ge=1,
        description="Rows per optimizer step when a job leaves batch_size at 0 (on a GPU, SFT jobs are "
        "sized by gpu_step_tokens instead).",
    )
    gpu_step_tokens: int = Field(
        DEFAULT_GPU_STEP_TOKENS,
        ge=0,
        description="SFT jobs on a GPU that leave batch_size at 0 take this many tokens a step: "
        "gpu_step_tokens // max_seq_length rows (16 at 2,048), a multiple of job.gpus; the memory model "
        "then splits the step into passes that fill the card. 0 = default_batch_size everywhere.",
    )
    default_gradient_accumulation_steps: int = Field(
        1, ge=1, description="Gradient accumulation when a job leaves it at 0."
    )
    default_checkpoint_every_steps: int = Field(
        50, ge=1, description="Checkpoint interval in optimizer steps when a job leaves it at 0."
    )
    logging_steps: int = Field(1, ge=1, description="Optimizer steps between two training logs (Watch, CLI).")
    compile_cache: bool = Field(
        True,
        description="GPU jobs load the kernels torch.compile built in earlier jobs (flex attention: minutes of "
        "ptxas on a cold start) from the object store, under trainer/compile-cache/<torch, Triton, CUDA, GPU>/, "
        "and add the ones they built. Off: every training process compiles from scratch.",
    )
    cancel_grace_s: float = Field(
        20.0, gt=0, description="Seconds a cancelled or stopping training process gets before SIGKILL."
    )
    worker_python: str | None = Field(
        None, description="Python interpreter that runs training processes; unset = the service's own."
    )
    gpu_available: bool | None = Field(
        None,
        description="Whether a CUDA GPU may be used; unset = ask torch once at start-up. NF4 (QLoRA) needs one.",
    )
    step_delay_s: float = Field(
        0.0,
        ge=0,
        description="Testing aid: sleep this long after every optimizer step, so tests can cancel, kill or "
        "restart a run of a tiny model mid-way. Leave at 0.",
    )
    simulate_oom_from_rows: int = Field(
        0,
        ge=0,
        description="Testing aid: every optimizer step after the first whose passes hold this many rows or more "
        "raises an out-of-memory error as a CUDA card would, so tests exercise the split-and-retry without a "
        "GPU. Leave at 0.",
    )
    cpu_data_parallel: bool = Field(
        False,
        description="Testing aid: run a job's `gpus` as that many CPU processes (DDP over gloo) on a machine "
        "without GPUs, so CI exercises data-parallel training. Leave off.",
    )
    backend: Literal["local", "kubernetes"] = Field(
        "local",
        description="Where fine-tunes run. local: a training process beside the service. kubernetes: one "
        "Kubernetes Job per fine-tune, made from job_template (needs the Role of the chart's rbac.yaml).",
    )
    job_namespace: str = Field(
        "default",
        description="kubernetes backend: namespace of the training Jobs (the chart: the release's).",
    )
    job_template: Path | None = Field(
        None,
        description="kubernetes backend: YAML file of the batch/v1 Job each fine-tune runs as (the chart's "
        "trainer-job-template ConfigMap); its first container trains. Required with backend=kubernetes.",
    )
    job_image: str = Field(
        "", description="kubernetes backend: image of the training container; empty keeps the template's."
    )
    job_gpus: int = Field(
        1, ge=0, le=16, description="kubernetes backend: nvidia.com/gpu limit of the training container."
    )
    job_api_url: str = Field(
        "",
        description="kubernetes backend: URL of the Kubernetes API server without credentials (tests, "
        "kubectl proxy); empty = the pod's service account, else the kubeconfig.",
    )
    job_poll_s: float = Field(
        2.0, gt=0, le=60, description="kubernetes backend: seconds between two reads of a Job's pods."
    )
    job_id: str = Field(
        "", description="run-job only: the fine-tune job this pod trains (set by the trainer in the Job)."
    )

    @model_validator(mode="after")
    def _kubernetes_needs_a_template(self) -> Self:
        if self.backend == "kubernetes" and self.job_template is None:
            raise ValueError(
                "FLYWHEEL_TRAINER_JOB_TEMPLATE is required with FLYWHEEL_TRAINER_BACKEND=kubernetes "
                "(a YAML file of the batch/v1 Job to run each fine-tune as)"
            )
        return self
