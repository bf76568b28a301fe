import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]

class TaskSplit(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_SPLIT_UNSPECIFIED: _ClassVar[TaskSplit]
    TASK_SPLIT_TRAIN: _ClassVar[TaskSplit]
    TASK_SPLIT_TEST: _ClassVar[TaskSplit]

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_REPO: _ClassVar[TaskKind]
    TASK_KIND_IO: _ClassVar[TaskKind]
    TASK_KIND_ML: _ClassVar[TaskKind]
    TASK_KIND_CHAT: _ClassVar[TaskKind]

class ToolProtocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_PROTOCOL_UNSPECIFIED: _ClassVar[ToolProtocol]
    TOOL_PROTOCOL_JSON: _ClassVar[ToolProtocol]
    TOOL_PROTOCOL_NATIVE: _ClassVar[ToolProtocol]
    TOOL_PROTOCOL_IO: _ClassVar[ToolProtocol]

class ErrorCategory(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CATEGORY_UNSPECIFIED: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_SYNTAX_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_NAME_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_TYPE_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_INDEX_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_KEY_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_VALUE_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_ZERO_DIVISION_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_ATTRIBUTE_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_IMPORT_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_RECURSION_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_ASSERTION_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_EOF_ERROR: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_TIMEOUT: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_MEMORY: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_RESOURCE_LIMIT: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_WRONG_ANSWER: _ClassVar[ErrorCategory]
    ERROR_CATEGORY_OTHER: _ClassVar[ErrorCategory]

class ResourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOURCE_KIND_UNSPECIFIED: _ClassVar[ResourceKind]
    RESOURCE_KIND_SUITE: _ClassVar[ResourceKind]
    RESOURCE_KIND_RUN: _ClassVar[ResourceKind]
    RESOURCE_KIND_TRAJECTORY: _ClassVar[ResourceKind]
    RESOURCE_KIND_DATASET_BUILD: _ClassVar[ResourceKind]
    RESOURCE_KIND_DATASET: _ClassVar[ResourceKind]
    RESOURCE_KIND_FINE_TUNE_JOB: _ClassVar[ResourceKind]
    RESOURCE_KIND_ADAPTER: _ClassVar[ResourceKind]
    RESOURCE_KIND_BASE_MODEL: _ClassVar[ResourceKind]
    RESOURCE_KIND_EVALUATION: _ClassVar[ResourceKind]
    RESOURCE_KIND_LOOP: _ClassVar[ResourceKind]
    RESOURCE_KIND_SKILL_OPTIMIZATION: _ClassVar[ResourceKind]
    RESOURCE_KIND_SKILL: _ClassVar[ResourceKind]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState
TASK_SPLIT_UNSPECIFIED: TaskSplit
TASK_SPLIT_TRAIN: TaskSplit
TASK_SPLIT_TEST: TaskSplit
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_REPO: TaskKind
TASK_KIND_IO: TaskKind
TASK_KIND_ML: TaskKind
TASK_KIND_CHAT: TaskKind
TOOL_PROTOCOL_UNSPECIFIED: ToolProtocol
TOOL_PROTOCOL_JSON: ToolProtocol
TOOL_PROTOCOL_NATIVE: ToolProtocol
TOOL_PROTOCOL_IO: ToolProtocol
ERROR_CATEGORY_UNSPECIFIED: ErrorCategory
ERROR_CATEGORY_SYNTAX_ERROR: ErrorCategory
ERROR_CATEGORY_NAME_ERROR: ErrorCategory
ERROR_CATEGORY_TYPE_ERROR: ErrorCategory
ERROR_CATEGORY_INDEX_ERROR: ErrorCategory
ERROR_CATEGORY_KEY_ERROR: ErrorCategory
ERROR_CATEGORY_VALUE_ERROR: ErrorCategory
ERROR_CATEGORY_ZERO_DIVISION_ERROR: ErrorCategory
ERROR_CATEGORY_ATTRIBUTE_ERROR: ErrorCategory
ERROR_CATEGORY_IMPORT_ERROR: ErrorCategory
ERROR_CATEGORY_RECURSION_ERROR: ErrorCategory
ERROR_CATEGORY_ASSERTION_ERROR: ErrorCategory
ERROR_CATEGORY_EOF_ERROR: ErrorCategory
ERROR_CATEGORY_TIMEOUT: ErrorCategory
ERROR_CATEGORY_MEMORY: ErrorCategory
ERROR_CATEGORY_RESOURCE_LIMIT: ErrorCategory
ERROR_CATEGORY_WRONG_ANSWER: ErrorCategory
ERROR_CATEGORY_OTHER: ErrorCategory
RESOURCE_KIND_UNSPECIFIED: ResourceKind
RESOURCE_KIND_SUITE: ResourceKind
RESOURCE_KIND_RUN: ResourceKind
RESOURCE_KIND_TRAJECTORY: ResourceKind
RESOURCE_KIND_DATASET_BUILD: ResourceKind
RESOURCE_KIND_DATASET: ResourceKind
RESOURCE_KIND_FINE_TUNE_JOB: ResourceKind
RESOURCE_KIND_ADAPTER: ResourceKind
RESOURCE_KIND_BASE_MODEL: ResourceKind
RESOURCE_KIND_EVALUATION: ResourceKind
RESOURCE_KIND_LOOP: ResourceKind
RESOURCE_KIND_SKILL_OPTIMIZATION: ResourceKind
RESOURCE_KIND_SKILL: ResourceKind

class Error(_message.Message):
    __slots__ = ("code", "message", "details")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    details: _containers.ScalarMap[str, str]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("key", "size_bytes", "sha256")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    key: str
    size_bytes: int
    sha256: str
    def __init__(self, key: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class TimeRange(_message.Message):
    __slots__ = ("start_time", "end_time")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "max_tokens", "seed", "stop")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    max_tokens: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenUsage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class ResourceRef(_message.Message):
    __slots__ = ("kind", "id")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    kind: ResourceKind
    id: str
    def __init__(self, kind: _Optional[_Union[ResourceKind, str]] = ..., id: _Optional[str] = ...) -> None: ...
