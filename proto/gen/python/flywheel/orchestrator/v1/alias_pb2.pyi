import datetime

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

class AliasChange(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALIAS_CHANGE_UNSPECIFIED: _ClassVar[AliasChange]
    ALIAS_CHANGE_SET: _ClassVar[AliasChange]
    ALIAS_CHANGE_CANARY_STARTED: _ClassVar[AliasChange]
    ALIAS_CHANGE_CANARY_PROMOTED: _ClassVar[AliasChange]
    ALIAS_CHANGE_CANARY_ROLLED_BACK: _ClassVar[AliasChange]
    ALIAS_CHANGE_ROLLBACK: _ClassVar[AliasChange]
    ALIAS_CHANGE_DELETED: _ClassVar[AliasChange]
ALIAS_CHANGE_UNSPECIFIED: AliasChange
ALIAS_CHANGE_SET: AliasChange
ALIAS_CHANGE_CANARY_STARTED: AliasChange
ALIAS_CHANGE_CANARY_PROMOTED: AliasChange
ALIAS_CHANGE_CANARY_ROLLED_BACK: AliasChange
ALIAS_CHANGE_ROLLBACK: AliasChange
ALIAS_CHANGE_DELETED: AliasChange

class AliasTarget(_message.Message):
    __slots__ = ("model", "adapter", "skill_id", "skill_sha256")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    SKILL_SHA256_FIELD_NUMBER: _ClassVar[int]
    model: str
    adapter: _trajectory_pb2.AdapterIdentity
    skill_id: str
    skill_sha256: str
    def __init__(self, model: _Optional[str] = ..., adapter: _Optional[_Union[_trajectory_pb2.AdapterIdentity, _Mapping]] = ..., skill_id: _Optional[str] = ..., skill_sha256: _Optional[str] = ...) -> None: ...

class CanaryPolicy(_message.Message):
    __slots__ = ("fraction", "min_requests", "max_duration", "max_error_rate_increase", "max_latency_ratio", "max_success_drop", "min_feedback", "shadow")
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_RATE_INCREASE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_SUCCESS_DROP_FIELD_NUMBER: _ClassVar[int]
    MIN_FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    fraction: float
    min_requests: int
    max_duration: _duration_pb2.Duration
    max_error_rate_increase: float
    max_latency_ratio: float
    max_success_drop: float
    min_feedback: int
    shadow: bool
    def __init__(self, fraction: _Optional[float] = ..., min_requests: _Optional[int] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_error_rate_increase: _Optional[float] = ..., max_latency_ratio: _Optional[float] = ..., max_success_drop: _Optional[float] = ..., min_feedback: _Optional[int] = ..., shadow: _Optional[bool] = ...) -> None: ...

class Canary(_message.Message):
    __slots__ = ("candidate", "policy", "start_time")
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    candidate: AliasTarget
    policy: CanaryPolicy
    start_time: _timestamp_pb2.Timestamp
    def __init__(self, candidate: _Optional[_Union[AliasTarget, _Mapping]] = ..., policy: _Optional[_Union[CanaryPolicy, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ArmStats(_message.Message):
    __slots__ = ("model", "requests", "errors", "error_rate", "latency_p50_ms", "feedback", "feedback_success", "success_rate")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SUCCESS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_RATE_FIELD_NUMBER: _ClassVar[int]
    model: str
    requests: int
    errors: int
    error_rate: float
    latency_p50_ms: float
    feedback: int
    feedback_success: int
    success_rate: float
    def __init__(self, model: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., error_rate: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., feedback: _Optional[int] = ..., feedback_success: _Optional[int] = ..., success_rate: _Optional[float] = ...) -> None: ...

class AliasRevision(_message.Message):
    __slots__ = ("revision", "target", "canary", "change", "actor", "reason", "evaluation_id", "loop_id", "create_time", "canary_stats")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    CANARY_STATS_FIELD_NUMBER: _ClassVar[int]
    revision: int
    target: AliasTarget
    canary: Canary
    change: AliasChange
    actor: str
    reason: str
    evaluation_id: str
    loop_id: str
    create_time: _timestamp_pb2.Timestamp
    canary_stats: _containers.RepeatedCompositeFieldContainer[ArmStats]
    def __init__(self, revision: _Optional[int] = ..., target: _Optional[_Union[AliasTarget, _Mapping]] = ..., canary: _Optional[_Union[Canary, _Mapping]] = ..., change: _Optional[_Union[AliasChange, str]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., evaluation_id: _Optional[str] = ..., loop_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., canary_stats: _Optional[_Iterable[_Union[ArmStats, _Mapping]]] = ...) -> None: ...

class Alias(_message.Message):
    __slots__ = ("name", "current", "history", "canary_stats")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CANARY_STATS_FIELD_NUMBER: _ClassVar[int]
    name: str
    current: AliasRevision
    history: _containers.RepeatedCompositeFieldContainer[AliasRevision]
    canary_stats: _containers.RepeatedCompositeFieldContainer[ArmStats]
    def __init__(self, name: _Optional[str] = ..., current: _Optional[_Union[AliasRevision, _Mapping]] = ..., history: _Optional[_Iterable[_Union[AliasRevision, _Mapping]]] = ..., canary_stats: _Optional[_Iterable[_Union[ArmStats, _Mapping]]] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "target", "canary", "expected_revision", "actor", "reason", "evaluation_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    target: AliasTarget
    canary: CanaryPolicy
    expected_revision: int
    actor: str
    reason: str
    evaluation_id: str
    def __init__(self, name: _Optional[str] = ..., target: _Optional[_Union[AliasTarget, _Mapping]] = ..., canary: _Optional[_Union[CanaryPolicy, _Mapping]] = ..., expected_revision: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., evaluation_id: _Optional[str] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ...) -> None: ...

class GetAliasRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetAliasResponse(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ...) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ("show_deleted",)
    SHOW_DELETED_FIELD_NUMBER: _ClassVar[int]
    show_deleted: bool
    def __init__(self, show_deleted: _Optional[bool] = ...) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ("aliases",)
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[Alias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[Alias, _Mapping]]] = ...) -> None: ...

class RollbackAliasRequest(_message.Message):
    __slots__ = ("name", "to_revision", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_REVISION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    to_revision: int
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., to_revision: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackAliasResponse(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ("name", "actor", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    actor: str
    reason: str
    def __init__(self, name: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = ("alias",)
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    alias: Alias
    def __init__(self, alias: _Optional[_Union[Alias, _Mapping]] = ...) -> None: ...
