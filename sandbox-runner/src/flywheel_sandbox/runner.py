"""The sandbox runner's engine: a bounded queue, a pool of reusable sandboxes, and one run end to end.

A sandbox is a started bubblewrap sandbox whose first process, the init of its namespaces, is the
*zygote* (``launcher.py``): an interpreter that has already started and forks one child per run.
A run goes through *send* (a fresh cgroup with the run's limits; fresh pipes for its stdin,
stdout, stderr, request and status handed to the zygote; the forked child put into the run's
cgroup before it reads its request), *supervise* (stdout and stderr read under a byte cap, the
wall and CPU deadlines enforced, until the zygote reports the child's exit; anything the run
left running is killed) and *collect* (the output, the launcher's status and the side channel
read, usage measured from the run's own cgroup, the outcome classified). The run's cgroup is
then removed, and the sandbox is either *recycled* — only after a run that ended by itself,
within every limit, left no process and nothing the zygote's or the runner's checks can find,
in a default-size sandbox — or destroyed. Recycling empties the sandbox's writable mounts and
checks them against their state at start; the README ("Warm pool") has the whole argument. In
unsafe-local mode a :class:`NullCgroup` stands in for the cgroups and no sandbox is reused.
"""

from __future__ import annotations

import array
import asyncio
import codecs
import contextlib
import enum
import itertools
import logging
import marshal
import os
import shutil
import signal
import socket
import stat
import struct
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from flywheel_common.errors import ResourceExhausted
from flywheel_sandbox import isolation
from flywheel_sandbox.cgroup_v2 import CgroupTreeV2
from flywheel_sandbox.classify import Category, category_for_exception, last_exception
from flywheel_sandbox.null_cgroup import Cgroup, NullCgroup

log = logging.getLogger("flywheel.sandbox")

RUNNER_VERSION = "0.2.0"


class Status(enum.Enum):
    """Mirrors ``flywheel.sandbox.v1.ExecutionStatus`` (names without the prefix)."""

    OK = 1
    RUNTIME_ERROR = 2
    WALL_TIMEOUT = 3
    CPU_TIMEOUT = 4
    MEMORY_LIMIT = 5
    OUTPUT_LIMIT = 6
    FILE_SIZE_LIMIT = 7
    PROCESS_LIMIT = 8
    SANDBOX_ERROR = 9


@dataclass(frozen=True)
class Limits:
    wall_s: float
    cpu_s: float
    memory_bytes: int
    max_processes: int
    output_bytes: int
    file_size_bytes: int
    max_open_files: int
    workspace_bytes: int


@dataclass(frozen=True)
class FileSpec:
    path: str
    data: bytes
    executable: bool = False


@dataclass
class RunSpec:
    """One run: files, then either a Python entry file (+ args) or an explicit argv."""

    files: list[FileSpec]
    limits: Limits
    entry: str = "main.py"
    args: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stdin: bytes = b""
    extra_data: dict[str, bytes] = field(default_factory=dict)  # read-only files under /.flywheel
    pass_pipe: bool = False  # give the program a side channel (fd) whose bytes come back in RunResult.side


@dataclass
class RunResult:
    status: Status
    exit_code: int
    stdout: bytes
    stdout_truncated: bool
    stderr: bytes
    stderr_truncated: bool
    wall_s: float
    cpu_s: float
    peak_memory_bytes: int
    peak_processes: int
    queue_s: float
    category: Category
    error_message: str
    backend: str
    side: bytes = b""
    sandbox_id: str = ""  # the sandbox (its own cgroup's name) the run used
    sandbox_run: int = 0  # which run of that sandbox this was: 1 = a sandbox no run had used before

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


# A sandbox's own cgroup holds bubblewrap's monitor, the zygote, and a run's child between its
# fork and its move into the run's cgroup: never more than three processes, four for slack.
HOLDING_PIDS = 4
MAX_RUNS_PER_SANDBOX = 256  # then a fresh one: nothing may accumulate, however slowly
SCRUB_MAX_INODES = 128  # files and directories a run may leave for clean-up; more: destroy instead
START_TIMEOUT_S = 20.0  # a sandbox's start, or the zygote's fork of a run, on a loaded machine
MOUNTS = ("/workspace", "/tmp", "/dev/shm")  # the sandbox's writable tmpfs mounts
GUARD_PATH = "/.flywheel/guard.bpf"
ZYGOTE_PID = 1  # the zygote is its pid namespace's init (bwrap --as-pid-1)
_TREE_IDS = itertools.count(1)  # one cgroup tree per Runner, even several in one process
SIDE_CHANNEL_CAP = 32 * 1024 * 1024  # bytes of a run's side channel (RunTests' signed report)
OutputCallback = Callable[[str, str, float], Awaitable[None]]
_CREDS_SPACE = socket.CMSG_SPACE(struct.calcsize("3i"))

_LAUNCHER = resources.files("flywheel_sandbox").joinpath("launcher.py").read_bytes()


def _data_fd(data: bytes) -> int:
    """An fd whose content is ``data`` (for bwrap --ro-bind-data / --seccomp)."""
    if len(data) < 60_000:
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        return r
    fd, path = tempfile.mkstemp(prefix="fw-sbx-")
    os.unlink(path)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def build_guard_bpf() -> bytes:
    """The seccomp filter every run's child installs on top of the sandbox's own (see launcher.py).

    Runs share the zygote's uid, and the kernel lets a process change some state of another
    process of its uid without ptrace rights: its rlimits (``prlimit``), nice value, CPU affinity,
    scheduling policy and I/O priority, and the owner of its SIGIO. A child inherits all of them
    from the zygote, so one run could change the next. This filter refuses those calls when they
    target the zygote (pid 1, its process group 1, or every process of the user) with EPERM, and
    ``mq_open``: POSIX message queues outlive their processes and cannot be listed without
    mounting ``mqueue``, so a reused sandbox could not be checked for them. Int arguments are
    compared on their low 32 bits (the kernel reads them as ``int``).
    """
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as err:
        raise isolation.IsolationUnavailable(f"seccomp: libseccomp is not usable ({err})") from err

    def arg(index: int, value: int) -> object:
        return sc.Arg(index, sc.MASKED_EQ, 0xFFFFFFFF, value & 0xFFFFFFFF)

    prio_process, prio_pgrp, prio_user = 0, 1, 2
    ioprio_process, ioprio_pgrp, ioprio_user = 1, 2, 3
    f_setown, f_setown_ex = 8, 15
    fiosetown, siocspgrp = 0x8901, 0x8902
    rules: list[tuple[str, list[object]]] = [
        ("prlimit64", [arg(0, ZYGOTE_PID)]),
        ("sched_setaffinity", [arg(0, ZYGOTE_PID)]),
        ("sched_setscheduler", [arg(0, ZYGOTE_PID)]),
        ("sched_setparam", [arg(0, ZYGOTE_PID)]),
        ("sched_setattr", [arg(0, ZYGOTE_PID)]),
        ("setpriority", [arg(0, prio_process), arg(1, ZYGOTE_PID)]),
        ("setpriority", [arg(0, prio_pgrp), arg(1, ZYGOTE_PID)]),
        ("setpriority", [arg(0, prio_user)]),
        ("ioprio_set", [arg(0, ioprio_process), arg(1, ZYGOTE_PID)]),
        ("ioprio_set", [arg(0, ioprio_pgrp), arg(1, ZYGOTE_PID)]),
        ("ioprio_set", [arg(0, ioprio_user)]),
        ("pidfd_open", [arg(0, ZYGOTE_PID)]),
        ("fcntl", [arg(1, f_setown), arg(2, ZYGOTE_PID)]),
        ("fcntl", [arg(1, f_setown), arg(2, -ZYGOTE_PID)]),
        ("fcntl", [arg(1, f_setown_ex)]),  # its argument is a pointer the filter cannot read
        ("ioctl", [arg(1, fiosetown)]),
        ("ioctl", [arg(1, siocspgrp)]),
        ("mq_open", []),
    ]
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    for name, args in rules:
        try:
            flt.add_rule(sc.ERRNO(1), name, *args)  # EPERM
        except (RuntimeError, ValueError, OSError):
            continue  # not a syscall on this architecture
    with tempfile.TemporaryFile() as fh:
        flt.export_bpf(fh)
        fh.seek(0)
        return fh.read()


