import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MlTaskMetrics(_message.Message):
    __slots__ = ("task_id", "metric", "maximize", "episodes", "valid_episodes", "best_heldout", "mean_heldout", "mean_normalised", "baseline_score", "reference_score", "mean_nodes", "mean_wall_time")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MAXIMIZE_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    VALID_EPISODES_FIELD_NUMBER: _ClassVar[int]
    BEST_HELDOUT_FIELD_NUMBER: _ClassVar[int]
    MEAN_HELDOUT_FIELD_NUMBER: _ClassVar[int]
    MEAN_NORMALISED_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SCORE_FIELD_NUMBER: _ClassVar[int]
    MEAN_NODES_FIELD_NUMBER: _ClassVar[int]
    MEAN_WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    metric: str
    maximize: bool
    episodes: int
    valid_episodes: int
    best_heldout: float
    mean_heldout: float
    mean_normalised: float
    baseline_score: float
    reference_score: float
    mean_nodes: float
    mean_wall_time: _duration_pb2.Duration
    def __init__(self, task_id: _Optional[str] = ..., metric: _Optional[str] = ..., maximize: _Optional[bool] = ..., episodes: _Optional[int] = ..., valid_episodes: _Optional[int] = ..., best_heldout: _Optional[float] = ..., mean_heldout: _Optional[float] = ..., mean_normalised: _Optional[float] = ..., baseline_score: _Optional[float] = ..., reference_score: _Optional[float] = ..., mean_nodes: _Optional[float] = ..., mean_wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class MlModelMetrics(_message.Message):
    __slots__ = ("model", "episodes", "valid_fraction", "mean_normalised", "mean_nodes", "mean_wall_time", "tasks")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    VALID_FRACTION_FIELD_NUMBER: _ClassVar[int]
    MEAN_NORMALISED_FIELD_NUMBER: _ClassVar[int]
    MEAN_NODES_FIELD_NUMBER: _ClassVar[int]
    MEAN_WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    TASKS_FIELD_NUMBER: _ClassVar[int]
    model: str
    episodes: int
    valid_fraction: float
    mean_normalised: float
    mean_nodes: float
    mean_wall_time: _duration_pb2.Duration
    tasks: _containers.RepeatedCompositeFieldContainer[MlTaskMetrics]
    def __init__(self, model: _Optional[str] = ..., episodes: _Optional[int] = ..., valid_fraction: _Optional[float] = ..., mean_normalised: _Optional[float] = ..., mean_nodes: _Optional[float] = ..., mean_wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., tasks: _Optional[_Iterable[_Union[MlTaskMetrics, _Mapping]]] = ...) -> None: ...
