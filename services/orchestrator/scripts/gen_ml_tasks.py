"""Writes the bundled ``ml-tasks`` suite: small ML-engineering tasks generated with fixed seeds.

Usage (from the repository root)::

    .venv/bin/python services/orchestrator/scripts/gen_ml_tasks.py [--check]

Every task's data comes from the standard library's ``random.Random(seed)`` only, so the files are
byte-identical on every machine and Python 3.11+ (no numpy version can change them). For each task
the script writes ``task.toml`` (with the baseline's score, computed here with the standard
library), ``data/train.csv`` and ``data/test.csv`` (features only: what the agent sees),
``heldout/labels.csv`` (the held-out answers: the judge reads them, the sandbox never gets them)
and ``reference.py`` (a scikit-learn solution). ``reference_score`` is measured by running each
reference once with the interpreter given by ``--python`` (default ``/usr/bin/python3``, the
sandbox's own) in a scratch folder and scoring its predictions as the judge does; the test
``test_ml_tasks_sandbox.py`` checks it again inside the real sandbox. ``--check`` regenerates into
a scratch folder and fails if anything differs from the bundled copy (references are not re-run).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "src" / "flywheel_orchestrator" / "suites" / "ml-tasks"
sys.path.insert(0, str(ROOT / "src"))

from flywheel_orchestrator.mltasks import baseline_predictions, read_csv, score  # noqa: E402

Rows = list[dict[str, object]]


@dataclass
class Spec:
    id: str
    title: str
    description: str
    metric: str
    target: str
    baseline: str  #: majority | mean | median | last | persistence
    make: Callable[[random.Random], tuple[Rows, Rows]]
    reference: str
    tags: tuple[str, ...]
    seed: int


def _r(x: float) -> float:
    return round(x, 4)


# ------------------------------------------------------------------------------------ tabular


def blobs(rng: random.Random) -> tuple[Rows, Rows]:
    centres = {"setosa": (1.0, 0.5, 1.4), "versicolor": (2.2, 1.6, 2.6), "virginica": (2.9, 2.1, 3.4)}
    rows: Rows = []
    for _ in range(600):
        label = rng.choices(list(centres), weights=[0.45, 0.3, 0.25])[0]
        c = centres[label]
        rows.append(
            {
                "petal_len": _r(rng.gauss(c[0], 0.45)),
                "petal_wid": _r(rng.gauss(c[1], 0.4)),
                "sepal_len": _r(rng.gauss(c[2], 0.6)),
                "sepal_wid": _r(rng.gauss(3.0, 0.5)),
                "species": label,
            }
        )
    return rows[:400], rows[400:]


def moons(rng: random.Random) -> tuple[Rows, Rows]:
    rows: Rows = []
    for _ in range(700):
        label = rng.random() < 0.5
        t = rng.uniform(0, math.pi)
        x, y = (math.cos(t), math.sin(t)) if label else (1 - math.cos(t), 0.5 - math.sin(t))
        rows.append({"x": _r(x + rng.gauss(0, 0.2)), "y": _r(y + rng.gauss(0, 0.2)), "label": int(label)})
    return rows[:450], rows[450:]


def credit(rng: random.Random) -> tuple[Rows, Rows]:
    rows: Rows = []
    for _ in range(900):
        income = rng.lognormvariate(10.5, 0.5)
        debt = rng.uniform(0, 1.2) * income
        job = rng.choice(["salaried", "self-employed", "student", "retired"])
        late = rng.choices([0, 1, 2, 3, 4], weights=[50, 20, 12, 10, 8])[0]
        age = rng.randint(19, 75)
        z = -2.2 + 2.4 * debt / income + 0.7 * late + (0.9 if job == "student" else 0) - 0.02 * (age - 40)
        default = int(rng.random() < 1 / (1 + math.exp(-z)))
        rows.append(
            {
                "income": "" if rng.random() < 0.05 else round(income),
                "debt": round(debt),
                "job": job,
                "late_payments": late,
                "age": age,
                "default": default,
            }
        )
    return rows[:650], rows[650:]


def houses(rng: random.Random) -> tuple[Rows, Rows]:
    rows: Rows = []
    for _ in range(800):
        area = rng.uniform(40, 220)
        rooms = max(1, round(area / 30 + rng.gauss(0, 0.8)))
        age = rng.uniform(0, 90)
        district = rng.choice(["centre", "north", "south", "harbour"])
        bonus = {"centre": 90, "north": 20, "south": 0, "harbour": 55}[district]
        price = 1.9 * area + 8 * rooms - 0.9 * age + bonus + 0.004 * area**2 + rng.gauss(0, 18)
        rows.append(
            {
                "area_m2": _r(area),
                "rooms": rooms,
                "age_years": _r(age),
                "district": district,
                "price_k": _r(price),
            }
        )
    return rows[:600], rows[600:]


def energy(rng: random.Random) -> tuple[Rows, Rows]:
    rows: Rows = []
    for _ in range(800):
        temp = rng.uniform(-10, 35)
        hour = rng.randint(0, 23)
        weekend = int(rng.random() < 2 / 7)
        occupancy = rng.uniform(0, 1)
        load = (
            50
            + 2.5 * abs(temp - 18)
            + (25 if 8 <= hour <= 18 and not weekend else 0)
            + 30 * occupancy
            + rng.gauss(0, 4)
        )
        rows.append(
            {
                "temp_c": _r(temp),
                "hour": hour,
                "weekend": weekend,
                "occupancy": _r(occupancy),
                "load_kw": _r(load),
            }
        )
    return rows[:600], rows[600:]


def wine(rng: random.Random) -> tuple[Rows, Rows]:
    rows: Rows = []
    for _ in range(800):
        alcohol = rng.uniform(8.5, 14.5)
        acidity = rng.uniform(0.1, 1.2)
        sugar = rng.uniform(0.5, 12)
        sulphates = rng.uniform(0.3, 1.5)
        s = 0.6 * (alcohol - 10.5) - 2.0 * (acidity - 0.5) + 1.2 * (sulphates - 0.7) + rng.gauss(0, 0.45)
        quality = 3 if s < -1.2 else 4 if s < -0.3 else 5 if s < 0.6 else 6 if s < 1.5 else 7
        rows.append(
            {
                "alcohol": _r(alcohol),
                "volatile_acidity": _r(acidity),
                "residual_sugar": _r(sugar),
                "sulphates": _r(sulphates),
                "quality": quality,
            }
        )
    return rows[:600], rows[600:]


def sensors(rng: random.Random) -> tuple[Rows, Rows]:
    rows: Rows = []
    for _ in range(800):
        values = [rng.gauss(0, 1) for _ in range(20)]
        z = 1.8 * values[3] - 1.5 * values[7] + 1.2 * values[3] * values[11] + 0.8 * values[15] - 0.6
        fault = int(rng.random() < 1 / (1 + math.exp(-2.0 * z)))
        row: dict[str, object] = {f"s{i:02d}": _r(v) for i, v in enumerate(values)}
        row["fault"] = fault
        rows.append(row)
    return rows[:600], rows[600:]


# --------------------------------------------------------------------------------------- text

FILLER = (
    "the a this that it was is and with for on in of to my we they very really just quite "
    "i you our their one some all after before when then also"
).split()


def _text_rows(
    rng: random.Random, words: dict[str, list[str]], n: int, weights: list[float], signal: float, target: str
) -> Rows:
    rows: Rows = []
    labels = list(words)
    for _ in range(n):
        label = rng.choices(labels, weights=weights)[0]
        length = rng.randint(8, 16)
        tokens = []
        for _ in range(length):
            if rng.random() < signal:
                # Mostly the class's own words, sometimes another class's (noise).
                pool = words[label] if rng.random() < 0.8 else words[rng.choice(labels)]
                tokens.append(rng.choice(pool))
            else:
                tokens.append(rng.choice(FILLER))
        rows.append({"text": " ".join(tokens), target: label})
    return rows


def sentiment(rng: random.Random) -> tuple[Rows, Rows]:
    words = {
        "positive": "great excellent love wonderful fast friendly perfect happy recommend tasty fresh".split(),
        "negative": "bad terrible hate awful slow rude broken sad refund stale cold".split(),
    }
    rows = _text_rows(rng, words, 800, [0.58, 0.42], 0.22, "sentiment")
    return rows[:600], rows[600:]


def topics(rng: random.Random) -> tuple[Rows, Rows]:
    words = {
        "sport": "match goal team league coach season player score win stadium".split(),
        "tech": "software chip phone startup cloud app data robot code launch".split(),
        "politics": "election minister vote parliament policy law party debate tax reform".split(),
        "health": "doctor vaccine hospital diet virus patient study sleep fitness drug".split(),
    }
    rows = _text_rows(rng, words, 900, [0.34, 0.28, 0.22, 0.16], 0.2, "topic")
    return rows[:650], rows[650:]


def spam(rng: random.Random) -> tuple[Rows, Rows]:
    words = {
        "spam": "free win prize claim cash urgent offer click winner call now txt".split(),
        "ham": "home later dinner tomorrow ok meeting mum lunch see thanks love soon".split(),
    }
    rows = _text_rows(rng, words, 800, [0.3, 0.7], 0.18, "label")
    return rows[:600], rows[600:]


# -------------------------------------------------------------------------------- time series


def sales(rng: random.Random) -> tuple[Rows, Rows]:
    rows: Rows = []
    weekly = [0.8, 0.9, 0.95, 1.0, 1.2, 1.55, 1.35]
    for day in range(560):
        level = 120 + 0.15 * day
        value = level * weekly[day % 7] + rng.gauss(0, 6)
        rows.append({"day": day, "weekday": day % 7, "sales": _r(value)})
    return rows[:500], rows[500:]


def temperature(rng: random.Random) -> tuple[Rows, Rows]:
    # An AR(2) process around a yearly cycle; each row carries the two previous readings, so the
    # task is one-step-ahead forecasting (the rows of the held-out part come after every train row).
    series = [10.0, 10.5]
    for day in range(2, 900):
        season = 12 + 9 * math.sin(2 * math.pi * day / 365)
        prev1, prev2 = series[-1], series[-2]
        series.append(season + 0.75 * (prev1 - season) - 0.2 * (prev2 - season) + rng.gauss(0, 1.6))
    rows: Rows = [
        {"day": d, "temp_lag1": _r(series[d - 1]), "temp_lag2": _r(series[d - 2]), "temp": _r(series[d])}
        for d in range(2, 900)
    ]
    return rows[:700], rows[700:]


# --------------------------------------------------------------------------------- references

REF_TABULAR_CLS = '''\
"""Reference: {model} on every feature{extra}; validation accuracy on a 20% split."""
import os

import pandas as pd
from sklearn.model_selection import train_test_split
{imports}

train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
X = {features}
X_test = {features_test}
y = train["{target}"]
model = {estimator}
X_tr, X_va, y_tr, y_va = train_test_split(X, y, test_size=0.2, random_state=0)
model.fit(X_tr, y_tr)
print(f"validation metric: {{{metric_expr}:.4f}}")
model.fit(X, y)
os.makedirs("submission", exist_ok=True)
pd.DataFrame({{"id": test["id"], "{target}": model.predict(X_test)}}).to_csv("submission/submission.csv", index=False)
'''

REF_TEXT = '''\
"""Reference: TF-IDF of words and bigrams, logistic regression; validation {metric} on a 20% split."""
import os

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import {metric_fn}
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=4.0, max_iter=2000))
X_tr, X_va, y_tr, y_va = train_test_split(train["text"], train["{target}"], test_size=0.2, random_state=0)
model.fit(X_tr, y_tr)
print(f"validation metric: {{{metric_fn}(y_va, model.predict(X_va){metric_args}):.4f}}")
model.fit(train["text"], train["{target}"])
os.makedirs("submission", exist_ok=True)
pd.DataFrame({{"id": test["id"], "{target}": model.predict(test["text"])}}).to_csv("submission/submission.csv", index=False)
'''


def _cls_ref(target: str, estimator: str, imports: str, model: str, onehot: bool = False) -> str:
    drop = f'train.drop(columns=["id", "{target}"])'
    features, features_test = drop, 'test.drop(columns=["id"])'
    extra = ""
    if onehot:
        features = f"pd.get_dummies({drop}).fillna(train.median(numeric_only=True))"
        features_test = (
            'pd.get_dummies(test.drop(columns=["id"])).reindex(columns=X.columns, fill_value=0)'
            ".fillna(train.median(numeric_only=True))"
        )
        extra = " (categories one-hot, gaps filled with the train median)"
    return REF_TABULAR_CLS.format(
        model=model,
        extra=extra,
        imports=imports,
        features=features,
        features_test=features_test,
        target=target,
        estimator=estimator,
        metric_expr="model.score(X_va, y_va)",
    )


def _reg_ref(target: str, estimator: str, imports: str, model: str, metric: str, onehot: bool = False) -> str:
    text = _cls_ref(target, estimator, imports, model, onehot)
    fn = "mean_absolute_error" if metric == "mae" else "mean_squared_error"
    expr = f"{fn}(y_va, model.predict(X_va))" + (" ** 0.5" if metric == "rmse" else "")
    text = text.replace("validation accuracy", f"validation {metric.upper()}")
    text = text.replace("model.score(X_va, y_va)", expr)
    return text.replace(
        "import train_test_split\n", f"import train_test_split\nfrom sklearn.metrics import {fn}\n"
    )


REF_SALES = '''\
"""Reference: linear trend times a weekday profile (log-linear regression on day + weekday one-hot);
validated on the last 60 training days."""
import os

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression


def features(frame):
    X = pd.get_dummies(frame["weekday"].astype("category").cat.set_categories(range(7)), prefix="wd").astype(float)
    X["day"] = frame["day"]
    return X


train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
fit, valid = train.iloc[:-60], train.iloc[-60:]
model = LinearRegression().fit(features(fit), np.log(fit["sales"]))
mae = np.mean(np.abs(np.exp(model.predict(features(valid))) - valid["sales"]))
print(f"validation metric: {mae:.4f}")
model.fit(features(train), np.log(train["sales"]))
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "sales": np.exp(model.predict(features(test)))}).to_csv("submission/submission.csv", index=False)
'''

REF_TEMP = '''\
"""Reference: linear regression on both lags and the yearly cycle (sin/cos of the day);
validated on the last 100 training days."""
import os

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression


def features(frame):
    angle = 2 * np.pi * frame["day"] / 365
    return np.column_stack([frame["temp_lag1"], frame["temp_lag2"], np.sin(angle), np.cos(angle)])


train = pd.read_csv("data/train.csv")
test = pd.read_csv("data/test.csv")
fit, valid = train.iloc[:-100], train.iloc[-100:]
model = LinearRegression().fit(features(fit), fit["temp"])
rmse = float(np.sqrt(np.mean((model.predict(features(valid)) - valid["temp"]) ** 2)))
print(f"validation metric: {rmse:.4f}")
model.fit(features(train), train["temp"])
os.makedirs("submission", exist_ok=True)
pd.DataFrame({"id": test["id"], "temp": model.predict(features(test))}).to_csv("submission/submission.csv", index=False)
'''

GB = "from sklearn.ensemble import GradientBoostingClassifier"
GBR = "from sklearn.ensemble import GradientBoostingRegressor"
LR = "from sklearn.linear_model import LogisticRegression"
SVC = "from sklearn.svm import SVC"

SPECS = [
    Spec(
        "flower-species",
        "Flower species from petal and sepal sizes",
        "Predict the `species` (setosa, versicolor, virginica) of a flower from four measurements in cm.",
        "accuracy",
        "species",
        "majority",
        blobs,
        _cls_ref("species", "LogisticRegression(max_iter=1000)", LR, "logistic regression"),
        ("tabular", "classification"),
        101,
    ),
    Spec(
        "two-moons",
        "Two interleaving half-moons",
        "Predict the binary `label` of a 2-D point (`x`, `y`); the classes are not linearly separable.",
        "accuracy",
        "label",
        "majority",
        moons,
        _cls_ref("label", 'SVC(kernel="rbf", C=3.0)', SVC, "an RBF support-vector machine"),
        ("tabular", "classification"),
        102,
    ),
    Spec(
        "credit-default",
        "Loan default from an applicant's record",
        "Predict `default` (1 = the loan defaulted) from income (sometimes missing), debt, job type, "
        "late payments and age.",
        "accuracy",
        "default",
        "majority",
        credit,
        _cls_ref(
            "default",
            "GradientBoostingClassifier(random_state=0)",
            GB,
            "gradient boosting",
            onehot=True,
        ),
        ("tabular", "classification", "missing-values", "categorical"),
        103,
    ),
    Spec(
        "house-prices",
        "House prices from size, rooms, age and district",
        "Predict `price_k` (thousands) of a house from its area in m², rooms, age in years and district.",
        "rmse",
        "price_k",
        "mean",
        houses,
        _reg_ref(
            "price_k", "GradientBoostingRegressor(random_state=0)", GBR, "gradient boosting", "rmse", True
        ),
        ("tabular", "regression", "categorical"),
        104,
    ),
    Spec(
        "energy-load",
        "Building energy load",
        "Predict a building's `load_kw` from outdoor temperature, hour of day, weekend flag and occupancy.",
        "mae",
        "load_kw",
        "median",
        energy,
        _reg_ref("load_kw", "GradientBoostingRegressor(random_state=0)", GBR, "gradient boosting", "mae"),
        ("tabular", "regression"),
        105,
    ),
    Spec(
        "wine-quality",
        "Wine quality grade",
        "Predict the `quality` grade (3-7) of a wine from alcohol, volatile acidity, residual sugar "
        "and sulphates.",
        "accuracy",
        "quality",
        "majority",
        wine,
        _cls_ref("quality", "LogisticRegression(max_iter=2000, C=10.0)", LR, "logistic regression"),
        ("tabular", "classification", "ordinal"),
        106,
    ),
    Spec(
        "sensor-fault",
        "Machine fault from 20 sensor readings",
        "Predict `fault` (1 = the machine failed) from 20 standardised sensor readings; most sensors "
        "carry no signal and two interact.",
        "accuracy",
        "fault",
        "majority",
        sensors,
        _cls_ref("fault", "GradientBoostingClassifier(random_state=0)", GB, "gradient boosting"),
        ("tabular", "classification", "feature-selection"),
        107,
    ),
    Spec(
        "review-sentiment",
        "Sentiment of short reviews",
        "Predict the `sentiment` (positive or negative) of a short review in `text`.",
        "accuracy",
        "sentiment",
        "majority",
        sentiment,
        REF_TEXT.format(metric="accuracy", metric_fn="accuracy_score", metric_args="", target="sentiment"),
        ("text", "classification"),
        108,
    ),
    Spec(
        "news-topic",
        "Topic of a news snippet",
        "Predict the `topic` (sport, tech, politics, health) of a news snippet in `text`. Scored by "
        "macro-averaged F1, so the rare topics count as much as the common ones.",
        "macro_f1",
        "topic",
        "majority",
        topics,
        REF_TEXT.format(
            metric="macro-F1", metric_fn="f1_score", metric_args=", average='macro'", target="topic"
        ),
        ("text", "classification", "multiclass"),
        109,
    ),
    Spec(
        "sms-spam",
        "Spam or not",
        "Predict the `label` (spam or ham) of a text message in `text`.",
        "accuracy",
        "label",
        "majority",
        spam,
        REF_TEXT.format(metric="accuracy", metric_fn="accuracy_score", metric_args="", target="label"),
        ("text", "classification"),
        110,
    ),
    Spec(
        "daily-sales",
        "Forecast 60 days of shop sales",
        "Daily `sales` of a shop for days 0-499 are in train.csv; forecast days 500-559 (test.csv "
        "gives `day` and `weekday`, 0 = Monday). Sales grow slowly and follow a weekly pattern.",
        "mae",
        "sales",
        "last",
        sales,
        REF_SALES,
        ("time-series", "forecasting"),
        111,
    ),
    Spec(
        "temperature-next-day",
        "Next-day temperature",
        "Predict the day's mean temperature `temp` from the two previous days' readings (`temp_lag1`, "
        "`temp_lag2`) and the day number; test days come after every train day.",
        "rmse",
        "temp",
        "persistence",
        temperature,
        REF_TEMP,
        ("time-series", "regression"),
        112,
    ),
]


def _csv(rows: Rows, columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row[c] for c in columns])
    return out.getvalue().encode()


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def task_files(spec: Spec) -> dict[str, bytes]:
    """Every file of one task except ``task.toml``'s reference score (filled in by ``write``)."""
    train, test = spec.make(random.Random(spec.seed))
    for n, row in enumerate(train):
        row["id"] = n
    for n, row in enumerate(test):
        row["id"] = len(train) + n
    features = [c for c in train[0] if c not in ("id", spec.target)]
    files = {
        "data/train.csv": _csv(train, ["id", *features, spec.target]),
        "data/test.csv": _csv(test, ["id", *features]),
        "heldout/labels.csv": _csv(test, ["id", spec.target]),
        "reference.py": spec.reference.encode(),
    }
    return files


