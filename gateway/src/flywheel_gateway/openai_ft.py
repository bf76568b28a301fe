"""OpenAI's fine-tuning objects from ours, and the create request checked: pure functions, no I/O.

What maps onto what (``fine_tuning.py`` does the calls):

* an uploaded **file** (``file-<hex>``) is a JSONL object in the object store; a job's training
  and validation files become one dataset of dataset-svc (``ImportDataset``, recipe ``import``);
* a **job** is a trainer ``FineTuneJob`` (``ftj-<ULID>``, the OpenAI job id as it is); what only
  OpenAI's object has (the file ids, the suffix, the metadata, the base learning rate the
  multiplier scales) is kept in the job's labels under ``openai.``;
* **method** ``supervised`` / ``dpo`` / ``grpo`` is SFT / DPO / GRPO; ``n_epochs``,
  ``batch_size``, ``learning_rate_multiplier`` (times the trainer's default rate for the method),
  DPO's ``beta``, GRPO's ``epsilon``, ``epsilon_high``, ``kl_beta``, ``loss_type``, ``iterations``;
  ``"auto"`` (or absent) leaves the trainer's default;
* **fine_tuned_model** is the published adapter's gateway name ``ft/<name>-v<version>``, where
  ``<name>`` is the suffix (lower-cased, other characters as ``-``) or ``<base model>-ft``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel.trainer.v1 import trainer_pb2

LABEL = "openai."
L_TRAINING_FILE = LABEL + "training_file"
L_VALIDATION_FILE = LABEL + "validation_file"
L_SUFFIX = LABEL + "suffix"
L_MODEL = LABEL + "model"
L_BASE_LR = LABEL + "base_learning_rate"
L_METADATA = LABEL + "metadata."

METHODS = {
    "supervised": trainer_pb2.FINE_TUNE_METHOD_SFT,
    "dpo": trainer_pb2.FINE_TUNE_METHOD_DPO,
    "grpo": trainer_pb2.FINE_TUNE_METHOD_GRPO,
}
METHOD_NAMES = {v: k for k, v in METHODS.items()}
GRPO_LOSS_TYPES = {
    "grpo": trainer_pb2.GRPO_LOSS_TYPE_GRPO,
    "bnpo": trainer_pb2.GRPO_LOSS_TYPE_BNPO,
    "dr_grpo": trainer_pb2.GRPO_LOSS_TYPE_DR_GRPO,
    "dapo": trainer_pb2.GRPO_LOSS_TYPE_DAPO,
}
COMMON_HP = ("n_epochs", "batch_size", "learning_rate_multiplier")
METHOD_HP = {
    "supervised": COMMON_HP,
    "dpo": (*COMMON_HP, "beta"),
    "grpo": (*COMMON_HP, "epsilon", "epsilon_high", "kl_beta", "loss_type", "iterations"),
}
ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_METADATA = 16
#: An OpenAI-style job status for each trainer state (SUCCEEDED is "succeeded" once servable).
STATUS = {
    common_pb2.JOB_STATE_UNSPECIFIED: "validating_files",
    common_pb2.JOB_STATE_QUEUED: "queued",
    common_pb2.JOB_STATE_RUNNING: "running",
    common_pb2.JOB_STATE_SUCCEEDED: "succeeded",
    common_pb2.JOB_STATE_FAILED: "failed",
    common_pb2.JOB_STATE_CANCELLED: "cancelled",
}
TERMINAL = frozenset(
    {common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED}
)


class RequestError(ValueError):
    """A request the caller must fix: ``status`` 400 or 404, OpenAI ``code`` and ``param``."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None, status: int = 400):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or "invalid_request_error"
        self.status = status


@dataclass
class CreateSpec:
    """A checked ``POST /v1/fine_tuning/jobs`` body."""

    model: str
    training_file: str
    validation_file: str | None
    method: str
    hyperparameters: dict[str, Any]
    suffix: str | None
    seed: int | None
    metadata: dict[str, str] = field(default_factory=dict)


