"""Host-side isolation: control groups, the seccomp filter and the bubblewrap command line.

Nothing here knows about gRPC. :func:`probe` checks at start-up that every mechanism works and
raises :class:`IsolationUnavailable` naming what is missing — the runner refuses to start then,
unless the operator chose the explicit unsafe-local mode.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flywheel_common.runtime import StartupError

if TYPE_CHECKING:
    from flywheel_sandbox.cgroup_v2 import CgroupTreeV2

SANDBOX_UID = 65534
SANDBOX_GID = 65534
CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 controllers a run is placed in: memory (limit, swap off, peak, OOM kills), pids (process
# limit and its hit counter), cpu (CFS quota) and cpuacct (CPU time used by the whole run).
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
TREE_PREFIX = "flywheel-sandbox-"

# Read-only host paths visible in the sandbox (the "image" is the host's /usr). /etc is not bound
# whole: only what the dynamic loader, Python and name lookups of uid 65534 need.
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/alternatives",
    "/etc/ssl/certs",
    "/etc/python3",
    "/etc/python3.11",
)


class IsolationUnavailable(StartupError):
    """A mechanism the sandbox needs is missing or not usable here; the message says which.

    A :class:`StartupError`, so the service exits at start-up with this message (no traceback).
    """


# --- seccomp -------------------------------------------------------------------------------------

# Syscalls a sandboxed program never needs and that widen the kernel's attack surface or escape
# the sandbox: debugging other processes, mounting, new namespaces, kernel keyrings, loading
# kernel code, BPF, perf, userfaultfd, io_uring, raw handles, clock and system changes.
DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "vhangup",
    "lookup_dcookie",
    "personality",
)
# Namespace flags that clone() must not carry (clone3 is refused with ENOSYS, so libc falls back to
# clone, whose flags seccomp can inspect).
CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000


def build_seccomp_bpf() -> bytes:
    """The compiled seccomp-BPF program (for ``bwrap --seccomp FD``), built with libseccomp.

    pyseccomp is a ctypes binding of the system's libseccomp (Debian ``libseccomp2``), so our
    virtual environment does not depend on Debian's ``python3-seccomp``.
    """
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as err:  # OSError: libseccomp.so.2 itself is missing
        raise IsolationUnavailable(f"seccomp: libseccomp is not usable ({err}); install libseccomp2") from err
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(sc.ERRNO(errno.EPERM), name)
        except (RuntimeError, ValueError, OSError):
            continue  # not a syscall on this architecture
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_NS_FLAGS, CLONE_NS_FLAGS))
    for bit in (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000):
        flt.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


# --- cgroups -------------------------------------------------------------------------------------


def _own_cgroup_v1(controller: str) -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return path
    raise IsolationUnavailable(f"cgroup v1 controller {controller!r} is not mounted")


@dataclass
class CgroupTree:
    """The per-runner parent cgroup of every run, one directory per v1 controller."""

    parents: dict[str, Path]

    @classmethod
    def create(cls, name: str) -> CgroupTree:
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            raise IsolationUnavailable(
                "cgroup v1 was asked for but the unified (v2) hierarchy is mounted at /sys/fs/cgroup"
            )
        parents: dict[str, Path] = {}
        for ctrl in V1_CONTROLLERS:
            mount = CGROUP_ROOT / ctrl
            if not (mount / "cgroup.procs").exists():
                raise IsolationUnavailable(f"cgroup v1 controller {ctrl!r} is not mounted at {mount}")
            parent = mount / _own_cgroup_v1(ctrl).lstrip("/") / name
            _remove_stale_siblings(parent)
            try:
                parent.mkdir(exist_ok=True)
                probe = parent / "probe"
                probe.mkdir(exist_ok=True)
                probe.rmdir()
            except OSError as err:
                raise IsolationUnavailable(f"cgroup {parent} is not writable: {err}") from err
            parents[ctrl] = parent
        if not (parents["memory"] / "memory.memsw.limit_in_bytes").exists():
            raise IsolationUnavailable("memory.memsw.* missing: swap accounting is off, cannot disable swap")
        return cls(parents)

    def new_run(self, run_id: str) -> RunCgroup:
        dirs = {}
        for ctrl, parent in self.parents.items():
            path = parent / run_id
            path.mkdir()
            dirs[ctrl] = path
        return RunCgroup(dirs)

    def leftover_pids(self, keep: set[str]) -> dict[str, list[int]]:
        """Processes in run cgroups whose id is not in ``keep`` (warm or active runs)."""
        found: dict[str, list[int]] = {}
        for child in self.parents["pids"].iterdir():
            if child.is_dir() and child.name not in keep:
                pids = _read_pids(child)
                if pids:
                    found[child.name] = pids
        return found

    def destroy(self) -> None:
        for parent in self.parents.values():
            for child in list(parent.iterdir()):
                if child.is_dir():
                    RunCgroup({"x": child}).kill_and_remove()
            try:
                parent.rmdir()
            except OSError:
                pass

    def describe(self) -> dict[str, Any]:
        """What the start-up log says about the tree."""
        return {"version": "v1", "parents": {k: str(v) for k, v in self.parents.items()}}

    def run_of(self, pid: int) -> str | None:
        """The name of the cgroup of this tree that ``pid`` is in (its ``pids`` one), else None."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return None
        marker = "/" + self.parents["pids"].name + "/"
        for line in lines:
            _, ctrls, path = line.split(":", 2)
            if "pids" in ctrls.split(",") and marker in path + "/":
                return path.rsplit("/", 1)[-1]
        return None


