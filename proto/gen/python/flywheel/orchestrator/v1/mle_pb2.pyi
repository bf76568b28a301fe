import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MlOperator(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ML_OPERATOR_UNSPECIFIED: _ClassVar[MlOperator]
    ML_OPERATOR_DRAFT: _ClassVar[MlOperator]
    ML_OPERATOR_DEBUG: _ClassVar[MlOperator]
    ML_OPERATOR_IMPROVE: _ClassVar[MlOperator]
    ML_OPERATOR_REFLECT: _ClassVar[MlOperator]
ML_OPERATOR_UNSPECIFIED: MlOperator
ML_OPERATOR_DRAFT: MlOperator
ML_OPERATOR_DEBUG: MlOperator
ML_OPERATOR_IMPROVE: MlOperator
ML_OPERATOR_REFLECT: MlOperator

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

class MlNodeProgress(_message.Message):
    __slots__ = ("task_id", "attempt", "trajectory_id", "node_id", "step", "operator", "parent_id", "buggy", "analysis", "metric", "heldout", "exec_time_s", "nodes", "max_nodes", "best_node_id", "best_metric", "best_heldout", "metric_name", "maximize", "model")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    BUGGY_FIELD_NUMBER: _ClassVar[int]
    ANALYSIS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    HELDOUT_FIELD_NUMBER: _ClassVar[int]
    EXEC_TIME_S_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    BEST_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_METRIC_FIELD_NUMBER: _ClassVar[int]
    BEST_HELDOUT_FIELD_NUMBER: _ClassVar[int]
    METRIC_NAME_FIELD_NUMBER: _ClassVar[int]
    MAXIMIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    attempt: int
    trajectory_id: str
    node_id: str
    step: int
    operator: MlOperator
    parent_id: str
    buggy: bool
    analysis: str
    metric: float
    heldout: float
    exec_time_s: float
    nodes: int
    max_nodes: int
    best_node_id: str
    best_metric: float
    best_heldout: float
    metric_name: str
    maximize: bool
    model: str
    def __init__(self, task_id: _Optional[str] = ..., attempt: _Optional[int] = ..., trajectory_id: _Optional[str] = ..., node_id: _Optional[str] = ..., step: _Optional[int] = ..., operator: _Optional[_Union[MlOperator, str]] = ..., parent_id: _Optional[str] = ..., buggy: _Optional[bool] = ..., analysis: _Optional[str] = ..., metric: _Optional[float] = ..., heldout: _Optional[float] = ..., exec_time_s: _Optional[float] = ..., nodes: _Optional[int] = ..., max_nodes: _Optional[int] = ..., best_node_id: _Optional[str] = ..., best_metric: _Optional[float] = ..., best_heldout: _Optional[float] = ..., metric_name: _Optional[str] = ..., maximize: _Optional[bool] = ..., model: _Optional[str] = ...) -> None: ...
