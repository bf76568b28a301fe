"""The supervisor's decisions, and how a process group is stopped (real processes, no stack)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from flywheel_cli.components import by_name
from flywheel_cli.stack import DEFAULT_GRACE_S, Stack, drain_budget
from flywheel_cli.supervisor import Backoff, describe_exit
from flywheel_common.procs import group_alive, pid_alive, stop_process_group

#: A service-like leader that starts a worker in its own process group and exits on SIGTERM.
#: The worker ignores SIGTERM while its parent lives (as multiprocessing's resource tracker
#: does) and writes down when SIGTERM reached it.
LEADER = """
import os, signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid())])
print(worker.pid, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(0.1)
"""
WORKER = """
import os, signal, sys, time
report, parent = sys.argv[1], int(sys.argv[2])
def on_term(*_):
    with open(report, "a") as out:
        out.write("while the parent lived\\n" if os.getppid() == parent else "after the parent\\n")
    if os.getppid() != parent and "stubborn" not in report:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(report + ".ready", "w").close()
while True:
    time.sleep(0.05)
"""


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=1, cap_s=10)
    assert [backoff.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.next_delay() == 1


def test_exit_status_and_signal_are_named() -> None:
    assert describe_exit(1) == "status 1"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"


def test_services_are_told_to_drain_well_inside_the_grace(tmp_path: Path) -> None:
    assert drain_budget(DEFAULT_GRACE_S) == 5.0 and drain_budget(6.0) == 2.0
    stack = Stack(tmp_path)
    env = stack.child_env(
        by_name("trajectory-store"), {c.name: 50000 + i for i, c in enumerate(stack.components)}
    )
    assert float(env["FLYWHEEL_TRAJECTORY_SHUTDOWN_TIMEOUT_S"]) * 3 <= stack.grace_s
    assert float(env["FLYWHEEL_TRAJECTORY_GRACE_PERIOD_S"]) < float(
        env["FLYWHEEL_TRAJECTORY_SHUTDOWN_TIMEOUT_S"]
    )


def _leader(report: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", LEADER, WORKER, str(report)], stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout is not None
    worker = int(proc.stdout.readline())
    ready = report.with_name(report.name + ".ready")
    deadline = time.monotonic() + 120  # a deadline for a busy machine, not an expectation
    while not ready.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the worker did not start"
        time.sleep(0.05)
    return proc, worker


def test_the_leader_stops_first_then_what_is_left_of_its_group(tmp_path: Path) -> None:
    report = tmp_path / "worker.txt"
    proc, worker = _leader(report)
    killed = stop_process_group(proc, grace_s=60)
    assert killed is False
    assert not group_alive(proc.pid) and not pid_alive(worker)
    assert report.read_text() == "after the parent\n"  # the service decides when its workers stop


def test_what_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    report = tmp_path / "stubborn.txt"
    proc, worker = _leader(report)
    started = time.monotonic()
    assert stop_process_group(proc, grace_s=1.0) is True
    assert not group_alive(proc.pid)
    assert time.monotonic() - started >= 1.0  # it had its grace
    assert not pid_alive(worker)