@dataclass
class _Mount:
    """One writable tmpfs of a sandbox, opened through ``/proc/<zygote>/root``, and its state at start."""

    path: str
    fd: int
    inodes: int
    blocks: int
    mode: int
    owner: tuple[int, int]
    times: tuple[int, int]
    xattrs: frozenset[str]

    @classmethod
    def open(cls, zygote_pid: int, path: str) -> _Mount:
        fd = os.open(f"/proc/{zygote_pid}/root{path}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        vfs = os.fstatvfs(fd)
        st = os.fstat(fd)
        return cls(
            path=path,
            fd=fd,
            inodes=vfs.f_files - vfs.f_ffree,
            blocks=vfs.f_blocks - vfs.f_bfree,
            mode=st.st_mode,
            owner=(st.st_uid, st.st_gid),
            times=(st.st_atime_ns, st.st_mtime_ns),
            xattrs=frozenset(os.listxattr(fd)),
        )

    def used(self) -> tuple[int, int]:
        vfs = os.fstatvfs(self.fd)
        return vfs.f_files - vfs.f_ffree, vfs.f_blocks - vfs.f_bfree

    def restore(self) -> str | None:
        """Empties the mount and puts its root directory back as it was; what is wrong, if anything.

        Runs as root on the host, on a tree nobody can change any more (every process of the run
        is dead), with fd-relative calls that never follow a symlink (``shutil.rmtree`` with
        ``dir_fd`` is the fd-based walk), so whatever names and links the run left cannot lead
        it anywhere else.
        """
        if self.used() != (self.inodes, self.blocks):
            with os.scandir(self.fd) as entries:
                found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            for name, is_dir in found:
                if is_dir:
                    shutil.rmtree(name, dir_fd=self.fd)
                else:
                    os.unlink(name, dir_fd=self.fd)
        st = os.fstat(self.fd)
        if (st.st_uid, st.st_gid) != self.owner:
            return f"{self.path} changed owner"
        if st.st_mode != self.mode:
            os.fchmod(self.fd, stat.S_IMODE(self.mode))
        for name in set(os.listxattr(self.fd)) - self.xattrs:
            if not name.startswith("user."):
                return f"{self.path} has a new attribute {name!r}"
            os.removexattr(self.fd, name)
        if (st.st_atime_ns, st.st_mtime_ns) != self.times:
            os.utime(self.fd, ns=self.times)
        if self.used() != (self.inodes, self.blocks):
            return f"{self.path} is not empty after clean-up"
        return None


class _Channel:
    """The runner's end of a zygote's control socket: messages, each with its sender's pid.

    The socket has ``SO_PASSCRED``: the kernel attaches the sender's credentials to every message,
    with the pid translated into this process's pid namespace, so the runner learns the host pid
    of the zygote and of each forked child without trusting what they write.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._msgs: deque[tuple[bytes, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._reading = True
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        while self._reading:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65536, _CREDS_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, anc = b"", []
            if not data:
                self._stop_reading()
                break
            pid = 0
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(raw) >= 12:
                    pid = struct.unpack("3i", raw[:12])[0]
            self._msgs.append((data, pid))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self.sock.fileno())

    async def recv(self, wait_s: float | None) -> tuple[bytes, int]:
        """The next message and its sender's pid; ``(b"", 0)`` once the zygote is gone."""
        while not self._msgs:
            if not self._reading:
                return b"", 0
            self._waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, wait_s)
            finally:
                self._waiter = None
        return self._msgs.popleft()

    def idle(self) -> bool:
        """Open, with no message waiting."""
        return self._reading and not self._msgs

    def send(self, data: bytes, fds: list[int]) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
        self.sock.sendmsg([data], anc)

    def close(self) -> None:
        self._stop_reading()
        if not self.closed:
            self.closed = True
            self.sock.close()