def _hp_value(name: str, value: Any, where: str) -> Any:
    """One hyperparameter, checked; None for ``"auto"``."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        raise RequestError(f"{where} must be a number or 'auto', got {value!r}", where)
    if name == "loss_type":
        if value not in GRPO_LOSS_TYPES:
            raise RequestError(f"{where} must be one of {', '.join(GRPO_LOSS_TYPES)}", where)
        return value
    if name in ("batch_size", "iterations") or (name == "n_epochs" and isinstance(value, int)):
        if not isinstance(value, int) or value < 1:
            raise RequestError(f"{where} must be a positive integer or 'auto', got {value!r}", where)
        return value
    if not isinstance(value, int | float):
        raise RequestError(f"{where} must be a number or 'auto', got {value!r}", where)
    if (name == "kl_beta" and value < 0) or (name != "kl_beta" and value <= 0):
        raise RequestError(f"{where} must be {'>= 0' if name == 'kl_beta' else '> 0'}, got {value!r}", where)
    return float(value)


def _hyperparameters(given: Any, method: str, where: str) -> dict[str, Any]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise RequestError(f"{where} must be an object", where)
    allowed = METHOD_HP[method]
    out = {}
    for name, value in given.items():
        if name not in allowed:
            raise RequestError(
                f"{where}.{name} is not a {method} hyperparameter (known: {', '.join(allowed)})",
                f"{where}.{name}",
            )
        checked = _hp_value(name, value, f"{where}.{name}")
        if checked is not None:
            out[name] = checked
    return out


def parse_create(body: Any) -> CreateSpec:
    """Check a create body the way OpenAI documents it; :class:`RequestError` names the field."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    known = {
        "model", "training_file", "validation_file", "method", "hyperparameters", "suffix", "seed",
        "metadata", "integrations",
    }  # fmt: skip
    for name in body:
        if name not in known:
            raise RequestError(f"Unrecognized request argument supplied: {name}", name)
    for name in ("model", "training_file"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise RequestError(f"Missing required parameter: '{name}'.", name, "missing_required_parameter")
    validation = body.get("validation_file")
    if validation is not None and (not isinstance(validation, str) or not validation):
        raise RequestError("validation_file must be a file id", "validation_file")
    if body.get("integrations"):
        raise RequestError("integrations are not supported by this gateway", "integrations")
    method_body = body.get("method")
    method = "supervised"
    hp: dict[str, Any] = {}
    if method_body is not None:
        if not isinstance(method_body, dict) or method_body.get("type") not in METHODS:
            raise RequestError(
                f"method.type must be one of {', '.join(METHODS)}"
                + (" (reinforcement fine-tuning with graders is not supported; use grpo)"
                   if isinstance(method_body, dict) and method_body.get("type") == "reinforcement" else ""),
                "method.type",
            )  # fmt: skip
        method = method_body["type"]
        for other in METHODS:
            if other != method and method_body.get(other) is not None:
                raise RequestError(f"method.{other} given for a {method} job", f"method.{other}")
        section = method_body.get(method)
        if section is not None and not isinstance(section, dict):
            raise RequestError(f"method.{method} must be an object", f"method.{method}")
        hp = _hyperparameters(
            (section or {}).get("hyperparameters"), method, f"method.{method}.hyperparameters"
        )
    legacy = body.get("hyperparameters")
    if legacy is not None:
        if method != "supervised" and legacy:
            raise RequestError(
                f"hyperparameters (deprecated) apply to supervised jobs only; use method.{method}.hyperparameters",
                "hyperparameters",
            )
        hp = {**_hyperparameters(legacy, "supervised", "hyperparameters"), **hp}
    suffix = body.get("suffix")
    if suffix is not None and (not isinstance(suffix, str) or not 1 <= len(suffix) <= 64):
        raise RequestError("suffix must be a string of 1 to 64 characters", "suffix")
    if suffix is not None and not adapter_name_from_suffix(suffix):
        raise RequestError("suffix must contain a letter or a digit", "suffix")
    seed = body.get("seed")
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 2**31 - 1
    ):
        raise RequestError("seed must be an integer between 0 and 2147483647", "seed")
    return CreateSpec(
        model=body["model"],
        training_file=body["training_file"],
        validation_file=validation,
        method=method,
        hyperparameters=hp,
        suffix=suffix,
        seed=seed,
        metadata=parse_metadata(body.get("metadata")),
    )


