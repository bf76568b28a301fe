"""cgroup v2 (the unified hierarchy) for the sandbox: the same interface as the v1 classes.

Layout, under the cgroup the runner starts in (``P``, from ``/proc/self/cgroup``'s ``0::`` line):

    P/                      controllers memory, pids, cpu enabled in P's cgroup.subtree_control
    P/flywheel-runner/      the runner itself and whatever shared P with it (v2's "no internal
                            processes" rule: P may not hold processes once it delegates controllers)
    P/<tree>/               one per Runner; memory, pids, cpu enabled for its children
    P/<tree>/<run>/         one per sandbox and per run; every process of a run lives here

A runner started inside ``P/flywheel-runner`` (a second runner of the same process, or a child
process of the first) uses ``P`` again. The real root cgroup (no ``cgroup.type``) is exempt from
the rule, so nothing is moved there.

v1 → v2: ``memory.limit_in_bytes`` + ``memsw`` → ``memory.max`` + ``memory.swap.max = 0``;
``max_usage_in_bytes`` → ``memory.peak`` (kernel ≥ 5.19; reset per open file from 6.12; before
5.19, the highest ``memory.current`` seen by the runner's watchdog); ``oom_control``'s ``oom_kill``
→ ``memory.events``' ``oom_kill``; ``memsw.failcnt`` → ``memory.events``' ``max``;
``cfs_quota_us``/``cfs_period_us`` → ``cpu.max``; ``cpuacct.usage`` → ``cpu.stat``'s
``usage_usec``; ``pids.*`` keep their names; killing writes ``cgroup.kill`` (kernel ≥ 5.14), or
signals every member where it is missing.

``root`` is a parameter everywhere, and the few calls that need the kernel's behaviour (``mkdir``
filling a cgroup's files, writes, ``rmdir``, the per-file peak reset) are module functions, so the
unit tests can point the code at a fake tree.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flywheel_sandbox.isolation import (
    IsolationUnavailable,
    RunCgroupBase,
    _read,
    _read_int,
    _read_keyed,
    _read_pids,
    _write,
    stale_trees,
)

CONTROLLERS = ("memory", "pids", "cpu")
RUNNER_LEAF = "flywheel-runner"
# Files every run cgroup must have once the controllers are enabled for it.
REQUIRED_FILES = (
    "cgroup.procs",
    "memory.max",
    "memory.events",
    "pids.max",
    "pids.events",
    "cpu.max",
    "cpu.stat",
)
PROC_SWAPS = Path("/proc/swaps")
PROC = Path("/proc")  # where run_of reads a process's cgroup (tests point it elsewhere)


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


def _reset_peak_fd(path: str) -> int:
    """Opens ``memory.peak`` and resets the peak seen through that open file (Linux ≥ 6.12: any
    non-empty write restarts it at the current use, for reads through this descriptor only).
    Raises OSError where the file is read-only (earlier kernels)."""
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.write(fd, b"reset\n")
    except OSError:
        os.close(fd)
        raise
    return fd


def _read_fd_int(fd: int) -> int:
    try:
        return int(os.pread(fd, 64, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _swap_devices(proc_swaps: Path) -> int:
    try:
        return max(0, len(proc_swaps.read_text().splitlines()) - 1)  # a header line, then one per device
    except OSError:
        return 0


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
    left = _read_pids(parent)
    if left:
        raise IsolationUnavailable(
            f"cgroup v2 allows no process in a cgroup that delegates controllers to its children "
            f"(the no-internal-processes rule), and processes {left[:10]} of {parent} could not be "
            f"moved into {leaf}"
        )


def _missing_controllers_message(base: Path, root: Path, missing: list[str], available: set[str]) -> str:
    have = " ".join(sorted(available)) or "none"
    text = (
        f"cgroup v2: controller(s) {', '.join(missing)} not available in the runner's cgroup {base} "
        f"(its cgroup.controllers: {have})"
    )
    if base != root:
        parent_file = base.parent / "cgroup.subtree_control"
        enabled = " ".join(sorted(_words(parent_file))) or "nothing"
        text += (
            f": they are not enabled in the parent's {parent_file} (which has {enabled}); enable them "
            f"there (echo '{' '.join('+' + c for c in missing)}' > {parent_file}) or run the runner in "
            "a cgroup delegated with them (systemd: Delegate=yes)"
        )
    else:
        text += (
            ": this is the root of the runner's cgroup namespace, so the container runtime did not "
            "delegate them to the container's cgroup"
        )
    v1_mounts = [c for c in missing if (root.parent / c / "cgroup.procs").exists()]
    if v1_mounts:
        text += f"; {', '.join(v1_mounts)} are bound to cgroup v1 hierarchies on this host (hybrid mode)"
    return text


def _enable_message(base: Path, err: OSError) -> str:
    what = f"cgroup v2: cannot enable {' '.join(CONTROLLERS)} in {base}/cgroup.subtree_control: {err}"
    if err.errno in (errno.EBUSY, errno.EOPNOTSUPP):
        return (
            f"{what}: the cgroup still holds processes ({_read_pids(base)[:10]}), which the "
            "no-internal-processes rule of cgroup v2 forbids for a cgroup that delegates controllers"
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"{what}: the cgroup file system is read-only or not delegated to the runner (a "
            "container needs a writable /sys/fs/cgroup: see the chart's sandboxRunner.cgroupAccess)"
        )
    return what


@dataclass
class V2Features:
    """What the kernel offers, found once on a probe cgroup and shared by every run cgroup."""

    kill: bool = True  # cgroup.kill (Linux >= 5.14)
    memory_peak: bool = True  # memory.peak (Linux >= 5.19)
    peak_resettable: bool | None = None  # memory.peak writable per open file (Linux >= 6.12); None: not tried
    pids_peak: bool = True  # pids.peak
    swap_max: bool = True  # memory.swap.max (swap accounting on)


@dataclass
class CgroupTreeV2:
    """The per-runner parent cgroup of every run on a cgroup v2 host."""

    parent: Path
    root: Path = Path("/sys/fs/cgroup")
    features: V2Features = field(default_factory=V2Features)

    @property
    def parents(self) -> dict[str, Path]:
        """One directory for every controller (the v1 tree's shape: callers index it by controller)."""
        return {c: self.parent for c in CONTROLLERS}

    @classmethod
    def create(
        cls,
        name: str,
        root: Path = Path("/sys/fs/cgroup"),
        own: str | None = None,
        proc_swaps: Path = PROC_SWAPS,
    ) -> CgroupTreeV2:
        if own is None:
            own = own_cgroup(Path("/proc/self/cgroup").read_text())
        base = root / own.lstrip("/")
        if not base.is_dir():
            raise IsolationUnavailable(
                f"cgroup v2: the runner's cgroup {own} (from /proc/self/cgroup) is not a directory under "
                f"{root}: the cgroup2 mount and the runner's cgroup namespace disagree"
            )
        if base.name == RUNNER_LEAF:
            base = base.parent  # this process (or its parent) already moved itself into the leaf
        available = _words(base / "cgroup.controllers")
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise IsolationUnavailable(_missing_controllers_message(base, root, missing, available))
        try:
            # The true root cgroup is exempt from "no internal processes" (it has no cgroup.type);
            # any other — including a container's namespaced "/" — is not.
            if (base / "cgroup.type").exists() and _read_pids(base):
                _evacuate(base)
            _enable(base, CONTROLLERS)
        except OSError as err:
            raise IsolationUnavailable(_enable_message(base, err)) from err
        parent = base / name
        _remove_stale_siblings(parent)
        try:
            _make_dir(parent)
            _enable(parent, CONTROLLERS)
            probe = parent / "probe"
            _make_dir(probe)
            try:
                features = _probe_features(probe)
            finally:
                _remove_dir(probe)
        except OSError as err:
            raise IsolationUnavailable(f"cgroup v2: {parent} is not usable: {err}") from err
        enabled = _words(parent / "cgroup.subtree_control")
        if any(c not in enabled for c in CONTROLLERS):
            raise IsolationUnavailable(
                f"cgroup v2: {parent}/cgroup.subtree_control has {' '.join(sorted(enabled)) or 'nothing'}, "
                f"not all of {' '.join(CONTROLLERS)}"
            )
        if not features.swap_max and _swap_devices(proc_swaps):
            raise IsolationUnavailable(
                f"cgroup v2: memory.swap.max is missing (swap accounting is off) while swap is on "
                f"({_swap_devices(proc_swaps)} device(s) in {proc_swaps}): a run could swap past its "
                "memory limit; turn swap off or boot with swap accounting (swapaccount=1)"
            )
        return cls(parent, root, features)

    def new_run(self, run_id: str) -> RunCgroupV2:
        path = self.parent / run_id
        _make_dir(path, exist_ok=False)
        return RunCgroupV2({"unified": path}, features=self.features)

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
                RunCgroupV2({"unified": child}, features=self.features).kill_and_remove()
        with contextlib.suppress(OSError):
            _remove_dir(self.parent)

    def describe(self) -> dict[str, Any]:
        """What the start-up log says about the tree."""
        f = self.features
        return {
            "version": "v2",
            "parent": str(self.parent),
            "cgroup_kill": f.kill,
            "memory_peak": f.memory_peak,
            "pids_peak": f.pids_peak,
            "swap_max": f.swap_max,
        }

    def run_of(self, pid: int) -> str | None:
        """The name of the cgroup of this tree that ``pid`` is in, else None."""
        try:
            text = (PROC / str(pid) / "cgroup").read_text()
            path = own_cgroup(text)
        except (OSError, IsolationUnavailable):
            return None
        mine = "/" + str(self.parent.relative_to(self.root)) + "/"
        if path.startswith(mine):
            return path[len(mine) :].split("/", 1)[0] or None
        return None


def _probe_features(probe: Path) -> V2Features:
    missing = [f for f in REQUIRED_FILES if not (probe / f).exists()]
    if missing:
        raise IsolationUnavailable(f"cgroup v2: a new cgroup ({probe}) lacks {', '.join(missing)}")
    return V2Features(
        kill=(probe / "cgroup.kill").exists(),
        memory_peak=(probe / "memory.peak").exists(),
        pids_peak=(probe / "pids.peak").exists(),
        swap_max=(probe / "memory.swap.max").exists(),
    )


def _remove_stale_siblings(parent: Path) -> None:
    """Removes the trees of earlier runners (``flywheel-sandbox-<pid>-<n>``) whose process is gone."""
    if not parent.parent.exists():
        return
    for other in stale_trees(parent):
        for child in list(other.iterdir()):
            if child.is_dir():
                RunCgroupV2({"unified": child}).kill_and_remove()
        with contextlib.suppress(OSError):
            _remove_dir(other)


@dataclass
class RunCgroupV2(RunCgroupBase):
    """One run's cgroup on a v2 host: one directory, all controllers."""

    dirs: dict[str, Path]
    applied: dict[str, str] = field(default_factory=dict)
    features: V2Features = field(default_factory=V2Features)

    def __post_init__(self) -> None:
        self.path = str(next(iter(self.dirs.values())))
        self.name = os.path.basename(self.path)
        self.members = self.path
        self._peak_fd: int | None = None  # memory.peak, reset through this open file (Linux >= 6.12)
        self._peak_floor: int | None = None  # memory.peak at a reset the kernel could not do
        self._sampled = 0  # highest memory.current seen, where memory.peak cannot answer

    def __del__(self) -> None:
        self._close_peak()

    def _close_peak(self) -> None:
        fd, self._peak_fd = getattr(self, "_peak_fd", None), None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

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
        self._limits = (memory_bytes, max_processes, cpu_cores)
        self._set("memory.max", str(memory_bytes))
        self._set("pids.max", str(max_processes))
        self._set("cpu.max", f"{max(1000, int(cpu_cores * 100_000))} 100000")

    def init_memory(self, memory_bytes: int) -> None:
        # Swap off for the run (v1: memsw = memory). Without swap accounting there is no
        # memory.swap.max; the tree then refuses to start while swap is on (CgroupTreeV2.create).
        if self.features.swap_max:
            self._set("memory.swap.max", "0")
        self.set_limits(memory_bytes, 64, 1.0)

    def _cpu_ns_total(self) -> int:
        return _read_keyed(self._file("cpu.stat")).get("usage_usec", 0) * 1000

    def _sample_memory(self) -> None:
        """Keeps the highest memory.current seen, for the kernels where memory.peak cannot answer
        (the watchdog's ticks call it through pids_current; short spikes between ticks are missed)."""
        if not self.features.memory_peak or self._peak_floor is not None:
            self._sampled = max(self._sampled, _read_int(self._file("memory.current")))

    def peak_memory(self) -> int:
        if self._peak_fd is not None:
            return _read_fd_int(self._peak_fd)
        self._sample_memory()
        if not self.features.memory_peak:
            return self._sampled  # before Linux 5.19: sampled only
        peak = _read_int(self._file("memory.peak"))
        if self._peak_floor is None or peak > self._peak_floor:
            return peak  # never reset, or this run went above every earlier peak: exact
        return self._sampled

    def reset_peak_memory(self) -> None:
        self._close_peak()
        self._peak_floor = None
        if self.features.memory_peak and self.features.peak_resettable is not False:
            try:
                self._peak_fd = _reset_peak_fd(self._file("memory.peak"))
                self.features.peak_resettable = True
                return
            except OSError:
                self.features.peak_resettable = False
        # No per-file reset: the kernel's peak still holds what came before; only a higher one
        # is this run's (see peak_memory), else the sampled current use stands in.
        if self.features.memory_peak:
            self._peak_floor = _read_int(self._file("memory.peak"))
        self._sampled = _read_int(self._file("memory.current"))

    def _oom_kills_total(self) -> int:
        return _read_keyed(self._file("memory.events")).get("oom_kill", 0)

    def _failcnt_total(self) -> int:
        return _read_keyed(self._file("memory.events")).get("max", 0)

    def _pids_max_total(self) -> int:
        return _read_keyed(self._file("pids.events")).get("max", 0)

    def _pids_peak_total(self) -> int:
        return _read_int(self._file("pids.peak")) if self.features.pids_peak else 0

    def pids_current(self) -> int:
        self._sample_memory()
        return _read_int(self._file("pids.current"))

    def pids(self) -> list[int]:
        return _read_pids(self.path)

    def signal_all(self) -> int:
        """One kill pass without waiting: ``cgroup.kill`` (the kernel SIGKILLs every member and
        fails their forks in flight), else SIGKILL to each member; returns how many there were."""
        pids = _read_pids(self.path)
        if not pids:
            return 0
        if self.features.kill:
            try:
                _write(self._file("cgroup.kill"), "1")
                return len(pids)
            except OSError:
                if not os.path.isdir(self.path):
                    return len(pids)  # the cgroup is gone, and its processes with it
                self.features.kill = False  # a kernel without cgroup.kill: signal each member
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def kill(self, thorough: bool = False) -> None:
        # One hierarchy: ``thorough`` (every v1 controller's list) has nothing more to read.
        for _ in range(200):
            if not self.signal_all():
                return
            time.sleep(0.002)

    def kill_and_remove(self) -> bool:
        self.kill()
        self._close_peak()
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
