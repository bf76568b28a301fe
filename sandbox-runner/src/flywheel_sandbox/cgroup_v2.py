"""cgroup v2 (the unified hierarchy) for the sandbox: the same interface as the v1 classes.

Layout, under the cgroup the runner starts in (``P``, from ``/proc/self/cgroup``'s ``0::`` line):

    P/                      controllers memory, pids, cpu enabled in P's cgroup.subtree_control
    P/flywheel-runner/      the runner itself and whatever shared P with it (v2's "no internal
                            processes" rule: P may not hold processes once it delegates controllers)
    P/<tree>/               one per Runner; memory, pids, cpu enabled for its children
    P/<tree>/<run>/         one per sandbox and per run; every process of a run lives here

v1 → v2: ``memory.limit_in_bytes`` + ``memsw`` → ``memory.max`` + ``memory.swap.max = 0``;
``max_usage_in_bytes`` → ``memory.peak`` (kernel ≥ 5.19; before, ``memory.current`` when read);
``oom_control``'s ``oom_kill`` → ``memory.events``' ``oom_kill``; ``memsw.failcnt`` →
``memory.events``' ``max``; ``cfs_quota_us``/``cfs_period_us`` → ``cpu.max``; ``cpuacct.usage`` →
``cpu.stat``'s ``usage_usec``; ``pids.*`` keep their names; killing uses ``cgroup.kill`` (kernel
≥ 5.14) before signalling what is left.

``root`` is a parameter everywhere so the unit tests can point the code at a fake tree.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from flywheel_sandbox.isolation import (
    TREE_PREFIX,
    IsolationUnavailable,
    _read,
    _read_int,
    _read_keyed,
    _read_pids,
    _write,
)

CONTROLLERS = ("memory", "pids", "cpu")
RUNNER_LEAF = "flywheel-runner"


def is_unified(root: Path) -> bool:
    """A cgroup v2 hierarchy is mounted at ``root`` (``cgroup.controllers`` exists only there)."""
    return (root / "cgroup.controllers").exists()


def own_cgroup(proc_self_cgroup: str) -> str:
    """The runner's cgroup path in the unified hierarchy (the ``0::`` line of /proc/self/cgroup)."""
    for line in proc_self_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        ctrls, _, path = rest.partition(":")
        if hier == "0" and ctrls == "":
            return path
    raise IsolationUnavailable("/proc/self/cgroup has no cgroup v2 (0::) entry")


def _words(path: Path) -> set[str]:
    return {w.lstrip("+") for w in _read(str(path)).split()}


def _make_dir(path: Path, exist_ok: bool = True) -> None:
    """mkdir of a cgroup (the kernel fills in its control files; tests replace this)."""
    path.mkdir(exist_ok=exist_ok)


def _remove_dir(path: Path | str) -> None:
    """rmdir of a cgroup (fails while it holds processes or children; tests replace this)."""
    os.rmdir(path)


def _enable(parent: Path, controllers: tuple[str, ...]) -> None:
    missing = [c for c in controllers if c not in _words(parent / "cgroup.subtree_control")]
    if missing:
        _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in missing))


def _evacuate(parent: Path) -> None:
    """Moves every process of ``parent`` into its leaf ``flywheel-runner`` child, so ``parent`` may
    delegate controllers (v2 forbids processes in a cgroup whose children have domain controllers)."""
    leaf = parent / RUNNER_LEAF
    _make_dir(leaf)
    for _ in range(20):
        pids = _read_pids(parent)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, OSError):
                _write(leaf / "cgroup.procs", pid)
    if _read_pids(parent):
        raise IsolationUnavailable(f"cannot move the processes of {parent} into {leaf}")


