import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
from flywheel.dataset.v1 import dataset_pb2 as _dataset_pb2
from flywheel.orchestrator.v1 import alias_pb2 as _alias_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as _evaluation_pb2
from flywheel.orchestrator.v1 import loop_pb2 as _loop_pb2
from flywheel.orchestrator.v1 import run_pb2 as _run_pb2
from flywheel.trainer.v1 import trainer_pb2 as _trainer_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as _trajectory_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AdapterVerification(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ADAPTER_VERIFICATION_UNSPECIFIED: _ClassVar[AdapterVerification]
    ADAPTER_VERIFICATION_DIGEST: _ClassVar[AdapterVerification]
    ADAPTER_VERIFICATION_FINGERPRINT: _ClassVar[AdapterVerification]
    ADAPTER_VERIFICATION_FINGERPRINT_RECORDED: _ClassVar[AdapterVerification]
ADAPTER_VERIFICATION_UNSPECIFIED: AdapterVerification
ADAPTER_VERIFICATION_DIGEST: AdapterVerification
ADAPTER_VERIFICATION_FINGERPRINT: AdapterVerification
ADAPTER_VERIFICATION_FINGERPRINT_RECORDED: AdapterVerification

class EventMeta(_message.Message):
    __slots__ = ("event_id", "occurred_at", "producer")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    occurred_at: _timestamp_pb2.Timestamp
    producer: str
    def __init__(self, event_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer: _Optional[str] = ...) -> None: ...

class TrajectoryStored(_message.Message):
    __slots__ = ("meta", "trajectory_id", "run_id", "task", "model", "teacher_kind", "resolved", "object")
    META_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEACHER_KIND_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    trajectory_id: str
    run_id: str
    task: _trajectory_pb2.TaskRef
    model: str
    teacher_kind: _trajectory_pb2.TeacherKind
    resolved: bool
    object: _common_pb2.ObjectRef
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., trajectory_id: _Optional[str] = ..., run_id: _Optional[str] = ..., task: _Optional[_Union[_trajectory_pb2.TaskRef, _Mapping]] = ..., model: _Optional[str] = ..., teacher_kind: _Optional[_Union[_trajectory_pb2.TeacherKind, str]] = ..., resolved: _Optional[bool] = ..., object: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class RunCompleted(_message.Message):
    __slots__ = ("meta", "run_id", "suite", "suite_version", "split", "model", "teacher_kind", "state", "error", "counters", "loop_id", "start_time", "end_time")
    META_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    SUITE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TEACHER_KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    run_id: str
    suite: str
    suite_version: str
    split: _common_pb2.TaskSplit
    model: str
    teacher_kind: _trajectory_pb2.TeacherKind
    state: _common_pb2.JobState
    error: _common_pb2.Error
    counters: _run_pb2.RunCounters
    loop_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., run_id: _Optional[str] = ..., suite: _Optional[str] = ..., suite_version: _Optional[str] = ..., split: _Optional[_Union[_common_pb2.TaskSplit, str]] = ..., model: _Optional[str] = ..., teacher_kind: _Optional[_Union[_trajectory_pb2.TeacherKind, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., counters: _Optional[_Union[_run_pb2.RunCounters, _Mapping]] = ..., loop_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DatasetBuilt(_message.Message):
    __slots__ = ("meta", "dataset_id", "build_id", "recipe", "kind", "splits", "formats", "trajectory_count", "manifest", "loop_id")
    META_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_COUNT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    dataset_id: str
    build_id: str
    recipe: str
    kind: _dataset_pb2.DatasetKind
    splits: _containers.RepeatedCompositeFieldContainer[_dataset_pb2.SplitStats]
    formats: _containers.RepeatedScalarFieldContainer[_dataset_pb2.OutputFormat]
    trajectory_count: int
    manifest: _common_pb2.ObjectRef
    loop_id: str
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., dataset_id: _Optional[str] = ..., build_id: _Optional[str] = ..., recipe: _Optional[str] = ..., kind: _Optional[_Union[_dataset_pb2.DatasetKind, str]] = ..., splits: _Optional[_Iterable[_Union[_dataset_pb2.SplitStats, _Mapping]]] = ..., formats: _Optional[_Iterable[_Union[_dataset_pb2.OutputFormat, str]]] = ..., trajectory_count: _Optional[int] = ..., manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., loop_id: _Optional[str] = ...) -> None: ...

class DatasetBuildFailed(_message.Message):
    __slots__ = ("meta", "build_id", "recipe", "state", "error", "loop_id")
    META_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    build_id: str
    recipe: str
    state: _common_pb2.JobState
    error: _common_pb2.Error
    loop_id: str
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., build_id: _Optional[str] = ..., recipe: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., loop_id: _Optional[str] = ...) -> None: ...

class FineTuneStateChanged(_message.Message):
    __slots__ = ("meta", "job_id", "state", "previous_state", "base_model", "dataset_id", "method", "adapter_name", "adapter", "error", "latest_metrics", "loop_id")
    META_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LATEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    job_id: str
    state: _common_pb2.JobState
    previous_state: _common_pb2.JobState
    base_model: str
    dataset_id: str
    method: _trainer_pb2.FineTuneMethod
    adapter_name: str
    adapter: _trainer_pb2.AdapterRef
    error: _common_pb2.Error
    latest_metrics: _trainer_pb2.TrainingMetrics
    loop_id: str
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., job_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., previous_state: _Optional[_Union[_common_pb2.JobState, str]] = ..., base_model: _Optional[str] = ..., dataset_id: _Optional[str] = ..., method: _Optional[_Union[_trainer_pb2.FineTuneMethod, str]] = ..., adapter_name: _Optional[str] = ..., adapter: _Optional[_Union[_trainer_pb2.AdapterRef, _Mapping]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., latest_metrics: _Optional[_Union[_trainer_pb2.TrainingMetrics, _Mapping]] = ..., loop_id: _Optional[str] = ...) -> None: ...

class AdapterPublished(_message.Message):
    __slots__ = ("meta", "name", "version", "base_model", "dataset_id", "job_id", "object_prefix", "manifest", "lora_rank", "target_modules", "loop_id", "content_digest")
    META_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    LORA_RANK_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    name: str
    version: int
    base_model: str
    dataset_id: str
    job_id: str
    object_prefix: str
    manifest: _common_pb2.ObjectRef
    lora_rank: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    loop_id: str
    content_digest: str
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., base_model: _Optional[str] = ..., dataset_id: _Optional[str] = ..., job_id: _Optional[str] = ..., object_prefix: _Optional[str] = ..., manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., lora_rank: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., loop_id: _Optional[str] = ..., content_digest: _Optional[str] = ...) -> None: ...

