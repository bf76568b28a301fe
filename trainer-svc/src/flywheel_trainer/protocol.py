"""What the service and a training process say to each other: one typed definition for both sides.

- service → worker: :class:`Spec`, written as ``<work dir>/spec.json`` before the process starts;
- worker → service: progress records, one per stdout line, each :data:`PREFIX` + JSON with a
  ``type`` field naming its kind. The worker writes them with :func:`encode`; the service reads
  them with :func:`decode`, which raises :class:`ProtocolError` for anything else (the worker sends
  every other output of the libraries to stderr, the job's ``worker.log``).

The kinds, in the order a job sends them: :class:`Device` (once), :class:`Resuming` (when it
starts from a checkpoint), :class:`Passes` (how a step's rows are split into passes), :class:`Plan`
(once, at the start of training; the three again after an out-of-memory retry), :class:`Log` and
:class:`Checkpoint` (while training), then at most one of :class:`Done`, :class:`Failure`
(``type: "error"``) and :class:`Stopped`. This module imports no ML library: the service uses it.
"""

from __future__ import annotations

from typing import Annotated, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

#: Marks a stdout line as a progress record.
PREFIX = "@@flywheel "


class _Message(BaseModel):
    # NaN and infinity travel as JSON's NaN / Infinity (a diverging loss must reach the service).
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")


class WorkerHyperparameters(_Message):
    """The resolved hyperparameters a training process runs with (see ``hparams.worker_hparams``)."""

    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    target_modules: list[str]
    quantization: Literal["NONE", "NF4"]
    double_quantization: bool
    epochs: float
    max_steps: int  # 0: as many as the epochs take
    learning_rate: float
    scheduler: str  # a transformers scheduler name, e.g. "cosine"
    warmup_ratio: float  # in [0, 1): a fraction of the total steps
    batch_size: int  # micro-batch, rows per device
    gradient_accumulation_steps: int
    max_seq_length: int  # tokens
    packing: bool
    seed: int
    checkpoint_every_steps: int
    dpo_beta: float
    # GRPO only (defaults keep spec.json files of earlier versions readable).
    grpo_epsilon: float = 0.2
    grpo_epsilon_high: float = 0.2
    grpo_kl_beta: float = 0.0
    grpo_loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = "dapo"
    grpo_iterations: int = 1
    fp8_base_matmuls: bool = False  # FP8 matmuls for the frozen base weights (fp8.py), CUDA only


class Spec(_Message):
    """One job's instructions to its training process (``spec.json``)."""

    job_id: str
    base_model: str  # a registered base-model name (``base-models/<name>/``)
    dataset_id: str
    method: Literal["SFT", "DPO", "GRPO"]
    hyperparameters: WorkerHyperparameters
    # The published adapter to continue (`<name>/v<version>`) and its object-store prefix; empty
    # for a fresh adapter on the base model.
    init_adapter: str = ""
    init_adapter_prefix: str = ""
    cache_dir: str  # local folder of downloaded base models
    logging_steps: int  # optimizer steps between two Log records
    step_delay_s: float = 0.0  # testing aid: sleep after every optimizer step
    # Testing aid: every optimizer step after the first whose passes hold this many rows or more
    # raises torch.OutOfMemoryError, as a CUDA card would (0: never).
    simulate_oom_from_rows: int = 0
    cpu_bf16: bool = True  # autocast to bfloat16 on a CPU that computes it natively
    # Data-parallel processes (one per GPU; CPU processes with the cpu_data_parallel testing aid);
    # the job's batch_size is split evenly over them. 1: one process, as before.
    gpus: int = 1
    # Load and add to torch.compile's kernels kept in the object store (compile_cache.py); GPU jobs.
    compile_cache: bool = True


# ---------------------------------------------------------------------------------- records


class Device(_Message):
    """Where the job trains."""

    type: Literal["device"] = "device"
    device: str  # "cpu" or "cuda:0 (<GPU name>)"


class Resuming(_Message):
    """The job starts from its newest complete checkpoint instead of from the beginning."""

    type: Literal["resuming"] = "resuming"
    step: int  # the checkpoint's optimizer step


class Passes(_Message):
    """How many rows one forward/backward pass holds, and why fewer than the job's batch_size."""

    type: Literal["passes"] = "passes"
    rows: int  # rows per pass: batch_size or a divisor of it
    accumulation: int  # passes per optimizer step (the job's gradient accumulation x the split)
    note: str = ""  # why rows < batch_size; empty when not split


class Plan(_Message):
    """Training begins."""

    type: Literal["plan"] = "plan"
    total_steps: int  # optimizer steps of the whole run
    start_step: int = 0  # > 0 when resumed


