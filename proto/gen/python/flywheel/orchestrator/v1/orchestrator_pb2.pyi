from flywheel.common.v1 import common_pb2 as _common_pb2
from flywheel.orchestrator.v1 import alias_pb2 as _alias_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as _evaluation_pb2
from flywheel.orchestrator.v1 import loop_pb2 as _loop_pb2
from flywheel.orchestrator.v1 import mle_pb2 as _mle_pb2
from flywheel.orchestrator.v1 import run_pb2 as _run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as _skill_pb2
from flywheel.orchestrator.v1 import suite_pb2 as _suite_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListSuitesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSuitesResponse(_message.Message):
    __slots__ = ("suites", "next_page_token")
    SUITES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    suites: _containers.RepeatedCompositeFieldContainer[_suite_pb2.Suite]
    next_page_token: str
    def __init__(self, suites: _Optional[_Iterable[_Union[_suite_pb2.Suite, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetSuiteRequest(_message.Message):
    __slots__ = ("suite",)
    SUITE_FIELD_NUMBER: _ClassVar[int]
    suite: str
    def __init__(self, suite: _Optional[str] = ...) -> None: ...

class GetSuiteResponse(_message.Message):
    __slots__ = ("suite",)
    SUITE_FIELD_NUMBER: _ClassVar[int]
    suite: _suite_pb2.Suite
    def __init__(self, suite: _Optional[_Union[_suite_pb2.Suite, _Mapping]] = ...) -> None: ...

class ImportSuiteRequest(_message.Message):
    __slots__ = ("name", "files", "validate_only", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    files: _containers.RepeatedCompositeFieldContainer[_suite_pb2.SuiteFile]
    validate_only: bool
    replace: bool
    def __init__(self, name: _Optional[str] = ..., files: _Optional[_Iterable[_Union[_suite_pb2.SuiteFile, _Mapping]]] = ..., validate_only: _Optional[bool] = ..., replace: _Optional[bool] = ...) -> None: ...

class ImportSuiteResponse(_message.Message):
    __slots__ = ("suite", "problems")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    suite: _suite_pb2.Suite
    problems: _containers.RepeatedCompositeFieldContainer[_suite_pb2.SuiteProblem]
    def __init__(self, suite: _Optional[_Union[_suite_pb2.Suite, _Mapping]] = ..., problems: _Optional[_Iterable[_Union[_suite_pb2.SuiteProblem, _Mapping]]] = ...) -> None: ...

class ReloadSuitesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadSuitesResponse(_message.Message):
    __slots__ = ("suite_count", "failed")
    SUITE_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    suite_count: int
    failed: _containers.RepeatedCompositeFieldContainer[_suite_pb2.Suite]
    def __init__(self, suite_count: _Optional[int] = ..., failed: _Optional[_Iterable[_Union[_suite_pb2.Suite, _Mapping]]] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("run", "request_id")
    RUN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    request_id: str
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("suite", "model", "state", "loop_id", "page_size", "page_token")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    suite: str
    model: str
    state: _common_pb2.JobState
    loop_id: str
    page_size: int
    page_token: str
    def __init__(self, suite: _Optional[str] = ..., model: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., loop_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[_run_pb2.Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[_run_pb2.Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class WatchRunResponse(_message.Message):
    __slots__ = ("run", "episode", "ml_node")
    RUN_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    ML_NODE_FIELD_NUMBER: _ClassVar[int]
    run: _run_pb2.Run
    episode: _run_pb2.EpisodeResult
    ml_node: _mle_pb2.MlNodeProgress
    def __init__(self, run: _Optional[_Union[_run_pb2.Run, _Mapping]] = ..., episode: _Optional[_Union[_run_pb2.EpisodeResult, _Mapping]] = ..., ml_node: _Optional[_Union[_mle_pb2.MlNodeProgress, _Mapping]] = ...) -> None: ...

class CreateEvaluationRequest(_message.Message):
    __slots__ = ("evaluation", "request_id")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation: _evaluation_pb2.Evaluation
    request_id: str
    def __init__(self, evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: _evaluation_pb2.Evaluation
    def __init__(self, evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ...) -> None: ...

class GetEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class GetEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: _evaluation_pb2.Evaluation
    def __init__(self, evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ...) -> None: ...

class ListEvaluationsRequest(_message.Message):
    __slots__ = ("suite", "state", "loop_id", "page_size", "page_token")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    suite: str
    state: _common_pb2.JobState
    loop_id: str
    page_size: int
    page_token: str
    def __init__(self, suite: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., loop_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListEvaluationsResponse(_message.Message):
    __slots__ = ("evaluations", "next_page_token")
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    evaluations: _containers.RepeatedCompositeFieldContainer[_evaluation_pb2.Evaluation]
    next_page_token: str
    def __init__(self, evaluations: _Optional[_Iterable[_Union[_evaluation_pb2.Evaluation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class CancelEvaluationResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: _evaluation_pb2.Evaluation
    def __init__(self, evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ...) -> None: ...

class WatchEvaluationRequest(_message.Message):
    __slots__ = ("evaluation_id",)
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    evaluation_id: str
    def __init__(self, evaluation_id: _Optional[str] = ...) -> None: ...

class WatchEvaluationResponse(_message.Message):
    __slots__ = ("evaluation", "episode", "ml_node")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    ML_NODE_FIELD_NUMBER: _ClassVar[int]
    evaluation: _evaluation_pb2.Evaluation
    episode: _run_pb2.EpisodeResult
    ml_node: _mle_pb2.MlNodeProgress
    def __init__(self, evaluation: _Optional[_Union[_evaluation_pb2.Evaluation, _Mapping]] = ..., episode: _Optional[_Union[_run_pb2.EpisodeResult, _Mapping]] = ..., ml_node: _Optional[_Union[_mle_pb2.MlNodeProgress, _Mapping]] = ...) -> None: ...

class CreateLoopRequest(_message.Message):
    __slots__ = ("loop", "request_id")
    LOOP_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    loop: _loop_pb2.Loop
    request_id: str
    def __init__(self, loop: _Optional[_Union[_loop_pb2.Loop, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateLoopResponse(_message.Message):
    __slots__ = ("loop",)
    LOOP_FIELD_NUMBER: _ClassVar[int]
    loop: _loop_pb2.Loop
    def __init__(self, loop: _Optional[_Union[_loop_pb2.Loop, _Mapping]] = ...) -> None: ...

class GetLoopRequest(_message.Message):
    __slots__ = ("loop_id",)
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    def __init__(self, loop_id: _Optional[str] = ...) -> None: ...

class GetLoopResponse(_message.Message):
    __slots__ = ("loop",)
    LOOP_FIELD_NUMBER: _ClassVar[int]
    loop: _loop_pb2.Loop
    def __init__(self, loop: _Optional[_Union[_loop_pb2.Loop, _Mapping]] = ...) -> None: ...

class ListLoopsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.JobState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[_common_pb2.JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLoopsResponse(_message.Message):
    __slots__ = ("loops", "next_page_token")
    LOOPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    loops: _containers.RepeatedCompositeFieldContainer[_loop_pb2.Loop]
    next_page_token: str
    def __init__(self, loops: _Optional[_Iterable[_Union[_loop_pb2.Loop, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelLoopRequest(_message.Message):
    __slots__ = ("loop_id",)
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    def __init__(self, loop_id: _Optional[str] = ...) -> None: ...

class CancelLoopResponse(_message.Message):
    __slots__ = ("loop",)
    LOOP_FIELD_NUMBER: _ClassVar[int]
    loop: _loop_pb2.Loop
    def __init__(self, loop: _Optional[_Union[_loop_pb2.Loop, _Mapping]] = ...) -> None: ...

class WatchLoopRequest(_message.Message):
    __slots__ = ("loop_id",)
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    loop_id: str
    def __init__(self, loop_id: _Optional[str] = ...) -> None: ...

class WatchLoopResponse(_message.Message):
    __slots__ = ("loop",)
    LOOP_FIELD_NUMBER: _ClassVar[int]
    loop: _loop_pb2.Loop
    def __init__(self, loop: _Optional[_Union[_loop_pb2.Loop, _Mapping]] = ...) -> None: ...

class CreateSkillRequest(_message.Message):
    __slots__ = ("skill",)
    SKILL_FIELD_NUMBER: _ClassVar[int]
    skill: _skill_pb2.Skill
    def __init__(self, skill: _Optional[_Union[_skill_pb2.Skill, _Mapping]] = ...) -> None: ...

class CreateSkillResponse(_message.Message):
    __slots__ = ("skill", "created")
    SKILL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    skill: _skill_pb2.Skill
    created: bool
    def __init__(self, skill: _Optional[_Union[_skill_pb2.Skill, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetSkillRequest(_message.Message):
    __slots__ = ("skill_id",)
    SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    skill_id: str
    def __init__(self, skill_id: _Optional[str] = ...) -> None: ...

class GetSkillResponse(_message.Message):
    __slots__ = ("skill",)
    SKILL_FIELD_NUMBER: _ClassVar[int]
    skill: _skill_pb2.Skill
    def __init__(self, skill: _Optional[_Union[_skill_pb2.Skill, _Mapping]] = ...) -> None: ...

class ListSkillsRequest(_message.Message):
    __slots__ = ("optimization_id", "page_size", "page_token")
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    optimization_id: str
    page_size: int
    page_token: str
    def __init__(self, optimization_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSkillsResponse(_message.Message):
    __slots__ = ("skills", "next_page_token")
    SKILLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    skills: _containers.RepeatedCompositeFieldContainer[_skill_pb2.Skill]
    next_page_token: str
    def __init__(self, skills: _Optional[_Iterable[_Union[_skill_pb2.Skill, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateSkillOptimizationRequest(_message.Message):
    __slots__ = ("optimization", "request_id")
    OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    optimization: _skill_pb2.SkillOptimization
    request_id: str
    def __init__(self, optimization: _Optional[_Union[_skill_pb2.SkillOptimization, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateSkillOptimizationResponse(_message.Message):
    __slots__ = ("optimization",)
    OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    optimization: _skill_pb2.SkillOptimization
    def __init__(self, optimization: _Optional[_Union[_skill_pb2.SkillOptimization, _Mapping]] = ...) -> None: ...

class GetSkillOptimizationRequest(_message.Message):
    __slots__ = ("optimization_id",)
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    optimization_id: str
    def __init__(self, optimization_id: _Optional[str] = ...) -> None: ...

class GetSkillOptimizationResponse(_message.Message):
    __slots__ = ("optimization",)
    OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    optimization: _skill_pb2.SkillOptimization
    def __init__(self, optimization: _Optional[_Union[_skill_pb2.SkillOptimization, _Mapping]] = ...) -> None: ...

class ListSkillOptimizationsRequest(_message.Message):
    __slots__ = ("state", "page_size", "page_token")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    state: _common_pb2.JobState
    page_size: int
    page_token: str
    def __init__(self, state: _Optional[_Union[_common_pb2.JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListSkillOptimizationsResponse(_message.Message):
    __slots__ = ("optimizations", "next_page_token")
    OPTIMIZATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    optimizations: _containers.RepeatedCompositeFieldContainer[_skill_pb2.SkillOptimization]
    next_page_token: str
    def __init__(self, optimizations: _Optional[_Iterable[_Union[_skill_pb2.SkillOptimization, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelSkillOptimizationRequest(_message.Message):
    __slots__ = ("optimization_id",)
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    optimization_id: str
    def __init__(self, optimization_id: _Optional[str] = ...) -> None: ...

class CancelSkillOptimizationResponse(_message.Message):
    __slots__ = ("optimization",)
    OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    optimization: _skill_pb2.SkillOptimization
    def __init__(self, optimization: _Optional[_Union[_skill_pb2.SkillOptimization, _Mapping]] = ...) -> None: ...

class WatchSkillOptimizationRequest(_message.Message):
    __slots__ = ("optimization_id",)
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    optimization_id: str
    def __init__(self, optimization_id: _Optional[str] = ...) -> None: ...

class WatchSkillOptimizationResponse(_message.Message):
    __slots__ = ("optimization",)
    OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    optimization: _skill_pb2.SkillOptimization
    def __init__(self, optimization: _Optional[_Union[_skill_pb2.SkillOptimization, _Mapping]] = ...) -> None: ...
