import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as _trajectory_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_KIND_UNSPECIFIED: _ClassVar[DatasetKind]
    DATASET_KIND_SFT: _ClassVar[DatasetKind]
    DATASET_KIND_PREFERENCE: _ClassVar[DatasetKind]
    DATASET_KIND_RL: _ClassVar[DatasetKind]

class ParameterType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARAMETER_TYPE_UNSPECIFIED: _ClassVar[ParameterType]
    PARAMETER_TYPE_BOOL: _ClassVar[ParameterType]
    PARAMETER_TYPE_INT: _ClassVar[ParameterType]
    PARAMETER_TYPE_FLOAT: _ClassVar[ParameterType]
    PARAMETER_TYPE_STRING: _ClassVar[ParameterType]
    PARAMETER_TYPE_STRING_LIST: _ClassVar[ParameterType]

class OutputFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_FORMAT_UNSPECIFIED: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_CHAT_MESSAGES: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_CHATML: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_ALPACA: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_SHAREGPT: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_TOGETHER_DPO: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_TRL_PREFERENCE: _ClassVar[OutputFormat]
    OUTPUT_FORMAT_GRPO_TOKENS: _ClassVar[OutputFormat]

class FileFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FILE_FORMAT_UNSPECIFIED: _ClassVar[FileFormat]
    FILE_FORMAT_JSONL: _ClassVar[FileFormat]
    FILE_FORMAT_PARQUET: _ClassVar[FileFormat]

class DatasetSplit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_SPLIT_UNSPECIFIED: _ClassVar[DatasetSplit]
    DATASET_SPLIT_TRAIN: _ClassVar[DatasetSplit]
    DATASET_SPLIT_VALIDATION: _ClassVar[DatasetSplit]
    DATASET_SPLIT_TEST: _ClassVar[DatasetSplit]

class FeedbackFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_FILTER_UNSPECIFIED: _ClassVar[FeedbackFilter]
    FEEDBACK_FILTER_SUCCESS: _ClassVar[FeedbackFilter]
    FEEDBACK_FILTER_FAILURE: _ClassVar[FeedbackFilter]
    FEEDBACK_FILTER_ANY_FEEDBACK: _ClassVar[FeedbackFilter]
    FEEDBACK_FILTER_NOT_FAILED: _ClassVar[FeedbackFilter]
DATASET_KIND_UNSPECIFIED: DatasetKind
DATASET_KIND_SFT: DatasetKind
DATASET_KIND_PREFERENCE: DatasetKind
DATASET_KIND_RL: DatasetKind
PARAMETER_TYPE_UNSPECIFIED: ParameterType
PARAMETER_TYPE_BOOL: ParameterType
PARAMETER_TYPE_INT: ParameterType
PARAMETER_TYPE_FLOAT: ParameterType
PARAMETER_TYPE_STRING: ParameterType
PARAMETER_TYPE_STRING_LIST: ParameterType
OUTPUT_FORMAT_UNSPECIFIED: OutputFormat
OUTPUT_FORMAT_CHAT_MESSAGES: OutputFormat
OUTPUT_FORMAT_CHATML: OutputFormat
OUTPUT_FORMAT_ALPACA: OutputFormat
OUTPUT_FORMAT_SHAREGPT: OutputFormat
OUTPUT_FORMAT_TOGETHER_DPO: OutputFormat
OUTPUT_FORMAT_TRL_PREFERENCE: OutputFormat
OUTPUT_FORMAT_GRPO_TOKENS: OutputFormat
FILE_FORMAT_UNSPECIFIED: FileFormat
FILE_FORMAT_JSONL: FileFormat
FILE_FORMAT_PARQUET: FileFormat
DATASET_SPLIT_UNSPECIFIED: DatasetSplit
DATASET_SPLIT_TRAIN: DatasetSplit
DATASET_SPLIT_VALIDATION: DatasetSplit
DATASET_SPLIT_TEST: DatasetSplit
FEEDBACK_FILTER_UNSPECIFIED: FeedbackFilter
FEEDBACK_FILTER_SUCCESS: FeedbackFilter
FEEDBACK_FILTER_FAILURE: FeedbackFilter
FEEDBACK_FILTER_ANY_FEEDBACK: FeedbackFilter
FEEDBACK_FILTER_NOT_FAILED: FeedbackFilter

