"""Process helpers for the embedded stack: children that never outlive their supervisor."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Any

_PR_SET_PDEATHSIG = 1
#: The longest wait for SIGKILLed processes to disappear (seconds); they cannot refuse, only lag.
_KILL_SETTLE_S = 5.0


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies; meant as a ``preexec_fn``.

    Used for every process ``flywheel up`` and the test fixtures start (services, nats-server),
    so that none outlives its supervisor even when the supervisor itself is killed with SIGKILL
    and cannot clean up. Linux only (prctl PR_SET_PDEATHSIG); elsewhere it does nothing.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def stop_process_group(proc: subprocess.Popen[Any], grace_s: float) -> bool:
    """Stop a child started with ``start_new_session=True`` and everything it started.

    SIGTERM goes to the child first, not to its whole group: a service decides when its own
    workers stop (after the in-flight work they do has drained). Once the child has exited, what
    is left of its group gets SIGTERM; whatever is still there when ``grace_s`` is over (the
    child or any process of its group) gets SIGKILL. Returns True if something had to be killed.
    """
    deadline = time.monotonic() + grace_s
    pgid = proc.pid
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    if proc.poll() is not None and group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
    killed = False
    if proc.poll() is None or group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
            killed = True
    proc.wait()
    # SIGKILL is delivered when the kernel next schedules each process: return once they are gone.
    settle = time.monotonic() + _KILL_SETTLE_S
    while killed and group_alive(pgid) and time.monotonic() < settle:
        time.sleep(0.02)
    return killed


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies waiting to be reaped do not count)."""
    members = group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int] | None:
    """Pids of the live (not zombie) processes of a process group; None where /proc is missing."""
    table = _process_table()
    if table is None:
        return None
    return [pid for pid, (_, group, _) in table.items() if group == pgid]


def descendants(pid: int) -> list[int]:
    """Live processes started by ``pid``, its children's children, and so on (Linux; else [])."""
    return _descendants(_process_table() or {}, pid)


def _descendants(table: dict[int, tuple[int, int, str]], pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def stop_detached_children(grace_s: float) -> list[int]:
    """Stop the processes this one started that live in a process group of their own.

    For a service on its way out (see ``flywheel_common.server.run_service``): a child in our
    own group goes with us, since the supervisor signals the group, and one with
    :func:`die_with_parent` dies with us, but a child that got a session of its own (a sandboxed
    command, a trainer worker) would be left running if the hook that should have stopped it did
    not. Each such group gets SIGTERM, and SIGKILL after ``grace_s``. Returns the pids found.
    """
    table = _process_table() or {}
    own = os.getpgrp()
    found = [pid for pid in _descendants(table, os.getpid()) if table[pid][1] != own]
    groups = {table[pid][1] for pid in found}
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(pid_alive(pid) for pid in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pgid in groups:
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    return found


def _process_table() -> dict[int, tuple[int, int, str]] | None:
    """{pid: (parent pid, process group, state)} of every live process, from /proc (Linux only)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    table: dict[int, tuple[int, int, str]] = {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        state, parent, group = fields[0], int(fields[1]), int(fields[2])
        if state not in ("Z", "X"):
            table[int(entry)] = (parent, group, state)
    return table


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