def baseline_score(spec: Spec, files: dict[str, bytes]) -> float:
    train = read_csv(files["data/train.csv"].decode())
    labels = read_csv(files["heldout/labels.csv"].decode())
    test = read_csv(files["data/test.csv"].decode())
    predicted = baseline_predictions(spec.baseline, train, test, spec.target)
    return score(spec.metric, [r[spec.target] for r in labels], predicted)


def manifest(spec: Spec, baseline: float, reference: float) -> bytes:
    lines = [
        'kind = "ml"',
        f"title = {_toml_str(spec.title)}",
        f'problem_statement = """\n{spec.description}\n"""',
        f'metric = "{spec.metric}"',
        f'target = "{spec.target}"',
        f'baseline = "{spec.baseline}"',
        f"baseline_score = {baseline!r}",
        f"reference_score = {reference!r}",
        "time_budget_s = 30",
        f"tags = [{', '.join(_toml_str(t) for t in spec.tags)}]",
        f"seed = {spec.seed}",
    ]
    return ("\n".join(lines) + "\n").encode()


def run_reference(spec: Spec, files: dict[str, bytes], python: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel in ("data/train.csv", "data/test.csv", "reference.py"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(files[rel])
        env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        subprocess.run(
            [python, "reference.py"], cwd=root, check=True, env=env, capture_output=True, timeout=120
        )
        predictions = read_csv((root / "submission" / "submission.csv").read_text())
    labels = read_csv(files["heldout/labels.csv"].decode())
    by_id = {r["id"]: r[spec.target] for r in predictions}
    return score(spec.metric, [r[spec.target] for r in labels], [by_id[r["id"]] for r in labels])


def suite_manifest() -> bytes:
    return b'''name = "ml-tasks"
description = """
Small machine-learning tasks generated for Flywheel (services/orchestrator/scripts/gen_ml_tasks.py,
fixed seeds): tabular classification and regression, text classification and time series.

Each task gives `data/train.csv` (features and the target) and `data/test.csv` (features only); a
solution writes `submission/submission.csv` with `id` and the target column. The judge scores it
against held-out labels that never enter the sandbox. Every task runs on one CPU core in well under
30 s with scikit-learn, numpy and pandas, and names its metric, its baseline's score and its
reference solution's score.
"""
train_ratio = 0.7
split_seed = "flywheel-ml-v1"
'''


def generate(dest: Path, python: str | None, old: Path | None = None) -> None:
    """Write the suite to ``dest``; reference scores measured with ``python`` or kept from ``old``."""
    dest.mkdir(parents=True)
    (dest / "suite.toml").write_bytes(suite_manifest())
    for spec in SPECS:
        files = task_files(spec)
        baseline = round(baseline_score(spec, files), 6)
        if python is not None:
            reference = round(run_reference(spec, files, python), 6)
        else:
            import tomllib

            assert old is not None
            reference = tomllib.loads((old / "tasks" / spec.id / "task.toml").read_text())["reference_score"]
        files["task.toml"] = manifest(spec, baseline, reference)
        for rel, data in files.items():
            path = dest / "tasks" / spec.id / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        print(f"{spec.id:22} {spec.metric:9} baseline {baseline:10.4f}  reference {reference:10.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the bundled suite differs")
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter that runs the references")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "ml-tasks"
            generate(fresh, None, SUITE)
            old = {p.relative_to(SUITE): p.read_bytes() for p in SUITE.rglob("*") if p.is_file()}
            new = {p.relative_to(fresh): p.read_bytes() for p in fresh.rglob("*") if p.is_file()}
            differ = sorted(str(p) for p in set(old) | set(new) if old.get(p) != new.get(p))
            if differ:
                print("stale:", ", ".join(differ))
                return 1
            print("ml-tasks is up to date")
            return 0
    tmp_dest = SUITE.with_name("ml-tasks.partial")
    shutil.rmtree(tmp_dest, ignore_errors=True)
    generate(tmp_dest, args.python)
    shutil.rmtree(SUITE, ignore_errors=True)
    tmp_dest.rename(SUITE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
