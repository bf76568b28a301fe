"""ML tasks in the real sandbox: every bundled reference beats its baseline; held-out labels stay out.

The sandbox runner runs here as a process (bubblewrap, cgroups, the host's ``/usr/bin/python3``
with Debian's scikit-learn, pandas and numpy), exactly as in production; nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_orchestrator import mltasks
from flywheel_orchestrator.mle import MleEpisode, MleSpec
from flywheel_orchestrator.sandbox import SandboxClient
from flywheel_orchestrator.suite_check import check_suite
from flywheel_orchestrator.suites import BUNDLED_DIR, SuiteCatalog, load_folder, read_folder

SUITE = BUNDLED_DIR / "ml-tasks"


def _episode(sandbox: str, task: mltasks.MlTask) -> MleEpisode:
    spec = MleSpec(
        trajectory_id="traj-test",
        run_id="run-test",
        attempt=0,
        suite="ml-tasks",
        suite_version="v",
        task=task,
        sampling=common_pb2.SamplingParams(),
        teacher_kind=tpb.TEACHER_KIND_REFERENCE,
        policy_info=tpb.Policy(),
        max_wall_time_s=300,
        model_timeout_s=60,
    )
    episode = MleEpisode(spec, policy=None, sandbox=SandboxClient(sandbox))  # type: ignore[arg-type]
    episode.deadline = time.monotonic() + 300
    return episode


def test_bundled_suite_loads_with_twelve_ml_tasks() -> None:
    catalog = SuiteCatalog()
    catalog.reload()
    suite = catalog.get("ml-tasks")
    assert suite is not None, catalog.errors
    assert len(suite.tasks) >= 12
    kinds = {t.kind for t in suite.tasks.values()}
    assert kinds == {common_pb2.TASK_KIND_ML}
    tags = {tag for t in suite.tasks.values() for tag in t.tags}
    assert {"tabular", "text", "time-series", "classification", "regression"} <= tags
    for task in suite.tasks.values():
        assert isinstance(task, mltasks.MlTask)
        assert task.has_reference and task.baseline_score is not None and task.reference_score is not None
        assert task.better(task.reference_score, task.baseline_score), task.id
        # The agent's data never holds the answers.
        assert all(not p.startswith("heldout/") for p in task.data)
        assert task.target not in task.data["data/test.csv"].decode().splitlines()[0].split(",")
    assert {t.split for t in suite.tasks.values()} == {
        common_pb2.TASK_SPLIT_TRAIN,
        common_pb2.TASK_SPLIT_TEST,
    }


def test_the_generator_reproduces_the_bundled_suite_byte_for_byte() -> None:
    script = Path(__file__).parents[1] / "scripts" / "gen_ml_tasks.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ml-tasks is up to date" in done.stdout


def test_malformed_ml_task_is_reported(tmp_path: Path) -> None:
    files = read_folder(SUITE)
    files["tasks/two-moons/task.toml"] = files["tasks/two-moons/task.toml"].replace(
        b'metric = "accuracy"', b'metric = "auc"'
    )
    del files["tasks/house-prices/heldout/labels.csv"]
    result = check_suite(files, name="ml-tasks", source="x")
    messages = " | ".join(str(p) for p in result.errors)
    assert result.suite is None
    assert "tasks/two-moons/task.toml: metric 'auc' is not one of" in messages
    assert "tasks/house-prices/heldout/labels.csv: is missing" in messages


def test_judge_scores_and_rejects() -> None:
    task = load_folder(SUITE, bundled=True).tasks["two-moons"]
    assert isinstance(task, mltasks.MlTask)
    ids = sorted(task.heldout, key=int)
    perfect = "id,label\n" + "".join(f"{i},{task.heldout[i]}\n" for i in ids)
    assert mltasks.judge(task, perfect).score == 1.0
    assert not mltasks.judge(task, None).valid
    assert "have no prediction" in mltasks.judge(task, "id,label\n1,0\n").error
    assert "columns" in mltasks.judge(task, "a,b\n1,2\n").error
    assert mltasks.score("rmse", ["1", "3"], [2.0, 2.0]) == 1.0
    assert mltasks.score("mae", ["1", "4"], [2.0, 2.0]) == 1.5
    assert mltasks.score("macro_f1", ["a", "a", "b", "b"], ["a", "b", "b", "b"]) == pytest.approx(
        (2 / 3 + 0.8) / 2
    )


@pytest.mark.slow
async def test_every_reference_beats_its_baseline_in_the_sandbox(backends) -> None:
    suite = load_folder(SUITE, bundled=True)
    seen = {}
    for task in sorted(suite.tasks.values(), key=lambda t: t.id):
        assert isinstance(task, mltasks.MlTask)
        episode = _episode(backends.sandbox, task)
        output, submission, seconds, result = await episode.execute(task.reference_solution)
        assert result.status == sandbox_pb2.EXECUTION_STATUS_OK, (task.id, output[-2000:])
        verdict = mltasks.judge(task, submission)
        assert verdict.valid, (task.id, verdict.error)
        assert (
            verdict.score is not None and task.baseline_score is not None and task.reference_score is not None
        )
        assert task.better(verdict.score, task.baseline_score), (task.id, verdict.score, task.baseline_score)
        # The documented reference score is what the sandbox gives (within 5% of the margin, for
        # another scikit-learn build).
        margin = abs(task.reference_score - task.baseline_score)
        assert abs(verdict.score - task.reference_score) <= 0.05 * margin, (task.id, verdict.score)
        assert seconds < task.time_budget_s, (task.id, seconds)
        assert "validation metric:" in output
        seen[task.id] = round(seconds, 2)
    assert len(seen) == len(suite.tasks)


LOOK_FOR_LABELS = r"""
import os
names, dirs, contents = [], [], []
for root, dnames, fnames in os.walk("/"):
    if root.startswith(("/proc", "/sys", "/dev")):
        dnames[:] = []
        continue
    dirs += [os.path.join(root, d) for d in dnames if "heldout" in d]
    names += [os.path.join(root, f) for f in fnames if f in ("labels.csv", "train.csv", "test.csv")]
