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

class TeacherKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEACHER_KIND_UNSPECIFIED: _ClassVar[TeacherKind]
    TEACHER_KIND_MODEL: _ClassVar[TeacherKind]
    TEACHER_KIND_REFERENCE: _ClassVar[TeacherKind]
    TEACHER_KIND_IMPORTED: _ClassVar[TeacherKind]
    TEACHER_KIND_CAPTURED: _ClassVar[TeacherKind]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_TOOL: _ClassVar[Role]

class ParseErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARSE_ERROR_KIND_UNSPECIFIED: _ClassVar[ParseErrorKind]
    PARSE_ERROR_KIND_INVALID_JSON: _ClassVar[ParseErrorKind]
    PARSE_ERROR_KIND_BAD_SHAPE: _ClassVar[ParseErrorKind]
    PARSE_ERROR_KIND_UNKNOWN_TOOL: _ClassVar[ParseErrorKind]
    PARSE_ERROR_KIND_BAD_ARGUMENTS: _ClassVar[ParseErrorKind]
    PARSE_ERROR_KIND_MULTIPLE_ACTIONS: _ClassVar[ParseErrorKind]

class ToolResultStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_RESULT_STATUS_UNSPECIFIED: _ClassVar[ToolResultStatus]
    TOOL_RESULT_STATUS_OK: _ClassVar[ToolResultStatus]
    TOOL_RESULT_STATUS_ERROR: _ClassVar[ToolResultStatus]
    TOOL_RESULT_STATUS_REJECTED: _ClassVar[ToolResultStatus]