class AdapterLoaded(_message.Message):
    __slots__ = ("meta", "name", "version", "served_model_name", "replica", "ready_replicas", "total_replicas", "load_duration", "since_published", "loop_id", "content_digest", "verification")
    META_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    LOAD_DURATION_FIELD_NUMBER: _ClassVar[int]
    SINCE_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    name: str
    version: int
    served_model_name: str
    replica: str
    ready_replicas: int
    total_replicas: int
    load_duration: _duration_pb2.Duration
    since_published: _duration_pb2.Duration
    loop_id: str
    content_digest: str
    verification: AdapterVerification
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., served_model_name: _Optional[str] = ..., replica: _Optional[str] = ..., ready_replicas: _Optional[int] = ..., total_replicas: _Optional[int] = ..., load_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., since_published: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., loop_id: _Optional[str] = ..., content_digest: _Optional[str] = ..., verification: _Optional[_Union[AdapterVerification, str]] = ...) -> None: ...

class AdapterLoadFailed(_message.Message):
    __slots__ = ("meta", "name", "version", "replica", "attempts", "error", "loop_id")
    META_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    name: str
    version: int
    replica: str
    attempts: int
    error: _common_pb2.Error
    loop_id: str
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., replica: _Optional[str] = ..., attempts: _Optional[int] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., loop_id: _Optional[str] = ...) -> None: ...