@dataclass
class CgroupTreeV2:
    """The per-runner parent cgroup of every run on a cgroup v2 host."""

    parent: Path

    @property
    def parents(self) -> dict[str, Path]:
        return {"unified": self.parent}

    @classmethod
    def create(cls, name: str, root: Path = Path("/sys/fs/cgroup"), own: str | None = None) -> CgroupTreeV2:
        if own is None:
            own = own_cgroup(Path("/proc/self/cgroup").read_text())
        base = root / own.lstrip("/")
        available = _words(base / "cgroup.controllers")
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise IsolationUnavailable(
                f"cgroup v2: controller(s) {', '.join(missing)} not available in {base} "
                f"(cgroup.controllers: {' '.join(sorted(available)) or 'none'}); the parent cgroup must "
                "delegate them (enable them in its cgroup.subtree_control, e.g. systemd Delegate=yes or a "
                "privileged container with its own cgroup namespace)"
            )
        try:
            # The true root cgroup is exempt from "no internal processes" (it has no cgroup.type);
            # any other — including a container's namespaced "/" — is not.
            if (base / "cgroup.type").exists() and _read_pids(base):
                _evacuate(base)
            _enable(base, CONTROLLERS)
        except OSError as err:
            raise IsolationUnavailable(
                f"cgroup v2: cannot enable {' '.join(CONTROLLERS)} in {base}/cgroup.subtree_control: {err} "
                "(is the cgroup filesystem mounted read-only, or does another process live in it?)"
            ) from err
        parent = base / name
        _remove_stale_siblings(parent)
        try:
            _make_dir(parent)
            _enable(parent, CONTROLLERS)
            probe = parent / "probe"
            _make_dir(probe)
            _remove_dir(probe)
        except OSError as err:
            raise IsolationUnavailable(f"cgroup v2: {parent} is not usable: {err}") from err
        enabled = _words(parent / "cgroup.subtree_control")
        if any(c not in enabled for c in CONTROLLERS):
            raise IsolationUnavailable(
                f"cgroup v2: {parent}/cgroup.subtree_control has {' '.join(sorted(enabled)) or 'nothing'}, "
                f"not all of {' '.join(CONTROLLERS)}"
            )
        return cls(parent)

    def new_run(self, run_id: str) -> RunCgroupV2:
        path = self.parent / run_id
        _make_dir(path, exist_ok=False)
        return RunCgroupV2({"unified": path})

    def leftover_pids(self, keep: set[str]) -> dict[str, list[int]]:
        found: dict[str, list[int]] = {}
        for child in self.parent.iterdir():
            if child.is_dir() and child.name not in keep:
                pids = _read_pids(child)
                if pids:
                    found[child.name] = pids
        return found

    def destroy(self) -> None:
        for child in list(self.parent.iterdir()):
            if child.is_dir():
                RunCgroupV2({"unified": child}).kill_and_remove()
        with contextlib.suppress(OSError):
            _remove_dir(self.parent)


def _remove_stale_siblings(parent: Path) -> None:
    """Removes the trees of earlier runners (``flywheel-sandbox-<pid>-<n>``) whose process is gone."""
    if not parent.parent.exists():
        return
    for other in parent.parent.glob(TREE_PREFIX + "*"):
        pid = other.name[len(TREE_PREFIX) :].split("-", 1)[0]
        if other == parent or not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for child in list(other.iterdir()):
            if child.is_dir():
                RunCgroupV2({"unified": child}).kill_and_remove()
        with contextlib.suppress(OSError):
            _remove_dir(other)


@dataclass
class RunCgroupV2:
    """One run's cgroup on a v2 host: one directory, all controllers."""

    dirs: dict[str, Path]
    applied: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = str(next(iter(self.dirs.values())))
        self.name = os.path.basename(self.path)
        self.members = self.path

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(self.path, "cgroup.procs")]

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _set(self, fname: str, value: str) -> None:
        if self.applied.get(fname) != value:
            _write(self._file(fname), value)
            self.applied[fname] = value

    def set_limits(self, memory_bytes: int, max_processes: int, cpu_cores: float) -> None:
        self._set("memory.max", str(memory_bytes))
        self._set("pids.max", str(max_processes))
        self._set("cpu.max", f"{max(1000, int(cpu_cores * 100_000))} 100000")

    def init_memory(self, memory_bytes: int) -> None:
        # Swap off for the run (v1: memsw = memory). A kernel without swap accounting has no
        # memory.swap.max, and then no swap can be charged to the run either.
        if os.path.exists(self._file("memory.swap.max")):
            self._set("memory.swap.max", "0")
        self.set_limits(memory_bytes, 64, 1.0)

    def cpu_ns(self) -> int:
        return _read_keyed(self._file("cpu.stat")).get("usage_usec", 0) * 1000

    def peak_memory(self) -> int:
        peak = self._file("memory.peak")
        if os.path.exists(peak):
            return _read_int(peak)
        return _read_int(self._file("memory.current"))  # kernels before 5.19 keep no peak

    def reset_peak_memory(self) -> None:
        # Writing memory.peak resets it on kernels >= 6.12; a new cgroup per run starts at zero anyway.
        with contextlib.suppress(OSError):
            _write(self._file("memory.peak"), "0")

    def oom_kills(self) -> int:
        return _read_keyed(self._file("memory.events")).get("oom_kill", 0)

    def memory_failcnt(self) -> int:
        return _read_keyed(self._file("memory.events")).get("max", 0)

    def pids_max_hits(self) -> int:
        return _read_keyed(self._file("pids.events")).get("max", 0)

    def pids_peak(self) -> int:
        return _read_int(self._file("pids.peak"))

    def pids_current(self) -> int:
        return _read_int(self._file("pids.current"))

    def pids(self) -> list[int]:
        return _read_pids(self.path)

    def signal_all(self) -> int:
        pids = _read_pids(self.path)
        if os.path.exists(self._file("cgroup.kill")):
            with contextlib.suppress(OSError):
                _write(self._file("cgroup.kill"), "1")
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def kill(self, thorough: bool = False) -> None:
        for _ in range(200):
            if not _read_pids(self.path):
                return
            self.signal_all()
            time.sleep(0.002)

    def kill_and_remove(self) -> bool:
        self.kill()
        for attempt in range(50):
            try:
                _remove_dir(self.path)
                return True
            except FileNotFoundError:
                return True
            except OSError:
                if attempt == 49:
                    return False
                self.kill()
                time.sleep(0.005)
        return False