def create_tree(name: str, version: str = "auto", root: Path = CGROUP_ROOT) -> CgroupTree | CgroupTreeV2:
    """The runner's cgroup tree on this host: v2 where the unified hierarchy is mounted at ``root``,
    v1 otherwise (``version`` forces one: "v1", "v2"; "auto" detects)."""
    from flywheel_sandbox import cgroup_v2

    unified = cgroup_v2.is_unified(root)
    if version == "v2" or (version == "auto" and unified):
        if not unified:
            hybrid = ""
            if cgroup_v2.is_unified(root / "unified"):
                hybrid = (
                    f" (this host is in hybrid mode: the cgroup2 mount at {root / 'unified'} holds no "
                    "controller, memory, pids and cpu are bound to cgroup v1 hierarchies; use cgroup "
                    "version v1 or auto, or boot with systemd.unified_cgroup_hierarchy=1)"
                )
            raise IsolationUnavailable(f"cgroup v2 was asked for but {root} is not a cgroup2 mount{hybrid}")
        return cgroup_v2.CgroupTreeV2.create(name, root)
    if version not in ("auto", "v1"):
        raise IsolationUnavailable(f"unknown cgroup version {version!r} (auto, v1 or v2)")
    return CgroupTree.create(name)


def stale_trees(parent: Path) -> list[Path]:
    """The sibling trees of earlier runners (``flywheel-sandbox-<pid>-<n>``) whose process is gone."""
    stale = []
    for other in parent.parent.glob(TREE_PREFIX + "*"):
        pid = other.name[len(TREE_PREFIX) :].split("-", 1)[0]
        if other != parent and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            stale.append(other)
    return stale


def _remove_stale_siblings(parent: Path) -> None:
    """Removes the cgroup trees of earlier runners whose process is gone."""
    for other in stale_trees(parent):
        for child in list(other.iterdir()):
            if child.is_dir():
                RunCgroup({"x": child}).kill_and_remove()
        with contextlib.suppress(OSError):
            other.rmdir()


# Plain string paths and os-level I/O below: these run several times per run on the hot path,
# where pathlib's parsing overhead was measurable.


