"""Settings of the agent orchestrator: every variable starts with ``FLYWHEEL_ORCHESTRATOR_``."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import SettingsConfigDict

from flywheel_common.settings import ServiceSettings


class OrchestratorSettings(ServiceSettings):
    """Read from ``FLYWHEEL_ORCHESTRATOR_*`` (plus the shared ``FLYWHEEL_NATS_*`` and ``FLYWHEEL_OBJECT_STORE_*``)."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_ORCHESTRATOR_", extra="ignore", populate_by_name=True
    )

    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one (see ready_file).")
    sandbox_address: str = Field(
        "localhost:50052",
        validation_alias=AliasChoices("FLYWHEEL_SANDBOX_ADDRESS", "sandbox_address"),
        description="host:port of the sandbox runner (env FLYWHEEL_SANDBOX_ADDRESS, set by `flywheel up`).",
    )
    trajectory_address: str = Field(
        "localhost:50053",
        validation_alias=AliasChoices("FLYWHEEL_TRAJECTORY_ADDRESS", "trajectory_address"),
        description="host:port of the trajectory store (env FLYWHEEL_TRAJECTORY_ADDRESS).",
    )
    dataset_address: str = Field(
        "localhost:50054",
        validation_alias=AliasChoices("FLYWHEEL_DATASET_ADDRESS", "dataset_address"),
        description="host:port of the dataset builder (used by loops; env FLYWHEEL_DATASET_ADDRESS).",
    )
    trainer_address: str = Field(
        "localhost:50055",
        validation_alias=AliasChoices("FLYWHEEL_TRAINER_ADDRESS", "trainer_address"),
        description="host:port of the trainer (used by loops; env FLYWHEEL_TRAINER_ADDRESS).",
    )
    gateway_address: str = Field(
        "localhost:4000",
        validation_alias=AliasChoices(
            "FLYWHEEL_ORCHESTRATOR_GATEWAY_ADDRESS", "FLYWHEEL_GATEWAY_ADDRESS", "gateway_address"
        ),
        description="host:port of the gateway; models are called at http://<address>/v1.",
    )
    gateway_base_url: str = Field(
        "",
        description="OpenAI base URL of the models (e.g. https://api.example.com/v1); overrides gateway_address.",
    )
    gateway_api_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices(
            "FLYWHEEL_ORCHESTRATOR_GATEWAY_API_KEY", "FLYWHEEL_GATEWAY_MASTER_KEY", "gateway_api_key"
        ),
        description="Key sent to the gateway (defaults to FLYWHEEL_GATEWAY_MASTER_KEY, set by `flywheel up`).",
    )
    model_max_retries: int = Field(
        3, ge=0, le=10, description="Retries of a failed model call (connection errors, 408/409/429/5xx)."
    )
    model_timeout_s: float = Field(120.0, gt=0, description="Timeout of one model call, in seconds.")
    model_concurrency: int = Field(
        64, ge=1, le=1024, description="Model calls in flight at once over all episodes of the service."
    )
    skillopt_optimizer_timeout_s: float = Field(
        900.0,
        gt=0,
        description="Timeout of one optimiser call of a skill optimisation, in seconds (a long answer "
        "from a model on a CPU takes minutes).",
    )
    model_identity_ttl_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="How long the gateway's listing of an adapter (its digest) is reused for the "
        "identity of its turns and the check against a run's pinned adapter, in seconds (0 = ask every turn).",
    )
    default_concurrency: int = Field(8, ge=1, description="Episodes in flight per run when a run asks for 0.")
    max_concurrency: int = Field(128, ge=1, description="Cap on a run's episodes in flight.")
    max_iterations: int = Field(20, ge=1, description="Default agent iterations per episode.")
    max_tokens: int = Field(200_000, ge=1, description="Default token budget per episode.")
    max_wall_time_s: float = Field(
        900.0, gt=0, description="Default wall-clock budget per episode, in seconds."
    )
    max_consecutive_parse_errors: int = Field(
        5, ge=1, description="Default consecutive parse errors after which an episode stops."
    )
    max_loop_detections: int = Field(3, ge=1, description="Loop detections after which an episode stops.")
    max_tool_output_chars: int = Field(
        6000, ge=100, description="Tool output shown to the model is cut here."
    )
    max_rollouts_per_task: int = Field(64, ge=1, description="Largest rollouts_per_task a run may ask for.")
    suite_dirs: list[Path] = Field(
        default_factory=list,
        description="Extra folders of suites (a suite folder, or a folder of suite folders), JSON list.",
    )
    sandbox_timeout_s: float = Field(
        180.0, gt=0, description="Timeout of one sandbox call, in seconds (at least a run's limit + 60 s)."
    )
    # Limits of a task's test run, unless its task.toml `[limits]` (or an I/O problem's `limits`) says
    # otherwise: a repo task's whole pytest run, or each case of an I/O problem. The sandbox's own
    # maxima (FLYWHEEL_SANDBOX_MAX_*) still apply.
    test_wall_time_s: float = Field(10.0, gt=0, description="Wall-clock limit of a test run, in seconds.")
    test_cpu_time_s: float = Field(
        10.0, gt=0, description="CPU-time limit of a test run (all its processes), in seconds."
    )
    test_memory_mb: int = Field(256, ge=16, description="Memory limit of a test run, in MiB (swap off).")
    trajectory_timeout_s: float = Field(60.0, gt=0, description="Timeout of one trajectory-store call.")
    adapter_route_prefix: str = Field(
        "ft/",
        description="Gateway prefix of adapter routes: a loop's candidate is <prefix><name>-v<version>.",
    )
    loop_rollouts_timeout_s: float = Field(
        0.0, ge=0, description="A loop fails if its rollouts stage lasts longer than this; 0: no limit."
    )
    loop_dataset_timeout_s: float = Field(
        0.0, ge=0, description="A loop fails if its dataset build lasts longer than this; 0: no limit."
    )
    loop_fine_tune_timeout_s: float = Field(
        0.0, ge=0, description="A loop fails if its fine-tune lasts longer than this; 0: no limit."
    )
    loop_hot_load_timeout_s: float = Field(
        900.0, gt=0, description="A loop fails if its adapter is not served by the gateway within this time."
    )
    loop_evaluation_timeout_s: float = Field(
        0.0, ge=0, description="A loop fails if its evaluation lasts longer than this; 0: no limit."
    )
    loop_retry_s: float = Field(
        5.0, gt=0, description="A loop whose next step found a dependency down tries again after this long."
    )
    loop_reconcile_s: float = Field(
        30.0, gt=0, description="Every this often a loop re-checks its stage (a safety net for lost events)."
    )
    alias_canary_check_s: float = Field(
        2.0,
        gt=0,
        description="How often the canary controller looks at the live signals of running canaries.",
    )
    loop_promotion_poll_s: float = Field(
        2.0,
        gt=0,
        description="How often a loop in its PROMOTION stage checks whether its canary was decided.",
    )
    loop_hot_load_poll_s: float = Field(
        5.0, gt=0, description="How often a loop waiting for a hot-load also checks the gateway's model list."
    )

    @property
    def base_url(self) -> str:
        if self.gateway_base_url:
            return self.gateway_base_url.rstrip("/")
        address = self.gateway_address
        if "://" not in address:
            address = f"http://{address}"
        return address.rstrip("/") + "/v1"
