import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FineTuneMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINE_TUNE_METHOD_UNSPECIFIED: _ClassVar[FineTuneMethod]
    FINE_TUNE_METHOD_SFT: _ClassVar[FineTuneMethod]
    FINE_TUNE_METHOD_DPO: _ClassVar[FineTuneMethod]
    FINE_TUNE_METHOD_GRPO: _ClassVar[FineTuneMethod]

class GrpoLossType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GRPO_LOSS_TYPE_UNSPECIFIED: _ClassVar[GrpoLossType]
    GRPO_LOSS_TYPE_GRPO: _ClassVar[GrpoLossType]
    GRPO_LOSS_TYPE_BNPO: _ClassVar[GrpoLossType]
    GRPO_LOSS_TYPE_DR_GRPO: _ClassVar[GrpoLossType]
    GRPO_LOSS_TYPE_DAPO: _ClassVar[GrpoLossType]

class Quantization(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUANTIZATION_UNSPECIFIED: _ClassVar[Quantization]
    QUANTIZATION_NONE: _ClassVar[Quantization]
    QUANTIZATION_NF4: _ClassVar[Quantization]

class LrScheduler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LR_SCHEDULER_UNSPECIFIED: _ClassVar[LrScheduler]
    LR_SCHEDULER_COSINE: _ClassVar[LrScheduler]
    LR_SCHEDULER_LINEAR: _ClassVar[LrScheduler]
    LR_SCHEDULER_CONSTANT: _ClassVar[LrScheduler]
FINE_TUNE_METHOD_UNSPECIFIED: FineTuneMethod
FINE_TUNE_METHOD_SFT: FineTuneMethod
FINE_TUNE_METHOD_DPO: FineTuneMethod
FINE_TUNE_METHOD_GRPO: FineTuneMethod
GRPO_LOSS_TYPE_UNSPECIFIED: GrpoLossType
GRPO_LOSS_TYPE_GRPO: GrpoLossType
GRPO_LOSS_TYPE_BNPO: GrpoLossType
GRPO_LOSS_TYPE_DR_GRPO: GrpoLossType
GRPO_LOSS_TYPE_DAPO: GrpoLossType
QUANTIZATION_UNSPECIFIED: Quantization
QUANTIZATION_NONE: Quantization
QUANTIZATION_NF4: Quantization
LR_SCHEDULER_UNSPECIFIED: LrScheduler
LR_SCHEDULER_COSINE: LrScheduler
LR_SCHEDULER_LINEAR: LrScheduler
LR_SCHEDULER_CONSTANT: LrScheduler

class GrpoConfig(_message.Message):
    __slots__ = ("epsilon", "epsilon_high", "kl_beta", "loss_type", "iterations")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_HIGH_FIELD_NUMBER: _ClassVar[int]
    KL_BETA_FIELD_NUMBER: _ClassVar[int]
    LOSS_TYPE_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    epsilon_high: float
    kl_beta: float
    loss_type: GrpoLossType
    iterations: int
    def __init__(self, epsilon: _Optional[float] = ..., epsilon_high: _Optional[float] = ..., kl_beta: _Optional[float] = ..., loss_type: _Optional[_Union[GrpoLossType, str]] = ..., iterations: _Optional[int] = ...) -> None: ...

class LoraConfig(_message.Message):
    __slots__ = ("rank", "alpha", "dropout", "target_modules")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: float
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class QuantizationConfig(_message.Message):
    __slots__ = ("quantization", "double_quantization")
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    quantization: Quantization
    double_quantization: bool
    def __init__(self, quantization: _Optional[_Union[Quantization, str]] = ..., double_quantization: _Optional[bool] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("lora", "quantization", "epochs", "max_steps", "learning_rate", "scheduler", "warmup_ratio", "batch_size", "gradient_accumulation_steps", "max_seq_length", "packing", "seed", "checkpoint_every_steps", "dpo_beta", "grpo", "fp8_base_matmuls")
    LORA_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    DPO_BETA_FIELD_NUMBER: _ClassVar[int]
    GRPO_FIELD_NUMBER: _ClassVar[int]
    FP8_BASE_MATMULS_FIELD_NUMBER: _ClassVar[int]
    lora: LoraConfig
    quantization: QuantizationConfig
    epochs: float
    max_steps: int
    learning_rate: float
    scheduler: LrScheduler
    warmup_ratio: float
    batch_size: int
    gradient_accumulation_steps: int
    max_seq_length: int
    packing: bool
    seed: int
    checkpoint_every_steps: int
    dpo_beta: float
    grpo: GrpoConfig
    fp8_base_matmuls: bool
    def __init__(self, lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., quantization: _Optional[_Union[QuantizationConfig, _Mapping]] = ..., epochs: _Optional[float] = ..., max_steps: _Optional[int] = ..., learning_rate: _Optional[float] = ..., scheduler: _Optional[_Union[LrScheduler, str]] = ..., warmup_ratio: _Optional[float] = ..., batch_size: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., packing: _Optional[bool] = ..., seed: _Optional[int] = ..., checkpoint_every_steps: _Optional[int] = ..., dpo_beta: _Optional[float] = ..., grpo: _Optional[_Union[GrpoConfig, _Mapping]] = ..., fp8_base_matmuls: _Optional[bool] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "fraction", "eta")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: float
    fraction: float
    eta: _duration_pb2.Duration
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., fraction: _Optional[float] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TrainingMetrics(_message.Message):
    __slots__ = ("step", "loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EVAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    eval_loss: float
    extra: _containers.ScalarMap[str, float]
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., eval_loss: _Optional[float] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AdapterRef(_message.Message):
    __slots__ = ("name", "version", "object_prefix", "content_digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OBJECT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    object_prefix: str
    content_digest: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., object_prefix: _Optional[str] = ..., content_digest: _Optional[str] = ...) -> None: ...

class FineTuneJob(_message.Message):
    __slots__ = ("id", "base_model", "dataset_id", "method", "hyperparameters", "adapter_name", "loop_id", "labels", "state", "error", "progress", "latest_metrics", "last_checkpoint", "resume_count", "device", "adapter", "create_time", "start_time", "end_time", "init_adapter", "status_message", "rows_per_pass", "rows_per_pass_note", "gpus")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    LAST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    RESUME_COUNT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_PASS_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_PASS_NOTE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    base_model: str
    dataset_id: str
    method: FineTuneMethod
    hyperparameters: Hyperparameters
    adapter_name: str
    loop_id: str
    labels: _containers.ScalarMap[str, str]
    state: _common_pb2.JobState
    error: _common_pb2.Error
    progress: TrainingProgress
    latest_metrics: TrainingMetrics
    last_checkpoint: _common_pb2.ObjectRef
    resume_count: int
    device: str
    adapter: AdapterRef
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    init_adapter: str
    status_message: str
    rows_per_pass: int
    rows_per_pass_note: str
    gpus: int
    def __init__(self, id: _Optional[str] = ..., base_model: _Optional[str] = ..., dataset_id: _Optional[str] = ..., method: _Optional[_Union[FineTuneMethod, str]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., adapter_name: _Optional[str] = ..., loop_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., latest_metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ..., last_checkpoint: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., resume_count: _Optional[int] = ..., device: _Optional[str] = ..., adapter: _Optional[_Union[AdapterRef, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., init_adapter: _Optional[str] = ..., status_message: _Optional[str] = ..., rows_per_pass: _Optional[int] = ..., rows_per_pass_note: _Optional[str] = ..., gpus: _Optional[int] = ...) -> None: ...

class Adapter(_message.Message):
    __slots__ = ("name", "version", "base_model", "dataset_id", "job_id", "method", "hyperparameters", "object_prefix", "manifest", "loss_curve", "final_metrics", "chat_template_sha256", "default_chat_template", "loop_id", "labels", "create_time", "content_digest", "init_adapter")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    LOSS_CURVE_FIELD_NUMBER: _ClassVar[int]
    FINAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    base_model: str
    dataset_id: str
    job_id: str
    method: FineTuneMethod
    hyperparameters: Hyperparameters
    object_prefix: str
    manifest: _common_pb2.ObjectRef
    loss_curve: _common_pb2.ObjectRef
    final_metrics: TrainingMetrics
    chat_template_sha256: str
    default_chat_template: bool
    loop_id: str
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    content_digest: str
    init_adapter: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., base_model: _Optional[str] = ..., dataset_id: _Optional[str] = ..., job_id: _Optional[str] = ..., method: _Optional[_Union[FineTuneMethod, str]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., object_prefix: _Optional[str] = ..., manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., loss_curve: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., final_metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ..., chat_template_sha256: _Optional[str] = ..., default_chat_template: _Optional[bool] = ..., loop_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., content_digest: _Optional[str] = ..., init_adapter: _Optional[str] = ...) -> None: ...

class BaseModel(_message.Message):
    __slots__ = ("name", "description", "source", "architecture", "parameter_count", "max_position_embeddings", "default_chat_template", "default_target_modules", "create_time", "hf_id", "content_digest")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_POSITION_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    HF_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    source: str
    architecture: str
    parameter_count: int
    max_position_embeddings: int
    default_chat_template: bool
    default_target_modules: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    hf_id: str
    content_digest: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., source: _Optional[str] = ..., architecture: _Optional[str] = ..., parameter_count: _Optional[int] = ..., max_position_embeddings: _Optional[int] = ..., default_chat_template: _Optional[bool] = ..., default_target_modules: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hf_id: _Optional[str] = ..., content_digest: _Optional[str] = ...) -> None: ...

class CreateFineTuneJobRequest(_message.Message):
    __slots__ = ("job", "request_id", "validate_only")
    JOB_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    job: FineTuneJob
    request_id: str
    validate_only: bool
    def __init__(self, job: _Optional[_Union[FineTuneJob, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateFineTuneJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: FineTuneJob
    def __init__(self, job: _Optional[_Union[FineTuneJob, _Mapping]] = ...) -> None: ...

class GetFineTuneJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetFineTuneJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: FineTuneJob
    def __init__(self, job: _Optional[_Union[FineTuneJob, _Mapping]] = ...) -> None: ...

class ListFineTuneJobsRequest(_message.Message):
    __slots__ = ("state", "adapter_name", "loop_id", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.JobState
    adapter_name: str
    loop_id: str
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[_common_pb2.JobState, str]] = ..., adapter_name: _Optional[str] = ..., loop_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFineTuneJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[FineTuneJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[FineTuneJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelFineTuneJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelFineTuneJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: FineTuneJob
    def __init__(self, job: _Optional[_Union[FineTuneJob, _Mapping]] = ...) -> None: ...

class WatchFineTuneJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class TrainingLog(_message.Message):
    __slots__ = ("progress", "metrics", "log_time")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOG_TIME_FIELD_NUMBER: _ClassVar[int]
    progress: TrainingProgress
    metrics: TrainingMetrics
    log_time: _timestamp_pb2.Timestamp
    def __init__(self, progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., metrics: _Optional[_Union[TrainingMetrics, _Mapping]] = ..., log_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchFineTuneJobResponse(_message.Message):
    __slots__ = ("job", "log")
    JOB_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    job: FineTuneJob
    log: TrainingLog
    def __init__(self, job: _Optional[_Union[FineTuneJob, _Mapping]] = ..., log: _Optional[_Union[TrainingLog, _Mapping]] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ("name", "base_model", "page_size", "page_token")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    base_model: str
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., base_model: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("adapters", "next_page_token")
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    adapters: _containers.RepeatedCompositeFieldContainer[Adapter]
    next_page_token: str
    def __init__(self, adapters: _Optional[_Iterable[_Union[Adapter, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetAdapterRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetAdapterResponse(_message.Message):
    __slots__ = ("adapter",)
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    adapter: Adapter
    def __init__(self, adapter: _Optional[_Union[Adapter, _Mapping]] = ...) -> None: ...

class ListBaseModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBaseModelsResponse(_message.Message):
    __slots__ = ("base_models", "next_page_token")
    BASE_MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    base_models: _containers.RepeatedCompositeFieldContainer[BaseModel]
    next_page_token: str
    def __init__(self, base_models: _Optional[_Iterable[_Union[BaseModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RegisterBaseModelRequest(_message.Message):
    __slots__ = ("name", "hf_id", "description", "source_prefix", "source_folder", "source_gguf_key", "source_gguf_path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HF_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PREFIX_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FOLDER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_GGUF_KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_GGUF_PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    hf_id: str
    description: str
    source_prefix: str
    source_folder: str
    source_gguf_key: str
    source_gguf_path: str
    def __init__(self, name: _Optional[str] = ..., hf_id: _Optional[str] = ..., description: _Optional[str] = ..., source_prefix: _Optional[str] = ..., source_folder: _Optional[str] = ..., source_gguf_key: _Optional[str] = ..., source_gguf_path: _Optional[str] = ...) -> None: ...

class RegisterBaseModelResponse(_message.Message):
    __slots__ = ("base_model", "created")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    base_model: BaseModel
    created: bool
    def __init__(self, base_model: _Optional[_Union[BaseModel, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...
