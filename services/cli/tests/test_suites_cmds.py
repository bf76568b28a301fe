"""``flywheel suites import|reload``, failed suites in ``flywheel suites``, and the --state-dir check.

The orchestrator boots in-process on port 0 (suites need no sandbox or model) on the session's
nats-server and a fresh filesystem object store; the CLI reaches it over gRPC from a worker
thread, as ``test_orchestrator_cmds.py`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from flywheel_cli.main import cli
from flywheel_cli.stack import STACK_FILE
from flywheel_orchestrator.service import build_app
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_testing.services import boot_service

TESTS = """import pytest


@pytest.mark.parametrize("n", [1, 2, 3])
def test_total(n):
    from shop import total

    assert total([n]) == n
"""


def _write_task(root: Path, task_id: str, test_id: str) -> None:
    task = root / task_id
    (task / "repo" / "tests").mkdir(parents=True, exist_ok=True)
    (task / "task.toml").write_text(f'problem_statement = "total is wrong"\nfail_to_pass = ["{test_id}"]\n')
    (task / "repo" / "shop.py").write_text("def total(xs):\n    return sum(xs) + 1\n")
    (task / "repo" / "tests" / "test_shop.py").write_text(TESTS)
    (task / "repo" / "__pycache__").mkdir(exist_ok=True)
    (task / "repo" / "__pycache__" / "shop.cpython-311.pyc").write_bytes(b"\0")  # left out by the CLI


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "200", **(env or {})}).invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


async def flywheel(*args: str) -> tuple[int, str]:
    """Run the CLI in a worker thread (the orchestrator serves on this thread's event loop)."""
    return await asyncio.to_thread(invoke, *args)


async def test_import_lists_every_problem_then_imports(service_env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "shop-tasks"
    _write_task(source, "total-a", "tests/test_shop.py::test_total")
    _write_task(source, "total-b", "tests/test_shop.py::test_totl[1]")
    env = {
        **service_env,
        "FLYWHEEL_SANDBOX_ADDRESS": "127.0.0.1:9",
        "FLYWHEEL_TRAJECTORY_ADDRESS": "127.0.0.1:9",
    }
    async with boot_service(build_app, OrchestratorSettings, env) as address:
        code, output = await flywheel("suites", "--address", address, "import", str(source))
        assert code == 1, output
        assert (
            "error: tasks/total-a/task.toml: fail_to_pass: test 'tests/test_shop.py::test_total' is parametrised"
            in (output)
        )
        assert (
            "tests/test_shop.py::test_total[1], tests/test_shop.py::test_total[2], tests/test_shop.py::test_total[3]"
            in (output)
        )
        assert (
            "error: tasks/total-b/task.toml: fail_to_pass: test 'tests/test_shop.py::test_totl[1]' does not exist"
            in (output)
        )
        assert "2 problems: nothing was imported" in output
        code, output = await flywheel("suites", "--address", address)
        assert "shop-tasks" not in output

        _write_task(source, "total-a", "tests/test_shop.py::test_total[2]")
        _write_task(source, "total-b", "tests/test_shop.py::test_total[3]")
        code, output = await flywheel("suites", "--address", address, "import", str(source), "--check")
        assert code == 0 and "shop-tasks: no problems (2 tasks" in output, output
        code, output = await flywheel("suites", "--address", address, "--json")
        assert "shop-tasks" not in output  # --check imports nothing
        code, output = await flywheel("suites", "--address", address, "import", str(source))
        assert code == 0 and "imported shop-tasks version" in output and "suites/shop-tasks/" in output, (
            output
        )
        code, output = await flywheel("suites", "--address", address, "--json")
        listed = {s["name"]: s for s in map(json.loads, output.splitlines())}
        assert listed["shop-tasks"]["taskCount"] == 2
        code, output = await flywheel(
            "suites", "--address", address, "import", str(source), "--name", "shop-tasks"
        )
        assert code == 1 and "error (ALREADY_EXISTS)" in output, output
        code, output = await flywheel(
            "suites", "--address", address, "import", str(source), "--name", "shop-tasks", "--replace"
        )
        assert code == 0, output

        # A suite someone broke in the object store is listed with its error, not skipped.
        broken = (
            Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]) / "suites" / "shop-tasks" / "tasks" / "total-a"
        )
        (broken / "task.toml").write_text(
            'problem_statement = "x"\nfail_to_pass = ["tests/test_shop.py::nope"]\n'
        )
        code, output = await flywheel("suites", "--address", address)
        assert code == 0 and "suite shop-tasks failed to load from suites/shop-tasks/" in output, output
        assert "'tests/test_shop.py::nope' does not exist" in output
        code, output = await flywheel("suites", "--address", address, "reload")
        assert code == 1 and "suite shop-tasks failed to load" in output, output
        code, output = await flywheel("suites", "--address", address, "show", "shop-tasks")
        assert code == 1 and "error (FAILED_PRECONDITION)" in output, output


def test_a_named_state_dir_without_a_stack_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code, output = invoke("suites", "--state-dir", str(empty))
    assert code == 1
    assert output.startswith(
        f"error: no Flywheel stack is running from {empty} (there is no {STACK_FILE} in it)"
    )
    assert f"flywheel up --state-dir {empty}" in " ".join(output.split())
    code, output = invoke("trajectories", "list", env={"FLYWHEEL_STATE_DIR": str(empty)})
    assert code == 1 and "no Flywheel stack is running" in output, output

    # A stack.json left by a stack that is gone (its supervisor exited) is no stack either.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {
        "supervisor_pid": dead.pid,
        "state_dir": str(empty),
        "nats_url": "",
        "nats_embedded": True,
        "object_store": "",
        "services": [{"name": "orchestrator", "address": "127.0.0.1:1"}],
    }
    (empty / STACK_FILE).write_text(json.dumps(stale))
    code, output = invoke("run", "--state-dir", str(empty), "list")
    assert code == 1 and f"supervisor (pid {dead.pid}) has exited" in " ".join(output.split()), output

    # A running stack's addresses are used (this process stands in for its supervisor).
    (empty / STACK_FILE).write_text(json.dumps({**stale, "supervisor_pid": os.getpid()}))
    code, output = invoke("suites", "--state-dir", str(empty))
    assert code == 1 and "cannot reach the orchestrator at 127.0.0.1:1" in output, output
