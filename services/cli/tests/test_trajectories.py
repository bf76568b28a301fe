"""``flywheel trajectories …`` against a real trajectory store process (gRPC only, as users run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel_cli.main import cli

SWE = b"""{"instance_id": "astropy__astropy-1", "problem_statement": "Units fail to round trip.", "patch": "--- a/u.py\\n+++ b/u.py\\n", "attempt": 0, "resolved": true, "test_stdout": "3 passed"}
{"instance_id": "django__django-2", "problem_statement": "Admin crashes.", "patch": "", "resolved": false, "failure_category": "wrong_file"}
{"instance_id": "broken", "problem_statement": "cut off
{"problem_statement": "no id", "resolved": false}
"""


@pytest.fixture
def store_address(service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        **service_env,
        "FLYWHEEL_TRAJECTORY_HOST": "127.0.0.1",
        "FLYWHEEL_TRAJECTORY_PORT": "0",
        "FLYWHEEL_TRAJECTORY_READY_FILE": str(ready),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(tmp_path / "index"),
        "FLYWHEEL_TRAJECTORY_LOG_LEVEL": "warning",
        "FLYWHEEL_TRAJECTORY_WRITE_PROCESSES": "1",
    }
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trajectory"], env=env)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the trajectory store did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{json.loads(ready.read_text())['port']}"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def run(address: str, *args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["trajectories", "--address", address, *args], catch_exceptions=False
    )
    return result.exit_code, result.output


def test_import_list_show_export(store_address: str, tmp_path: Path) -> None:
    source = tmp_path / "swe.jsonl"
    source.write_bytes(SWE)
    code, output = run(
        store_address, "import", "swe", str(source), "--suite", "swe-lite", "--label", "team=a"
    )
    assert code == 0, output
    summary = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
    assert (summary["created"], summary["skipped"]) == (2, 2)
    assert f"{source}:3" in output and f"{source}:4" in output  # malformed lines, by file and line
    assert run(store_address, "import", "swe", str(source), "--strict")[0] == 1  # skipped records → 1

    code, output = run(store_address, "list", "--run", summary["run_id"], "--json")
    assert code == 0, output
    listed = [json.loads(line) for line in output.splitlines()]
    assert [t["task"]["taskId"] for t in listed] == ["astropy__astropy-1", "django__django-2"]
    code, output = run(
        store_address, "list", "--suite", "swe-lite", "--outcome", "unresolved", "--label", "team=a"
    )
    assert code == 0 and "django__django-2" in output and "astropy" not in output

    code, output = run(store_address, "show", listed[0]["id"])
    assert code == 0, output
    assert "#0 user" in output and "Units fail to round trip." in output and "#1 assistant" in output
    assert "resolved" in output and "tests (final)" in output

    target = tmp_path / "out" / "export.jsonl"
    target.parent.mkdir()
    code, output = run(store_address, "export", "-o", str(target), "--run", summary["run_id"])
    assert code == 0, output
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert [t["id"] for t in exported] == [t["id"] for t in listed] and exported[0]["steps"]
    assert not (target.parent / "export.jsonl.partial").exists()


def test_errors_are_clear(store_address: str, tmp_path: Path) -> None:
    code, output = run(store_address, "show", "no-such-trajectory")
    assert code == 1 and "NOT_FOUND" in output and "no-such-trajectory" in output
    code, output = run(store_address, "list", "--adapter", "x:notanumber")
    assert code == 2 and "--adapter" in output
    code, output = run("127.0.0.1:1", "list")
    assert code == 1 and "cannot reach the trajectory store at 127.0.0.1:1" in output
