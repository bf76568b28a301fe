"""Process helpers for the embedded stack: children that never outlive their supervisor."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies; meant as a ``preexec_fn``.

    Used for every process ``flywheel up`` and the test fixtures start (services, nats-server),
    so that none outlives its supervisor even when the supervisor itself is killed with SIGKILL
    and cannot clean up. Linux only (prctl PR_SET_PDEATHSIG); elsewhere it does nothing.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> bool:
    """Stop a child started with ``start_new_session=True`` and everything it started.

    SIGTERM goes to the whole process group; after ``grace_s`` whatever is left (the child or any
    grandchild) gets SIGKILL. Returns True if something had to be killed.
    """
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    killed = False
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        killed = True
    if killed or group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
            killed = True
        proc.wait()
    return killed


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
