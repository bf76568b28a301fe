import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
from flywheel.dataset.v1 import dataset_pb2 as _dataset_pb2
from flywheel.orchestrator.v1 import alias_pb2 as _alias_pb2
from flywheel.orchestrator.v1 import run_pb2 as _run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as _skill_pb2
from flywheel.trainer.v1 import trainer_pb2 as _trainer_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as _trajectory_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoopStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOOP_STAGE_UNSPECIFIED: _ClassVar[LoopStage]
    LOOP_STAGE_ROLLOUTS: _ClassVar[LoopStage]
    LOOP_STAGE_DATASET: _ClassVar[LoopStage]
    LOOP_STAGE_FINE_TUNE: _ClassVar[LoopStage]
    LOOP_STAGE_HOT_LOAD: _ClassVar[LoopStage]
    LOOP_STAGE_EVALUATION: _ClassVar[LoopStage]
    LOOP_STAGE_GATE: _ClassVar[LoopStage]
    LOOP_STAGE_PROMOTION: _ClassVar[LoopStage]
    LOOP_STAGE_ROUND: _ClassVar[LoopStage]
    LOOP_STAGE_SKILL_OPTIMIZATION: _ClassVar[LoopStage]
    LOOP_STAGE_COMPARISON: _ClassVar[LoopStage]