def parse_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_METADATA:
        raise RequestError(f"metadata must be an object of at most {MAX_METADATA} pairs", "metadata")
    for key, item in value.items():
        if not 1 <= len(key) <= 64 or not isinstance(item, str) or len(item) > 512:
            raise RequestError(
                "metadata keys are 1-64 characters, values strings of at most 512", f"metadata.{key}"
            )
    return dict(value)


def adapter_name_from_suffix(suffix: str) -> str:
    """The adapter name a suffix gives: lower-case, other characters as ``-``, at most 63."""
    name = re.sub(r"[^a-z0-9._-]+", "-", suffix.lower()).lstrip("._-")
    return name[:63]


def default_adapter_name(base_model: str) -> str:
    name = adapter_name_from_suffix(base_model)[:60] or "model"
    return f"{name}-ft"


def apply_hyperparameters(hp: trainer_pb2.Hyperparameters, spec: CreateSpec, base_lr: float) -> None:
    """Set the trainer's hyperparameters from the checked OpenAI ones (``base_lr``: its default rate)."""
    given = spec.hyperparameters
    if "n_epochs" in given:
        hp.epochs = given["n_epochs"]
    if "batch_size" in given:
        hp.batch_size = given["batch_size"]
    if "learning_rate_multiplier" in given:
        hp.learning_rate = base_lr * given["learning_rate_multiplier"]
    if "beta" in given:
        hp.dpo_beta = given["beta"]
    for name in ("epsilon", "epsilon_high", "kl_beta"):
        if name in given:
            setattr(hp.grpo, name, given[name])
    if "loss_type" in given:
        hp.grpo.loss_type = GRPO_LOSS_TYPES[given["loss_type"]]
    if "iterations" in given:
        hp.grpo.iterations = given["iterations"]
    if spec.seed is not None:
        hp.seed = spec.seed


def labels_for(spec: CreateSpec, base_lr: float) -> dict[str, str]:
    labels = {L_TRAINING_FILE: spec.training_file, L_MODEL: spec.model, L_BASE_LR: repr(base_lr)}
    if spec.validation_file:
        labels[L_VALIDATION_FILE] = spec.validation_file
    if spec.suffix is not None:
        labels[L_SUFFIX] = spec.suffix
    labels.update({L_METADATA + k: v for k, v in spec.metadata.items()})
    return labels


# ------------------------------------------------------------------------------------------ output


def seconds(stamp: Any) -> int | None:
    """Unix seconds of a Timestamp, None when unset."""
    return int(stamp.seconds) if stamp.seconds or stamp.nanos else None


def fine_tuned_model(job: trainer_pb2.FineTuneJob, prefix: str) -> str | None:
    if not job.adapter.name:
        return None
    return f"{prefix}{job.adapter.name}-v{job.adapter.version}"


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def hyperparameters_out(job: trainer_pb2.FineTuneJob) -> dict[str, Any]:
    hp = job.hyperparameters
    base_lr = float(job.labels.get(L_BASE_LR) or 0) or None
    out: dict[str, Any] = {
        "n_epochs": _number(hp.epochs) if hp.epochs else "auto",
        "batch_size": hp.batch_size or "auto",
        "learning_rate_multiplier": round(hp.learning_rate / base_lr, 10)
        if base_lr and hp.learning_rate
        else "auto",
    }
    if job.method == trainer_pb2.FINE_TUNE_METHOD_DPO:
        out["beta"] = hp.dpo_beta or "auto"
    if job.method == trainer_pb2.FINE_TUNE_METHOD_GRPO:
        grpo = hp.grpo
        out.update(
            epsilon=grpo.epsilon if grpo.HasField("epsilon") else "auto",
            epsilon_high=grpo.epsilon_high if grpo.HasField("epsilon_high") else "auto",
            kl_beta=grpo.kl_beta if grpo.HasField("kl_beta") else "auto",
            iterations=grpo.iterations or "auto",
        )
    return out


