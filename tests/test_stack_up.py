"""`flywheel up` boots the whole embedded stack, keeps it running, and leaves nothing behind.

Runs the real command in a subprocess (real nats-server, every service as its own process),
checks `flywheel status` and grpcurl against the default-or-picked ports, kills processes of the
running stack to see the supervisor restart them, then stops it with `flywheel down` (which sends
the supervisor SIGTERM, as Ctrl-C sends SIGINT) and checks that every pid it started is gone and
that no service needed SIGKILL.

These tests must pass on a loaded 2-core machine (a fresh-clone `make test` runs many suites at
once): every wait polls a condition against a generous deadline, and nothing asserts how long
something took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flywheel_cli.health import grpc_health
from flywheel_common.procs import pid_alive
from flywheel_testing.processes import grpcurl, tool

COMPONENT_COUNT = 7  # five gRPC services, the model server and the gateway
#: Seconds any wait may take before the test gives up: boot, restarts and shutdown of the whole
#: stack on a machine busy with other test suites. A deadline, not an expectation.
PATIENCE_S = 240.0
#: What `flywheel up` prints when a process of the stack had to be SIGKILLed on the way out.
KILLED = "killed after the grace period"


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


def wait_until(condition: Callable[[], Any], what: str, log: Path, timeout: float = PATIENCE_S) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail with the log after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{log.read_text(errors='replace')[-6000:]}")
        time.sleep(0.2)


def flywheel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("flywheel"), *args], env=env, capture_output=True, text=True, timeout=PATIENCE_S + 60
    )


@dataclass
class Up:
    """A running `flywheel up` and where to look at it."""

    proc: subprocess.Popen[bytes]
    state: Path
    log: Path
    env: dict[str, str]

    def info(self) -> dict[str, Any]:
        return dict(json.loads((self.state / "stack.json").read_text()))

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.info()["services"] if s["name"] == name)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def env_without_nats() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_")}
    env["FLYWHEEL_OBJECT_STORE_BACKEND"] = "fs"
    env["COLUMNS"] = "200"  # one log line per event, for the checks on up.log
    return env


@pytest.fixture
def stack_up(tmp_path: Path, env_without_nats: dict[str, str]) -> Iterator[Up]:
    """`flywheel up` in a subprocess, once stack.json says every service is healthy."""
    state = tmp_path / "state"
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [tool("flywheel"), "up", "--state-dir", str(state), "--timeout", str(PATIENCE_S)],
            env=env_without_nats,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    up = Up(proc, state, log, env_without_nats)
    try:

        def started() -> bool:
            assert proc.poll() is None, f"flywheel up exited with {proc.returncode}:\n{up.output()}"
            return (state / "stack.json").exists()

        wait_until(started, "stack.json", log, timeout=PATIENCE_S + 30)
        yield up
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=PATIENCE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_up_status_grpcurl_and_clean_shutdown(stack_up: Up) -> None:
    up = stack_up
    info = up.info()
    assert len(info["services"]) == COMPONENT_COUNT
    assert info["nats_embedded"] is True
    # The machine may run its own NATS on 4222: the stack must have picked another port then.
    assert info["nats_url"].startswith("nats://127.0.0.1:")

    status = flywheel("status", "--state-dir", str(up.state), "--json", env=up.env)
    assert status.returncode == 0, status.stdout + status.stderr
    report = json.loads(status.stdout)
    assert report["healthy"] is True
    assert {s["health"] for s in report["services"]} == {"SERVING"}
    assert {s["restarts"] for s in report["services"]} == {0} and report["nats_restarts"] == 0

    sandbox = up.service("sandbox-runner")
    listed = grpcurl("-plaintext", sandbox["address"], "list", timeout=PATIENCE_S)
    assert "flywheel.sandbox.v1.SandboxService" in listed.stdout.split(), listed.stderr

    # The stack made a service token (no FLYWHEEL_SERVICE_TOKEN here), and calls need it ...
    token_file = Path(info["service_token_file"])
    assert token_file == (up.state / "service.token").resolve() and token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text().strip()
    suites = (
        up.service("orchestrator")["address"],
        "flywheel.orchestrator.v1.OrchestratorService/ListSuites",
    )
    refused = grpcurl("-plaintext", "-d", "{}", *suites, timeout=PATIENCE_S)
    assert "Code: Unauthenticated" in refused.stderr, refused.stderr
    allowed = grpcurl(
        "-plaintext", "-H", f"authorization: Bearer {token}", "-d", "{}", *suites, timeout=PATIENCE_S
    )
    assert allowed.returncode == 0, allowed.stderr
    # ... which the CLI finds in the state folder by itself, and `flywheel status` shows.
    runs = flywheel("run", "--state-dir", str(up.state), "list", env=up.env)
    assert runs.returncode == 0, runs.stdout + runs.stderr
    shown = flywheel("status", "--state-dir", str(up.state), env=up.env)
    text = shown.stdout + shown.stderr  # the table and notes go to stderr
    assert f"service token: {token_file}" in text, text
    assert f'grpcurl -plaintext -H "authorization: Bearer $(cat {token_file})"' in text, text
    for service in info["services"]:
        assert (up.state / "logs" / f"{service['name']}.log").exists()

    children = children_of(up.proc.pid)
    assert {s["pid"] for s in info["services"]} <= set(children)
    all_pids = set(children) | {grandchild for pid in children for grandchild in children_of(pid)}
    assert len(all_pids) >= COMPONENT_COUNT + 1  # the services and nats-server

    # An idle stack stops within the grace, service by service, without SIGKILL.
    down = flywheel("down", "--state-dir", str(up.state), env=up.env)
    assert down.returncode == 0, down.stdout + down.stderr
    code = up.proc.wait(timeout=PATIENCE_S)
    output = up.output()
    assert code == 0, output
    assert not (up.state / "stack.json").exists()
    assert KILLED not in output, output
    gateway = next(s for s in info["services"] if s["name"] == "gateway")
    assert f"console: http://{gateway['address']}/console/" in output, output  # where to look, once up
    for service in info["services"]:
        assert f"{service['name']:<16} stopped" in output, output
    leftovers = [pid for pid in all_pids if pid_alive(pid)]
    assert leftovers == [], f"still running after shutdown: {leftovers}\n{output}"


@pytest.mark.slow
def test_supervisor_restarts_a_killed_service_and_nats(stack_up: Up) -> None:
    """SIGKILL one service (as a crash would), then the nats-server: both come back."""
    up = stack_up
    before = up.service("trajectory-store")
    # Its writer processes are in its process group; they must not outlive it.
    workers = children_of(before["pid"])
    assert workers, "the trajectory store runs writer processes"
    os.kill(before["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        assert up.proc.poll() is None, up.output()
        service = up.service("trajectory-store")
        return service if service["pid"] != before["pid"] and service["restarts"] == 1 else None

    after = wait_until(restarted, "trajectory-store restarted", up.log)
    assert after["address"] == before["address"]  # same port: the others keep their address for it
    wait_until(lambda: grpc_health(after["address"]) == "SERVING", "trajectory-store SERVING again", up.log)
    wait_until(lambda: "healthy again" in up.output(), "the restart reported", up.log)
    output = up.output()
    assert "trajectory-store exited with signal SIGKILL" in output and "restart #1" in output, output
    wait_until(lambda: not any(pid_alive(pid) for pid in workers), "the dead store's writers gone", up.log)

    nats_pid = next(
        pid
        for pid in children_of(up.proc.pid)
        if "nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    )
    os.kill(nats_pid, signal.SIGKILL)
    wait_until(lambda: up.info()["nats_restarts"] == 1, "nats-server restarted", up.log)
    output = up.output()
    assert f"nats-server (pid {nats_pid}) is not running" in output, output

    def healthy() -> dict[str, Any] | None:
        status = flywheel("status", "--state-dir", str(up.state), "--json", env=up.env)
        report: dict[str, Any] = json.loads(status.stdout)
        return report if status.returncode == 0 and report["healthy"] else None

    report = wait_until(healthy, "flywheel status healthy after the restarts", up.log)
    restarts = {s["name"]: s["restarts"] for s in report["services"]}
    assert restarts == {name: int(name == "trajectory-store") for name in restarts}

    down = flywheel("down", "--state-dir", str(up.state), env=up.env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert up.proc.wait(timeout=PATIENCE_S) == 0, up.output()
    assert KILLED not in up.output(), up.output()


def test_status_without_stack_says_how_to_start(tmp_path: Path, env_without_nats: dict[str, str]) -> None:
    done = flywheel("status", "--state-dir", str(tmp_path), env=env_without_nats)
    assert done.returncode == 1
    assert "flywheel up" in done.stdout + done.stderr


def test_cli_help_lists_commands() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flywheel_cli", "--help"], capture_output=True, text=True, timeout=PATIENCE_S
    )
    assert done.returncode == 0
    for command in ("up", "down", "status"):
        assert command in done.stdout


@pytest.mark.slow
def test_killed_supervisor_leaves_no_orphans(stack_up: Up) -> None:
    """Even SIGKILL of `flywheel up` (no chance to clean up) takes every child down with it."""
    up = stack_up
    children = children_of(up.proc.pid)
    assert len(children) >= COMPONENT_COUNT + 1
    up.proc.kill()
    up.proc.wait(timeout=PATIENCE_S)
    wait_until(lambda: [pid for pid in children if pid_alive(pid)] == [], "every child gone", up.log)