class RecipeParameter(_message.Message):
    __slots__ = ("name", "type", "default_value", "required", "description", "allowed_values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ParameterType
    default_value: str
    required: bool
    description: str
    allowed_values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ParameterType, str]] = ..., default_value: _Optional[str] = ..., required: _Optional[bool] = ..., description: _Optional[str] = ..., allowed_values: _Optional[_Iterable[str]] = ...) -> None: ...

class Recipe(_message.Message):
    __slots__ = ("name", "description", "kind", "parameters", "formats", "task_kinds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    TASK_KINDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    kind: DatasetKind
    parameters: _containers.RepeatedCompositeFieldContainer[RecipeParameter]
    formats: _containers.RepeatedScalarFieldContainer[OutputFormat]
    task_kinds: _containers.RepeatedScalarFieldContainer[_common_pb2.TaskKind]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., kind: _Optional[_Union[DatasetKind, str]] = ..., parameters: _Optional[_Iterable[_Union[RecipeParameter, _Mapping]]] = ..., formats: _Optional[_Iterable[_Union[OutputFormat, str]]] = ..., task_kinds: _Optional[_Iterable[_Union[_common_pb2.TaskKind, str]]] = ...) -> None: ...

class CapturedTraffic(_message.Message):
    __slots__ = ("alias", "time_range", "key_aliases", "feedback", "min_alias_revision")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    KEY_ALIASES_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    MIN_ALIAS_REVISION_FIELD_NUMBER: _ClassVar[int]
    alias: str
    time_range: _common_pb2.TimeRange
    key_aliases: _containers.RepeatedScalarFieldContainer[str]
    feedback: FeedbackFilter
    min_alias_revision: int
    def __init__(self, alias: _Optional[str] = ..., time_range: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., key_aliases: _Optional[_Iterable[str]] = ..., feedback: _Optional[_Union[FeedbackFilter, str]] = ..., min_alias_revision: _Optional[int] = ...) -> None: ...

class DatasetSource(_message.Message):
    __slots__ = ("run_ids", "filter", "captured_traffic")
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    filter: _trajectory_pb2.TrajectoryFilter
    captured_traffic: _containers.RepeatedCompositeFieldContainer[CapturedTraffic]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[_trajectory_pb2.TrajectoryFilter, _Mapping]] = ..., captured_traffic: _Optional[_Iterable[_Union[CapturedTraffic, _Mapping]]] = ...) -> None: ...

class SplitConfig(_message.Message):
    __slots__ = ("train_ratio", "validation_ratio", "test_ratio", "seed")
    TRAIN_RATIO_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_RATIO_FIELD_NUMBER: _ClassVar[int]
    TEST_RATIO_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    train_ratio: float
    validation_ratio: float
    test_ratio: float
    seed: str
    def __init__(self, train_ratio: _Optional[float] = ..., validation_ratio: _Optional[float] = ..., test_ratio: _Optional[float] = ..., seed: _Optional[str] = ...) -> None: ...

class HygieneConfig(_message.Message):
    __slots__ = ("keep_exact_duplicates", "near_duplicate_threshold", "decontaminate_suites")
    KEEP_EXACT_DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DECONTAMINATE_SUITES_FIELD_NUMBER: _ClassVar[int]
    keep_exact_duplicates: bool
    near_duplicate_threshold: float
    decontaminate_suites: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keep_exact_duplicates: _Optional[bool] = ..., near_duplicate_threshold: _Optional[float] = ..., decontaminate_suites: _Optional[_Iterable[str]] = ...) -> None: ...

class BuildProgress(_message.Message):
    __slots__ = ("trajectories_read", "trajectories_total", "examples_written", "fraction")
    TRAJECTORIES_READ_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    trajectories_read: int
    trajectories_total: int
    examples_written: int
    fraction: float
    def __init__(self, trajectories_read: _Optional[int] = ..., trajectories_total: _Optional[int] = ..., examples_written: _Optional[int] = ..., fraction: _Optional[float] = ...) -> None: ...

