import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
from flywheel.orchestrator.v1 import evaluation_pb2 as _evaluation_pb2
from flywheel.orchestrator.v1 import run_pb2 as _run_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SkillEditOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SKILL_EDIT_OP_UNSPECIFIED: _ClassVar[SkillEditOp]
    SKILL_EDIT_OP_APPEND: _ClassVar[SkillEditOp]
    SKILL_EDIT_OP_INSERT_AFTER: _ClassVar[SkillEditOp]
    SKILL_EDIT_OP_REPLACE: _ClassVar[SkillEditOp]
    SKILL_EDIT_OP_DELETE: _ClassVar[SkillEditOp]

class EditBudgetSchedule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EDIT_BUDGET_SCHEDULE_UNSPECIFIED: _ClassVar[EditBudgetSchedule]
    EDIT_BUDGET_SCHEDULE_CONSTANT: _ClassVar[EditBudgetSchedule]
    EDIT_BUDGET_SCHEDULE_LINEAR: _ClassVar[EditBudgetSchedule]
    EDIT_BUDGET_SCHEDULE_COSINE: _ClassVar[EditBudgetSchedule]

class SkillOptStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SKILL_OPT_STAGE_UNSPECIFIED: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_BASELINE: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_ROLLOUT: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_REFLECT: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_AGGREGATE: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_SELECT: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_UPDATE: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_EVALUATE: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_SLOW_UPDATE: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_META_SKILL: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_TEST: _ClassVar[SkillOptStage]
    SKILL_OPT_STAGE_DONE: _ClassVar[SkillOptStage]

class SkillGateDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SKILL_GATE_DECISION_UNSPECIFIED: _ClassVar[SkillGateDecision]
    SKILL_GATE_DECISION_ACCEPTED: _ClassVar[SkillGateDecision]
    SKILL_GATE_DECISION_REJECTED: _ClassVar[SkillGateDecision]
    SKILL_GATE_DECISION_NO_CHANGE: _ClassVar[SkillGateDecision]
SKILL_EDIT_OP_UNSPECIFIED: SkillEditOp
SKILL_EDIT_OP_APPEND: SkillEditOp
SKILL_EDIT_OP_INSERT_AFTER: SkillEditOp
SKILL_EDIT_OP_REPLACE: SkillEditOp
SKILL_EDIT_OP_DELETE: SkillEditOp
EDIT_BUDGET_SCHEDULE_UNSPECIFIED: EditBudgetSchedule
EDIT_BUDGET_SCHEDULE_CONSTANT: EditBudgetSchedule
EDIT_BUDGET_SCHEDULE_LINEAR: EditBudgetSchedule
EDIT_BUDGET_SCHEDULE_COSINE: EditBudgetSchedule
SKILL_OPT_STAGE_UNSPECIFIED: SkillOptStage
SKILL_OPT_STAGE_BASELINE: SkillOptStage
SKILL_OPT_STAGE_ROLLOUT: SkillOptStage
SKILL_OPT_STAGE_REFLECT: SkillOptStage
SKILL_OPT_STAGE_AGGREGATE: SkillOptStage
SKILL_OPT_STAGE_SELECT: SkillOptStage
SKILL_OPT_STAGE_UPDATE: SkillOptStage
SKILL_OPT_STAGE_EVALUATE: SkillOptStage
SKILL_OPT_STAGE_SLOW_UPDATE: SkillOptStage
SKILL_OPT_STAGE_META_SKILL: SkillOptStage
SKILL_OPT_STAGE_TEST: SkillOptStage
SKILL_OPT_STAGE_DONE: SkillOptStage
SKILL_GATE_DECISION_UNSPECIFIED: SkillGateDecision
SKILL_GATE_DECISION_ACCEPTED: SkillGateDecision
SKILL_GATE_DECISION_REJECTED: SkillGateDecision
SKILL_GATE_DECISION_NO_CHANGE: SkillGateDecision

