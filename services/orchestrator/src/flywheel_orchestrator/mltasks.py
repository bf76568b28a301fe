"""ML-engineering tasks: the task kind, its folder layout, metrics, baselines and the judge.

An ML task is a task folder whose ``task.toml`` says ``kind = "ml"`` (layout in SUITES.md)::

    tasks/<id>/task.toml          kind, title, problem_statement, metric, target, baseline, …
    tasks/<id>/data/…             what the agent gets: train.csv (features + target), test.csv
    tasks/<id>/heldout/labels.csv the held-out answers (id + target): never sent to the sandbox
    tasks/<id>/reference.py       optional reference solution

A solution runs in the sandbox with ``data/`` in its working folder and writes
``submission/submission.csv`` (``id`` and the target column, one row per row of test.csv). The
judge here (in the orchestrator, not in the sandbox) reads that file back and scores it against
``heldout/labels.csv``. Metrics are computed with the standard library, so the orchestrator does
not need numpy or scikit-learn; the sandbox's interpreter (Debian's ``/usr/bin/python3`` with
``python3-sklearn``, ``python3-pandas``, ``python3-numpy``) does.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import tomllib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flywheel.common.v1 import common_pb2

#: Metrics the judge knows: name → True when larger is better.
METRICS: dict[str, bool] = {"accuracy": True, "macro_f1": True, "rmse": False, "mae": False}
#: Baselines the judge knows (see :func:`baseline_predictions`).
BASELINES = ("majority", "mean", "median", "last", "persistence")
#: Keys an ML task's task.toml may hold.
ML_TASK_KEYS = frozenset(
    {
        "kind",
        "title",
        "problem_statement",
        "metric",
        "target",
        "id_column",
        "baseline",
        "baseline_score",
        "reference_score",
        "time_budget_s",
        "tags",
        "seed",
        "limits",
    }
)
#: Where a solution writes its predictions, relative to its working folder.
SUBMISSION = "submission/submission.csv"
#: Largest time budget one solution may ask for (the sandbox's own maximum is 300 s).
MAX_TIME_BUDGET_S = 300.0


class MlTaskError(ValueError):
    """An ML task is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class MlTask:
    """A data folder, a metric and its direction, a held-out split the agent never sees."""

    id: str
    title: str
    problem_statement: str
    metric: str
    target: str
    data: Mapping[str, bytes]  #: path under data/ → content: exactly what the sandbox gets
    heldout: Mapping[str, str]  #: id → held-out target value (text, as in labels.csv)
    id_column: str = "id"
    baseline: str = "majority"
    baseline_score: float | None = None
    reference_score: float | None = None
    reference_solution: str = ""
    time_budget_s: float = 30.0
    tags: tuple[str, ...] = ()
    split: common_pb2.TaskSplit = common_pb2.TASK_SPLIT_UNSPECIFIED
    #: Limits of one solution's run (the suites module's TaskLimits; memory defaults are set by mle).
    limits: Any = None

    kind = common_pb2.TASK_KIND_ML

    @property
    def maximize(self) -> bool:
        return METRICS[self.metric]

    @property
    def has_reference(self) -> bool:
        return bool(self.reference_solution)

    def normalised(self, value: float) -> float | None:
        """0 at the baseline's score, 1 at the reference's (either direction); None if unknown."""
        if self.baseline_score is None or self.reference_score is None:
            return None
        span = self.reference_score - self.baseline_score
        if span == 0:
            return None
        return (value - self.baseline_score) / span

    def better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` beats ``b`` in this task's direction."""
        return a > b if self.maximize else a < b


@dataclass
class Judgement:
    """The judge's verdict on one predictions file."""

    valid: bool
    score: float | None = None
    error: str = ""
    rows: int = 0
    details: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ parsing


def _need(where: str, doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in doc:
        raise MlTaskError(f"{where}: `{key}` is required")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MlTaskError(f"{where}: `{key}` has the wrong type ({type(value).__name__})")
    return value


def is_ml_task(files: Mapping[str, bytes]) -> bool:
    """Whether a task folder's files are an ML task (``kind = "ml"`` in its task.toml)."""
    data = files.get("task.toml")
    if data is None:
        return False
    try:
        return tomllib.loads(data.decode("utf-8")).get("kind") == "ml"
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):  # the repo parser reports it
        return False


def parse_ml_task(task_id: str, where: str, files: Mapping[str, bytes], limits: Any = None) -> MlTask:
    """An ML task from its folder's files (paths relative to the task folder)."""
    here = f"{where}/task.toml"
    try:
        doc = tomllib.loads(files["task.toml"].decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as err:
        raise MlTaskError(f"{here}: not valid TOML: {err!r}") from None
    unknown = sorted(set(doc) - ML_TASK_KEYS)
    if unknown:
        raise MlTaskError(f"{here}: unknown key {unknown[0]!r} (known: {', '.join(sorted(ML_TASK_KEYS))})")
    metric = _need(here, doc, "metric", str)
    if metric not in METRICS:
        raise MlTaskError(f"{here}: metric {metric!r} is not one of {', '.join(METRICS)}")
    target = _need(here, doc, "target", str)
    baseline = doc.get("baseline", "majority")
    if baseline not in BASELINES:
        raise MlTaskError(f"{here}: baseline {baseline!r} is not one of {', '.join(BASELINES)}")
    budget = doc.get("time_budget_s", 30.0)
    if not isinstance(budget, int | float) or isinstance(budget, bool) or not 0 < budget <= MAX_TIME_BUDGET_S:
        raise MlTaskError(f"{here}: time_budget_s must be a number of seconds in (0, {MAX_TIME_BUDGET_S:g}]")
    data: dict[str, bytes] = {}
    heldout_text = None
    reference = ""
    for path, content in sorted(files.items()):
        if path == "task.toml":
            continue
        if path.startswith("data/"):
            data[path] = content
        elif path == "heldout/labels.csv":
            heldout_text = content.decode("utf-8")
        elif path == "reference.py":
            reference = content.decode("utf-8")
        else:
            raise MlTaskError(
                f"{where}/{path}: unexpected file (an ML task holds task.toml, data/…, "
                "heldout/labels.csv, reference.py)"
            )
    for need in ("data/train.csv", "data/test.csv"):
        if need not in data:
            raise MlTaskError(f"{where}/{need}: is missing")
    if heldout_text is None:
        raise MlTaskError(f"{where}/heldout/labels.csv: is missing")
    id_column = doc.get("id_column", "id")
    labels = read_csv(heldout_text)
    if not labels or id_column not in labels[0] or target not in labels[0]:
        raise MlTaskError(f"{where}/heldout/labels.csv: needs the columns {id_column!r} and {target!r}")
    test = read_csv(data["data/test.csv"].decode("utf-8"))
    if target in (test[0] if test else {}):
        raise MlTaskError(f"{where}/data/test.csv: holds the target column {target!r}: it must not")
    heldout = {row[id_column]: row[target] for row in labels}
    if {row.get(id_column) for row in test} != set(heldout):
        raise MlTaskError(f"{where}: the ids of data/test.csv and heldout/labels.csv differ")

    def number(key: str) -> float | None:
        value = doc.get(key)
        if value is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise MlTaskError(f"{here}: `{key}` must be a number")
        return float(value)

    return MlTask(
        id=task_id,
        title=str(doc.get("title") or task_id),
        problem_statement=str(_need(here, doc, "problem_statement", str)).strip(),
        metric=metric,
        target=target,
        data=data,
        heldout=heldout,
        id_column=id_column,
        baseline=baseline,
        baseline_score=number("baseline_score"),
        reference_score=number("reference_score"),
        reference_solution=reference,
        time_budget_s=float(budget),
        tags=tuple(str(t) for t in doc.get("tags", ())),
        limits=limits,
    )


# ------------------------------------------------------------------------------------ metrics


def read_csv(text: str) -> list[dict[str, str]]:
    """Rows of a CSV file with a header, as text."""
    return list(csv.DictReader(io.StringIO(text)))


def _floats(values: Sequence[str | float]) -> list[float]:
    out = []
    for v in values:
        x = float(v)
        if not math.isfinite(x):
            raise ValueError(f"not a finite number: {v!r}")
        out.append(x)
    return out


def _label(value: str | float) -> str:
    """Class labels compare as text, with ``1`` and ``1.0`` the same class."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def score(metric: str, truth: Sequence[str | float], predicted: Sequence[str | float]) -> float:
    """The metric of ``predicted`` against ``truth`` (same order, same length)."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError(f"{len(predicted)} predictions for {len(truth)} rows")
    if metric == "accuracy":
        return sum(_label(a) == _label(b) for a, b in zip(truth, predicted, strict=True)) / len(truth)
    if metric == "macro_f1":
        t, p = [_label(x) for x in truth], [_label(x) for x in predicted]
        f1s = []
        for cls in sorted(set(t)):
            tp = sum(a == cls and b == cls for a, b in zip(t, p, strict=True))
            fp = sum(a != cls and b == cls for a, b in zip(t, p, strict=True))
            fn = sum(a == cls and b != cls for a, b in zip(t, p, strict=True))
            f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        return sum(f1s) / len(f1s)
    y, yhat = _floats(truth), _floats(predicted)
    if metric == "rmse":
        return math.sqrt(sum((a - b) ** 2 for a, b in zip(y, yhat, strict=True)) / len(y))
    if metric == "mae":
        return sum(abs(a - b) for a, b in zip(y, yhat, strict=True)) / len(y)
    raise ValueError(f"unknown metric {metric!r}")


def baseline_predictions(
    kind: str, train: list[dict[str, str]], test: list[dict[str, str]], target: str
) -> list[str | float]:
    """The simple baseline's predictions for ``test``, in its order.

    ``majority``: the most common train label (ties: the first seen); ``mean`` / ``median``: of
    the train targets; ``last``: the last train target (a naive forecast); ``persistence``: each
    row's ``<target>_lag1`` (yesterday's value)."""
    values = [row[target] for row in train]
    if kind == "majority":
        return [Counter(values).most_common(1)[0][0]] * len(test)
    if kind == "mean":
        return [statistics.fmean(_floats(values))] * len(test)
    if kind == "median":
        return [statistics.median(_floats(values))] * len(test)
    if kind == "last":
        return [float(values[-1])] * len(test)
    if kind == "persistence":
        return [float(row[f"{target}_lag1"]) for row in test]
    raise ValueError(f"unknown baseline {kind!r}")


def judge(task: MlTask, submission: str | None) -> Judgement:
    """Score a predictions file against the held-out labels; never raises on bad input."""
    if submission is None:
        return Judgement(False, error=f"no {SUBMISSION} was written")
    try:
        rows = read_csv(submission)
    except csv.Error as err:
        return Judgement(False, error=f"{SUBMISSION} is not valid CSV: {err}")
    if not rows:
        return Judgement(False, error=f"{SUBMISSION} has no rows")
    columns = list(rows[0])
    if task.id_column not in columns or task.target not in columns:
        return Judgement(
            False,
            error=f"{SUBMISSION} must have the columns {task.id_column!r} and {task.target!r}, got {columns}",
        )
    predicted: dict[str, str] = {}
    for row in rows:
        key = _label(row[task.id_column] or "")
        if key in predicted:
            return Judgement(False, error=f"{SUBMISSION}: id {key} appears twice")
        predicted[key] = row[task.target]
    wanted = {_label(k): v for k, v in task.heldout.items()}
    missing = sorted(set(wanted) - set(predicted))
    if missing:
        return Judgement(
            False, error=f"{SUBMISSION}: {len(missing)} test ids have no prediction, e.g. {missing[0]}"
        )
    extra = sorted(set(predicted) - set(wanted))
    if extra:
        return Judgement(False, error=f"{SUBMISSION}: id {extra[0]} is not a row of test.csv")
    keys = sorted(wanted)
    try:
        value = score(task.metric, [wanted[k] for k in keys], [predicted[k] for k in keys])
    except ValueError as err:
        return Judgement(False, error=f"{SUBMISSION}: {err}")
    return Judgement(True, score=value, rows=len(keys))