class DatasetBuild(_message.Message):
    __slots__ = ("id", "source", "recipe", "parameters", "split", "hygiene", "formats", "file_formats", "target_base_model", "max_seq_length", "loop_id", "labels", "state", "error", "progress", "dataset_id", "create_time", "start_time", "end_time")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    HYGIENE_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    FILE_FORMATS_FIELD_NUMBER: _ClassVar[int]
    TARGET_BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    source: DatasetSource
    recipe: str
    parameters: _containers.ScalarMap[str, str]
    split: SplitConfig
    hygiene: HygieneConfig
    formats: _containers.RepeatedScalarFieldContainer[OutputFormat]
    file_formats: _containers.RepeatedScalarFieldContainer[FileFormat]
    target_base_model: str
    max_seq_length: int
    loop_id: str
    labels: _containers.ScalarMap[str, str]
    state: _common_pb2.JobState
    error: _common_pb2.Error
    progress: BuildProgress
    dataset_id: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., source: _Optional[_Union[DatasetSource, _Mapping]] = ..., recipe: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., split: _Optional[_Union[SplitConfig, _Mapping]] = ..., hygiene: _Optional[_Union[HygieneConfig, _Mapping]] = ..., formats: _Optional[_Iterable[_Union[OutputFormat, str]]] = ..., file_formats: _Optional[_Iterable[_Union[FileFormat, str]]] = ..., target_base_model: _Optional[str] = ..., max_seq_length: _Optional[int] = ..., loop_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., progress: _Optional[_Union[BuildProgress, _Mapping]] = ..., dataset_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DatasetFile(_message.Message):
    __slots__ = ("split", "format", "file_format", "object", "example_count")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    split: DatasetSplit
    format: OutputFormat
    file_format: FileFormat
    object: _common_pb2.ObjectRef
    example_count: int
    def __init__(self, split: _Optional[_Union[DatasetSplit, str]] = ..., format: _Optional[_Union[OutputFormat, str]] = ..., file_format: _Optional[_Union[FileFormat, str]] = ..., object: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., example_count: _Optional[int] = ...) -> None: ...

class SplitStats(_message.Message):
    __slots__ = ("split", "example_count", "task_count")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    split: DatasetSplit
    example_count: int
    task_count: int
    def __init__(self, split: _Optional[_Union[DatasetSplit, str]] = ..., example_count: _Optional[int] = ..., task_count: _Optional[int] = ...) -> None: ...

class HygieneStats(_message.Message):
    __slots__ = ("exact_duplicates_removed", "near_duplicates_removed", "decontaminated_by_task_id", "decontaminated_by_content")
    EXACT_DUPLICATES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    NEAR_DUPLICATES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    DECONTAMINATED_BY_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DECONTAMINATED_BY_CONTENT_FIELD_NUMBER: _ClassVar[int]
    exact_duplicates_removed: int
    near_duplicates_removed: int
    decontaminated_by_task_id: int
    decontaminated_by_content: int
    def __init__(self, exact_duplicates_removed: _Optional[int] = ..., near_duplicates_removed: _Optional[int] = ..., decontaminated_by_task_id: _Optional[int] = ..., decontaminated_by_content: _Optional[int] = ...) -> None: ...

class TokenStats(_message.Message):
    __slots__ = ("tokenizer", "mean", "p95", "max", "total_train_tokens", "max_seq_length", "over_max_length")
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TRAIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_LENGTH_FIELD_NUMBER: _ClassVar[int]
    OVER_MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    tokenizer: str
    mean: float
    p95: int
    max: int
    total_train_tokens: int
    max_seq_length: int
    over_max_length: int
    def __init__(self, tokenizer: _Optional[str] = ..., mean: _Optional[float] = ..., p95: _Optional[int] = ..., max: _Optional[int] = ..., total_train_tokens: _Optional[int] = ..., max_seq_length: _Optional[int] = ..., over_max_length: _Optional[int] = ...) -> None: ...

