import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
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

class TestPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEST_POLICY_UNSPECIFIED: _ClassVar[TestPolicy]
    TEST_POLICY_NEVER: _ClassVar[TestPolicy]
    TEST_POLICY_AFTER_WRITE: _ClassVar[TestPolicy]
    TEST_POLICY_END: _ClassVar[TestPolicy]
TEST_POLICY_UNSPECIFIED: TestPolicy
TEST_POLICY_NEVER: TestPolicy
TEST_POLICY_AFTER_WRITE: TestPolicy
TEST_POLICY_END: TestPolicy

class EpisodeLimits(_message.Message):
    __slots__ = ("max_iterations", "max_tokens", "max_wall_time", "max_consecutive_parse_errors")
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    MAX_CONSECUTIVE_PARSE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    max_iterations: int
    max_tokens: int
    max_wall_time: _duration_pb2.Duration
    max_consecutive_parse_errors: int
    def __init__(self, max_iterations: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_consecutive_parse_errors: _Optional[int] = ...) -> None: ...

class EpisodeSettings(_message.Message):
    __slots__ = ("protocol", "test_policy", "limits", "sampling", "record_tokens", "reward", "skill")
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TEST_POLICY_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RECORD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SKILL_FIELD_NUMBER: _ClassVar[int]
    protocol: _common_pb2.ToolProtocol
    test_policy: TestPolicy
    limits: EpisodeLimits
    sampling: _common_pb2.SamplingParams
    record_tokens: bool
    reward: _trajectory_pb2.RewardWeights
    skill: SkillSource
    def __init__(self, protocol: _Optional[_Union[_common_pb2.ToolProtocol, str]] = ..., test_policy: _Optional[_Union[TestPolicy, str]] = ..., limits: _Optional[_Union[EpisodeLimits, _Mapping]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., record_tokens: _Optional[bool] = ..., reward: _Optional[_Union[_trajectory_pb2.RewardWeights, _Mapping]] = ..., skill: _Optional[_Union[SkillSource, _Mapping]] = ...) -> None: ...

class SkillSource(_message.Message):
    __slots__ = ("skill_id", "text")
    SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    skill_id: str
    text: str
    def __init__(self, skill_id: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class RunCounters(_message.Message):
    __slots__ = ("tasks", "episodes_total", "episodes_finished", "episodes_resolved", "episodes_errored", "episodes_with_write", "steps", "parse_errors", "loop_detections", "usage", "trajectories_stored", "episodes_rewarded", "reward_sum", "reward_sq_sum")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    EPISODES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FINISHED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_ERRORED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_WITH_WRITE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LOOP_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORIES_STORED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_REWARDED_FIELD_NUMBER: _ClassVar[int]
    REWARD_SUM_FIELD_NUMBER: _ClassVar[int]
    REWARD_SQ_SUM_FIELD_NUMBER: _ClassVar[int]
    tasks: int
    episodes_total: int
    episodes_finished: int
    episodes_resolved: int
    episodes_errored: int
    episodes_with_write: int
    steps: int
    parse_errors: int
    loop_detections: int
    usage: _common_pb2.TokenUsage
    trajectories_stored: int
    episodes_rewarded: int
    reward_sum: float
    reward_sq_sum: float
    def __init__(self, tasks: _Optional[int] = ..., episodes_total: _Optional[int] = ..., episodes_finished: _Optional[int] = ..., episodes_resolved: _Optional[int] = ..., episodes_errored: _Optional[int] = ..., episodes_with_write: _Optional[int] = ..., steps: _Optional[int] = ..., parse_errors: _Optional[int] = ..., loop_detections: _Optional[int] = ..., usage: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., trajectories_stored: _Optional[int] = ..., episodes_rewarded: _Optional[int] = ..., reward_sum: _Optional[float] = ..., reward_sq_sum: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "suite", "suite_version", "split", "task_ids", "teacher_kind", "model", "rollouts_per_task", "episode", "concurrency", "labels", "loop_id", "prompt_sha256", "state", "error", "counters", "create_time", "start_time", "end_time", "adapter", "skill_sha256")
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
    TEACHER_KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SKILL_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    suite: str
    suite_version: str
    split: _common_pb2.TaskSplit
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    teacher_kind: _trajectory_pb2.TeacherKind
    model: str
    rollouts_per_task: int
    episode: EpisodeSettings
    concurrency: int
    labels: _containers.ScalarMap[str, str]
    loop_id: str
    prompt_sha256: str
    state: _common_pb2.JobState
    error: _common_pb2.Error
    counters: RunCounters
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    adapter: _trajectory_pb2.AdapterIdentity
    skill_sha256: str
    def __init__(self, id: _Optional[str] = ..., suite: _Optional[str] = ..., suite_version: _Optional[str] = ..., split: _Optional[_Union[_common_pb2.TaskSplit, str]] = ..., task_ids: _Optional[_Iterable[str]] = ..., teacher_kind: _Optional[_Union[_trajectory_pb2.TeacherKind, str]] = ..., model: _Optional[str] = ..., rollouts_per_task: _Optional[int] = ..., episode: _Optional[_Union[EpisodeSettings, _Mapping]] = ..., concurrency: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., loop_id: _Optional[str] = ..., prompt_sha256: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., counters: _Optional[_Union[RunCounters, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., adapter: _Optional[_Union[_trajectory_pb2.AdapterIdentity, _Mapping]] = ..., skill_sha256: _Optional[str] = ...) -> None: ...

class EpisodeResult(_message.Message):
    __slots__ = ("model", "task_id", "attempt", "trajectory_id", "resolved", "failure_category", "steps", "parse_errors", "loop_detections", "wrote_file", "usage", "wall_time", "reward", "reward_masked")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_ID_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LOOP_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    WROTE_FILE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    REWARD_MASKED_FIELD_NUMBER: _ClassVar[int]
    model: str
    task_id: str
    attempt: int
    trajectory_id: str
    resolved: bool
    failure_category: _trajectory_pb2.FailureCategory
    steps: int
    parse_errors: int
    loop_detections: int
    wrote_file: bool
    usage: _common_pb2.TokenUsage
    wall_time: _duration_pb2.Duration
    reward: float
    reward_masked: bool
    def __init__(self, model: _Optional[str] = ..., task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., trajectory_id: _Optional[str] = ..., resolved: _Optional[bool] = ..., failure_category: _Optional[_Union[_trajectory_pb2.FailureCategory, str]] = ..., steps: _Optional[int] = ..., parse_errors: _Optional[int] = ..., loop_detections: _Optional[int] = ..., wrote_file: _Optional[bool] = ..., usage: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., reward: _Optional[float] = ..., reward_masked: _Optional[bool] = ...) -> None: ...