class _Sandbox:
    """A started sandbox: bubblewrap, the zygote waiting on its control socket, its own cgroup."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        holding: Cgroup,
        chan: _Channel,
        workspace_bytes: int,
        reusable: bool,
    ) -> None:
        self.proc = proc  # bubblewrap's monitor (the zygote itself in unsafe-local mode)
        self.holding = holding  # the cgroup of bubblewrap and the zygote; runs get their own
        self.chan = chan
        self.workspace_bytes = workspace_bytes
        self.reusable = reusable  # the kind that may serve more than one run
        self.name = holding.name
        self.zygote = 0  # the zygote's pid, as the runner sees it
        self.mounts: list[_Mount] = []
        self.runs = 0
        self.member = False  # counted in the warm pool's size
        self.workdir: Path | None = None  # unsafe-local mode: the host directory used as workspace
        self.armed: _Armed | None = None  # the next run's child, forked and in its cgroup

    def ready(self) -> bool:
        """Armed, and nothing happened since: the zygote is there and has not reported anything."""
        return self.armed is not None and self.chan.idle()

    def close_fds(self) -> None:
        self.chan.close()
        for m in self.mounts:
            with contextlib.suppress(OSError):
                os.close(m.fd)
        self.mounts = []

    def scrub(self) -> str | None:
        """Makes the sandbox as a fresh one for the next run; what stands in the way, if anything.

        The zygote has already checked its own state and the namespaces (its ``W`` message).
        Here: nothing but bubblewrap and the zygote in the sandbox's own cgroup, and every
        writable mount emptied, within :data:`SCRUB_MAX_INODES`, back to its state at start.
        """
        procs = set(self.holding.pids())
        if procs != {self.proc.pid, self.zygote}:
            return f"unexpected processes in the sandbox's cgroup: {sorted(procs - {self.proc.pid, self.zygote})}"
        left = sum(m.used()[0] - m.inodes for m in self.mounts)
        if left > SCRUB_MAX_INODES:
            return f"{left} files left in the writable mounts"
        for m in self.mounts:
            problem = m.restore()
            if problem:
                return problem
        return None


def _read_available(fd: int) -> bytes:
    """What a non-blocking pipe holds right now (the writer has exited)."""
    buf = bytearray()
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            buf.extend(chunk)
    return bytes(buf)


async def _wait_fd(fd: int, write: bool = False) -> None:
    """Until ``fd`` is readable (or writable); the registration is gone when this returns."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await ready
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def _read_fd(fd: int, wait_s: float, cap: int = 1 << 20) -> bytes:
    """Reads a non-blocking pipe fd until EOF, within wait_s, keeping at most ``cap`` bytes."""
    buf = bytearray()

    async def read_all() -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                await _wait_fd(fd)
                continue
            except OSError:
                return
            if not chunk:
                return
            if len(buf) < cap:
                buf.extend(chunk[: cap - len(buf)])

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(read_all(), wait_s)
    return bytes(buf)


@dataclass
class _Pipes:
    """The pipes of one run. The child's ends go to the zygote; the runner keeps the others."""

    stdin_w: int
    out_r: int
    err_r: int
    req_w: int
    status_r: int
    side_r: int
    child: list[int]  # stdin, stdout, stderr, request, status, side channel, as the child gets them

    @classmethod
    def open(cls) -> _Pipes:
        made: list[int] = []
        try:
            pairs = []
            for _ in range(6):
                r, w = os.pipe()
                made += [r, w]
                pairs.append((r, w))
        except OSError:
            for fd in made:
                os.close(fd)
            raise
        (in_r, in_w), (out_r, out_w), (err_r, err_w), (req_r, req_w), (st_r, st_w), (side_r, side_w) = pairs
        for fd in (in_w, out_r, err_r, st_r, side_r):
            os.set_blocking(fd, False)
        return cls(in_w, out_r, err_r, req_w, st_r, side_r, [in_r, out_w, err_w, req_r, st_w, side_w])

    def close_child(self) -> None:
        for fd in self.child:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child = []

    def close_runner(self) -> None:
        for name in ("stdin_w", "out_r", "err_r", "req_w", "status_r", "side_r"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)


SOCKSTAT_KEYS = (b"used", b"inuse", b"tw")  # per network namespace; `alloc`, `mem`, `orphan` are host-wide
QUIET_WAIT_S = 0.2  # how long a sandbox's sockets may take to go after its run (RCU-deferred frees)


def _sockets(zygote_pid: int) -> list[str]:
    """Sockets of the sandbox's network namespace, from ``/proc/<pid>/net/sockstat{,6}``.

    ``sockets: used`` counts every family (unix and netlink included), ``tw`` the TIME_WAIT ones;
    both files are per namespace and cheap (listing ``/proc/net/tcp`` walks the host-wide hash).
    """
    found = []
    for name in ("sockstat", "sockstat6"):
        try:
            with open(f"/proc/{zygote_pid}/net/{name}", "rb") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            kind, _, rest = line.partition(b":")
            words = rest.split()
            for key, value in zip(words[::2], words[1::2], strict=False):
                if (key in SOCKSTAT_KEYS or kind.startswith(b"FRAG")) and value != b"0":
                    found.append(f"{kind.decode()} {key.decode()} {value.decode()}")
    return found


async def _sockets_gone(zygote_pid: int) -> list[str]:
    """Waits up to :data:`QUIET_WAIT_S` for the namespace to hold no socket; what is left, if any.

    A closed socket can stay counted for an RCU grace period (bubblewrap's netlink socket right
    after the start, a run's ``getaddrinfo``); a TCP socket in TIME_WAIT stays for a minute.
    """
    for _ in range(int(QUIET_WAIT_S / 0.005)):  # a kernel counter: polled, nothing to wait on
        if not _sockets(zygote_pid):
            return []
        await asyncio.sleep(0.005)
    return _sockets(zygote_pid)


def _attach(procs_files: list[str], pid: int) -> None:
    """Moves ``pid`` into a cgroup (one ``cgroup.procs`` per v1 controller).

    In a thread: on cgroup v1 a move can wait for an RCU grace period (measured 8-15 ms after an
    idle moment, 0.05 ms when moves follow each other), which must not stall the event loop.
    """
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)


@dataclass
class _Armed:
    """A sandbox's next run, prepared before its request: the zygote has forked the child, the
    child is in the run's new cgroup and blocks reading the request pipe; no byte of a program
    has run. Preparing it after the previous run keeps the cgroup move off the request's path."""

    cgroup: Cgroup
    pipes: _Pipes
    pid: int  # the child, as the runner sees it