class CostEstimate(_message.Message):
    __slots__ = ("tokens_per_epoch", "usd_per_epoch", "price_basis")
    TOKENS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    USD_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    PRICE_BASIS_FIELD_NUMBER: _ClassVar[int]
    tokens_per_epoch: int
    usd_per_epoch: float
    price_basis: str
    def __init__(self, tokens_per_epoch: _Optional[int] = ..., usd_per_epoch: _Optional[float] = ..., price_basis: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("id", "build_id", "recipe", "parameters", "kind", "source", "trajectory_count", "trajectory_ids", "split", "hygiene", "splits", "files", "filter_reasons", "failure_categories", "hygiene_stats", "token_stats", "cost_estimate", "manifest", "loop_id", "labels", "create_time", "rl_stats")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class FilterReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FailureCategoriesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_IDS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    HYGIENE_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FILTER_REASONS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    HYGIENE_STATS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_STATS_FIELD_NUMBER: _ClassVar[int]
    COST_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RL_STATS_FIELD_NUMBER: _ClassVar[int]
    id: str
    build_id: str
    recipe: str
    parameters: _containers.ScalarMap[str, str]
    kind: DatasetKind
    source: DatasetSource
    trajectory_count: int
    trajectory_ids: _common_pb2.ObjectRef
    split: SplitConfig
    hygiene: HygieneConfig
    splits: _containers.RepeatedCompositeFieldContainer[SplitStats]
    files: _containers.RepeatedCompositeFieldContainer[DatasetFile]
    filter_reasons: _containers.ScalarMap[str, int]
    failure_categories: _containers.ScalarMap[str, int]
    hygiene_stats: HygieneStats
    token_stats: TokenStats
    cost_estimate: CostEstimate
    manifest: _common_pb2.ObjectRef
    loop_id: str
    labels: _containers.ScalarMap[str, str]
    create_time: _timestamp_pb2.Timestamp
    rl_stats: RlStats
    def __init__(self, id: _Optional[str] = ..., build_id: _Optional[str] = ..., recipe: _Optional[str] = ..., parameters: _Optional[_Mapping[str, str]] = ..., kind: _Optional[_Union[DatasetKind, str]] = ..., source: _Optional[_Union[DatasetSource, _Mapping]] = ..., trajectory_count: _Optional[int] = ..., trajectory_ids: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., split: _Optional[_Union[SplitConfig, _Mapping]] = ..., hygiene: _Optional[_Union[HygieneConfig, _Mapping]] = ..., splits: _Optional[_Iterable[_Union[SplitStats, _Mapping]]] = ..., files: _Optional[_Iterable[_Union[DatasetFile, _Mapping]]] = ..., filter_reasons: _Optional[_Mapping[str, int]] = ..., failure_categories: _Optional[_Mapping[str, int]] = ..., hygiene_stats: _Optional[_Union[HygieneStats, _Mapping]] = ..., token_stats: _Optional[_Union[TokenStats, _Mapping]] = ..., cost_estimate: _Optional[_Union[CostEstimate, _Mapping]] = ..., manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., loop_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rl_stats: _Optional[_Union[RlStats, _Mapping]] = ...) -> None: ...

class RlStats(_message.Message):
    __slots__ = ("groups", "episodes", "masked_episodes", "masked_fraction", "zero_advantage_groups", "reward_mean", "reward_std", "policy", "samples")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    MASKED_EPISODES_FIELD_NUMBER: _ClassVar[int]
    MASKED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    ZERO_ADVANTAGE_GROUPS_FIELD_NUMBER: _ClassVar[int]
    REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    REWARD_STD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    groups: int
    episodes: int
    masked_episodes: int
    masked_fraction: float
    zero_advantage_groups: int
    reward_mean: float
    reward_std: float
    policy: _trajectory_pb2.AdapterIdentity
    samples: int
    def __init__(self, groups: _Optional[int] = ..., episodes: _Optional[int] = ..., masked_episodes: _Optional[int] = ..., masked_fraction: _Optional[float] = ..., zero_advantage_groups: _Optional[int] = ..., reward_mean: _Optional[float] = ..., reward_std: _Optional[float] = ..., policy: _Optional[_Union[_trajectory_pb2.AdapterIdentity, _Mapping]] = ..., samples: _Optional[int] = ...) -> None: ...

class ListRecipesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRecipesResponse(_message.Message):
    __slots__ = ("recipes", "next_page_token")
    RECIPES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recipes: _containers.RepeatedCompositeFieldContainer[Recipe]
    next_page_token: str
    def __init__(self, recipes: _Optional[_Iterable[_Union[Recipe, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateDatasetBuildRequest(_message.Message):
    __slots__ = ("build", "request_id", "validate_only")
    BUILD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    build: DatasetBuild
    request_id: str
    validate_only: bool
    def __init__(self, build: _Optional[_Union[DatasetBuild, _Mapping]] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class CreateDatasetBuildResponse(_message.Message):
    __slots__ = ("build",)
    BUILD_FIELD_NUMBER: _ClassVar[int]
    build: DatasetBuild
    def __init__(self, build: _Optional[_Union[DatasetBuild, _Mapping]] = ...) -> None: ...

class GetDatasetBuildRequest(_message.Message):
    __slots__ = ("build_id",)
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    def __init__(self, build_id: _Optional[str] = ...) -> None: ...

class GetDatasetBuildResponse(_message.Message):
    __slots__ = ("build",)
    BUILD_FIELD_NUMBER: _ClassVar[int]
    build: DatasetBuild
    def __init__(self, build: _Optional[_Union[DatasetBuild, _Mapping]] = ...) -> None: ...

class ListDatasetBuildsRequest(_message.Message):
    __slots__ = ("state", "loop_id", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.JobState
    loop_id: str
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[_common_pb2.JobState, str]] = ..., loop_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetBuildsResponse(_message.Message):
    __slots__ = ("builds", "next_page_token")
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    builds: _containers.RepeatedCompositeFieldContainer[DatasetBuild]
    next_page_token: str
    def __init__(self, builds: _Optional[_Iterable[_Union[DatasetBuild, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelDatasetBuildRequest(_message.Message):
    __slots__ = ("build_id",)
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    def __init__(self, build_id: _Optional[str] = ...) -> None: ...

class CancelDatasetBuildResponse(_message.Message):
    __slots__ = ("build",)
    BUILD_FIELD_NUMBER: _ClassVar[int]
    build: DatasetBuild
    def __init__(self, build: _Optional[_Union[DatasetBuild, _Mapping]] = ...) -> None: ...

class WatchDatasetBuildRequest(_message.Message):
    __slots__ = ("build_id",)
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    build_id: str
    def __init__(self, build_id: _Optional[str] = ...) -> None: ...

class WatchDatasetBuildResponse(_message.Message):
    __slots__ = ("build",)
    BUILD_FIELD_NUMBER: _ClassVar[int]
    build: DatasetBuild
    def __init__(self, build: _Optional[_Union[DatasetBuild, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("dataset_id",)
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    def __init__(self, dataset_id: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("recipe", "loop_id", "page_size", "page_token")
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    loop_id: str
    page_size: int
    page_token: str
    def __init__(self, recipe: _Optional[str] = ..., loop_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class PreviewDatasetRequest(_message.Message):
    __slots__ = ("dataset_id", "split", "count", "format")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    split: DatasetSplit
    count: int
    format: OutputFormat
    def __init__(self, dataset_id: _Optional[str] = ..., split: _Optional[_Union[DatasetSplit, str]] = ..., count: _Optional[int] = ..., format: _Optional[_Union[OutputFormat, str]] = ...) -> None: ...

class PreviewDatasetResponse(_message.Message):
    __slots__ = ("examples", "total_count")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    examples: _containers.RepeatedScalarFieldContainer[str]
    total_count: int
    def __init__(self, examples: _Optional[_Iterable[str]] = ..., total_count: _Optional[int] = ...) -> None: ...

class ImportDatasetRequest(_message.Message):
    __slots__ = ("train_object_key", "validation_object_key", "kind", "target_base_model", "labels", "validate_only", "train_name", "validation_name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRAIN_OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    TRAIN_NAME_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_NAME_FIELD_NUMBER: _ClassVar[int]
    train_object_key: str
    validation_object_key: str
    kind: DatasetKind
    target_base_model: str
    labels: _containers.ScalarMap[str, str]
    validate_only: bool
    train_name: str
    validation_name: str
    def __init__(self, train_object_key: _Optional[str] = ..., validation_object_key: _Optional[str] = ..., kind: _Optional[_Union[DatasetKind, str]] = ..., target_base_model: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., validate_only: _Optional[bool] = ..., train_name: _Optional[str] = ..., validation_name: _Optional[str] = ...) -> None: ...

class ImportDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...
