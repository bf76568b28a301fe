import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
from flywheel.orchestrator.v1 import mle_pb2 as _mle_pb2
from flywheel.orchestrator.v1 import run_pb2 as _run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as _trajectory_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConfidenceInterval(_message.Message):
    __slots__ = ("lower", "upper", "level", "method")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    level: float
    method: str
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., level: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class PassAtK(_message.Message):
    __slots__ = ("k", "value")
    K_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    k: int
    value: float
    def __init__(self, k: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class MetricDeltas(_message.Message):
    __slots__ = ("pass_rate", "parse_errors_per_episode", "write_rate", "loop_detections_per_episode", "mean_steps", "mean_tokens", "mean_wall_time")
    PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_PER_EPISODE_FIELD_NUMBER: _ClassVar[int]
    WRITE_RATE_FIELD_NUMBER: _ClassVar[int]
    LOOP_DETECTIONS_PER_EPISODE_FIELD_NUMBER: _ClassVar[int]
    MEAN_STEPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    pass_rate: float
    parse_errors_per_episode: float
    write_rate: float
    loop_detections_per_episode: float
    mean_steps: float
    mean_tokens: float
    mean_wall_time: _duration_pb2.Duration
    def __init__(self, pass_rate: _Optional[float] = ..., parse_errors_per_episode: _Optional[float] = ..., write_rate: _Optional[float] = ..., loop_detections_per_episode: _Optional[float] = ..., mean_steps: _Optional[float] = ..., mean_tokens: _Optional[float] = ..., mean_wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ModelMetrics(_message.Message):
    __slots__ = ("model", "baseline", "run_id", "base_model", "adapter_name", "adapter_version", "episodes", "resolved", "pass_rate", "pass_rate_ci", "pass_at_k", "parse_errors_per_episode", "write_rate", "loop_detections_per_episode", "mean_steps", "mean_prompt_tokens", "mean_completion_tokens", "mean_wall_time", "delta_vs_baseline", "mean_reward", "masked_episodes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    PASS_RATE_CI_FIELD_NUMBER: _ClassVar[int]
    PASS_AT_K_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_PER_EPISODE_FIELD_NUMBER: _ClassVar[int]
    WRITE_RATE_FIELD_NUMBER: _ClassVar[int]
    LOOP_DETECTIONS_PER_EPISODE_FIELD_NUMBER: _ClassVar[int]
    MEAN_STEPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MEAN_WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    DELTA_VS_BASELINE_FIELD_NUMBER: _ClassVar[int]
    MEAN_REWARD_FIELD_NUMBER: _ClassVar[int]
    MASKED_EPISODES_FIELD_NUMBER: _ClassVar[int]
    model: str
    baseline: bool
    run_id: str
    base_model: str
    adapter_name: str
    adapter_version: int
    episodes: int
    resolved: int
    pass_rate: float
    pass_rate_ci: ConfidenceInterval
    pass_at_k: _containers.RepeatedCompositeFieldContainer[PassAtK]
    parse_errors_per_episode: float
    write_rate: float
    loop_detections_per_episode: float
    mean_steps: float
    mean_prompt_tokens: float
    mean_completion_tokens: float
    mean_wall_time: _duration_pb2.Duration
    delta_vs_baseline: MetricDeltas
    mean_reward: float
    masked_episodes: int
    def __init__(self, model: _Optional[str] = ..., baseline: _Optional[bool] = ..., run_id: _Optional[str] = ..., base_model: _Optional[str] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[int] = ..., episodes: _Optional[int] = ..., resolved: _Optional[int] = ..., pass_rate: _Optional[float] = ..., pass_rate_ci: _Optional[_Union[ConfidenceInterval, _Mapping]] = ..., pass_at_k: _Optional[_Iterable[_Union[PassAtK, _Mapping]]] = ..., parse_errors_per_episode: _Optional[float] = ..., write_rate: _Optional[float] = ..., loop_detections_per_episode: _Optional[float] = ..., mean_steps: _Optional[float] = ..., mean_prompt_tokens: _Optional[float] = ..., mean_completion_tokens: _Optional[float] = ..., mean_wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., delta_vs_baseline: _Optional[_Union[MetricDeltas, _Mapping]] = ..., mean_reward: _Optional[float] = ..., masked_episodes: _Optional[int] = ...) -> None: ...

class TaskModelResult(_message.Message):
    __slots__ = ("model", "rollouts", "resolved", "mean_steps", "parse_errors", "failure_categories", "trajectory_ids")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    MEAN_STEPS_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_IDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    rollouts: int
    resolved: int
    mean_steps: float
    parse_errors: int
    failure_categories: _containers.RepeatedScalarFieldContainer[_trajectory_pb2.FailureCategory]
    trajectory_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., rollouts: _Optional[int] = ..., resolved: _Optional[int] = ..., mean_steps: _Optional[float] = ..., parse_errors: _Optional[int] = ..., failure_categories: _Optional[_Iterable[_Union[_trajectory_pb2.FailureCategory, str]]] = ..., trajectory_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskResult(_message.Message):
    __slots__ = ("task_id", "models")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    models: _containers.RepeatedCompositeFieldContainer[TaskModelResult]
    def __init__(self, task_id: _Optional[str] = ..., models: _Optional[_Iterable[_Union[TaskModelResult, _Mapping]]] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("json", "markdown", "charts")
    JSON_FIELD_NUMBER: _ClassVar[int]
    MARKDOWN_FIELD_NUMBER: _ClassVar[int]
    CHARTS_FIELD_NUMBER: _ClassVar[int]
    json: _common_pb2.ObjectRef
    markdown: _common_pb2.ObjectRef
    charts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    def __init__(self, json: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., markdown: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., charts: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ...) -> None: ...

class EvaluationProgress(_message.Message):
    __slots__ = ("episodes_total", "episodes_finished")
    EPISODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FINISHED_FIELD_NUMBER: _ClassVar[int]
    episodes_total: int
    episodes_finished: int
    def __init__(self, episodes_total: _Optional[int] = ..., episodes_finished: _Optional[int] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("id", "suite", "suite_version", "split", "task_ids", "models", "baseline_model", "rollouts_per_task", "episode", "concurrency", "confidence_level", "labels", "loop_id", "state", "error", "progress", "model_metrics", "task_results", "report", "create_time", "start_time", "end_time", "ml_metrics")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    SUITE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_METRICS_FIELD_NUMBER: _ClassVar[int]
    TASK_RESULTS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ML_METRICS_FIELD_NUMBER: _ClassVar[int]
    id: str
    suite: str
    suite_version: str
    split: _common_pb2.TaskSplit
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    models: _containers.RepeatedScalarFieldContainer[str]
    baseline_model: str
    rollouts_per_task: int
    episode: _run_pb2.EpisodeSettings
    concurrency: int
    confidence_level: float
    labels: _containers.ScalarMap[str, str]
    loop_id: str
    state: _common_pb2.JobState
    error: _common_pb2.Error
    progress: EvaluationProgress
    model_metrics: _containers.RepeatedCompositeFieldContainer[ModelMetrics]
    task_results: _containers.RepeatedCompositeFieldContainer[TaskResult]
    report: EvaluationReport
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    ml_metrics: _containers.RepeatedCompositeFieldContainer[_mle_pb2.MlModelMetrics]
    def __init__(self, id: _Optional[str] = ..., suite: _Optional[str] = ..., suite_version: _Optional[str] = ..., split: _Optional[_Union[_common_pb2.TaskSplit, str]] = ..., task_ids: _Optional[_Iterable[str]] = ..., models: _Optional[_Iterable[str]] = ..., baseline_model: _Optional[str] = ..., rollouts_per_task: _Optional[int] = ..., episode: _Optional[_Union[_run_pb2.EpisodeSettings, _Mapping]] = ..., concurrency: _Optional[int] = ..., confidence_level: _Optional[float] = ..., labels: _Optional[_Mapping[str, str]] = ..., loop_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., progress: _Optional[_Union[EvaluationProgress, _Mapping]] = ..., model_metrics: _Optional[_Iterable[_Union[ModelMetrics, _Mapping]]] = ..., task_results: _Optional[_Iterable[_Union[TaskResult, _Mapping]]] = ..., report: _Optional[_Union[EvaluationReport, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ml_metrics: _Optional[_Iterable[_Union[_mle_pb2.MlModelMetrics, _Mapping]]] = ...) -> None: ...