class Log(_Message):
    """One Trainer log: a training step's metrics, an evaluation, or the final summary."""

    type: Literal["log"] = "log"
    step: int
    total_steps: int = 0
    epoch: float = 0.0
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None  # non-padding input tokens per second since the last log
    eta_s: float | None = None  # seconds to the end at the pace since the (re)start
    extra: dict[str, float] = Field(default_factory=dict)  # other numeric logs (DPO rewards, accuracy)


class Checkpoint(_Message):
    """A checkpoint is completely in the object store."""

    type: Literal["checkpoint"] = "checkpoint"
    step: int
    key: str  # the checkpoint's folder prefix, ending in "/"
    size: int  # bytes


class Done(_Message):
    """Training ended and the adapter is saved in ``output``, ready to publish."""

    type: Literal["done"] = "done"
    output: str  # local folder
    step: int
    elapsed_s: float


class Failure(_Message):
    """The job cannot go on; ``code`` is a ``grpc.StatusCode`` name."""

    type: Literal["error"] = "error"
    code: str
    message: str

    @field_validator("code")
    @classmethod
    def _known_code(cls, value: str) -> str:
        if value not in grpc.StatusCode.__members__:
            raise ValueError(f"{value!r} is not a grpc.StatusCode name")
        return value

    @classmethod
    def of(cls, code: grpc.StatusCode, message: str) -> Failure:
        return cls(code=code.name, message=message)

    @property
    def status(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.code]


class Stopped(_Message):
    """Training stopped early because the process was asked to (SIGTERM)."""

    type: Literal["stopped"] = "stopped"
    step: int


Record = Device | Resuming | Passes | Plan | Log | Checkpoint | Done | Failure | Stopped
#: The records that end a job's process.
Outcome = Done | Failure | Stopped

# Exit statuses of a training process (the worker, and ``run-job``, which passes the worker's on).
# The service reads the records, not these; the chart's Job template does: a status in
# NO_RETRY_EXIT_STATUSES fails the Kubernetes Job at once (podFailurePolicy FailJob) because a new
# pod would fail the same way, and any other non-zero status counts against the Job's backoffLimit,
# its next pod resuming from the newest checkpoint.
EXIT_DONE = 0
EXIT_CRASHED = 2  #: an unexpected exception, reported as a Failure record (INTERNAL)
EXIT_BAD_INPUT = 3  #: a Failure of the job's input or settings (bad dataset, unknown base model, …)
EXIT_STOPPED = 5  #: SIGTERM: stopped at a step boundary (a retry resumes from the checkpoint)
EXIT_OUT_OF_MEMORY = 6  #: the accelerator ran out of memory (RESOURCE_EXHAUSTED)
EXIT_DIVERGED = 7  #: the training diverged: non-finite gradients step after step (ABORTED)
EXIT_NOT_CONFIGURED = 8  #: ``run-job`` started without FLYWHEEL_TRAINER_JOB_ID
NO_RETRY_EXIT_STATUSES = (
    EXIT_CRASHED,
    EXIT_BAD_INPUT,
    EXIT_OUT_OF_MEMORY,
    EXIT_DIVERGED,
    EXIT_NOT_CONFIGURED,
)


def exit_status(outcome: Outcome) -> int:
    """The exit status of a training process that ended with ``outcome``."""
    if isinstance(outcome, Done):
        return EXIT_DONE
    if isinstance(outcome, Stopped):
        return EXIT_STOPPED
    if outcome.status == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return EXIT_OUT_OF_MEMORY
    if outcome.status == grpc.StatusCode.ABORTED:
        return EXIT_DIVERGED
    if outcome.status == grpc.StatusCode.INTERNAL:
        return EXIT_CRASHED
    return EXIT_BAD_INPUT


_RECORD: TypeAdapter[Record] = TypeAdapter(Annotated[Record, Field(discriminator="type")])


class ProtocolError(ValueError):
    """A stdout line that is not a well-formed progress record."""


def encode(record: Record) -> str:
    """The stdout line (with its newline) that carries ``record``."""
    return PREFIX + record.model_dump_json() + "\n"


def decode(line: str) -> Record:
    """The record a stdout line carries; :class:`ProtocolError` for any other line."""
    line = line.rstrip("\r\n")
    if not line.startswith(PREFIX):
        raise ProtocolError("not a progress record (no prefix)")
    try:
        return _RECORD.validate_json(line[len(PREFIX) :])
    except ValidationError as err:
        raise ProtocolError(str(err).replace("\n", "; ")) from None
