"""`flywheel up` boots the whole embedded stack and leaves nothing behind when stopped.

Runs the real command in a subprocess (real nats-server, every service as its own process),
checks `flywheel status` and grpcurl against the default-or-picked ports, then stops it with
`flywheel down` (which sends the supervisor SIGTERM, as Ctrl-C sends SIGINT) and checks that
every pid it started is gone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel_common.procs import pid_alive
from flywheel_testing.processes import grpcurl, tool

COMPONENT_COUNT = 7  # five gRPC services, the model server and the gateway


def children_of(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.fixture
def env_without_nats() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["FLYWHEEL_OBJECT_STORE_BACKEND"] = "fs"
    return env


@pytest.mark.slow
def test_up_status_grpcurl_and_clean_shutdown(tmp_path: Path, env_without_nats: dict[str, str]) -> None:
    state = tmp_path / "state"
    log = tmp_path / "up.log"
    started = time.monotonic()
    all_pids: set[int] = set()
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [tool("flywheel"), "up", "--state-dir", str(state), "--timeout", "60"],
            env=env_without_nats,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        while not (state / "stack.json").exists():
            assert up.poll() is None, log.read_text()
            assert time.monotonic() - started < 90, f"no stack after 90 s:\n{log.read_text()}"
            time.sleep(0.2)
        boot_s = time.monotonic() - started
        info = json.loads((state / "stack.json").read_text())
        assert len(info["services"]) == COMPONENT_COUNT
        assert info["nats_embedded"] is True
        # The machine may run its own NATS on 4222: the stack must have picked another port then.
        assert info["nats_url"].startswith("nats://127.0.0.1:")

        status = subprocess.run(
            [tool("flywheel"), "status", "--state-dir", str(state), "--json"],
            env=env_without_nats,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert report["healthy"] is True
        assert {s["health"] for s in report["services"]} == {"SERVING"}

        sandbox = next(s for s in info["services"] if s["name"] == "sandbox-runner")
        listed = grpcurl("-plaintext", sandbox["address"], "list")
        assert "flywheel.sandbox.v1.SandboxService" in listed.stdout.split(), listed.stderr
        for service in info["services"]:
            assert (state / "logs" / f"{service['name']}.log").exists()

        children = children_of(up.pid)
        assert {s["pid"] for s in info["services"]} <= set(children)
        all_pids = set(children) | {grandchild for pid in children for grandchild in children_of(pid)}
        assert len(all_pids) >= COMPONENT_COUNT + 1  # the services and nats-server

        down = subprocess.run(
            [tool("flywheel"), "down", "--state-dir", str(state)],
            env=env_without_nats,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert down.returncode == 0, down.stdout + down.stderr
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
        code = up.wait(timeout=60)
    assert code == 0, log.read_text()
    leftovers = [pid for pid in all_pids if pid_alive(pid)]
    assert leftovers == [], f"still running after shutdown: {leftovers}\n{log.read_text()}"
    assert not (state / "stack.json").exists()
    assert boot_s < 60, f"stack took {boot_s:.1f} s to become healthy"


def test_status_without_stack_says_how_to_start(tmp_path: Path, env_without_nats: dict[str, str]) -> None:
    done = subprocess.run(
        [tool("flywheel"), "status", "--state-dir", str(tmp_path)],
        env=env_without_nats,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "flywheel up" in done.stdout + done.stderr


def test_cli_help_lists_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flywheel_cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for command in ("up", "down", "status"):
        assert command in done.stdout


@pytest.mark.slow
def test_killed_supervisor_leaves_no_orphans(tmp_path: Path, env_without_nats: dict[str, str]) -> None:
    """Even SIGKILL of `flywheel up` (no chance to clean up) takes every child down with it."""
    state = tmp_path / "state"
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [tool("flywheel"), "up", "--state-dir", str(state)],
            env=env_without_nats,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 90
    while not (state / "stack.json").exists():
        assert up.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    children = children_of(up.pid)
    assert len(children) >= COMPONENT_COUNT + 1
    up.kill()
    up.wait(timeout=10)
    deadline = time.monotonic() + 30
    while [pid for pid in children if pid_alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in children if pid_alive(pid)] == []