class Runner:
    """Runs :class:`RunSpec` s with bounded concurrency, a queue and a warm pool."""

    def __init__(
        self,
        *,
        python: str,
        default_limits: Limits,
        max_concurrency: int,
        queue_size: int,
        warm_pool_size: int,
        cpu_cores_per_run: float,
        unsafe_local: bool = False,
        cgroup_version: str = "auto",
    ) -> None:
        self.python = python
        self.cgroup_version = cgroup_version
        self.defaults = default_limits
        self.max_concurrency = max_concurrency
        self.queue_size = queue_size
        self.warm_pool_size = warm_pool_size
        self.cpu_cores = cpu_cores_per_run
        self.unsafe_local = unsafe_local
        self.backend = "unsafe-local" if unsafe_local else "bubblewrap"
        self.image = "host:/usr"
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        self._pool: deque[_Sandbox] = deque()  # ready, default-size sandboxes
        # Runs waiting for a sandbox that is being started or re-armed.
        self._takers: deque[asyncio.Future[_Sandbox | None]] = deque()
        self._members = 0  # sandboxes counted in the pool's size: ready, running, or being prepared
        self._coming = 0  # sandboxes being started or re-armed that will go to the pool
        self._active: set[str] = set()  # sandboxes and run cgroups of runs in progress
        self._spawning: set[str] = set()
        self._tasks: set[asyncio.Future[None]] = set()
        self._cleanups: set[asyncio.Future[None]] = set()  # destructions: never cancelled
        self._closed = False
        self.tree: isolation.CgroupTree | CgroupTreeV2 | None = None
        self.layout: isolation.BwrapLayout | None = None
        self.seccomp = b""
        self._guard = b""
        self._unsafe_root: Path | None = None
        self._launcher_pyc = b""
        self.reused = 0  # runs served by a sandbox that had served one before (metrics, tests)

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Checks every isolation mechanism (refusing to start without them) and fills the pool."""
        if self.unsafe_local:
            log.warning(
                "UNSAFE LOCAL MODE: untrusted code runs WITHOUT bubblewrap, namespaces, seccomp or cgroups, "
                "with this runner's user and network. Never use it for model-written code outside a throw-away VM."
            )
        else:
            self.layout = isolation.find_tools(self.python)
            self.seccomp = isolation.build_seccomp_bpf()
            self._guard = build_guard_bpf()
            await asyncio.to_thread(isolation.smoke_test, self.layout, self.seccomp)
        self._launcher_pyc = await _compile_launcher(self.python)
        version = await asyncio.create_subprocess_exec(
            self.python,
            "-c",
            "import sys; print('%d.%d.%d' % sys.version_info[:3])",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await version.communicate()
        self.image = f"host:/usr (python {out.decode().strip()})"
        if self.unsafe_local:
            self._unsafe_root = Path(tempfile.mkdtemp(prefix="fw-sandbox-unsafe-"))
        else:
            self.tree = await asyncio.to_thread(
                isolation.create_tree,
                f"{isolation.TREE_PREFIX}{os.getpid()}-{next(_TREE_IDS)}",
                self.cgroup_version,
            )
            log.info(
                "sandbox isolation ready",
                extra={"cgroups": self.tree.describe()},
            )
        # Self-test through the whole path (cgroup set-up, limits, launcher, clean-up): a runner that
        # cannot run `print("ok")` must not report SERVING.
        try:
            probe = await self.execute(
                RunSpec(files=[FileSpec("main.py", b'print("ok")')], limits=self.defaults)
            )
            if probe.status is not Status.OK or probe.stdout != b"ok\n":
                raise isolation.IsolationUnavailable(
                    f"the start-up self-test run failed: {probe.status.name} {probe.error_message} "
                    f"{probe.stderr_text[-500:]}"
                )
        except BaseException:
            await self.close()
            raise
        self._refill()

    async def close(self) -> None:
        self._closed = True
        self._wake_takers(0)
        while self._pool:
            await self._destroy(self._pool.popleft())
        # Starts and re-arms are cancelled (their sandboxes are destroyed); destructions finish.
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                if task not in self._cleanups:
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.tree is not None:
            await asyncio.to_thread(self.tree.destroy)
        if self._unsafe_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._unsafe_root, True)

    def _spawn_task(self, coro: Awaitable[None], cleanup: bool = False) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if cleanup:
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)

    def _refill(self) -> None:
        while not self._closed and self._members < self.warm_pool_size:
            self._members += 1
            self._coming += 1
            self._spawn_task(self._fill_one())

    async def _fill_one(self) -> None:
        sb: _Sandbox | None = None
        try:
            sb = await self._spawn(self.defaults.workspace_bytes, {})
        except Exception:
            log.exception("could not start a warm sandbox")
            await asyncio.sleep(1.0)
        finally:
            self._coming -= 1
        if sb is None:
            self._members -= 1
            self._wake_takers(self._coming)
            self._refill()
        elif self._closed:
            self._members -= 1
            await self._destroy(sb)
        else:
            sb.member = True
            self._give(sb)

    async def _rearm(self, sb: _Sandbox) -> None:
        """After a clean run and its scrub: no socket left, the next child armed, back to the pool."""
        problem: str | None = None
        try:
            left = await _sockets_gone(sb.zygote)
            if left:
                problem = "sockets left: " + ", ".join(left)
                log.info("sandbox not reused: %s", problem, extra={"sandbox": sb.name})
            else:
                await self._arm(sb)
        except asyncio.CancelledError:
            self._coming -= 1
            self._drop(sb)
            raise
        except Exception as err:
            problem = str(err)
            log.warning("sandbox not re-armed: %s", err, extra={"sandbox": sb.name})
        self._coming -= 1
        if problem is None and not self._closed:
            self._give(sb)
            return
        self._drop(sb)
        self._wake_takers(self._coming)

    def _give(self, sb: _Sandbox) -> None:
        """A ready sandbox: to the first run waiting for one, or into the pool."""
        while self._takers:
            taker = self._takers.popleft()
            if not taker.done():
                taker.set_result(sb)
                return
        self._pool.append(sb)

    def _wake_takers(self, keep: int) -> None:
        """Runs waiting for a sandbox beyond the ``keep`` that are coming start one of their own."""
        while len(self._takers) > keep:
            taker = self._takers.pop()
            if not taker.done():
                taker.set_result(None)

    async def wait_idle(self) -> None:
        """Waits until background clean-ups and refills are done (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def known_sandboxes(self) -> set[str]:
        """Cgroup names of every live sandbox and run of this runner (anything else is a leftover)."""
        names = set(self._active) | self._spawning
        for sb in self._pool:
            names.add(sb.name)
            if sb.armed is not None:
                names.add(sb.armed.cgroup.name)
        return names

    def leftover_processes(self) -> dict[str, list[int]]:
        """Processes alive in cgroups that belong to no warm or active sandbox (should be none)."""
        if self.tree is None:
            return {}
        return self.tree.leftover_pids(self.known_sandboxes())

    def healthy(self) -> bool:
        return not self._closed

    # --- spawning ------------------------------------------------------------------------------

    async def _spawn(self, workspace_bytes: int, extra: dict[str, bytes]) -> _Sandbox:
        """Starts a sandbox and waits for its zygote's ``R``."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        ours.setblocking(False)
        child_fds = [theirs.fileno()]
        holding: Cgroup = NullCgroup()  # until a real one exists: nothing to remove if the start fails
        workdir: Path | None = None
        env = {"PATH": "/usr/bin:/bin"}
        try:
            if self.unsafe_local:
                assert self._unsafe_root is not None
                ws = workdir = Path(tempfile.mkdtemp(dir=self._unsafe_root))
                launcher = ws.parent / "launcher.pyc"
                if not launcher.exists():
                    launcher.write_bytes(self._launcher_pyc)
                argv = [self.python, "-S", str(launcher), str(theirs.fileno()), str(ws), "-"]
            else:
                assert self.layout is not None and self.tree is not None
                holding = self.tree.new_run("z" + uuid.uuid4().hex[:15])
                self._spawning.add(holding.name)
                holding.init_memory(self.defaults.memory_bytes)
                holding.set_limits(self.defaults.memory_bytes, HOLDING_PIDS, self.cpu_cores)
                data_fds = {f"/.flywheel/{name}": _data_fd(content) for name, content in extra.items()}
                data_fds[GUARD_PATH] = _data_fd(self._guard)
                launcher_fd = _data_fd(self._launcher_pyc)
                seccomp_fd = _data_fd(self.seccomp)
                child_fds += [launcher_fd, seccomp_fd, *data_fds.values()]
                bw = self.layout.argv(
                    workspace_bytes=workspace_bytes,
                    launcher_fd=launcher_fd,
                    seccomp_fd=seccomp_fd,
                    extra_data=data_fds,
                )
                # The zygote is the pid namespace's init: no bubblewrap reaper that a run could reach
                # (an init is dumpable and of the same uid), and the kernel's protection of an init
                # from signals sent inside its namespace (see launcher.py).
                bw.insert(1, "--as-pid-1")
                bw += [str(theirs.fileno()), "/workspace", GUARD_PATH]
                argv = self.layout.wrap(bw, holding.procs_files)
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=child_fds,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            await asyncio.to_thread(holding.kill_and_remove)
            self._spawning.discard(holding.name)
            if workdir is not None:
                shutil.rmtree(workdir, True)
            raise
        finally:
            theirs.close()
            for fd in child_fds[1:]:
                os.close(fd)
        # The zygote's own stdio stays pipes (what each run's are, so the interpreter's stdio
        # objects are set up for a pipe), but it never uses them: stdin ends at once.
        if proc.stdin is not None:
            proc.stdin.close()
        if self.unsafe_local:
            holding = NullCgroup(proc.pid)  # its kills reach the session the zygote started
        sb = _Sandbox(
            proc,
            holding,
            _Channel(ours),
            workspace_bytes,
            reusable=not self.unsafe_local and not extra and workspace_bytes == self.defaults.workspace_bytes,
        )
        sb.workdir = workdir
        self._spawning.add(sb.name)
        try:
            msg, pid = await sb.chan.recv(START_TIMEOUT_S)
        except TimeoutError:
            msg, pid = b"", 0
        except BaseException:
            # Cancelled while starting (e.g. the caller went away): never leave it running.
            await asyncio.shield(self._destroy(sb))
            raise
        finally:
            self._spawning.discard(sb.name)
        try:
            if msg != b"R" or pid <= 0:
                raise RuntimeError(f"sandbox did not start (got {msg[:2000]!r})")
            sb.zygote = pid
            if not self.unsafe_local:
                sb.mounts = [_Mount.open(pid, path) for path in MOUNTS]
        except Exception as err:
            detail = b""
            if proc.stderr is not None:
                with contextlib.suppress(TimeoutError):
                    detail = await asyncio.wait_for(proc.stderr.read(2000), 1.0)
            await self._destroy(sb)
            raise RuntimeError(f"{err} {detail.decode(errors='replace')}".strip()) from None
        try:
            await self._arm(sb)
        except BaseException:
            await asyncio.shield(self._destroy(sb))
            raise
        return sb

    async def _arm(self, sb: _Sandbox) -> None:
        """Prepares the sandbox's next run (see :class:`_Armed`): a new cgroup with the default
        limits, new pipes, the zygote's fork, the child moved into the cgroup."""
        cg = self._run_cgroup(self.defaults)
        name = cg.name
        self._spawning.add(name)
        pipes: _Pipes | None = None
        try:
            pipes = _Pipes.open()
            if not self.unsafe_local:
                # Pipes are created by root (mode 0600): hand them to the sandbox user, so that
                # reopening them (`open("/dev/stdout")`, `/proc/self/fd/0`) works as it does normally.
                for fd in pipes.child[:3]:
                    os.fchown(fd, isolation.SANDBOX_UID, isolation.SANDBOX_GID)
            try:
                sb.chan.send(b"X", pipes.child)
            finally:
                pipes.close_child()
            try:
                msg, pid = await sb.chan.recv(START_TIMEOUT_S)
            except TimeoutError:
                msg, pid = b"", 0
            if msg != b"C" or pid <= 0:
                raise RuntimeError(f"the sandbox's zygote did not fork a run (got {msg[:200]!r})")
            if self.unsafe_local:
                cg = NullCgroup(pid)  # the child's own session
            else:
                await asyncio.to_thread(_attach, cg.procs_files, pid)
        except BaseException:
            if pipes is not None:
                pipes.close_runner()
            self._remove_run_cgroup(cg)
            raise
        finally:
            self._spawning.discard(name)
        sb.armed = _Armed(cg, pipes, pid)

    def _drop(self, sb: _Sandbox) -> None:
        """Destroys ``sb`` in the background, keeping the pool at its size."""
        if sb.member:
            sb.member = False
            self._members -= 1
        self._spawn_task(self._destroy(sb), cleanup=True)
        self._refill()

    async def _destroy(self, sb: _Sandbox) -> None:
        if sb.armed is not None:
            sb.armed.pipes.close_runner()
            self._remove_run_cgroup(sb.armed.cgroup)
            sb.armed = None
        sb.close_fds()  # the zygote reads EOF and exits; its namespaces go with it
        await asyncio.to_thread(sb.holding.kill_and_remove)
        with contextlib.suppress(ProcessLookupError):
            sb.proc.kill()
        await sb.proc.wait()
        if sb.workdir is not None:
            await asyncio.to_thread(shutil.rmtree, sb.workdir, True)

    def _pooled_kind(self, spec: RunSpec) -> bool:
        return spec.limits.workspace_bytes == self.defaults.workspace_bytes and not spec.extra_data

    async def _take(self, spec: RunSpec) -> _Sandbox:
        """A ready sandbox for ``spec``: from the pool, the next one being started, or a new one."""
        if self._pooled_kind(spec):
            while self._pool:
                sb = self._pool.popleft()
                if sb.ready():
                    return sb
                self._drop(sb)  # its zygote or armed child went away while it waited
            if self._coming > len(self._takers):
                taker: asyncio.Future[_Sandbox | None] = asyncio.get_running_loop().create_future()
                self._takers.append(taker)
                try:
                    got = await taker
                except asyncio.CancelledError:
                    handed = taker.result() if taker.done() and not taker.cancelled() else None
                    if handed is not None:
                        self._give(handed)  # it was handed over just as the caller went away
                    raise
                finally:
                    with contextlib.suppress(ValueError):
                        self._takers.remove(taker)
                if got is not None and got.ready():
                    return got
                if got is not None:
                    self._drop(got)
            self._refill()
        if self._closed:
            raise ResourceExhausted("the sandbox runner is shutting down")
        return await self._spawn(spec.limits.workspace_bytes, spec.extra_data)

    def _release(self, sb: _Sandbox, clean: bool) -> None:
        """After a run: the sandbox is scrubbed and re-armed for the pool if the run was clean,
        otherwise destroyed."""
        problem: str | None = "the run did not end cleanly"
        if clean and sb.reusable and not self._closed:
            if sb.runs >= MAX_RUNS_PER_SANDBOX:
                problem = f"served {sb.runs} runs"
            else:
                try:
                    problem = sb.scrub()
                except OSError as err:
                    problem = f"clean-up failed: {err}"
        if problem is None and not sb.member and self._members < self.warm_pool_size:
            sb.member = True  # started on demand, and the pool has room for it
            self._members += 1
        if problem is None and sb.member:
            self._coming += 1
            self._spawn_task(self._rearm(sb))
            return
        if clean and problem is not None and sb.reusable:
            log.info("sandbox not reused: %s", problem, extra={"sandbox": sb.name})
        self._drop(sb)

    # --- running -------------------------------------------------------------------------------

    async def execute(self, spec: RunSpec, on_output: OutputCallback | None = None) -> RunResult:
        """Runs ``spec`` once its turn comes; RESOURCE_EXHAUSTED when the queue is full."""
        if self._closed:
            raise ResourceExhausted("the sandbox runner is shutting down")
        queued_at = time.monotonic()
        if self._slots.locked() and self._waiting >= self.queue_size:
            raise ResourceExhausted(
                f"sandbox queue is full ({self.max_concurrency} running, {self._waiting} waiting); retry later"
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            queue_s = time.monotonic() - queued_at
            try:
                sb = await self._take(spec)
            except Exception as err:
                log.exception("sandbox start failed")
                return _sandbox_error(f"sandbox start failed: {err}", queue_s, self.backend)
            self._active.add(sb.name)
            clean = False
            try:
                sb.runs += 1
                if sb.runs > 1:
                    self.reused += 1
                result, clean = await self._run(sb, spec, on_output, queue_s)
                result.sandbox_id, result.sandbox_run = sb.name, sb.runs
                return result
            finally:
                self._active.discard(sb.name)
                self._release(sb, clean)
        finally:
            self._slots.release()

    def _run_cgroup(self, lim: Limits) -> Cgroup:
        """A new cgroup for one run, with its limits: its usage figures start at zero."""
        if self.tree is None:
            return NullCgroup()
        cg = self.tree.new_run("r" + uuid.uuid4().hex[:15])
        try:
            cg.init_memory(lim.memory_bytes)
            cg.set_limits(lim.memory_bytes, lim.max_processes, self.cpu_cores)
        except BaseException:
            cg.kill_and_remove()
            raise
        return cg

    def _remove_run_cgroup(self, cg: Cgroup) -> None:
        """Removes a run's cgroup: at once when it is empty (the usual case), else killing in a thread."""
        if isinstance(cg, NullCgroup):
            return

        async def in_thread() -> None:
            if not await asyncio.to_thread(cg.kill_and_remove):
                log.warning("run cgroup not removed", extra={"cgroup": cg.name})

        if cg.pids():
            self._spawn_task(in_thread(), cleanup=True)
        elif not cg.kill_and_remove():
            log.warning("run cgroup not removed", extra={"cgroup": cg.name})

    async def _run(
        self, sb: _Sandbox, spec: RunSpec, on_output: OutputCallback | None, queue_s: float
    ) -> tuple[RunResult, bool]:
        """One run in ``sb``: send, supervise, collect. Also says whether the run ended cleanly
        (by itself, within every limit, nothing left behind), which alone lets ``sb`` be reused."""
        armed, sb.armed = sb.armed, None
        assert armed is not None  # _take hands out armed sandboxes only
        run_cg, pipes = armed.cgroup, armed.pipes
        self._active.add(run_cg.name)
        tasks: list[asyncio.Future[Any]] = []
        try:
            try:
                sent = self._send(run_cg, spec, pipes)
            except (_NotSent, OSError) as err:
                return _sandbox_error(str(err), queue_s, self.backend), False
            tasks += [sent.writer, sent.feeder]
            watched = await self._supervise(sb, spec, sent, on_output, tasks)
            return await self._collect(sb, spec, sent, watched, queue_s)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)  # every fd watcher is gone
            pipes.close_runner()
            self._remove_run_cgroup(run_cg)
            self._active.discard(run_cg.name)

    def _send(self, cg: Cgroup, spec: RunSpec, pipes: _Pipes) -> _Sent:
        """Applies the run's limits to its cgroup and sends the request to the armed child."""
        lim = spec.limits
        try:
            cg.set_limits(lim.memory_bytes, lim.max_processes, self.cpu_cores)  # writes only what differs
            cg.reset_peak_memory()  # the child's own preparation is not the program's
        except OSError as err:
            raise _NotSent(f"cannot apply the run's cgroup limits: {err}") from err
        # The child has been in the run's cgroup since it was armed: nothing of the run executes
        # before its limits and accounting apply.
        cpu0 = cg.cpu_ns()
        payload = _request(spec)
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        req_w, pipes.req_w = pipes.req_w, -1  # the writer closes it
        if sum(len(p) for p in payload) < 60_000:
            # Fits in the (empty) pipe's buffer: the write cannot block, so skip the thread hop.
            _write_all_close(req_w, payload)
            writer: asyncio.Future[None] = loop.create_future()
            writer.set_result(None)
        else:
            writer = loop.run_in_executor(None, _write_all_close, req_w, payload)  # runs even if cancelled
        if spec.stdin:
            feeder: asyncio.Future[None] = asyncio.ensure_future(_feed_fd(pipes, spec.stdin))
        else:
            os.close(pipes.stdin_w)
            pipes.stdin_w = -1
            feeder = loop.create_future()
            feeder.set_result(None)
        return _Sent(started=started, cpu0_ns=cpu0, writer=writer, feeder=feeder, pipes=pipes, cgroup=cg)

    @staticmethod
    async def _supervise(
        sb: _Sandbox,
        spec: RunSpec,
        sent: _Sent,
        on_output: OutputCallback | None,
        tasks: list[asyncio.Future[Any]],
    ) -> _Watched:
        """Enforces the wall and CPU deadlines and the output cap until the zygote reports the
        child's exit; then kills whatever the run left running."""
        lim = spec.limits
        cg = sent.cgroup
        kill = _Killer(cg)
        stdout, stderr = _Capture(), _Capture()
        # The side channel is read while the program runs, so a large report never blocks its writer.
        side = (
            asyncio.ensure_future(_read_fd(sent.pipes.side_r, lim.wall_s + 10, cap=SIDE_CHANNEL_CAP))
            if spec.pass_pipe
            else None
        )
        pumps = [
            asyncio.ensure_future(
                _pump("stdout", sent.pipes.out_r, stdout, lim.output_bytes, kill, on_output, sent.started)
            ),
            asyncio.ensure_future(
                _pump("stderr", sent.pipes.err_r, stderr, lim.output_bytes, kill, on_output, sent.started)
            ),
        ]
        waiter = asyncio.ensure_future(sb.chan.recv(None))
        tasks += [*pumps, waiter, *([side] if side is not None else [])]
        deadline = sent.started + lim.wall_s
        tick = 0.02
        peak_pids = 0
        while not waiter.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                kill(Status.WALL_TIMEOUT)
                break
            await asyncio.wait([waiter], timeout=min(remaining, tick))
            tick = min(tick * 2, 0.2)
            if not waiter.done():
                peak_pids = max(peak_pids, cg.pids_current())
                if (cg.cpu_ns() - sent.cpu0_ns) / 1e9 > lim.cpu_s:
                    kill(Status.CPU_TIMEOUT)
                    break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), 5.0)
        report = b""
        if waiter.done() and not waiter.cancelled():
            report = waiter.result()[0]
        else:
            kill(Status.SANDBOX_ERROR)
            await asyncio.to_thread(cg.kill)
        wall = time.monotonic() - sent.started
        # The child has exited; anything it started and left running is killed now (a reused
        # sandbox has no pid namespace ending with the run to do it).
        left = cg.signal_all()
        if left:
            await asyncio.to_thread(cg.kill)
        wait_status: int | None = None
        problems = ""
        if report.startswith(b"W") and len(report) >= 5:
            wait_status = int.from_bytes(report[1:5], "big")
            problems = report[5:].decode(errors="replace")
        return _Watched(
            killed=kill.reason,
            wall_s=wall,
            peak_pids=peak_pids,
            stdout=stdout,
            stderr=stderr,
            pumps=pumps,
            side=side,
            wait_status=wait_status,
            problems=problems,
            left=left,
        )

    async def _collect(
        self, sb: _Sandbox, spec: RunSpec, sent: _Sent, watched: _Watched, queue_s: float
    ) -> tuple[RunResult, bool]:
        """Reads the output, the launcher's status and the side channel, then classifies the run."""
        lim = spec.limits
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*watched.pumps, return_exceptions=True), 2.0)
        with contextlib.suppress(Exception):
            await sent.writer
        status_bytes = _read_available(sent.pipes.status_r)
        side = b""
        if watched.side is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watched.side), 2.0)
            side = watched.side.result() if watched.side.done() and not watched.side.cancelled() else b""

        cg = sent.cgroup
        cpu_s = (cg.cpu_ns() - sent.cpu0_ns) / 1e9
        peak_mem = cg.peak_memory()
        oom, pid_hits = cg.oom_kills(), cg.pids_max_hits()
        killed = watched.killed
        lost = watched.wait_status is None and killed is None
        if lost:
            killed = Status.SANDBOX_ERROR  # the zygote is gone: the sandbox ended under the run
        exit_code = os.waitstatus_to_exitcode(watched.wait_status) if watched.wait_status is not None else -9
        stdout, stderr = bytes(watched.stdout.data), bytes(watched.stderr.data)

        status, category, message = _classify(
            killed=killed,
            launcher=status_bytes,
            exit_code=exit_code,
            stderr=stderr.decode("utf-8", "replace"),
            oom=oom,
            pid_hits=pid_hits,
            cpu_s=cpu_s,
            cpu_limit=lim.cpu_s,
            peak_mem=peak_mem,
            mem_limit=lim.memory_bytes,
        )
        if lost and status is Status.SANDBOX_ERROR:
            message = "the sandbox's zygote ended during the run"
        clean = (
            killed is None
            and not watched.left
            and not watched.problems
            and oom == 0
            and pid_hits == 0
            and status in (Status.OK, Status.RUNTIME_ERROR)
            and not spec.pass_pipe
        )
        if watched.problems:
            log.info("sandbox not reused: %s", watched.problems, extra={"sandbox": sb.name})
        result = RunResult(
            status=status,
            exit_code=exit_code,
            stdout=stdout,
            stdout_truncated=watched.stdout.truncated,
            stderr=stderr,
            stderr_truncated=watched.stderr.truncated,
            wall_s=watched.wall_s,
            cpu_s=cpu_s,
            peak_memory_bytes=peak_mem,
            peak_processes=max(watched.peak_pids, cg.pids_peak(), 1),
            queue_s=queue_s,
            category=category,
            error_message=message,
            backend=self.backend,
            side=side,
        )
        return result, clean