class EvaluationCompleted(_message.Message):
    __slots__ = ("meta", "evaluation_id", "suite", "suite_version", "split", "state", "error", "baseline_model", "model_metrics", "report", "loop_id")
    META_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    SUITE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_METRICS_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    evaluation_id: str
    suite: str
    suite_version: str
    split: _common_pb2.TaskSplit
    state: _common_pb2.JobState
    error: _common_pb2.Error
    baseline_model: str
    model_metrics: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.ModelMetrics]
    report: _evaluation_pb2.EvaluationReport
    loop_id: str
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., evaluation_id: _Optional[str] = ..., suite: _Optional[str] = ..., suite_version: _Optional[str] = ..., split: _Optional[_Union[_common_pb2.TaskSplit, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., baseline_model: _Optional[str] = ..., model_metrics: _Optional[_Iterable[_Union[_evaluation_pb2.ModelMetrics, _Mapping]]] = ..., report: _Optional[_Union[_evaluation_pb2.EvaluationReport, _Mapping]] = ..., loop_id: _Optional[str] = ...) -> None: ...

class LoopStageChanged(_message.Message):
    __slots__ = ("meta", "loop_id", "stage", "stage_state", "artefacts", "error")
    META_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGE_STATE_FIELD_NUMBER: _ClassVar[int]
    ARTEFACTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    loop_id: str
    stage: _loop_pb2.LoopStage
    stage_state: _common_pb2.JobState
    artefacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ResourceRef]
    error: _common_pb2.Error
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., loop_id: _Optional[str] = ..., stage: _Optional[_Union[_loop_pb2.LoopStage, str]] = ..., stage_state: _Optional[_Union[_common_pb2.JobState, str]] = ..., artefacts: _Optional[_Iterable[_Union[_common_pb2.ResourceRef, _Mapping]]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ...) -> None: ...

class LoopPromoted(_message.Message):
    __slots__ = ("meta", "loop_id", "promoted_model", "previous_model", "adapter", "gate")
    META_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_MODEL_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    loop_id: str
    promoted_model: str
    previous_model: str
    adapter: _trainer_pb2.AdapterRef
    gate: _loop_pb2.GateResult
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., loop_id: _Optional[str] = ..., promoted_model: _Optional[str] = ..., previous_model: _Optional[str] = ..., adapter: _Optional[_Union[_trainer_pb2.AdapterRef, _Mapping]] = ..., gate: _Optional[_Union[_loop_pb2.GateResult, _Mapping]] = ...) -> None: ...

class LoopRejected(_message.Message):
    __slots__ = ("meta", "loop_id", "candidate_model", "incumbent_model", "adapter", "gate")
    META_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_MODEL_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    loop_id: str
    candidate_model: str
    incumbent_model: str
    adapter: _trainer_pb2.AdapterRef
    gate: _loop_pb2.GateResult
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., loop_id: _Optional[str] = ..., candidate_model: _Optional[str] = ..., incumbent_model: _Optional[str] = ..., adapter: _Optional[_Union[_trainer_pb2.AdapterRef, _Mapping]] = ..., gate: _Optional[_Union[_loop_pb2.GateResult, _Mapping]] = ...) -> None: ...

class AliasChanged(_message.Message):
    __slots__ = ("meta", "name", "revision")
    META_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    meta: EventMeta
    name: str
    revision: _alias_pb2.AliasRevision
    def __init__(self, meta: _Optional[_Union[EventMeta, _Mapping]] = ..., name: _Optional[str] = ..., revision: _Optional[_Union[_alias_pb2.AliasRevision, _Mapping]] = ...) -> None: ...