class RoundStart(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_START_UNSPECIFIED: _ClassVar[RoundStart]
    ROUND_START_CONTINUE: _ClassVar[RoundStart]
    ROUND_START_FROM_BASE: _ClassVar[RoundStart]

class PromotionOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROMOTION_OUTCOME_UNSPECIFIED: _ClassVar[PromotionOutcome]
    PROMOTION_OUTCOME_PROMOTED: _ClassVar[PromotionOutcome]
    PROMOTION_OUTCOME_ROLLED_BACK: _ClassVar[PromotionOutcome]

class LoopKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOOP_KIND_UNSPECIFIED: _ClassVar[LoopKind]
    LOOP_KIND_IMITATION: _ClassVar[LoopKind]
    LOOP_KIND_RL: _ClassVar[LoopKind]
    LOOP_KIND_SKILL_THEN_LORA: _ClassVar[LoopKind]
    LOOP_KIND_LORA_THEN_SKILL: _ClassVar[LoopKind]

class JointArmKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOINT_ARM_KIND_UNSPECIFIED: _ClassVar[JointArmKind]
    JOINT_ARM_KIND_START: _ClassVar[JointArmKind]
    JOINT_ARM_KIND_SKILL: _ClassVar[JointArmKind]
    JOINT_ARM_KIND_LORA: _ClassVar[JointArmKind]
    JOINT_ARM_KIND_BOTH: _ClassVar[JointArmKind]

class GateMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_METRIC_UNSPECIFIED: _ClassVar[GateMetric]
    GATE_METRIC_PASS_RATE: _ClassVar[GateMetric]
    GATE_METRIC_PARSE_ERRORS_PER_EPISODE: _ClassVar[GateMetric]
    GATE_METRIC_WRITE_RATE: _ClassVar[GateMetric]
    GATE_METRIC_LOOP_DETECTIONS_PER_EPISODE: _ClassVar[GateMetric]

class GateRuleKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_RULE_KIND_UNSPECIFIED: _ClassVar[GateRuleKind]
    GATE_RULE_KIND_MUST_IMPROVE: _ClassVar[GateRuleKind]
    GATE_RULE_KIND_MUST_NOT_WORSEN: _ClassVar[GateRuleKind]

class GateDecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_DECISION_UNSPECIFIED: _ClassVar[GateDecision]
    GATE_DECISION_PROMOTE: _ClassVar[GateDecision]
    GATE_DECISION_REJECT: _ClassVar[GateDecision]
LOOP_STAGE_UNSPECIFIED: LoopStage
LOOP_STAGE_ROLLOUTS: LoopStage
LOOP_STAGE_DATASET: LoopStage
LOOP_STAGE_FINE_TUNE: LoopStage
LOOP_STAGE_HOT_LOAD: LoopStage
LOOP_STAGE_EVALUATION: LoopStage
LOOP_STAGE_GATE: LoopStage
LOOP_STAGE_PROMOTION: LoopStage
LOOP_STAGE_ROUND: LoopStage
LOOP_STAGE_SKILL_OPTIMIZATION: LoopStage
LOOP_STAGE_COMPARISON: LoopStage
ROUND_START_UNSPECIFIED: RoundStart
ROUND_START_CONTINUE: RoundStart
ROUND_START_FROM_BASE: RoundStart
PROMOTION_OUTCOME_UNSPECIFIED: PromotionOutcome
PROMOTION_OUTCOME_PROMOTED: PromotionOutcome
PROMOTION_OUTCOME_ROLLED_BACK: PromotionOutcome
LOOP_KIND_UNSPECIFIED: LoopKind
LOOP_KIND_IMITATION: LoopKind
LOOP_KIND_RL: LoopKind
LOOP_KIND_SKILL_THEN_LORA: LoopKind
LOOP_KIND_LORA_THEN_SKILL: LoopKind
JOINT_ARM_KIND_UNSPECIFIED: JointArmKind
JOINT_ARM_KIND_START: JointArmKind
JOINT_ARM_KIND_SKILL: JointArmKind
JOINT_ARM_KIND_LORA: JointArmKind
JOINT_ARM_KIND_BOTH: JointArmKind
GATE_METRIC_UNSPECIFIED: GateMetric
GATE_METRIC_PASS_RATE: GateMetric
GATE_METRIC_PARSE_ERRORS_PER_EPISODE: GateMetric
GATE_METRIC_WRITE_RATE: GateMetric
GATE_METRIC_LOOP_DETECTIONS_PER_EPISODE: GateMetric
GATE_RULE_KIND_UNSPECIFIED: GateRuleKind
GATE_RULE_KIND_MUST_IMPROVE: GateRuleKind
GATE_RULE_KIND_MUST_NOT_WORSEN: GateRuleKind
GATE_DECISION_UNSPECIFIED: GateDecision
GATE_DECISION_PROMOTE: GateDecision
GATE_DECISION_REJECT: GateDecision

class LoopRound(_message.Message):
    __slots__ = ("index", "loop_id", "state", "incumbent_model", "init_adapter", "candidate_model", "gate_result", "promotion", "run_ids", "dataset_id", "train_examples", "report")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_MODEL_FIELD_NUMBER: _ClassVar[int]
    GATE_RESULT_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    index: int
    loop_id: str
    state: _common_pb2.JobState
    incumbent_model: str
    init_adapter: str
    candidate_model: str
    gate_result: GateResult
    promotion: PromotionResult
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    dataset_id: str
    train_examples: int
    report: _common_pb2.ObjectRef
    def __init__(self, index: _Optional[int] = ..., loop_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., incumbent_model: _Optional[str] = ..., init_adapter: _Optional[str] = ..., candidate_model: _Optional[str] = ..., gate_result: _Optional[_Union[GateResult, _Mapping]] = ..., promotion: _Optional[_Union[PromotionResult, _Mapping]] = ..., run_ids: _Optional[_Iterable[str]] = ..., dataset_id: _Optional[str] = ..., train_examples: _Optional[int] = ..., report: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class PromotionResult(_message.Message):
    __slots__ = ("alias", "revision", "final_revision", "outcome", "reason", "canary_stats")
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    FINAL_REVISION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CANARY_STATS_FIELD_NUMBER: _ClassVar[int]
    alias: str
    revision: int
    final_revision: int
    outcome: PromotionOutcome
    reason: str
    canary_stats: _containers.RepeatedCompositeFieldContainer[_alias_pb2.ArmStats]
    def __init__(self, alias: _Optional[str] = ..., revision: _Optional[int] = ..., final_revision: _Optional[int] = ..., outcome: _Optional[_Union[PromotionOutcome, str]] = ..., reason: _Optional[str] = ..., canary_stats: _Optional[_Iterable[_Union[_alias_pb2.ArmStats, _Mapping]]] = ...) -> None: ...

class JointLoopConfig(_message.Message):
    __slots__ = ("skill_optimization",)
    SKILL_OPTIMIZATION_FIELD_NUMBER: _ClassVar[int]
    skill_optimization: _skill_pb2.SkillOptimization
    def __init__(self, skill_optimization: _Optional[_Union[_skill_pb2.SkillOptimization, _Mapping]] = ...) -> None: ...

class JointSpend(_message.Message):
    __slots__ = ("rollouts", "target_tokens", "optimizer_tokens", "inference_seconds", "train_seconds", "train_device")
    ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_DEVICE_FIELD_NUMBER: _ClassVar[int]
    rollouts: int
    target_tokens: _common_pb2.TokenUsage
    optimizer_tokens: _common_pb2.TokenUsage
    inference_seconds: float
    train_seconds: float
    train_device: str
    def __init__(self, rollouts: _Optional[int] = ..., target_tokens: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., optimizer_tokens: _Optional[_Union[_common_pb2.TokenUsage, _Mapping]] = ..., inference_seconds: _Optional[float] = ..., train_seconds: _Optional[float] = ..., train_device: _Optional[str] = ...) -> None: ...

class JointStep(_message.Message):
    __slots__ = ("what", "role", "child_id", "start_model", "start_skill_id", "result_skill_id", "result_model", "spend")
    WHAT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CHILD_ID_FIELD_NUMBER: _ClassVar[int]
    START_MODEL_FIELD_NUMBER: _ClassVar[int]
    START_SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    what: str
    role: str
    child_id: str
    start_model: str
    start_skill_id: str
    result_skill_id: str
    result_model: str
    spend: JointSpend
    def __init__(self, what: _Optional[str] = ..., role: _Optional[str] = ..., child_id: _Optional[str] = ..., start_model: _Optional[str] = ..., start_skill_id: _Optional[str] = ..., result_skill_id: _Optional[str] = ..., result_model: _Optional[str] = ..., spend: _Optional[_Union[JointSpend, _Mapping]] = ...) -> None: ...

class JointArm(_message.Message):
    __slots__ = ("kind", "model", "skill_id", "run_id", "episodes", "resolved", "pass_rate", "gain", "spend", "parse_errors_per_episode", "write_rate")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    GAIN_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    PARSE_ERRORS_PER_EPISODE_FIELD_NUMBER: _ClassVar[int]
    WRITE_RATE_FIELD_NUMBER: _ClassVar[int]
    kind: JointArmKind
    model: str
    skill_id: str
    run_id: str
    episodes: int
    resolved: int
    pass_rate: float
    gain: float
    spend: JointSpend
    parse_errors_per_episode: float
    write_rate: float
    def __init__(self, kind: _Optional[_Union[JointArmKind, str]] = ..., model: _Optional[str] = ..., skill_id: _Optional[str] = ..., run_id: _Optional[str] = ..., episodes: _Optional[int] = ..., resolved: _Optional[int] = ..., pass_rate: _Optional[float] = ..., gain: _Optional[float] = ..., spend: _Optional[_Union[JointSpend, _Mapping]] = ..., parse_errors_per_episode: _Optional[float] = ..., write_rate: _Optional[float] = ...) -> None: ...

class RlLoopConfig(_message.Message):
    __slots__ = ("iterations", "samples_per_task", "eval_every", "sft_warm_start", "sft_hyperparameters", "init_adapter", "temperature", "sft_task_ids")
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    SFT_WARM_START_FIELD_NUMBER: _ClassVar[int]
    SFT_HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SFT_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    iterations: int
    samples_per_task: int
    eval_every: int
    sft_warm_start: bool
    sft_hyperparameters: _trainer_pb2.Hyperparameters
    init_adapter: str
    temperature: float
    sft_task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, iterations: _Optional[int] = ..., samples_per_task: _Optional[int] = ..., eval_every: _Optional[int] = ..., sft_warm_start: _Optional[bool] = ..., sft_hyperparameters: _Optional[_Union[_trainer_pb2.Hyperparameters, _Mapping]] = ..., init_adapter: _Optional[str] = ..., temperature: _Optional[float] = ..., sft_task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RlIteration(_message.Message):
    __slots__ = ("index", "policy_model", "policy", "run_id", "dataset_build_id", "dataset_id", "fine_tune_job_id", "adapter", "episodes", "masked_episodes", "reward_mean", "reward_std", "train_pass_rate", "evaluation_id", "eval_pass_rate", "eval_baseline_pass_rate", "stage", "state", "train_metrics")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    POLICY_MODEL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    FINE_TUNE_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    MASKED_EPISODES_FIELD_NUMBER: _ClassVar[int]
    REWARD_MEAN_FIELD_NUMBER: _ClassVar[int]
    REWARD_STD_FIELD_NUMBER: _ClassVar[int]
    TRAIN_PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    EVAL_PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    EVAL_BASELINE_PASS_RATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TRAIN_METRICS_FIELD_NUMBER: _ClassVar[int]
    index: int
    policy_model: str
    policy: _trajectory_pb2.AdapterIdentity
    run_id: str
    dataset_build_id: str
    dataset_id: str
    fine_tune_job_id: str
    adapter: _trainer_pb2.AdapterRef
    episodes: int
    masked_episodes: int
    reward_mean: float
    reward_std: float
    train_pass_rate: float
    evaluation_id: str
    eval_pass_rate: float
    eval_baseline_pass_rate: float
    stage: LoopStage
    state: _common_pb2.JobState
    train_metrics: _trainer_pb2.TrainingMetrics
    def __init__(self, index: _Optional[int] = ..., policy_model: _Optional[str] = ..., policy: _Optional[_Union[_trajectory_pb2.AdapterIdentity, _Mapping]] = ..., run_id: _Optional[str] = ..., dataset_build_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., fine_tune_job_id: _Optional[str] = ..., adapter: _Optional[_Union[_trainer_pb2.AdapterRef, _Mapping]] = ..., episodes: _Optional[int] = ..., masked_episodes: _Optional[int] = ..., reward_mean: _Optional[float] = ..., reward_std: _Optional[float] = ..., train_pass_rate: _Optional[float] = ..., evaluation_id: _Optional[str] = ..., eval_pass_rate: _Optional[float] = ..., eval_baseline_pass_rate: _Optional[float] = ..., stage: _Optional[_Union[LoopStage, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., train_metrics: _Optional[_Union[_trainer_pb2.TrainingMetrics, _Mapping]] = ...) -> None: ...

class LoopStageStatus(_message.Message):
    __slots__ = ("stage", "state", "artefacts", "error", "start_time", "end_time")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ARTEFACTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    stage: LoopStage
    state: _common_pb2.JobState
    artefacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ResourceRef]
    error: _common_pb2.Error
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, stage: _Optional[_Union[LoopStage, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., artefacts: _Optional[_Iterable[_Union[_common_pb2.ResourceRef, _Mapping]]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GateRule(_message.Message):
    __slots__ = ("metric", "kind", "margin", "use_interval")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    USE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    metric: GateMetric
    kind: GateRuleKind
    margin: float
    use_interval: bool
    def __init__(self, metric: _Optional[_Union[GateMetric, str]] = ..., kind: _Optional[_Union[GateRuleKind, str]] = ..., margin: _Optional[float] = ..., use_interval: _Optional[bool] = ...) -> None: ...

class PromotionGate(_message.Message):
    __slots__ = ("metric", "margin", "rules", "min_episodes")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    MIN_EPISODES_FIELD_NUMBER: _ClassVar[int]
    metric: GateMetric
    margin: float
    rules: _containers.RepeatedCompositeFieldContainer[GateRule]
    min_episodes: int
    def __init__(self, metric: _Optional[_Union[GateMetric, str]] = ..., margin: _Optional[float] = ..., rules: _Optional[_Iterable[_Union[GateRule, _Mapping]]] = ..., min_episodes: _Optional[int] = ...) -> None: ...

class GateRuleResult(_message.Message):
    __slots__ = ("rule", "incumbent_value", "candidate_value", "improvement", "passed", "reason")
    RULE_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VALUE_FIELD_NUMBER: _ClassVar[int]
    IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    rule: GateRule
    incumbent_value: float
    candidate_value: float
    improvement: float
    passed: bool
    reason: str
    def __init__(self, rule: _Optional[_Union[GateRule, _Mapping]] = ..., incumbent_value: _Optional[float] = ..., candidate_value: _Optional[float] = ..., improvement: _Optional[float] = ..., passed: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class GateResult(_message.Message):
    __slots__ = ("metric", "margin", "incumbent_value", "candidate_value", "improvement", "decision", "reason", "evaluation_id", "rule_results")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_VALUE_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_VALUE_FIELD_NUMBER: _ClassVar[int]
    IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_RESULTS_FIELD_NUMBER: _ClassVar[int]
    metric: GateMetric
    margin: float
    incumbent_value: float
    candidate_value: float
    improvement: float
    decision: GateDecision
    reason: str
    evaluation_id: str
    rule_results: _containers.RepeatedCompositeFieldContainer[GateRuleResult]
    def __init__(self, metric: _Optional[_Union[GateMetric, str]] = ..., margin: _Optional[float] = ..., incumbent_value: _Optional[float] = ..., candidate_value: _Optional[float] = ..., improvement: _Optional[float] = ..., decision: _Optional[_Union[GateDecision, str]] = ..., reason: _Optional[str] = ..., evaluation_id: _Optional[str] = ..., rule_results: _Optional[_Iterable[_Union[GateRuleResult, _Mapping]]] = ...) -> None: ...

class Loop(_message.Message):
    __slots__ = ("id", "suite", "base_model", "incumbent_model", "teacher_kind", "teacher_model", "rollouts_per_task", "episode", "concurrency", "recipe", "recipe_parameters", "dataset_split", "method", "hyperparameters", "adapter_name", "eval_rollouts_per_task", "gate", "labels", "state", "error", "stage", "stages", "candidate_model", "gate_result", "report", "create_time", "start_time", "end_time", "train_task_ids", "test_task_ids", "kind", "rl", "iterations", "alias", "canary", "rounds", "stop_after_rejections", "round_start", "incumbent_rollouts", "extra_run_ids", "captured_traffic", "init_adapter", "parent_loop_id", "round", "round_results", "promotion", "joint", "joint_steps", "joint_arms", "candidate_skill_id", "train_gpus")
    class RecipeParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_MODEL_FIELD_NUMBER: _ClassVar[int]
    TEACHER_KIND_FIELD_NUMBER: _ClassVar[int]
    TEACHER_MODEL_FIELD_NUMBER: _ClassVar[int]
    ROLLOUTS_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RECIPE_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DATASET_SPLIT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_NAME_FIELD_NUMBER: _ClassVar[int]
    EVAL_ROLLOUTS_PER_TASK_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_MODEL_FIELD_NUMBER: _ClassVar[int]
    GATE_RESULT_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    TEST_TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    RL_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STOP_AFTER_REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    ROUND_START_FIELD_NUMBER: _ClassVar[int]
    INCUMBENT_ROLLOUTS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_TRAFFIC_FIELD_NUMBER: _ClassVar[int]
    INIT_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    PARENT_LOOP_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUND_RESULTS_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    JOINT_FIELD_NUMBER: _ClassVar[int]
    JOINT_STEPS_FIELD_NUMBER: _ClassVar[int]
    JOINT_ARMS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_SKILL_ID_FIELD_NUMBER: _ClassVar[int]
    TRAIN_GPUS_FIELD_NUMBER: _ClassVar[int]
    id: str
    suite: str
    base_model: str
    incumbent_model: str
    teacher_kind: _trajectory_pb2.TeacherKind
    teacher_model: str
    rollouts_per_task: int
    episode: _run_pb2.EpisodeSettings
    concurrency: int
    recipe: str
    recipe_parameters: _containers.ScalarMap[str, str]
    dataset_split: _dataset_pb2.SplitConfig
    method: _trainer_pb2.FineTuneMethod
    hyperparameters: _trainer_pb2.Hyperparameters
    adapter_name: str
    eval_rollouts_per_task: int
    gate: PromotionGate
    labels: _containers.ScalarMap[str, str]
    state: _common_pb2.JobState
    error: _common_pb2.Error
    stage: LoopStage
    stages: _containers.RepeatedCompositeFieldContainer[LoopStageStatus]
    candidate_model: str
    gate_result: GateResult
    report: _common_pb2.ObjectRef
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    train_task_ids: _containers.RepeatedScalarFieldContainer[str]
    test_task_ids: _containers.RepeatedScalarFieldContainer[str]
    kind: LoopKind
    rl: RlLoopConfig
    iterations: _containers.RepeatedCompositeFieldContainer[RlIteration]
    alias: str
    canary: _alias_pb2.CanaryPolicy
    rounds: int
    stop_after_rejections: int
    round_start: RoundStart
    incumbent_rollouts: bool
    extra_run_ids: _containers.RepeatedScalarFieldContainer[str]
    captured_traffic: _containers.RepeatedCompositeFieldContainer[_dataset_pb2.CapturedTraffic]
    init_adapter: str
    parent_loop_id: str
    round: int
    round_results: _containers.RepeatedCompositeFieldContainer[LoopRound]
    promotion: PromotionResult
    joint: JointLoopConfig
    joint_steps: _containers.RepeatedCompositeFieldContainer[JointStep]
    joint_arms: _containers.RepeatedCompositeFieldContainer[JointArm]
    candidate_skill_id: str
    train_gpus: int
    def __init__(self, id: _Optional[str] = ..., suite: _Optional[str] = ..., base_model: _Optional[str] = ..., incumbent_model: _Optional[str] = ..., teacher_kind: _Optional[_Union[_trajectory_pb2.TeacherKind, str]] = ..., teacher_model: _Optional[str] = ..., rollouts_per_task: _Optional[int] = ..., episode: _Optional[_Union[_run_pb2.EpisodeSettings, _Mapping]] = ..., concurrency: _Optional[int] = ..., recipe: _Optional[str] = ..., recipe_parameters: _Optional[_Mapping[str, str]] = ..., dataset_split: _Optional[_Union[_dataset_pb2.SplitConfig, _Mapping]] = ..., method: _Optional[_Union[_trainer_pb2.FineTuneMethod, str]] = ..., hyperparameters: _Optional[_Union[_trainer_pb2.Hyperparameters, _Mapping]] = ..., adapter_name: _Optional[str] = ..., eval_rollouts_per_task: _Optional[int] = ..., gate: _Optional[_Union[PromotionGate, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., error: _Optional[_Union[_common_pb2.Error, _Mapping]] = ..., stage: _Optional[_Union[LoopStage, str]] = ..., stages: _Optional[_Iterable[_Union[LoopStageStatus, _Mapping]]] = ..., candidate_model: _Optional[str] = ..., gate_result: _Optional[_Union[GateResult, _Mapping]] = ..., report: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., train_task_ids: _Optional[_Iterable[str]] = ..., test_task_ids: _Optional[_Iterable[str]] = ..., kind: _Optional[_Union[LoopKind, str]] = ..., rl: _Optional[_Union[RlLoopConfig, _Mapping]] = ..., iterations: _Optional[_Iterable[_Union[RlIteration, _Mapping]]] = ..., alias: _Optional[str] = ..., canary: _Optional[_Union[_alias_pb2.CanaryPolicy, _Mapping]] = ..., rounds: _Optional[int] = ..., stop_after_rejections: _Optional[int] = ..., round_start: _Optional[_Union[RoundStart, str]] = ..., incumbent_rollouts: _Optional[bool] = ..., extra_run_ids: _Optional[_Iterable[str]] = ..., captured_traffic: _Optional[_Iterable[_Union[_dataset_pb2.CapturedTraffic, _Mapping]]] = ..., init_adapter: _Optional[str] = ..., parent_loop_id: _Optional[str] = ..., round: _Optional[int] = ..., round_results: _Optional[_Iterable[_Union[LoopRound, _Mapping]]] = ..., promotion: _Optional[_Union[PromotionResult, _Mapping]] = ..., joint: _Optional[_Union[JointLoopConfig, _Mapping]] = ..., joint_steps: _Optional[_Iterable[_Union[JointStep, _Mapping]]] = ..., joint_arms: _Optional[_Iterable[_Union[JointArm, _Mapping]]] = ..., candidate_skill_id: _Optional[str] = ..., train_gpus: _Optional[int] = ...) -> None: ...