class _NotSent(Exception):
    """The run could not be sent to its sandbox; the message says why."""


@dataclass
class _Sent:
    """What sending a run started: its clock, its pipes, and the tasks still writing its input."""

    started: float  # time.monotonic() when the request went to the launcher
    cpu0_ns: int  # the cgroup's CPU time before the run; the run's own is counted from here
    writer: asyncio.Future[None]  # the request (header, then the files' bytes) into the launcher's pipe
    feeder: asyncio.Future[None]  # stdin into the program
    pipes: _Pipes
    cgroup: Cgroup  # the run's cgroup (unsafe-local: the child's session)


@dataclass
class _Capture:
    """One output stream as the run keeps it: at most the output cap, and whether more came."""

    data: bytearray = field(default_factory=bytearray)
    truncated: bool = False


@dataclass
class _Watched:
    """What supervising a run saw, up to the moment no process of it was left."""

    killed: Status | None  # why the runner killed it, if it did (the first reason)
    wall_s: float
    peak_pids: int  # the highest process count sampled
    stdout: _Capture
    stderr: _Capture
    pumps: list[asyncio.Task[None]]  # still reading stdout and stderr (the pipes may hold more)
    side: asyncio.Future[bytes] | None  # the side channel's reader, where the run has one
    wait_status: int | None  # the child's wait status from the zygote; None: no report came
    problems: str  # what the zygote found left behind in the sandbox (empty: nothing)
    left: int  # processes of the run still alive after its child exited (killed since)


