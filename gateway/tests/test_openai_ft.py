"""The fine-tuning API's mapping without a network: create bodies checked, objects in OpenAI's shape.

Shapes are checked with openai-python's own pydantic models (``model_validate``, strict about
required fields and literals), so a field OpenAI's client needs cannot go missing unnoticed.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from flywheel.common.v1 import common_pb2
from flywheel.trainer.v1 import trainer_pb2
from flywheel_gateway import openai_ft as oft

BODY = {"model": "gemma-3-270m", "training_file": "file-abc"}


def stamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def trainer_job(
    state: int = common_pb2.JOB_STATE_SUCCEEDED, method: int = trainer_pb2.FINE_TUNE_METHOD_SFT
) -> Any:
    spec = oft.parse_create(
        {
            **BODY,
            "suffix": "Memo",
            "metadata": {"team": "qa"},
            "hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 0.5},
        }
    )
    job = trainer_pb2.FineTuneJob(
        id="ftj-01ABC",
        base_model="gemma-3-270m",
        dataset_id="ds-0123456789abcdef",
        method=method,
        adapter_name="memo",
        state=state,
        create_time=stamp(1000),
        start_time=stamp(1010),
        device="cpu",
    )
    oft.apply_hyperparameters(job.hyperparameters, spec, 2e-4)
    job.hyperparameters.batch_size = 4
    job.hyperparameters.seed = 42
    job.labels.update(oft.labels_for(spec, 2e-4))
    job.progress.total_steps = 4
    if state in oft.TERMINAL:
        job.end_time.CopyFrom(stamp(1050))
    if state == common_pb2.JOB_STATE_SUCCEEDED:
        job.adapter.name, job.adapter.version = "memo", 3
    if state == common_pb2.JOB_STATE_FAILED:
        job.error.code = 8
        job.error.message = "out of memory"
    return job


def test_create_defaults_and_legacy_hyperparameters() -> None:
    spec = oft.parse_create({**BODY, "hyperparameters": {"n_epochs": "auto", "batch_size": 8}})
    assert (spec.method, spec.hyperparameters, spec.suffix, spec.seed) == (
        "supervised",
        {"batch_size": 8},
        None,
        None,
    )
    spec = oft.parse_create(
        {
            **BODY,
            "method": {
                "type": "dpo",
                "dpo": {"hyperparameters": {"beta": 0.2, "learning_rate_multiplier": 2}},
            },
        }
    )
    assert spec.method == "dpo" and spec.hyperparameters == {"beta": 0.2, "learning_rate_multiplier": 2.0}
    hp = trainer_pb2.Hyperparameters()
    oft.apply_hyperparameters(hp, spec, 5e-6)
    assert hp.dpo_beta == pytest.approx(0.2) and hp.learning_rate == pytest.approx(1e-5)
    spec = oft.parse_create(
        {
            **BODY,
            "method": {"type": "grpo", "grpo": {"hyperparameters": {"kl_beta": 0, "loss_type": "dr_grpo"}}},
        }
    )
    hp = trainer_pb2.Hyperparameters()
    oft.apply_hyperparameters(hp, spec, 1e-5)
    assert hp.grpo.HasField("kl_beta") and hp.grpo.loss_type == trainer_pb2.GRPO_LOSS_TYPE_DR_GRPO


@pytest.mark.parametrize(
    ("body", "param", "text"),
    [
        ({"training_file": "file-abc"}, "model", "Missing required parameter: 'model'"),
        ({**BODY, "method": {"type": "reinforcement"}}, "method.type", "use grpo"),
        ({**BODY, "method": {"type": "dpo", "supervised": {}}}, "method.supervised", "given for a dpo job"),
        ({**BODY, "hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs", "positive integer"),
        (
            {**BODY, "hyperparameters": {"beta": 0.1}},
            "hyperparameters.beta",
            "not a supervised hyperparameter",
        ),
        (
            {**BODY, "hyperparameters": {"learning_rate_multiplier": True}},
            "hyperparameters.learning_rate_multiplier",
            "number",
        ),
        ({**BODY, "suffix": "!!!"}, "suffix", "letter or a digit"),
        ({**BODY, "seed": -1}, "seed", "between 0"),
        ({**BODY, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "at most 16"),
        ({**BODY, "integrations": [{"type": "wandb"}]}, "integrations", "not supported"),
        ({**BODY, "temperature": 1}, "temperature", "Unrecognized request argument"),
    ],
)
def test_bad_create_bodies_name_the_field(body: dict[str, Any], param: str, text: str) -> None:
    with pytest.raises(oft.RequestError) as err:
        oft.parse_create(body)
    assert err.value.param == param and text in err.value.message and err.value.status == 400


def test_adapter_names() -> None:
    assert oft.adapter_name_from_suffix("Memo Bot!") == "memo-bot-"
    assert oft.adapter_name_from_suffix("x" * 64) == "x" * 63
    assert oft.default_adapter_name("gemma-3-270m") == "gemma-3-270m-ft"


@pytest.mark.parametrize(
    ("state", "status"),
    [
        (common_pb2.JOB_STATE_QUEUED, "queued"),
        (common_pb2.JOB_STATE_RUNNING, "running"),
        (common_pb2.JOB_STATE_SUCCEEDED, "succeeded"),
        (common_pb2.JOB_STATE_FAILED, "failed"),
        (common_pb2.JOB_STATE_CANCELLED, "cancelled"),
    ],
)
def test_job_object_has_openais_shape(state: int, status: str) -> None:
    job = trainer_job(state)
    if state == common_pb2.JOB_STATE_RUNNING:
        job.progress.eta.CopyFrom(Duration(seconds=30))
    obj = oft.job_object(job, status=status, prefix="ft/", trained_tokens=123, now=2000)
    parsed = FineTuningJob.model_validate(obj)
    assert parsed.status == status and parsed.id == "ftj-01ABC" and parsed.model == "gemma-3-270m"
    assert parsed.hyperparameters.n_epochs == 2 and parsed.hyperparameters.batch_size == 4
    assert parsed.hyperparameters.learning_rate_multiplier == pytest.approx(0.5)
    assert parsed.metadata == {"team": "qa"} and parsed.user_provided_suffix == "Memo"  # type: ignore[attr-defined]
    assert parsed.training_file == "file-abc" and parsed.seed == 42
    assert parsed.fine_tuned_model == ("ft/memo-v3" if status == "succeeded" else None)
    assert parsed.trained_tokens == (123 if status == "succeeded" else None)
    assert parsed.finished_at == (1050 if state in oft.TERMINAL else None)
    assert parsed.estimated_finish == (2030 if status == "running" else None)
    if status == "failed":
        assert parsed.error is not None and (parsed.error.code, parsed.error.message) == (
            "resource_exhausted", "out of memory"
        )  # fmt: skip
    else:
        assert parsed.error is None


def test_dpo_job_object_has_its_method_section() -> None:
    job = trainer_job(method=trainer_pb2.FINE_TUNE_METHOD_DPO)
    job.hyperparameters.dpo_beta = 0.1
    parsed = FineTuningJob.model_validate(
        oft.job_object(job, status="succeeded", prefix="ft/", trained_tokens=1, now=0)
    )
    assert parsed.method is not None and parsed.method.type == "dpo" and parsed.method.dpo is not None
    assert (
        parsed.method.dpo.hyperparameters is not None
        and parsed.method.dpo.hyperparameters.beta == pytest.approx(0.1)
    )


HISTORY = [
    {"step": 1, "loss": 3.0, "learning_rate": 1e-3, "mean_token_accuracy": 0.1},
    {"step": 2, "loss": 2.0, "learning_rate": 1e-3},
    {"step": 2, "eval_loss": 2.5},
    {"step": 4, "loss": 1.0, "learning_rate": 1e-3},
    {"step": 4, "train_runtime": 3.2},  # the Trainer's summary: not an event
]


def test_events_newest_first_with_metrics() -> None:
    job = trainer_job()
    events = oft.events(job, HISTORY, status="succeeded", prefix="ft/", now=5000)
    for event in events:
        FineTuningJobEvent.model_validate(event)
    messages = [e["message"] for e in events]
    assert messages[:2] == ["The job has successfully completed", "New fine-tuned model created: ft/memo-v3"]
    assert messages[-1] == "Created fine-tuning job: ftj-01ABC"
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [(e["data"]["step"], e["id"]) for e in metrics] == [
        (4, "ftevent-ftj-01ABC-step-4"), (2, "ftevent-ftj-01ABC-step-2-eval"), (2, "ftevent-ftj-01ABC-step-2"),
        (1, "ftevent-ftj-01ABC-step-1"),
    ]  # fmt: skip
    assert metrics[-1]["data"] == {
        "step": 1, "total_steps": 4, "train_loss": 3.0, "train_mean_token_accuracy": 0.1, "learning_rate": 1e-3,
    }  # fmt: skip
    assert metrics[1]["data"]["valid_loss"] == 2.5
    times = [e["created_at"] for e in events]
    assert times == sorted(times, reverse=True) and 1010 <= metrics[-1]["created_at"] <= 1050
    # not yet served: the job is shown running and says why
    waiting = oft.events(job, HISTORY, status="running", prefix="ft/", now=5000)
    assert waiting[0]["message"] == "Adapter published as ft/memo-v3; loading it on the model server"


def test_a_running_jobs_latest_metrics_are_an_event() -> None:
    job = trainer_job(common_pb2.JOB_STATE_RUNNING)
    job.latest_metrics.step, job.latest_metrics.loss = 3, 1.5
    events = oft.events(job, HISTORY[:2], status="running", prefix="ft/", now=1020)
    assert events[0]["id"] == "ftevent-ftj-01ABC-step-3" and events[0]["data"]["train_loss"] == 1.5


def test_failed_job_event_is_an_error() -> None:
    events = oft.events(trainer_job(common_pb2.JOB_STATE_FAILED), [], status="failed", prefix="ft/", now=0)
    assert events[0]["level"] == "error" and events[0]["message"] == "The job failed: out of memory"


def test_checkpoint_shape_and_pages() -> None:
    job = trainer_job()
    items = [oft.checkpoint(job, s, 1000 + s, {"loss": 1.0 / s}, f"m{s}") for s in (3, 2, 1)]
    for item in items:
        FineTuningJobCheckpoint.model_validate(item)
    assert items[0]["metrics"] == {"step": 3.0, "train_loss": pytest.approx(1 / 3)}
    page = oft.page(items, None, 2)
    assert [i["step_number"] for i in page["data"]] == [3, 2] and page["has_more"]
    page = oft.page(items, page["last_id"], 2)
    assert [i["step_number"] for i in page["data"]] == [1] and not page["has_more"]
    with pytest.raises(oft.RequestError):
        oft.page(items, "ftckpt-nope", 2)