def _read(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return ""
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def _read_pids(path: Path | str) -> list[int]:
    return [int(x) for x in _read(os.path.join(path, "cgroup.procs")).split()]


def _write(path: Path | str, value: int | str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _read_int(path: str) -> int:
    try:
        return int(_read(path).split()[0])
    except (ValueError, IndexError):
        return 0


def _read_keyed(path: str) -> dict[str, int]:
    out = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value)
    return out


class RunCgroupBase(ABC):
    """One run's cgroup as the runner uses it, on cgroup v1 (:class:`RunCgroup`) or v2
    (:class:`~flywheel_sandbox.cgroup_v2.RunCgroupV2`).

    The kernel's event counters (CPU time, OOM kills, memory-limit hits, ``pids.max`` hits) only
    grow, and ``pids.peak`` cannot be reset: :meth:`reset` records their values as the new zero,
    and the readers below report what happened since (a new cgroup counts from zero).
    """

    name: str
    # Zero points recorded by reset(); class-level defaults, so a new cgroup counts from zero.
    _zero_cpu_ns = 0
    _zero_oom_kills = 0
    _zero_failcnt = 0
    _zero_pids_max = 0
    _pids_peak_floor: int | None = None
    _limits: tuple[int, int, float] | None = None

    @property
    @abstractmethod
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` file(s) a process is written to to join the run (one per v1 controller)."""

    @abstractmethod
    def set_limits(self, memory_bytes: int, max_processes: int, cpu_cores: float) -> None:
        """Memory (swap off), process and CPU-quota limits; writes only what differs from the last call."""

    @abstractmethod
    def init_memory(self, memory_bytes: int) -> None:
        """First set-up of a new cgroup: swap off, then :meth:`set_limits` with defaults."""

    @abstractmethod
    def peak_memory(self) -> int:
        """Highest memory use since creation or the last :meth:`reset_peak_memory`, in bytes."""

    @abstractmethod
    def reset_peak_memory(self) -> None:
        """Starts :meth:`peak_memory` again from the current use."""

    @abstractmethod
    def pids_current(self) -> int: ...

    @abstractmethod
    def pids(self) -> list[int]:
        """The processes in the cgroup now."""

    @abstractmethod
    def signal_all(self) -> int:
        """One SIGKILL pass over the run's processes, without waiting; returns how many there were."""

    @abstractmethod
    def kill(self, thorough: bool = False) -> None:
        """SIGKILL every process until none is left (forks racing the kill included)."""

    @abstractmethod
    def kill_and_remove(self) -> bool:
        """Kills everything, then removes the cgroup; False if it could not be removed."""

    # The kernel's counters, as they read (since the cgroup was made).
    @abstractmethod
    def _cpu_ns_total(self) -> int: ...

    @abstractmethod
    def _oom_kills_total(self) -> int: ...

    @abstractmethod
    def _failcnt_total(self) -> int: ...

    @abstractmethod
    def _pids_max_total(self) -> int: ...

    @abstractmethod
    def _pids_peak_total(self) -> int: ...

    def cpu_ns(self) -> int:
        """CPU time of every process of the cgroup since creation or :meth:`reset`, in ns."""
        return self._cpu_ns_total() - self._zero_cpu_ns

    def oom_kills(self) -> int:
        return self._oom_kills_total() - self._zero_oom_kills

    def memory_failcnt(self) -> int:
        """Times the memory limit was hit (v1 ``memsw.failcnt``, v2 ``memory.events`` ``max``)."""
        return self._failcnt_total() - self._zero_failcnt

    def pids_max_hits(self) -> int:
        return self._pids_max_total() - self._zero_pids_max

    def pids_peak(self) -> int:
        """Highest process count since creation, or since :meth:`reset` when it went above the peak
        before it; 0 when unknown (no ``pids.peak`` on this kernel, or a run after a reset that
        stayed under an earlier peak): the runner's own sampling stands in then."""
        peak = self._pids_peak_total()
        if self._pids_peak_floor is not None and peak <= self._pids_peak_floor:
            return 0
        return peak

    def reset(
        self,
        memory_bytes: int | None = None,
        max_processes: int | None = None,
        cpu_cores: float | None = None,
    ) -> None:
        """Makes the cgroup count like a new one, for reuse by another run.

        Resets: the zero of CPU time, OOM kills, memory-limit hits and ``pids.max`` hits (the
        kernel's counters are recorded, not cleared); the memory peak (v1: cleared; v2: restarted
        where the kernel allows, see :meth:`reset_peak_memory`); the process peak (recorded as a
        floor: see :meth:`pids_peak`). Limits given here are applied (``None`` keeps that limit).
        Call it with no process of the previous run left (the runner's clean-up kills them); a
        process already moved in for the next run is fine.
        """
        self._zero_cpu_ns = self._cpu_ns_total()
        self._zero_oom_kills = self._oom_kills_total()
        self._zero_failcnt = self._failcnt_total()
        self._zero_pids_max = self._pids_max_total()
        self._pids_peak_floor = self._pids_peak_total()
        self.reset_peak_memory()
        if (memory_bytes, max_processes, cpu_cores) != (None, None, None):
            old = self._limits or (memory_bytes or 0, max_processes or 0, cpu_cores or 0.0)
            self.set_limits(
                old[0] if memory_bytes is None else memory_bytes,
                old[1] if max_processes is None else max_processes,
                old[2] if cpu_cores is None else cpu_cores,
            )


@dataclass
class RunCgroup(RunCgroupBase):
    """One run's cgroups on v1. Every process of the run lives here, so killing them all is exact."""

    dirs: dict[str, Path]
    memory_limit: int = 1 << 62  # a new cgroup starts unlimited
    applied: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.s = {ctrl: str(d) for ctrl, d in self.dirs.items()}
        self.name = next(iter(self.dirs.values())).name
        # Every process of the run is in all controllers (they are joined together), so one
        # controller's member list is the run's; "pids" when present.
        self.members = self.s.get("pids", next(iter(self.s.values())))

    @property
    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self.s.values()]

    def _set(self, ctrl: str, fname: str, value: int) -> None:
        if self.applied.get(fname) != value:
            _write(os.path.join(self.s[ctrl], fname), value)
            self.applied[fname] = value

    def set_limits(self, memory_bytes: int, max_processes: int, cpu_cores: float) -> None:
        self._limits = (memory_bytes, max_processes, cpu_cores)
        if memory_bytes != self.memory_limit:
            # memsw (memory + swap) must stay >= the memory limit at every step; equal means no swap.
            order = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
            if memory_bytes > self.memory_limit:
                order = order[::-1]
            for fname in order:
                _write(os.path.join(self.s["memory"], fname), memory_bytes)
            self.memory_limit = memory_bytes
        self._set("pids", "pids.max", max_processes)
        self._set("cpu", "cpu.cfs_period_us", 100_000)
        self._set("cpu", "cpu.cfs_quota_us", max(1000, int(cpu_cores * 100_000)))

    def init_memory(self, memory_bytes: int) -> None:
        _write(os.path.join(self.s["memory"], "memory.swappiness"), 0)
        self.set_limits(memory_bytes, 64, 1.0)

    def _cpu_ns_total(self) -> int:
        return _read_int(os.path.join(self.s["cpuacct"], "cpuacct.usage"))

    def peak_memory(self) -> int:
        return _read_int(os.path.join(self.s["memory"], "memory.max_usage_in_bytes"))

    def reset_peak_memory(self) -> None:
        _write(os.path.join(self.s["memory"], "memory.max_usage_in_bytes"), 0)

    def _oom_kills_total(self) -> int:
        return _read_keyed(os.path.join(self.s["memory"], "memory.oom_control")).get("oom_kill", 0)

    def _failcnt_total(self) -> int:
        return _read_int(os.path.join(self.s["memory"], "memory.memsw.failcnt"))

    def _pids_max_total(self) -> int:
        return _read_keyed(os.path.join(self.s["pids"], "pids.events")).get("max", 0)

    def _pids_peak_total(self) -> int:
        """Highest process count since the cgroup was made (0 where the kernel has no pids.peak)."""
        return _read_int(os.path.join(self.s["pids"], "pids.peak"))

    def pids_current(self) -> int:
        return _read_int(os.path.join(self.s["pids"], "pids.current"))

    def pids(self) -> list[int]:
        return _read_pids(self.members)

    def signal_all(self) -> int:
        """One SIGKILL pass over the run's processes, without waiting (safe inside the event loop).

        Killing the sandbox's init ends its pid namespace, so the kernel kills the rest.
        """
        pids = _read_pids(self.members)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return len(pids)

    def kill(self, thorough: bool = False) -> None:
        """SIGKILL every process of the run until none is left (forks racing the kill included).

        ``thorough`` reads every controller's member list, not just one (for the final clean-up).
        """
        dirs = list(self.s.values()) if thorough else [self.members]
        for _ in range(200):
            pids = set()
            for d in dirs:
                pids.update(_read_pids(d))
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.002)

    def kill_and_remove(self) -> bool:
        self.kill(thorough=True)
        ok = True
        for d in self.s.values():
            for attempt in range(50):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if attempt == 49:
                        ok = False
                    self.kill(thorough=True)
                    time.sleep(0.005)
        return ok


# --- bubblewrap ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BwrapLayout:
    """The command line that starts one warm sandbox (everything but the per-run fds)."""

    bwrap: str
    setpriv: str
    python: str

    def argv(
        self, *, workspace_bytes: int, launcher_fd: int, seccomp_fd: int, extra_data: dict[str, int]
    ) -> list[str]:
        a = [
            self.bwrap,
            "--unshare-user",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup",
            "--disable-userns",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_GID),
            "--hostname",
            "sandbox",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--clearenv",
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--setenv",
            "HOME",
            "/workspace",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for top in ("bin", "lib", "lib64", "lib32", "libx32", "sbin"):
            host = Path("/") / top
            if host.is_symlink():
                a += ["--symlink", os.readlink(host), f"/{top}"]
            elif host.is_dir():
                a += ["--ro-bind", str(host), f"/{top}"]
        for path in ETC_FILES:
            if os.path.exists(path):
                a += ["--ro-bind", path, path]
        a += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--remount-ro",
            "/dev",
            "--size",
            str(workspace_bytes),
            "--tmpfs",
            "/dev/shm",
            "--size",
            str(workspace_bytes),
            "--tmpfs",
            "/tmp",
            "--size",
            str(workspace_bytes),
            "--tmpfs",
            "/workspace",
            "--ro-bind-data",
            str(launcher_fd),
            "/.flywheel/launcher.pyc",
        ]
        for dest, fd in extra_data.items():
            a += ["--ro-bind-data", str(fd), dest]
        a += [
            "--remount-ro",
            "/",
            "--seccomp",
            str(seccomp_fd),
            "--chdir",
            "/workspace",
            self.python,
            "-S",
            "/.flywheel/launcher.pyc",
        ]
        return a

    def wrap(self, bwrap_argv: list[str], procs_files: list[str]) -> list[str]:
        """Joins the sandbox's cgroup (as root: ``procs_files``, one per v1 controller), drops to
        uid 65534 with no capabilities, then execs bwrap.

        bubblewrap then runs unprivileged in a new user namespace, so outside the sandbox every
        process of the run is uid 65534, never root. Nothing of the host reaches bubblewrap's
        environment or working directory: the cgroup paths are arguments, not variables, and the
        shell moves to ``/`` and drops ``PWD`` (which it would otherwise export with the runner's
        working directory). Without ``--as-pid-1`` bubblewrap's own init, a copy of it, is the
        sandbox's pid 1, so its environment is what ``/proc/1/environ`` shows inside.
        """
        script = 'cd / || exit 97; unset PWD OLDPWD; while [ "$1" != -- ]; do echo $$ > "$1" || exit 97; shift; done; shift; exec "$@"'
        setpriv = [
            self.setpriv,
            f"--reuid={SANDBOX_UID}",
            f"--regid={SANDBOX_GID}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]
        return ["/bin/sh", "-c", script, "sh", *procs_files, "--", *setpriv, *bwrap_argv]


def find_tools(python: str) -> BwrapLayout:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise IsolationUnavailable("bubblewrap (bwrap) is not installed; apt-get install bubblewrap")
    setpriv = shutil.which("setpriv")
    if not setpriv:
        raise IsolationUnavailable("setpriv (util-linux) is not installed")
    if not os.access(python, os.X_OK):
        raise IsolationUnavailable(f"sandbox interpreter {python} is missing (apt-get install python3)")
    if os.geteuid() != 0:
        raise IsolationUnavailable("the runner must run as root to create cgroups and drop to uid 65534")
    return BwrapLayout(bwrap, setpriv, python)


def smoke_test(layout: BwrapLayout, seccomp: bytes) -> None:
    """Starts one throw-away sandbox (no cgroup) to prove user namespaces and bwrap work here."""
    argv = [layout.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--ro-bind", "/usr", "/usr"]
    for top in ("bin", "lib", "lib64"):
        host = Path("/") / top
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{top}"]
    r, w = os.pipe()
    os.write(w, seccomp)
    os.close(w)
    try:
        wrapped = [
            layout.setpriv,
            f"--reuid={SANDBOX_UID}",
            f"--regid={SANDBOX_GID}",
            "--clear-groups",
            *argv,
            "--seccomp",
            str(r),
            "--",
            "/bin/sh",
            "-c",
            "echo ok",
        ]
        # A clean environment and cwd: this sandbox has no --clearenv and bubblewrap's init is its pid 1.
        proc = subprocess.run(
            wrapped,
            capture_output=True,
            timeout=20,
            pass_fds=(r,),
            check=False,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
        )
    finally:
        os.close(r)
    if proc.returncode != 0 or proc.stdout.strip() != b"ok":
        raise IsolationUnavailable(
            f"bubblewrap cannot start a sandbox here (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()[:500]}"
        )