def job_object(
    job: trainer_pb2.FineTuneJob, *, status: str, prefix: str, trained_tokens: int | None, now: int
) -> dict[str, Any]:
    """The ``fine_tuning.job`` object (``status`` as :func:`status_of` decided)."""
    labels = job.labels
    method = METHOD_NAMES.get(job.method, "supervised")
    hp = hyperparameters_out(job)
    error = None
    if status == "failed":
        code = job.error.details.get("reason") or _code_name(job.error.code)
        error = {
            "code": code,
            "message": job.error.message or "the job failed",
            "param": job.error.details.get("field"),
        }
    eta = None
    if status == "running" and job.state == common_pb2.JOB_STATE_RUNNING and job.progress.HasField("eta"):
        eta = now + int(job.progress.eta.seconds)
    suffix = labels.get(L_SUFFIX)
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": labels.get(L_MODEL) or job.base_model,
        "created_at": seconds(job.create_time) or 0,
        "finished_at": seconds(job.end_time) if status in ("succeeded", "failed", "cancelled") else None,
        "fine_tuned_model": fine_tuned_model(job, prefix) if status == "succeeded" else None,
        "organization_id": "flywheel",
        "result_files": [],
        "status": status,
        "validation_file": labels.get(L_VALIDATION_FILE),
        "training_file": labels.get(L_TRAINING_FILE) or job.dataset_id,
        "hyperparameters": {k: hp[k] for k in COMMON_HP},
        "trained_tokens": trained_tokens if status == "succeeded" else None,
        "error": error,
        "seed": int(job.hyperparameters.seed) if job.hyperparameters.HasField("seed") else 42,
        "estimated_finish": eta,
        "integrations": [],
        "metadata": {k[len(L_METADATA) :]: v for k, v in labels.items() if k.startswith(L_METADATA)} or None,
        "method": {"type": method, method: {"hyperparameters": hp}},
        "user_provided_suffix": suffix,
        # Flywheel's own fields, beside OpenAI's: the trainer's base model and dataset.
        "flywheel": {
            "base_model": job.base_model,
            "dataset_id": job.dataset_id,
            "device": job.device or None,
        },
    }


def _code_name(code: int) -> str:
    names = {
        3: "invalid_argument", 4: "deadline_exceeded", 5: "not_found", 8: "resource_exhausted",
        9: "failed_precondition", 10: "aborted", 13: "internal", 14: "unavailable",
    }  # fmt: skip
    return names.get(code, "internal")


def metrics_data(entry: dict[str, Any], total_steps: int) -> dict[str, Any]:
    """OpenAI's metrics event ``data`` from one Trainer log entry."""
    data: dict[str, Any] = {"step": int(entry.get("step", 0)), "total_steps": total_steps}
    for ours, theirs in (
        ("loss", "train_loss"),
        ("mean_token_accuracy", "train_mean_token_accuracy"),
        ("eval_loss", "valid_loss"),
        ("eval_mean_token_accuracy", "valid_mean_token_accuracy"),
        ("learning_rate", "learning_rate"),
    ):
        if isinstance(entry.get(ours), int | float):
            data[theirs] = entry[ours]
    return data


def event(job_id: str, name: str, created_at: int, message: str, *, level: str = "info",
          data: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "object": "fine_tuning.job.event",
        "id": f"ftevent-{job_id}-{name}",
        "created_at": created_at,
        "level": level,
        "message": message,
        "data": data or {},
        "type": "metrics" if name.startswith("step-") else "message",
    }