for root, _, fnames in os.walk(os.getcwd()):
    for f in fnames:
        with open(os.path.join(root, f), "rb") as handle:
            if NEEDLE.encode() in handle.read():
                contents.append(os.path.join(root, f))
print("NAMES", sorted(names))
print("DIRS", sorted(dirs))
print("CONTENTS", sorted(contents))
"""


async def test_heldout_labels_are_unreachable_from_the_sandbox(backends) -> None:
    task = load_folder(SUITE, bundled=True).tasks["sms-spam"]
    assert isinstance(task, mltasks.MlTask)
    # A run of held-out answers that test.csv and train.csv do not hold: if any file the sandbox
    # can read had the labels, this string would be in it.
    ids = sorted(task.heldout, key=int)[:25]
    needle = "\n".join(f"{i},{task.heldout[i]}" for i in ids)
    assert needle not in task.data["data/train.csv"].decode() + task.data["data/test.csv"].decode()
    episode = _episode(backends.sandbox, task)
    code = f"NEEDLE = {needle!r}\n" + LOOK_FOR_LABELS
    output, _, _, result = await episode.execute(code)
    assert result.status == sandbox_pb2.EXECUTION_STATUS_OK, output[-2000:]
    lines = dict(
        line.split(" ", 1) for line in output.splitlines() if line.startswith(("NAMES", "DIRS", "CONTENTS"))
    )
    # The walk works (it finds the data the agent is given) and finds nothing else.
    assert lines["NAMES"] == "['/workspace/data/test.csv', '/workspace/data/train.csv']", output
    assert lines["DIRS"] == "[]"
    assert lines["CONTENTS"] == "[]"
