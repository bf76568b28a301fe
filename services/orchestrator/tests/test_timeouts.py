"""Timeouts are their own outcome: per-task limits reach the sandbox, and a fix that runs past
them is FAILURE_CATEGORY_TIMEOUT with feedback that says so, never INTEGRITY.

End to end through runs on the real orchestrator, sandbox runner and trajectory store (the model
is the scripted server from conftest); the suite is written by the test, with limits in its
task.toml files and problems.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_orchestrator.sandbox import RunLimits
from flywheel_orchestrator.suites import (
    SuiteError,
    TaskLimits,
    load_folder,
    parse_io_problem,
    parse_repo_task,
)
from flywheel_testing.scripted_model import json_call, text

from .conftest import Backends, Harness, orchestrator
from .test_runs import scripted, stored, user_texts

SUITE = "timeouts"
CALC = "def add(a, b):\n    return a - b\n"
TESTS = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TASK = """title = "add subtracts"
problem_statement = "calc.add(2, 3) returns -1 instead of 5."
fail_to_pass = ["tests/test_calc.py::test_add"]
"""
# Fixes that never finish: one spins (CPU), one waits (wall clock).
SPINS = "def add(a, b):\n    while True:\n        pass\n"
SLEEPS = "import time\n\n\ndef add(a, b):\n    time.sleep(600)\n    return a + b\n"
FIXED = "def add(a, b):\n    return a + b\n"
PROBLEM = {
    "query_id": "echo-slow",
    "question": "Read a line and print it.",
    "input_output": {"inputs": ["a\n", "b\n"], "outputs": ["a\n", "b\n"]},
    "limits": {"wall_time_s": 5, "cpu_time_s": 1},
}


def write_suite(root: Path) -> Path:
    folder = root / SUITE
    (folder / "tasks").mkdir(parents=True)
    (folder / "suite.toml").write_text(f'name = "{SUITE}"\ntrain_ratio = 0.5\n')
    limits = {
        "spin": "[limits]\nwall_time_s = 20\ncpu_time_s = 1.5\n",
        "wait": "[limits]\nwall_time_s = 2\n",
        "plain": "",  # the orchestrator's defaults
    }
    for task, table in limits.items():
        repo = folder / "tasks" / task / "repo"
        (repo / "tests").mkdir(parents=True)
        (repo / "calc.py").write_text(CALC)
        (repo / "tests" / "test_calc.py").write_text(TESTS)
        (folder / "tasks" / task / "task.toml").write_text(TASK + table)
    (folder / "problems.jsonl").write_text(json.dumps(PROBLEM) + "\n")
    return folder


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suites"))


async def run_task(h: Harness, suite_dir: Path, task_id: str, **episode: Any) -> run_pb2.Run:
    split = load_folder(suite_dir).tasks[task_id].split
    run = run_pb2.Run(
        suite=SUITE,
        model="scripted",
        split=split,
        task_ids=[task_id],
        episode=run_pb2.EpisodeSettings(**episode),
    )
    created = await h.stub.CreateRun(opb.CreateRunRequest(run=run))
    last = None
    async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.run.id), timeout=180):
        if update.WhichOneof("update") == "run":
            last = update.run
    assert last is not None and last.state == common_pb2.JOB_STATE_SUCCEEDED, last
    return last


def writes(content: str) -> Any:
    return scripted(
        json_call("write_file", {"rel_path": "calc.py", "content": content}),
        text('{"type": "final", "answer": "fixed"}'),
    )


@pytest.mark.parametrize(
    ("task", "fix", "limit"),
    [("spin", SPINS, "the 1.5 s CPU-time limit"), ("wait", SLEEPS, "the 2 s wall-clock limit")],
)
async def test_a_fix_that_never_finishes_is_a_timeout_not_tampering(
    backends: Backends, service_env: dict[str, str], suite_dir: Path, task: str, fix: str, limit: str
) -> None:
    async with orchestrator(backends, service_env, writes(fix), suite_dirs=[suite_dir]) as h:
        run = await run_task(h, suite_dir, task)
        [t] = await stored(backends, run.id)
    assert not t.outcome.resolved
    assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_TIMEOUT, t.outcome
    assert limit in t.outcome.failure_detail and "0/1 tests passed" in t.outcome.failure_detail
    final = t.steps[-1]
    assert final.test_run.trigger == tpb.TEST_TRIGGER_FINAL
    assert final.test_run.error_category == common_pb2.ERROR_CATEGORY_TIMEOUT
    assert not final.test_run.integrity_findings  # what the kill left behind is not evidence
    # The agent is told the tests timed out, at which limit, and what to look for.
    summary = user_texts(t)[-1]
    assert summary.startswith(f"[tests] TIMEOUT: the tests timed out: the test run was stopped at {limit}")
    assert "infinite loop" in summary and "expectation" not in summary
    assert run.counters.episodes_errored == 0


async def test_after_write_feedback_says_timeout_and_a_later_fix_resolves(
    backends: Backends, service_env: dict[str, str], suite_dir: Path
) -> None:
    respond = scripted(
        json_call("write_file", {"rel_path": "calc.py", "content": SLEEPS}),
        json_call("write_file", {"rel_path": "calc.py", "content": FIXED}),
        text('{"type": "final", "answer": "fixed"}'),
    )
    async with orchestrator(backends, service_env, respond, suite_dirs=[suite_dir]) as h:
        run = await run_task(h, suite_dir, "wait", test_policy=run_pb2.TEST_POLICY_AFTER_WRITE)
        [t] = await stored(backends, run.id)
    first, second = user_texts(t)[1:3]
    assert "[tests] TIMEOUT: the tests timed out" in first and "the 2 s wall-clock limit" in first
    assert "[tests] PASS: 1/1" in second
    assert t.outcome.resolved


async def test_an_io_case_that_times_out(
    backends: Backends, service_env: dict[str, str], suite_dir: Path
) -> None:
    looping = "s = input()\nif s == 'b':\n    while True:\n        pass\nprint(s)\n"
    respond = scripted(
        json_call("run_code", {"code": looping, "test_case_index": 1}),
        text(json.dumps({"type": "final", "code": looping})),
    )
    async with orchestrator(backends, service_env, respond, suite_dirs=[suite_dir]) as h:
        run = await run_task(h, suite_dir, "echo-slow")
        [t] = await stored(backends, run.id)
    feedback = user_texts(t)[1]
    assert feedback.startswith("[tool_result]\ntest case 1: TIMEOUT (TIMEOUT)")
    assert "the program timed out: it was stopped at the 1 s CPU-time limit" in feedback
    assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_TIMEOUT, t.outcome
    assert "1/2 cases passed" in t.outcome.failure_detail
    assert t.outcome.tests_passed == 1 and t.outcome.tests_total == 2


async def test_task_limits_override_the_settings(
    backends: Backends, service_env: dict[str, str], suite_dir: Path
) -> None:
    """The settings' default reaches the sandbox: a 1 s default stops the sleeping fix of a task
    without limits of its own."""
    async with orchestrator(
        backends, service_env, writes(SLEEPS), suite_dirs=[suite_dir], test_wall_time_s=1.0
    ) as h:
        run = await run_task(h, suite_dir, "plain")
        [t] = await stored(backends, run.id)
    assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_TIMEOUT
    assert "the 1 s wall-clock limit" in t.outcome.failure_detail


# --- parsing ------------------------------------------------------------------------------------


def _repo(task_toml: str) -> dict[str, bytes]:
    return {
        "task.toml": (TASK + task_toml).encode(),
        "repo/calc.py": CALC.encode(),
        "repo/tests/test_calc.py": TESTS.encode(),
    }


def test_limits_parse_from_task_toml_and_problems() -> None:
    task = parse_repo_task(
        "t", "s/tasks/t", _repo("[limits]\nwall_time_s = 30\ncpu_time_s = 2.5\nmemory_mb = 512\n")
    )
    assert task.limits == TaskLimits(wall_time_s=30.0, cpu_time_s=2.5, memory_mb=512)
    assert parse_repo_task("t", "s/tasks/t", _repo("")).limits == TaskLimits()
    partial = parse_repo_task("t", "s/tasks/t", _repo("[limits]\nmemory_mb = 64\n"))
    assert RunLimits(10, 10, 256).for_task(partial) == RunLimits(10, 10, 64)
    problem = parse_io_problem("p.jsonl:1", PROBLEM)
    assert problem.limits == TaskLimits(wall_time_s=5.0, cpu_time_s=1.0)
    assert parse_io_problem("p.jsonl:1", {**PROBLEM, "limits": None}).limits == TaskLimits()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "[limits]\nwall_time_s = -1\n",
            "s/tasks/t/task.toml: [limits].wall_time_s: must be a number of seconds > 0, got -1",
        ),
        ("[limits]\ncpu_time_s = 0\n", "[limits].cpu_time_s: must be a number of seconds > 0, got 0"),
        ("[limits]\nwall_time_s = true\n", "[limits].wall_time_s: must be a number of seconds > 0, got True"),
        (
            '[limits]\nwall_time_s = "10s"\n',
            "[limits].wall_time_s: must be a number of seconds > 0, got '10s'",
        ),
        ("[limits]\nwall_time_s = inf\n", "[limits].wall_time_s: must be a number of seconds > 0, got inf"),
        ("[limits]\nmemory_mb = 8\n", "[limits].memory_mb: must be a whole number of MiB >= 16, got 8"),
        ("[limits]\nmemory_mb = 64.5\n", "[limits].memory_mb: must be a whole number of MiB >= 16, got 64.5"),
        (
            "[limits]\nwall_time = 10\n",
            "[limits]: unknown key 'wall_time' (known: wall_time_s, cpu_time_s, memory_mb)",
        ),
        (
            "limits = 10\n",
            "s/tasks/t/task.toml: [limits]: must be a table of wall_time_s, cpu_time_s, memory_mb, got int",
        ),
    ],
)
def test_bad_limits_name_the_file_and_the_key(table: str, message: str) -> None:
    with pytest.raises(SuiteError) as err:
        parse_repo_task("t", "s/tasks/t", _repo(table))
    assert message in str(err.value)


def test_bad_problem_limits_name_the_line_and_the_key() -> None:
    with pytest.raises(
        SuiteError, match=r"^p.jsonl:3: limits.memory_mb: must be a whole number of MiB >= 16, got 'big'$"
    ):
        parse_io_problem("p.jsonl:3", {**PROBLEM, "limits": {"memory_mb": "big"}})
    with pytest.raises(SuiteError, match=r"^p.jsonl:3: limits: must be a table"):
        parse_io_problem("p.jsonl:3", {**PROBLEM, "limits": [1]})