class _Killer:
    """Kills every process of a run; the first reason it is given is the one the run reports."""

    def __init__(self, cgroup: Cgroup) -> None:
        self.cgroup = cgroup
        self.reason: Status | None = None

    def __call__(self, reason: Status) -> None:
        if self.reason is None:
            self.reason = reason
        self.cgroup.signal_all()


def _request(spec: RunSpec) -> list[bytes]:
    """The launcher's request: a length-prefixed marshal header, then every file's bytes in order."""
    lim = spec.limits
    header = {
        "files": [{"path": f.path, "size": len(f.data), "executable": f.executable} for f in spec.files],
        "env": spec.env,
        "limits": {
            "cpu_s": max(1, int(lim.cpu_s + 0.999)),
            "file_size": lim.file_size_bytes,
            "open_files": lim.max_open_files,
        },
        "argv": spec.argv,
        "entry": spec.entry,
        "args": spec.args,
        "side": spec.pass_pipe,
    }
    if any(k.startswith("PYTHON") for k in spec.env) and not spec.argv:
        header["argv"] = ["python3", spec.entry, *spec.args]
    head = marshal.dumps(header, 4)
    return [struct.pack(">Q", len(head)), head, *(f.data for f in spec.files)]


async def _feed_fd(pipes: _Pipes, data: bytes) -> None:
    """Writes the program's stdin into its non-blocking pipe, then closes it so the program sees EOF.

    If this task is cancelled before it starts, the run's clean-up closes the pipe instead.
    """
    fd = pipes.stdin_w
    view = memoryview(data)
    try:
        while view:
            try:
                view = view[os.write(fd, view[:65536]) :]
            except BlockingIOError:
                await _wait_fd(fd, write=True)
    except OSError:
        pass  # the program exited without reading it all
    finally:
        pipes.stdin_w = -1
        os.close(fd)


