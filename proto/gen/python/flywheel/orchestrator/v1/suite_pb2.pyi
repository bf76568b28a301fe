from flywheel.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Suite(_message.Message):
    __slots__ = ("name", "description", "version", "source", "bundled", "kinds", "task_count", "train_task_count", "test_task_count", "train_ratio", "split_seed", "load_error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BUNDLED_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    TEST_TASK_COUNT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_RATIO_FIELD_NUMBER: _ClassVar[int]
    SPLIT_SEED_FIELD_NUMBER: _ClassVar[int]
    LOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    version: str
    source: str
    bundled: bool
    kinds: _containers.RepeatedScalarFieldContainer[_common_pb2.TaskKind]
    task_count: int
    train_task_count: int
    test_task_count: int
    train_ratio: float
    split_seed: str
    load_error: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., version: _Optional[str] = ..., source: _Optional[str] = ..., bundled: _Optional[bool] = ..., kinds: _Optional[_Iterable[_Union[_common_pb2.TaskKind, str]]] = ..., task_count: _Optional[int] = ..., train_task_count: _Optional[int] = ..., test_task_count: _Optional[int] = ..., train_ratio: _Optional[float] = ..., split_seed: _Optional[str] = ..., load_error: _Optional[str] = ...) -> None: ...

class SuiteFile(_message.Message):
    __slots__ = ("path", "content")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    path: str
    content: bytes
    def __init__(self, path: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class SuiteProblem(_message.Message):
    __slots__ = ("path", "message", "warning")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    path: str
    message: str
    warning: bool
    def __init__(self, path: _Optional[str] = ..., message: _Optional[str] = ..., warning: _Optional[bool] = ...) -> None: ...