def events(
    job: trainer_pb2.FineTuneJob,
    history: list[dict[str, Any]],
    *,
    status: str,
    prefix: str,
    now: int,
) -> list[dict[str, Any]]:
    """Every event of the job, newest first.

    Derived each time from what the trainer keeps (the job, the Trainer's log history from the
    published adapter or the newest checkpoint, the latest metrics), so every gateway replica
    answers the same and nothing is stored twice. The Trainer's log entries carry no time: a
    metrics event's ``created_at`` is placed between the start and the end (or now) by its step.
    """
    created = seconds(job.create_time) or now
    out = [
        event(job.id, "created", created, f"Created fine-tuning job: {job.id}"),
        event(job.id, "validated", created, "Validated training file: " + (job.labels.get(L_TRAINING_FILE) or job.dataset_id)),
        event(job.id, "queued", created, "Fine-tuning job queued"),
    ]  # fmt: skip
    start = seconds(job.start_time)
    if start is not None:
        where = f" on {job.device}" if job.device else ""
        out.append(event(job.id, "started", start, f"Fine-tuning job started{where}"))
        end = seconds(job.end_time) or now
        steps = [
            e
            for e in history
            if isinstance(e.get("loss"), int | float) or isinstance(e.get("eval_loss"), int | float)
        ]
        total = int(job.progress.total_steps) or max((int(e.get("step", 0)) for e in steps), default=0)
        last = max((int(e.get("step", 0)) for e in steps), default=0)
        if job.latest_metrics.step > last and job.state not in TERMINAL:
            m = job.latest_metrics
            steps.append({"step": m.step, "loss": m.loss, "learning_rate": m.learning_rate,
                          **({"eval_loss": m.eval_loss} if m.HasField("eval_loss") else {})})  # fmt: skip
        span_steps = max(total, 1)
        seen: set[str] = set()
        for entry in steps:
            step = int(entry.get("step", 0))
            name = f"step-{step}" + ("-eval" if "loss" not in entry else "")
            if name in seen:
                continue
            seen.add(name)
            data = metrics_data(entry, total)
            at = start + int((end - start) * min(step, span_steps) / span_steps)
            text = f"Step {step}/{total}: " + ", ".join(
                f"{k.replace('_', ' ')}={v:.4g}" for k, v in data.items() if k in ("train_loss", "valid_loss")
            )
            out.append(event(job.id, name, at, text, data=data))
    end_s = seconds(job.end_time)
    model = fine_tuned_model(job, prefix)
    if job.state == common_pb2.JOB_STATE_SUCCEEDED and end_s is not None:
        if status == "succeeded":
            out.append(event(job.id, "model", end_s, f"New fine-tuned model created: {model}"))
            out.append(event(job.id, "succeeded", end_s, "The job has successfully completed"))
        else:
            out.append(
                event(
                    job.id,
                    "published",
                    end_s,
                    f"Adapter published as {model}; loading it on the model server",
                )
            )
    elif job.state == common_pb2.JOB_STATE_FAILED and end_s is not None:
        out.append(event(job.id, "failed", end_s, f"The job failed: {job.error.message}", level="error"))
    elif job.state == common_pb2.JOB_STATE_CANCELLED and end_s is not None:
        out.append(event(job.id, "cancelled", end_s, "The job was cancelled"))
    out.reverse()
    return out


def checkpoint(job: trainer_pb2.FineTuneJob, step: int, created_at: int, entry: dict[str, Any] | None,
               model: str) -> dict[str, Any]:  # fmt: skip
    metrics: dict[str, Any] = {"step": float(step)}
    if entry:
        data = metrics_data(entry, 0)
        for key in ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"):
            if key in data:
                metrics[key] = data[key]
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": f"ftckpt-{job.id}-{step}",
        "created_at": created_at,
        "fine_tuned_model_checkpoint": model,
        "fine_tuning_job_id": job.id,
        "metrics": metrics,
        "step_number": step,
    }


def page(items: list[dict[str, Any]], after: str | None, limit: int) -> dict[str, Any]:
    """OpenAI's cursor page: the items after the one whose id is ``after``, at most ``limit``."""
    start = 0
    if after:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise RequestError(f"after: no item {after!r} in this list", "after")
        start = ids.index(after) + 1
    chunk = items[start : start + limit]
    return {
        "object": "list",
        "data": chunk,
        "has_more": start + limit < len(items),
        "first_id": chunk[0]["id"] if chunk else None,
        "last_id": chunk[-1]["id"] if chunk else None,
    }