async def _pump(
    name: str,
    fd: int,
    capture: _Capture,
    cap: int,
    kill: _Killer,
    on_output: OutputCallback | None,
    started: float,
) -> None:
    """Keeps up to ``cap`` bytes of one output stream (killing the run past it) and streams it out."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    buf = capture.data
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            await _wait_fd(fd)
            continue
        except OSError:
            break
        if not chunk:
            break
        if capture.truncated:
            continue  # drain (and drop) the rest so the process is never blocked on a full pipe
        room = cap - len(buf)
        if len(chunk) > room:
            buf.extend(chunk[: max(0, room)])
            capture.truncated = True
            kill(Status.OUTPUT_LIMIT)
            chunk = chunk[: max(0, room)]
        else:
            buf.extend(chunk)
        if on_output is not None and chunk:
            text = decoder.decode(chunk)
            if text:
                await on_output(name, text, time.monotonic() - started)


async def _compile_launcher(python: str) -> bytes:
    """The launcher compiled once, by the sandbox's own interpreter, as a .pyc it can run directly.

    Compiling the source at every sandbox start would cost several ms of CPU per sandbox.
    """
    script = (
        "import sys, marshal, importlib.util as u\n"
        "code = compile(sys.stdin.buffer.read(), '/.flywheel/launcher.py', 'exec', dont_inherit=True)\n"
        "sys.stdout.buffer.write(u.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        python,
        "-S",
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(_LAUNCHER)
    if proc.returncode != 0 or not out:
        raise isolation.IsolationUnavailable(
            f"{python} cannot compile the launcher: {err.decode(errors='replace')[:500]}"
        )
    return out


def _write_all_close(fd: int, parts: list[bytes]) -> None:
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view) :]
    except OSError:
        pass  # the sandbox died early; the run reports it
    finally:
        os.close(fd)


def _sandbox_error(message: str, queue_s: float, backend: str) -> RunResult:
    return RunResult(
        status=Status.SANDBOX_ERROR,
        exit_code=-1,
        stdout=b"",
        stdout_truncated=False,
        stderr=b"",
        stderr_truncated=False,
        wall_s=0.0,
        cpu_s=0.0,
        peak_memory_bytes=0,
        peak_processes=0,
        queue_s=queue_s,
        category=Category.OTHER,
        error_message=message[:500],
        backend=backend,
    )


_FSIZE_MARKERS = ("[Errno 27] File too large", "[Errno 28] No space left on device")


def _classify(
    *,
    killed: Status | None,
    launcher: bytes,
    exit_code: int,
    stderr: str,
    oom: int,
    pid_hits: int,
    cpu_s: float,
    cpu_limit: float,
    peak_mem: int,
    mem_limit: int,
) -> tuple[Status, Category, str]:
    """How a run ended, from what the runner observed (first match wins)."""
    if launcher.startswith(b"E"):
        return (
            Status.SANDBOX_ERROR,
            Category.OTHER,
            "sandbox setup failed: " + launcher[1:].decode(errors="replace"),
        )
    if not launcher.startswith(b"S") and killed is None:
        return Status.SANDBOX_ERROR, Category.OTHER, f"sandbox launcher ended early (exit {exit_code})"
    exc = last_exception(stderr)
    final = exc[1] if exc else ""
    if killed is Status.OUTPUT_LIMIT:
        return Status.OUTPUT_LIMIT, Category.RESOURCE_LIMIT, "output passed the byte cap; the run was killed"
    if oom > 0 or (exit_code != 0 and exc and exc[0] == "MemoryError"):
        return (
            Status.MEMORY_LIMIT,
            Category.MEMORY,
            final or f"memory limit of {mem_limit} bytes hit (OOM kill)",
        )
    if pid_hits > 0 and (exit_code != 0 or killed is not None):
        return Status.PROCESS_LIMIT, Category.RESOURCE_LIMIT, final or "process limit hit"
    if (
        killed is Status.CPU_TIMEOUT
        or exit_code == -signal.SIGXCPU
        or (exit_code == -signal.SIGKILL and killed is None and cpu_s >= cpu_limit)
    ):
        return Status.CPU_TIMEOUT, Category.TIMEOUT, f"CPU time limit of {cpu_limit:g}s hit"
    if killed is Status.WALL_TIMEOUT:
        return Status.WALL_TIMEOUT, Category.TIMEOUT, "wall-clock deadline passed; the run was killed"
    if killed is Status.SANDBOX_ERROR:
        return Status.SANDBOX_ERROR, Category.OTHER, "the sandbox did not exit after its kill"
    if exit_code == -signal.SIGXFSZ or (exit_code != 0 and any(m in final for m in _FSIZE_MARKERS)):
        return Status.FILE_SIZE_LIMIT, Category.RESOURCE_LIMIT, final or "file size limit hit"
    if exit_code != 0:
        if exc:
            return Status.RUNTIME_ERROR, category_for_exception(exc[0]), final
        if exit_code < 0:
            return Status.RUNTIME_ERROR, Category.OTHER, f"killed by signal {-exit_code}"
        return Status.RUNTIME_ERROR, Category.OTHER, f"exit status {exit_code}"
    return Status.OK, Category.UNSPECIFIED, ""