class Skill(_message.Message):
    __slots__ = ("id", "sha256", "text", "name", "parent_id", "optimization_id", "protected_sections", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZATION_ID_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_SECTIONS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    sha256: str
    text: str
    name: str
    parent_id: str
    optimization_id: str
    protected_sections: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., sha256: _Optional[str] = ..., text: _Optional[str] = ..., name: _Optional[str] = ..., parent_id: _Optional[str] = ..., optimization_id: _Optional[str] = ..., protected_sections: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SkillEdit(_message.Message):
    __slots__ = ("op", "section", "anchor", "content", "rationale", "support", "source", "applied", "skipped_reason")
    OP_FIELD_NUMBER: _ClassVar[int]
    SECTION_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    op: SkillEditOp
    section: str
    anchor: str
    content: str
    rationale: str
    support: int
    source: str
    applied: bool
    skipped_reason: str
    def __init__(self, op: _Optional[_Union[SkillEditOp, str]] = ..., section: _Optional[str] = ..., anchor: _Optional[str] = ..., content: _Optional[str] = ..., rationale: _Optional[str] = ..., support: _Optional[int] = ..., source: _Optional[str] = ..., applied: _Optional[bool] = ..., skipped_reason: _Optional[str] = ...) -> None: ...

class EditBudget(_message.Message):
    __slots__ = ("initial", "minimum", "schedule")
    INITIAL_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    initial: int
    minimum: int
    schedule: EditBudgetSchedule
    def __init__(self, initial: _Optional[int] = ..., minimum: _Optional[int] = ..., schedule: _Optional[_Union[EditBudgetSchedule, str]] = ...) -> None: ...

class StageUsage(_message.Message):
    __slots__ = ("stage", "target", "optimizer", "optimizer_calls")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_CALLS_FIELD_NUMBER: _ClassVar[int]
    stage: SkillOptStage
    target: _common_pb2.TokenUsage
    optimizer: _common_pb2.TokenUsage
    optimizer_calls: int
    def __init__(self, stage: _Optional[_Union[SkillOptStage, str]] = ..., target: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., optimizer: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., optimizer_calls: _Optional[int] = ...) -> None: ...

class StageRecord(_message.Message):
    __slots__ = ("epoch", "step", "stage", "end_time")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    step: int
    stage: SkillOptStage
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, epoch: _Optional[int] = ..., step: _Optional[int] = ..., stage: _Optional[_Union[SkillOptStage, str]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SkillOptStep(_message.Message):
    __slots__ = ("index", "epoch", "slow_update", "train_task_ids", "rollout_run_id", "rollout_episodes", "rollout_resolved", "raw_edits", "malformed", "proposed", "budget", "selected", "skill_before_id", "candidate_skill_id", "eval_run_id", "score_before", "candidate_score", "decision", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SLOW_UPDATE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_EPISODES_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_RESOLVED_FIELD_NUMBER: _ClassVar[int]
    RAW_EDITS_FIELD_NUMBER: _ClassVar[int]
    MALFORMED_FIELD_NUMBER: _ClassVar[int]
    PROPOSED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    SKILL_BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SCORE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    epoch: int
    slow_update: bool
    train_task_ids: _containers.RepeatedScalarFieldContainer[str]
    rollout_run_id: str
    rollout_episodes: int
    rollout_resolved: int
    raw_edits: int
    malformed: _containers.RepeatedScalarFieldContainer[str]
    proposed: _containers.RepeatedCompositeFieldContainer[SkillEdit]
    budget: int
    selected: _containers.RepeatedCompositeFieldContainer[SkillEdit]
    skill_before_id: str
    candidate_skill_id: str
    eval_run_id: str
    score_before: float
    candidate_score: float
    decision: SkillGateDecision
    reason: str
    def __init__(self, index: _Optional[int] = ..., epoch: _Optional[int] = ..., slow_update: _Optional[bool] = ..., train_task_ids: _Optional[_Iterable[str]] = ..., rollout_run_id: _Optional[str] = ..., rollout_episodes: _Optional[int] = ..., rollout_resolved: _Optional[int] = ..., raw_edits: _Optional[int] = ..., malformed: _Optional[_Iterable[str]] = ..., proposed: _Optional[_Iterable[_Union[SkillEdit, _Mapping]]] = ..., budget: _Optional[int] = ..., selected: _Optional[_Iterable[_Union[SkillEdit, _Mapping]]] = ..., skill_before_id: _Optional[str] = ..., candidate_skill_id: _Optional[str] = ..., eval_run_id: _Optional[str] = ..., score_before: _Optional[float] = ..., candidate_score: _Optional[float] = ..., decision: _Optional[_Union[SkillGateDecision, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class SkillTestScores(_message.Message):
    __slots__ = ("baseline", "best", "final", "baseline_run_id", "best_run_id", "final_run_id", "episodes")
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FINAL_RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    baseline: float
    best: float
    final: float
    baseline_run_id: str
    best_run_id: str
    final_run_id: str
    episodes: int
    def __init__(self, baseline: _Optional[float] = ..., best: _Optional[float] = ..., final: _Optional[float] = ..., baseline_run_id: _Optional[str] = ..., best_run_id: _Optional[str] = ..., final_run_id: _Optional[str] = ..., episodes: _Optional[int] = ...) -> None: ...

class SkillOptimization(_message.Message):
    __slots__ = ("id", "suite", "target_model", "optimizer_model", "initial_skill", "episode", "selection_task_ids", "selection_size", "minibatch_size", "accumulation", "epochs", "max_steps", "rollouts_per_task", "selection_rollouts", "budget", "min_improvement", "accept_ties", "slow_update", "meta_skill", "reflect_batch_size", "aggregate_fanout", "seed", "labels", "state", "error", "stage", "epoch", "steps_total", "baseline_skill_id", "current_skill_id", "current_score", "best_skill_id", "best_score", "baseline_score", "resolved_selection_task_ids", "steps", "history", "usage", "meta_skill_text", "test", "report", "create_time", "start_time", "end_time", "next_minibatch", "test_task_ids", "optimizer_max_tokens")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_MODEL_FIELD_NUMBER: _ClassVar[int]
    INITIAL_SKILL_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    SELECTION_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_SIZE_FIELD_NUMBER: _ClassVar[int]
    MINIBATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    ACCUMULATION_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    SELECTION_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    MIN_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_TIES_FIELD_NUMBER: _ClassVar[int]
    SLOW_UPDATE_FIELD_NUMBER: _ClassVar[int]
    META_SKILL_FIELD_NUMBER: _ClassVar[int]
    REFLECT_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FANOUT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SCORE_FIELD_NUMBER: _ClassVar[int]
    BEST_SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_SELECTION_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    META_SKILL_TEXT_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    NEXT_MINIBATCH_FIELD_NUMBER: _ClassVar[int]
    TEST_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    id: str
    suite: str
    target_model: str
    optimizer_model: str
    initial_skill: _run_pb2.SkillSource
    episode: _run_pb2.EpisodeSettings
    selection_task_ids: _containers.RepeatedScalarFieldContainer[str]
    selection_size: int
    minibatch_size: int
    accumulation: int
    epochs: int
    max_steps: int
    rollouts_per_task: int
    selection_rollouts: int
    budget: EditBudget
    min_improvement: float
    accept_ties: bool
    slow_update: bool
    meta_skill: bool
    reflect_batch_size: int
    aggregate_fanout: int
    seed: int
    labels: _containers.ScalarMap[str, str]
    state: _common_pb2.JobState
    error: _common_pb2.Error
    stage: SkillOptStage
    epoch: int
    steps_total: int
    baseline_skill_id: str
    current_skill_id: str
    current_score: float
    best_skill_id: str
    best_score: float
    baseline_score: float
    resolved_selection_task_ids: _containers.RepeatedScalarFieldContainer[str]
    steps: _containers.RepeatedCompositeFieldContainer[SkillOptStep]
    history: _containers.RepeatedCompositeFieldContainer[StageRecord]
    usage: _containers.RepeatedCompositeFieldContainer[StageUsage]
    meta_skill_text: str
    test: SkillTestScores
    report: _evaluation_pb2.EvaluationReport
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    next_minibatch: int
    test_task_ids: _containers.RepeatedScalarFieldContainer[str]
    optimizer_max_tokens: int
    def __init__(self, id: _Optional[str] = ..., suite: _Optional[str] = ..., target_model: _Optional[str] = ..., optimizer_model: _Optional[str] = ..., initial_skill: _Optional[_Union[_run_pb2.SkillSource, _Mapping]] = ..., episode: _Optional[_Union[_run_pb2.EpisodeSettings, _Mapping]] = ..., selection_task_ids: _Optional[_Iterable[str]] = ..., selection_size: _Optional[int] = ..., minibatch_size: _Optional[int] = ..., accumulation: _Optional[int] = ..., epochs: _Optional[int] = ..., max_steps: _Optional[int] = ..., rollouts_per_task: _Optional[int] = ..., selection_rollouts: _Optional[int] = ..., budget: _Optional[_Union[EditBudget, _Mapping]] = ..., min_improvement: _Optional[float] = ..., accept_ties: _Optional[bool] = ..., slow_update: _Optional[bool] = ..., meta_skill: _Optional[bool] = ..., reflect_batch_size: _Optional[int] = ..., aggregate_fanout: _Optional[int] = ..., seed: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., stage: _Optional[_Union[SkillOptStage, str]] = ..., epoch: _Optional[int] = ..., steps_total: _Optional[int] = ..., baseline_skill_id: _Optional[str] = ..., current_skill_id: _Optional[str] = ..., current_score: _Optional[float] = ..., best_skill_id: _Optional[str] = ..., best_score: _Optional[float] = ..., baseline_score: _Optional[float] = ..., resolved_selection_task_ids: _Optional[_Iterable[str]] = ..., steps: _Optional[_Iterable[_Union[SkillOptStep, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[StageRecord, _Mapping]]] = ..., usage: _Optional[_Iterable[_Union[StageUsage, _Mapping]]] = ..., meta_skill_text: _Optional[str] = ..., test: _Optional[_Union[SkillTestScores, _Mapping]] = ..., report: _Optional[_Union[_evaluation_pb2.EvaluationReport, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_minibatch: _Optional[int] = ..., test_task_ids: _Optional[_Iterable[str]] = ..., optimizer_max_tokens: _Optional[int] = ...) -> None: ...