class TestTrigger(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEST_TRIGGER_UNSPECIFIED: _ClassVar[TestTrigger]
    TEST_TRIGGER_AFTER_WRITE: _ClassVar[TestTrigger]
    TEST_TRIGGER_FINAL: _ClassVar[TestTrigger]
    TEST_TRIGGER_RUN_CODE: _ClassVar[TestTrigger]

class FailureCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_CATEGORY_UNSPECIFIED: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_TESTS_FAILED: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_NO_CHANGE: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_PARSE_ERRORS: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_LOOP: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_ITERATION_LIMIT: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_TOKEN_BUDGET: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_TIME_BUDGET: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_MODEL_ERROR: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_SANDBOX_ERROR: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_INTEGRITY: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_WRONG_ANSWER: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_RUNTIME_ERROR: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_OTHER: _ClassVar[FailureCategory]
    FAILURE_CATEGORY_TIMEOUT: _ClassVar[FailureCategory]

class ImportFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPORT_FORMAT_UNSPECIFIED: _ClassVar[ImportFormat]
    IMPORT_FORMAT_AIDE_JOURNAL: _ClassVar[ImportFormat]
    IMPORT_FORMAT_SWE_JSONL: _ClassVar[ImportFormat]
    IMPORT_FORMAT_CHAT_JSONL: _ClassVar[ImportFormat]

class TrajectoryView(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAJECTORY_VIEW_UNSPECIFIED: _ClassVar[TrajectoryView]
    TRAJECTORY_VIEW_BASIC: _ClassVar[TrajectoryView]
    TRAJECTORY_VIEW_FULL: _ClassVar[TrajectoryView]

class OutcomeFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_FILTER_UNSPECIFIED: _ClassVar[OutcomeFilter]
    OUTCOME_FILTER_RESOLVED: _ClassVar[OutcomeFilter]
    OUTCOME_FILTER_UNRESOLVED: _ClassVar[OutcomeFilter]
TEACHER_KIND_UNSPECIFIED: TeacherKind
TEACHER_KIND_MODEL: TeacherKind
TEACHER_KIND_REFERENCE: TeacherKind
TEACHER_KIND_IMPORTED: TeacherKind
TEACHER_KIND_CAPTURED: TeacherKind
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_TOOL: Role
PARSE_ERROR_KIND_UNSPECIFIED: ParseErrorKind
PARSE_ERROR_KIND_INVALID_JSON: ParseErrorKind
PARSE_ERROR_KIND_BAD_SHAPE: ParseErrorKind
PARSE_ERROR_KIND_UNKNOWN_TOOL: ParseErrorKind
PARSE_ERROR_KIND_BAD_ARGUMENTS: ParseErrorKind
PARSE_ERROR_KIND_MULTIPLE_ACTIONS: ParseErrorKind
TOOL_RESULT_STATUS_UNSPECIFIED: ToolResultStatus
TOOL_RESULT_STATUS_OK: ToolResultStatus
TOOL_RESULT_STATUS_ERROR: ToolResultStatus
TOOL_RESULT_STATUS_REJECTED: ToolResultStatus
TEST_TRIGGER_UNSPECIFIED: TestTrigger
TEST_TRIGGER_AFTER_WRITE: TestTrigger
TEST_TRIGGER_FINAL: TestTrigger
TEST_TRIGGER_RUN_CODE: TestTrigger
FAILURE_CATEGORY_UNSPECIFIED: FailureCategory
FAILURE_CATEGORY_TESTS_FAILED: FailureCategory
FAILURE_CATEGORY_NO_CHANGE: FailureCategory
FAILURE_CATEGORY_PARSE_ERRORS: FailureCategory
FAILURE_CATEGORY_LOOP: FailureCategory
FAILURE_CATEGORY_ITERATION_LIMIT: FailureCategory
FAILURE_CATEGORY_TOKEN_BUDGET: FailureCategory
FAILURE_CATEGORY_TIME_BUDGET: FailureCategory
FAILURE_CATEGORY_MODEL_ERROR: FailureCategory
FAILURE_CATEGORY_SANDBOX_ERROR: FailureCategory
FAILURE_CATEGORY_INTEGRITY: FailureCategory
FAILURE_CATEGORY_WRONG_ANSWER: FailureCategory
FAILURE_CATEGORY_RUNTIME_ERROR: FailureCategory
FAILURE_CATEGORY_OTHER: FailureCategory
FAILURE_CATEGORY_TIMEOUT: FailureCategory
IMPORT_FORMAT_UNSPECIFIED: ImportFormat
IMPORT_FORMAT_AIDE_JOURNAL: ImportFormat
IMPORT_FORMAT_SWE_JSONL: ImportFormat
IMPORT_FORMAT_CHAT_JSONL: ImportFormat
TRAJECTORY_VIEW_UNSPECIFIED: TrajectoryView
TRAJECTORY_VIEW_BASIC: TrajectoryView
TRAJECTORY_VIEW_FULL: TrajectoryView
OUTCOME_FILTER_UNSPECIFIED: OutcomeFilter
OUTCOME_FILTER_RESOLVED: OutcomeFilter
OUTCOME_FILTER_UNRESOLVED: OutcomeFilter

class Trajectory(_message.Message):
    __slots__ = ("id", "task", "policy", "teacher_kind", "tool_protocol", "tools", "steps", "outcome", "run_id", "attempt", "start_time", "end_time", "sandbox", "labels", "import_origin", "stats", "create_time", "object")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    TEACHER_KIND_FIELD_NUMBER: _ClassVar[int]
    TOOL_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    IMPORT_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    task: TaskRef
    policy: Policy
    teacher_kind: TeacherKind
    tool_protocol: _common_pb2.ToolProtocol
    tools: _containers.RepeatedCompositeFieldContainer[ToolDefinition]
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    outcome: Outcome
    run_id: str
    attempt: int
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    sandbox: SandboxRef
    labels: _containers.ScalarMap[str, str]
    import_origin: ImportOrigin
    stats: TrajectoryStats
    create_time: _timestamp_pb2.Timestamp
    object: _common_pb2.ObjectRef
    def __init__(self, id: _Optional[str] = ..., task: _Optional[_Union[TaskRef, _Mapping]] = ..., policy: _Optional[_Union[Policy, _Mapping]] = ..., teacher_kind: _Optional[_Union[TeacherKind, str]] = ..., tool_protocol: _Optional[_Union[_common_pb2.ToolProtocol, str]] = ..., tools: _Optional[_Iterable[_Union[ToolDefinition, _Mapping]]] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., outcome: _Optional[_Union[Outcome, _Mapping]] = ..., run_id: _Optional[str] = ..., attempt: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., sandbox: _Optional[_Union[SandboxRef, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., import_origin: _Optional[_Union[ImportOrigin, _Mapping]] = ..., stats: _Optional[_Union[TrajectoryStats, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., object: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class TaskRef(_message.Message):
    __slots__ = ("suite", "suite_version", "task_id", "split", "kind")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    SUITE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    suite: str
    suite_version: str
    task_id: str
    split: _common_pb2.TaskSplit
    kind: _common_pb2.TaskKind
    def __init__(self, suite: _Optional[str] = ..., suite_version: _Optional[str] = ..., task_id: _Optional[str] = ..., split: _Optional[_Union[_common_pb2.TaskSplit, str]] = ..., kind: _Optional[_Union[_common_pb2.TaskKind, str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("model", "base_model", "adapter_name", "adapter_version", "sampling", "prompt_sha256")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SHA256_FIELD_NUMBER: _ClassVar[int]
    model: str
    base_model: str
    adapter_name: str
    adapter_version: int
    sampling: _common_pb2.SamplingParams
    prompt_sha256: str
    def __init__(self, model: _Optional[str] = ..., base_model: _Optional[str] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., prompt_sha256: _Optional[str] = ...) -> None: ...

class ToolDefinition(_message.Message):
    __slots__ = ("name", "description", "parameters_json_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_json_schema: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_json_schema: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("index", "role", "content", "name", "tool_calls", "tool_call_id", "parse_error", "tool_result", "test_run", "loop_detected", "start_time", "duration", "usage", "finish_reason", "parent_index", "attributes", "adapter", "tokens")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERROR_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    TEST_RUN_FIELD_NUMBER: _ClassVar[int]
    LOOP_DETECTED_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PARENT_INDEX_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    index: int
    role: Role
    content: str
    name: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[ToolCall]
    tool_call_id: str
    parse_error: ParseError
    tool_result: ToolResult
    test_run: DriverTestRun
    loop_detected: bool
    start_time: _timestamp_pb2.Timestamp
    duration: _duration_pb2.Duration
    usage: _common_pb2.TokenUsage
    finish_reason: str
    parent_index: int
    attributes: _containers.ScalarMap[str, str]
    adapter: AdapterIdentity
    tokens: TurnTokens
    def __init__(self, index: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ..., parse_error: _Optional[_Union[ParseError, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., test_run: _Optional[_Union[DriverTestRun, _Mapping]] = ..., loop_detected: _Optional[bool] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., usage: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., parent_index: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ..., adapter: _Optional[_Union[AdapterIdentity, _Mapping]] = ..., tokens: _Optional[_Union[TurnTokens, _Mapping]] = ...) -> None: ...

class TurnTokens(_message.Message):
    __slots__ = ("prompt_token_ids", "completion_token_ids", "completion_logprobs")
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_token_ids: _containers.RepeatedScalarFieldContainer[int]
    completion_logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, prompt_token_ids: _Optional[_Iterable[int]] = ..., completion_token_ids: _Optional[_Iterable[int]] = ..., completion_logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class AdapterIdentity(_message.Message):
    __slots__ = ("adapter_id", "name", "version", "digest")
    ADAPTER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    adapter_id: str
    name: str
    version: int
    digest: str
    def __init__(self, adapter_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments_json: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class ParseError(_message.Message):
    __slots__ = ("kind", "message")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    kind: ParseErrorKind
    message: str
    def __init__(self, kind: _Optional[_Union[ParseErrorKind, str]] = ..., message: _Optional[str] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("tool_call_id", "tool_name", "status", "error", "output_truncated", "written_paths", "error_category")
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_PATHS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    tool_call_id: str
    tool_name: str
    status: ToolResultStatus
    error: str
    output_truncated: bool
    written_paths: _containers.RepeatedScalarFieldContainer[str]
    error_category: _common_pb2.ErrorCategory
    def __init__(self, tool_call_id: _Optional[str] = ..., tool_name: _Optional[str] = ..., status: _Optional[_Union[ToolResultStatus, str]] = ..., error: _Optional[str] = ..., output_truncated: _Optional[bool] = ..., written_paths: _Optional[_Iterable[str]] = ..., error_category: _Optional[_Union[_common_pb2.ErrorCategory, str]] = ...) -> None: ...

class DriverTestRun(_message.Message):
    __slots__ = ("trigger", "passed", "total", "failed_ids", "error_category", "debug_hint", "integrity_findings", "output", "duration")
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DEBUG_HINT_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_FINDINGS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    trigger: TestTrigger
    passed: int
    total: int
    failed_ids: _containers.RepeatedScalarFieldContainer[str]
    error_category: _common_pb2.ErrorCategory
    debug_hint: str
    integrity_findings: _containers.RepeatedScalarFieldContainer[str]
    output: str
    duration: _duration_pb2.Duration
    def __init__(self, trigger: _Optional[_Union[TestTrigger, str]] = ..., passed: _Optional[int] = ..., total: _Optional[int] = ..., failed_ids: _Optional[_Iterable[str]] = ..., error_category: _Optional[_Union[_common_pb2.ErrorCategory, str]] = ..., debug_hint: _Optional[str] = ..., integrity_findings: _Optional[_Iterable[str]] = ..., output: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Outcome(_message.Message):
    __slots__ = ("resolved", "tests_passed", "tests_total", "reward", "failure_category", "failure_detail", "final_patch", "reward_detail")
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    TESTS_PASSED_FIELD_NUMBER: _ClassVar[int]
    TESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    FAILURE_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    FAILURE_DETAIL_FIELD_NUMBER: _ClassVar[int]
    FINAL_PATCH_FIELD_NUMBER: _ClassVar[int]
    REWARD_DETAIL_FIELD_NUMBER: _ClassVar[int]
    resolved: bool
    tests_passed: int
    tests_total: int
    reward: float
    failure_category: FailureCategory
    failure_detail: str
    final_patch: str
    reward_detail: EpisodeReward
    def __init__(self, resolved: _Optional[bool] = ..., tests_passed: _Optional[int] = ..., tests_total: _Optional[int] = ..., reward: _Optional[float] = ..., failure_category: _Optional[_Union[FailureCategory, str]] = ..., failure_detail: _Optional[str] = ..., final_patch: _Optional[str] = ..., reward_detail: _Optional[_Union[EpisodeReward, _Mapping]] = ...) -> None: ...

class RewardWeights(_message.Message):
    __slots__ = ("correctness", "test_runs", "tool_use", "debug_penalty", "format_penalty", "integrity", "max_penalised")
    CORRECTNESS_FIELD_NUMBER: _ClassVar[int]
    TEST_RUNS_FIELD_NUMBER: _ClassVar[int]
    TOOL_USE_FIELD_NUMBER: _ClassVar[int]
    DEBUG_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_PENALTY_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_FIELD_NUMBER: _ClassVar[int]
    MAX_PENALISED_FIELD_NUMBER: _ClassVar[int]
    correctness: float
    test_runs: float
    tool_use: float
    debug_penalty: float
    format_penalty: float
    integrity: float
    max_penalised: int
    def __init__(self, correctness: _Optional[float] = ..., test_runs: _Optional[float] = ..., tool_use: _Optional[float] = ..., debug_penalty: _Optional[float] = ..., format_penalty: _Optional[float] = ..., integrity: _Optional[float] = ..., max_penalised: _Optional[int] = ...) -> None: ...

class RewardComponents(_message.Message):
    __slots__ = ("correctness", "test_runs", "tool_use", "debug_attempts", "parse_errors")
    CORRECTNESS_FIELD_NUMBER: _ClassVar[int]
    TEST_RUNS_FIELD_NUMBER: _ClassVar[int]
    TOOL_USE_FIELD_NUMBER: _ClassVar[int]
    DEBUG_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    correctness: float
    test_runs: float
    tool_use: float
    debug_attempts: float
    parse_errors: float
    def __init__(self, correctness: _Optional[float] = ..., test_runs: _Optional[float] = ..., tool_use: _Optional[float] = ..., debug_attempts: _Optional[float] = ..., parse_errors: _Optional[float] = ...) -> None: ...

class EpisodeReward(_message.Message):
    __slots__ = ("total", "masked", "masked_reason", "components", "weights", "rule", "integrity")
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    MASKED_REASON_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    INTEGRITY_FIELD_NUMBER: _ClassVar[int]
    total: float
    masked: bool
    masked_reason: str
    components: RewardComponents
    weights: RewardWeights
    rule: str
    integrity: bool
    def __init__(self, total: _Optional[float] = ..., masked: _Optional[bool] = ..., masked_reason: _Optional[str] = ..., components: _Optional[_Union[RewardComponents, _Mapping]] = ..., weights: _Optional[_Union[RewardWeights, _Mapping]] = ..., rule: _Optional[str] = ..., integrity: _Optional[bool] = ...) -> None: ...

class SandboxRef(_message.Message):
    __slots__ = ("backend", "image", "runner_version")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RUNNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    backend: str
    image: str
    runner_version: str
    def __init__(self, backend: _Optional[str] = ..., image: _Optional[str] = ..., runner_version: _Optional[str] = ...) -> None: ...

class ImportOrigin(_message.Message):
    __slots__ = ("format", "source", "line", "record_sha256")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    RECORD_SHA256_FIELD_NUMBER: _ClassVar[int]
    format: ImportFormat
    source: str
    line: int
    record_sha256: str
    def __init__(self, format: _Optional[_Union[ImportFormat, str]] = ..., source: _Optional[str] = ..., line: _Optional[int] = ..., record_sha256: _Optional[str] = ...) -> None: ...

class TrajectoryStats(_message.Message):
    __slots__ = ("step_count", "assistant_turns", "tool_calls", "parse_errors", "loop_detections", "wrote_file", "usage", "wall_time")
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_TURNS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    LOOP_DETECTIONS_FIELD_NUMBER: _ClassVar[int]
    WROTE_FILE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    step_count: int
    assistant_turns: int
    tool_calls: int
    parse_errors: int
    loop_detections: int
    wrote_file: bool
    usage: _common_pb2.TokenUsage
    wall_time: _duration_pb2.Duration
    def __init__(self, step_count: _Optional[int] = ..., assistant_turns: _Optional[int] = ..., tool_calls: _Optional[int] = ..., parse_errors: _Optional[int] = ..., loop_detections: _Optional[int] = ..., wrote_file: _Optional[bool] = ..., usage: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TrajectoryFilter(_message.Message):
    __slots__ = ("run_ids", "suite", "task_ids", "split", "model", "adapter_name", "adapter_version", "outcome", "create_time_range", "teacher_kinds", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_RANGE_FIELD_NUMBER: _ClassVar[int]
    TEACHER_KINDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    suite: str
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    split: _common_pb2.TaskSplit
    model: str
    adapter_name: str
    adapter_version: int
    outcome: OutcomeFilter
    create_time_range: _common_pb2.TimeRange
    teacher_kinds: _containers.RepeatedScalarFieldContainer[TeacherKind]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, run_ids: _Optional[_Iterable[str]] = ..., suite: _Optional[str] = ..., task_ids: _Optional[_Iterable[str]] = ..., split: _Optional[_Union[_common_pb2.TaskSplit, str]] = ..., model: _Optional[str] = ..., adapter_name: _Optional[str] = ..., adapter_version: _Optional[int] = ..., outcome: _Optional[_Union[OutcomeFilter, str]] = ..., create_time_range: _Optional[_Union[_common_pb2.TimeRange, _Mapping]] = ..., teacher_kinds: _Optional[_Iterable[_Union[TeacherKind, str]]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PutTrajectoryRequest(_message.Message):
    __slots__ = ("trajectory",)
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    trajectory: Trajectory
    def __init__(self, trajectory: _Optional[_Union[Trajectory, _Mapping]] = ...) -> None: ...

class PutTrajectoryResponse(_message.Message):
    __slots__ = ("trajectory", "created")
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    trajectory: Trajectory
    created: bool
    def __init__(self, trajectory: _Optional[_Union[Trajectory, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class BatchPutTrajectoriesRequest(_message.Message):
    __slots__ = ("trajectory",)
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    trajectory: Trajectory
    def __init__(self, trajectory: _Optional[_Union[Trajectory, _Mapping]] = ...) -> None: ...

class BatchPutError(_message.Message):
    __slots__ = ("index", "trajectory_id", "error")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    index: int
    trajectory_id: str
    error: _common_pb2.Error
    def __init__(self, index: _Optional[int] = ..., trajectory_id: _Optional[str] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ...) -> None: ...

class BatchPutTrajectoriesResponse(_message.Message):
    __slots__ = ("created_count", "unchanged_count", "errors")
    CREATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    created_count: int
    unchanged_count: int
    errors: _containers.RepeatedCompositeFieldContainer[BatchPutError]
    def __init__(self, created_count: _Optional[int] = ..., unchanged_count: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[BatchPutError, _Mapping]]] = ...) -> None: ...

class GetTrajectoryRequest(_message.Message):
    __slots__ = ("trajectory_id", "view")
    TRAJECTORY_ID_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    trajectory_id: str
    view: TrajectoryView
    def __init__(self, trajectory_id: _Optional[str] = ..., view: _Optional[_Union[TrajectoryView, str]] = ...) -> None: ...

class GetTrajectoryResponse(_message.Message):
    __slots__ = ("trajectory",)
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    trajectory: Trajectory
    def __init__(self, trajectory: _Optional[_Union[Trajectory, _Mapping]] = ...) -> None: ...

class ListTrajectoriesRequest(_message.Message):
    __slots__ = ("filter", "view", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: TrajectoryFilter
    view: TrajectoryView
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[TrajectoryFilter, _Mapping]] = ..., view: _Optional[_Union[TrajectoryView, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrajectoriesResponse(_message.Message):
    __slots__ = ("trajectories", "next_page_token")
    TRAJECTORIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    trajectories: _containers.RepeatedCompositeFieldContainer[Trajectory]
    next_page_token: str
    def __init__(self, trajectories: _Optional[_Iterable[_Union[Trajectory, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportTrajectoriesRequest(_message.Message):
    __slots__ = ("filter", "view")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VIEW_FIELD_NUMBER: _ClassVar[int]
    filter: TrajectoryFilter
    view: TrajectoryView
    def __init__(self, filter: _Optional[_Union[TrajectoryFilter, _Mapping]] = ..., view: _Optional[_Union[TrajectoryView, str]] = ...) -> None: ...

class ExportTrajectoriesResponse(_message.Message):
    __slots__ = ("trajectory",)
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    trajectory: Trajectory
    def __init__(self, trajectory: _Optional[_Union[Trajectory, _Mapping]] = ...) -> None: ...

class DeleteRunRequest(_message.Message):
    __slots__ = ("run_id", "reason", "validate_only")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    validate_only: bool
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ..., validate_only: _Optional[bool] = ...) -> None: ...

class DeleteRunResponse(_message.Message):
    __slots__ = ("deleted_count", "audit_record")
    DELETED_COUNT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RECORD_FIELD_NUMBER: _ClassVar[int]
    deleted_count: int
    audit_record: _common_pb2.ObjectRef
    def __init__(self, deleted_count: _Optional[int] = ..., audit_record: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class ImportTrajectoriesRequest(_message.Message):
    __slots__ = ("format", "object_key", "content", "suite", "run_id", "labels", "validate_only", "source_name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    format: ImportFormat
    object_key: str
    content: bytes
    suite: str
    run_id: str
    labels: _containers.ScalarMap[str, str]
    validate_only: bool
    source_name: str
    def __init__(self, format: _Optional[_Union[ImportFormat, str]] = ..., object_key: _Optional[str] = ..., content: _Optional[bytes] = ..., suite: _Optional[str] = ..., run_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., validate_only: _Optional[bool] = ..., source_name: _Optional[str] = ...) -> None: ...

class ImportRecordError(_message.Message):
    __slots__ = ("source", "line", "pointer", "message")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    POINTER_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    source: str
    line: int
    pointer: str
    message: str
    def __init__(self, source: _Optional[str] = ..., line: _Optional[int] = ..., pointer: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ImportTrajectoriesResponse(_message.Message):
    __slots__ = ("run_id", "created_count", "unchanged_count", "skipped_count", "errors", "errors_truncated")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_COUNT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    created_count: int
    unchanged_count: int
    skipped_count: int
    errors: _containers.RepeatedCompositeFieldContainer[ImportRecordError]
    errors_truncated: bool
    def __init__(self, run_id: _Optional[str] = ..., created_count: _Optional[int] = ..., unchanged_count: _Optional[int] = ..., skipped_count: _Optional[int] = ..., errors: _Optional[_Iterable[_Union[ImportRecordError, _Mapping]]] = ..., errors_truncated: _Optional[bool] = ...) -> None: ...
