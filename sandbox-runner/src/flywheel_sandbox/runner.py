"""The sandbox runner's engine: a bounded queue, a pool of warm sandboxes, and one run end to end.

A warm sandbox is a started bubblewrap sandbox, already in its own cgroups, whose launcher
(``launcher.py``) has started the interpreter and waits for a request. A run takes one and goes
through three steps: *send* (the run's limits on its cgroups, the files and the command to the
launcher, stdin to the program), *supervise* (stdout and stderr read under a byte cap, the wall and
CPU deadlines enforced, until no process of the run is left) and *collect* (the output, the
launcher's status and the side channel read, usage measured, the outcome classified). The sandbox
is then destroyed: every process of its cgroup killed, the cgroup removed. Sandboxes are never
reused; the pool refills in the background. In unsafe-local mode a :class:`NullCgroup` stands in
for the cgroup.
"""

from __future__ import annotations

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
import struct
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from flywheel_common.errors import ResourceExhausted
from flywheel_sandbox import isolation
from flywheel_sandbox.classify import Category, category_for_exception, last_exception
from flywheel_sandbox.null_cgroup import Cgroup, NullCgroup

log = logging.getLogger("flywheel.sandbox")

RUNNER_VERSION = "0.1.0"


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

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")


# bubblewrap's own two processes (its monitor and the namespace's init) live in the run's pids
# cgroup too; the program's `max_processes` comes on top of them.
BWRAP_PIDS = 2
_TREE_IDS = itertools.count(1)  # one cgroup tree per Runner, even several in one process
SIDE_CHANNEL_CAP = 32 * 1024 * 1024  # bytes of a run's side channel (RunTests' signed report)
OutputCallback = Callable[[str, str, float], Awaitable[None]]

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


class _Sandbox:
    """A started sandbox waiting for its request (see the module docstring)."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        cgroup: Cgroup,
        req_w: int,
        status_r: int,
        side_r: int,
        workspace_bytes: int,
        extra: frozenset[str],
    ) -> None:
        self.proc = proc
        self.cgroup = cgroup
        self.req_w = req_w
        self.status_r = status_r
        self.side_r = side_r
        self.workspace_bytes = workspace_bytes
        self.extra = extra
        self.name = cgroup.name
        self.workdir: Path | None = None  # unsafe-local mode: the host directory used as workspace

    def close_fds(self) -> None:
        for fd in (self.req_w, self.status_r, self.side_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def _read_available(fd: int) -> bytes:
    """What a non-blocking pipe holds right now (the writer has exited)."""
    buf = bytearray()
    with contextlib.suppress(BlockingIOError, OSError):
        while chunk := os.read(fd, 65536):
            buf.extend(chunk)
    return bytes(buf)


async def _read_fd(fd: int, wait_s: float, want_eof: bool, cap: int = 1 << 20) -> bytes:
    """Reads from a non-blocking pipe fd until EOF (want_eof) or the first bytes, within wait_s."""
    loop = asyncio.get_running_loop()
    buf = bytearray()
    done = loop.create_future()

    def on_readable() -> None:
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    if not done.done():
                        done.set_result(None)
                    return
                if len(buf) < cap:
                    buf.extend(chunk[: cap - len(buf)])
                if not want_eof and not done.done():
                    done.set_result(None)
                    return
        except BlockingIOError:
            return
        except OSError:
            if not done.done():
                done.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await asyncio.wait_for(done, wait_s)
    except TimeoutError:
        pass
    finally:
        loop.remove_reader(fd)
    return bytes(buf)


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
    ) -> None:
        self.python = python
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
        self._pool: asyncio.Queue[_Sandbox] = asyncio.Queue()
        self._filling = 0
        self._active: set[str] = set()
        self._spawning: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.tree: isolation.CgroupTree | None = None
        self.layout: isolation.BwrapLayout | None = None
        self.seccomp = b""
        self._unsafe_root: Path | None = None
        self._launcher_pyc = b""

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
                isolation.CgroupTree.create, f"{isolation.TREE_PREFIX}{os.getpid()}-{next(_TREE_IDS)}"
            )
            log.info(
                "sandbox isolation ready",
                extra={"cgroups": {k: str(v) for k, v in self.tree.parents.items()}},
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
        while not self._pool.empty():
            sb = self._pool.get_nowait()
            await self._destroy(sb)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.tree is not None:
            await asyncio.to_thread(self.tree.destroy)
        if self._unsafe_root is not None:
            await asyncio.to_thread(shutil.rmtree, self._unsafe_root, True)

    def _spawn_task(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refill(self) -> None:
        if self._closed:
            return
        missing = self.warm_pool_size - self._pool.qsize() - self._filling
        for _ in range(max(0, missing)):
            self._filling += 1
            self._spawn_task(self._fill_one())

    async def _fill_one(self) -> None:
        try:
            sb = await self._spawn(self.defaults.workspace_bytes, frozenset())
            if self._closed:
                await self._destroy(sb)
            else:
                self._pool.put_nowait(sb)
        except Exception:
            log.exception("could not start a warm sandbox")
            await asyncio.sleep(1.0)
        finally:
            self._filling -= 1

    async def wait_idle(self) -> None:
        """Waits until background clean-ups and refills are done (tests, benchmarks)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def known_sandboxes(self) -> set[str]:
        names = set(self._active) | self._spawning
        # asyncio.Queue has no public way to look at its items without taking them out.
        names.update(sb.name for sb in list(self._pool._queue))  # type: ignore[attr-defined]  # private deque
        return names

    def leftover_processes(self) -> dict[str, list[int]]:
        """Processes alive in cgroups that belong to no warm or active sandbox (should be none)."""
        if self.tree is None:
            return {}
        return self.tree.leftover_pids(self.known_sandboxes())

    def healthy(self) -> bool:
        return not self._closed

    # --- spawning ------------------------------------------------------------------------------

    async def _spawn(
        self, workspace_bytes: int, extra_names: frozenset[str], extra: dict[str, bytes] | None = None
    ) -> _Sandbox:
        req_r, req_w = os.pipe()
        status_r, status_w = os.pipe()
        side_r, side_w = os.pipe()
        os.set_blocking(status_r, False)
        os.set_blocking(side_r, False)
        child_fds = [req_r, status_w, side_w]
        cgroup: Cgroup = NullCgroup()  # until a real one exists: nothing to remove if the start fails
        workdir: Path | None = None
        env = {"PATH": "/usr/bin:/bin"}
        try:
            if self.unsafe_local:
                assert self._unsafe_root is not None
                ws = workdir = Path(tempfile.mkdtemp(dir=self._unsafe_root))
                launcher = ws.parent / "launcher.pyc"
                if not launcher.exists():
                    launcher.write_bytes(self._launcher_pyc)
                argv = [self.python, "-S", str(launcher), str(req_r), str(status_w), str(side_w), str(ws)]
            else:
                assert self.layout is not None and self.tree is not None
                cgroup = self.tree.new_run(uuid.uuid4().hex[:16])
                cgroup.init_memory(self.defaults.memory_bytes)
                cgroup.set_limits(
                    self.defaults.memory_bytes, self.defaults.max_processes + BWRAP_PIDS, self.cpu_cores
                )
                data_fds = {}
                for name, content in (extra or {}).items():
                    data_fds[f"/.flywheel/{name}"] = _data_fd(content)
                launcher_fd = _data_fd(self._launcher_pyc)
                seccomp_fd = _data_fd(self.seccomp)
                child_fds += [launcher_fd, seccomp_fd, *data_fds.values()]
                bw = self.layout.argv(
                    workspace_bytes=workspace_bytes,
                    launcher_fd=launcher_fd,
                    seccomp_fd=seccomp_fd,
                    extra_data=data_fds,
                )
                bw += [str(req_r), str(status_w), str(side_w), "/workspace"]
                argv = self.layout.wrap(bw)
                env["FW_CGROUP_PROCS"] = " ".join(cgroup.procs_files)
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
            for fd in (req_w, status_r, side_r):
                os.close(fd)
            await asyncio.to_thread(cgroup.kill_and_remove)
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        if self.unsafe_local:
            cgroup = NullCgroup(proc.pid)  # its kills reach the session the sandbox started
        else:
            # The pipes were created by root (mode 0600): hand them to the sandbox user, so that
            # reopening them (`open("/dev/stdout")`, `/proc/self/fd/0`) works as it does normally.
            # asyncio's Process keeps its pipe transports private; the raw pipes are needed here.
            for n in (0, 1, 2):
                pipe = proc._transport.get_pipe_transport(n).get_extra_info("pipe")  # type: ignore[attr-defined]  # private
                with contextlib.suppress(OSError):
                    os.fchown(pipe.fileno(), isolation.SANDBOX_UID, isolation.SANDBOX_GID)
        sb = _Sandbox(proc, cgroup, req_w, status_r, side_r, workspace_bytes, extra_names)
        sb.workdir = workdir
        self._spawning.add(sb.name)
        try:
            ready = await _read_fd(status_r, 20.0, want_eof=False)
        except BaseException:
            # Cancelled while starting (e.g. the caller went away): never leave it running.
            await asyncio.shield(self._destroy(sb))
            raise
        finally:
            self._spawning.discard(sb.name)
        if ready != b"R":
            err = b""
            if proc.stderr is not None:
                with contextlib.suppress(TimeoutError):
                    err = await asyncio.wait_for(proc.stderr.read(2000), 1.0)
            await self._destroy(sb)
            raise RuntimeError(f"sandbox did not start (got {ready!r}): {err.decode(errors='replace')}")
        return sb

    async def _destroy(self, sb: _Sandbox) -> None:
        sb.close_fds()
        await asyncio.to_thread(sb.cgroup.kill_and_remove)
        with contextlib.suppress(ProcessLookupError):
            sb.proc.kill()
        await sb.proc.wait()
        if sb.workdir is not None:
            await asyncio.to_thread(shutil.rmtree, sb.workdir, True)

    async def _take(self, spec: RunSpec) -> _Sandbox:
        if spec.limits.workspace_bytes == self.defaults.workspace_bytes and not spec.extra_data:
            try:
                sb = self._pool.get_nowait()
                self._refill()
                return sb
            except asyncio.QueueEmpty:
                pass
        self._refill()
        return await self._spawn(spec.limits.workspace_bytes, frozenset(spec.extra_data), spec.extra_data)

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
            try:
                return await self._run(sb, spec, on_output, queue_s)
            finally:
                self._active.discard(sb.name)
                self._spawn_task(self._destroy(sb))
        finally:
            self._slots.release()

    async def _run(
        self, sb: _Sandbox, spec: RunSpec, on_output: OutputCallback | None, queue_s: float
    ) -> RunResult:
        """One run in ``sb``: send its input, supervise it until it ends, collect what it left."""
        try:
            sent = self._send(sb, spec)
        except _NotSent as err:
            return _sandbox_error(str(err), queue_s, self.backend)
        watched = await self._supervise(sb, spec, sent, on_output)
        return await self._collect(sb, spec.limits, sent, watched, queue_s)

    def _send(self, sb: _Sandbox, spec: RunSpec) -> _Sent:
        """Sets the run's limits on its cgroup, sends the request to the launcher and starts feeding stdin."""
        lim = spec.limits
        cg = sb.cgroup
        try:
            cg.set_limits(lim.memory_bytes, lim.max_processes + BWRAP_PIDS, self.cpu_cores)
            cg.reset_peak_memory()
        except OSError as err:
            raise _NotSent(f"cannot apply the run's cgroup limits: {err}") from err
        cpu0 = cg.cpu_ns()
        payload = _request(spec)
        started = time.monotonic()
        if sum(len(p) for p in payload) < 60_000:
            # Fits in the (empty) pipe's buffer: the write cannot block, so skip the thread hop.
            _write_all_close(sb.req_w, payload)
            writer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            writer.set_result(None)
        else:
            writer = asyncio.ensure_future(asyncio.to_thread(_write_all_close, sb.req_w, payload))
        sb.req_w = -1
        assert sb.proc.stdin is not None
        feeder = asyncio.ensure_future(_feed(sb.proc.stdin, spec.stdin))
        return _Sent(started=started, cpu0_ns=cpu0, writer=writer, feeder=feeder)

    @staticmethod
    async def _supervise(
        sb: _Sandbox, spec: RunSpec, sent: _Sent, on_output: OutputCallback | None
    ) -> _Watched:
        """Enforces the wall and CPU deadlines and the output cap until no process of the run is left."""
        lim = spec.limits
        cg = sb.cgroup
        proc = sb.proc
        assert proc.stdout is not None and proc.stderr is not None
        kill = _Killer(cg)
        stdout, stderr = _Capture(), _Capture()
        # The side channel is read while the program runs, so a large report never blocks its writer.
        side = (
            asyncio.ensure_future(_read_fd(sb.side_r, lim.wall_s + 10, want_eof=True, cap=SIDE_CHANNEL_CAP))
            if spec.pass_pipe
            else None
        )
        pumps = [
            asyncio.ensure_future(
                _pump("stdout", proc.stdout, stdout, lim.output_bytes, kill, on_output, sent.started)
            ),
            asyncio.ensure_future(
                _pump("stderr", proc.stderr, stderr, lim.output_bytes, kill, on_output, sent.started)
            ),
        ]
        waiter = asyncio.ensure_future(proc.wait())
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
        if not waiter.done():
            kill(Status.SANDBOX_ERROR)
            await asyncio.to_thread(cg.kill)
            await waiter
        wall = time.monotonic() - sent.started
        # The run's init is gone, so every process of the run has been killed by the kernel; the
        # cgroup kill catches anything that raced out (and is a no-op otherwise).
        if cg.signal_all():
            await asyncio.to_thread(cg.kill)  # something raced out: kill until none is left
        return _Watched(
            killed=kill.reason,
            wall_s=wall,
            peak_pids=peak_pids,
            stdout=stdout,
            stderr=stderr,
            pumps=pumps,
            side=side,
        )

    async def _collect(
        self, sb: _Sandbox, lim: Limits, sent: _Sent, watched: _Watched, queue_s: float
    ) -> RunResult:
        """Reads the output, the launcher's status and the side channel, then classifies the run."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*watched.pumps, return_exceptions=True), 2.0)
        for p in watched.pumps:
            p.cancel()
        sent.feeder.cancel()
        with contextlib.suppress(Exception):
            await sent.writer
        status_bytes = _read_available(sb.status_r)
        side = b""
        if watched.side is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watched.side), 2.0)
            watched.side.cancel()
            side = watched.side.result() if watched.side.done() and not watched.side.cancelled() else b""

        cg = sb.cgroup
        cpu_s = (cg.cpu_ns() - sent.cpu0_ns) / 1e9
        peak_mem = cg.peak_memory()
        rc = sb.proc.returncode if sb.proc.returncode is not None else -9
        exit_code = -(rc - 128) if 128 < rc < 128 + 65 else rc
        stdout, stderr = bytes(watched.stdout.data), bytes(watched.stderr.data)

        status, category, message = _classify(
            killed=watched.killed,
            launcher=status_bytes,
            exit_code=exit_code,
            stderr=stderr.decode("utf-8", "replace"),
            oom=cg.oom_kills(),
            pid_hits=cg.pids_max_hits(),
            cpu_s=cpu_s,
            cpu_limit=lim.cpu_s,
            peak_mem=peak_mem,
            mem_limit=lim.memory_bytes,
        )
        return RunResult(
            status=status,
            exit_code=exit_code,
            stdout=stdout,
            stdout_truncated=watched.stdout.truncated,
            stderr=stderr,
            stderr_truncated=watched.stderr.truncated,
            wall_s=watched.wall_s,
            cpu_s=cpu_s,
            peak_memory_bytes=peak_mem,
            peak_processes=max(watched.peak_pids - BWRAP_PIDS, cg.pids_peak() - BWRAP_PIDS, 1),
            queue_s=queue_s,
            category=category,
            error_message=message,
            backend=self.backend,
            side=side,
        )


class _NotSent(Exception):
    """The run could not be sent to its sandbox; the message says why."""


@dataclass
class _Sent:
    """What sending a run started: its clock, and the tasks still writing its input."""

    started: float  # time.monotonic() when the request went to the launcher
    cpu0_ns: int  # the cgroup's CPU time before the run; the run's own is counted from here
    writer: asyncio.Future[None]  # the request (header, then the files' bytes) into the launcher's pipe
    feeder: asyncio.Future[None]  # stdin into the program


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
    peak_pids: int  # the highest process count sampled, bubblewrap's own two included
    stdout: _Capture
    stderr: _Capture
    pumps: list[asyncio.Task[None]]  # still reading stdout and stderr (the pipes may hold more)
    side: asyncio.Future[bytes] | None  # the side channel's reader, where the run has one


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


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        if data:
            stdin.write(data)
            await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        with contextlib.suppress(Exception):
            stdin.close()


async def _pump(
    name: str,
    stream: asyncio.StreamReader,
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
        chunk = await stream.read(65536)
        if not chunk:
            break
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
        if capture.truncated:
            # Drain (and drop) the rest so the process is never blocked on a full pipe.
            while await stream.read(65536):
                pass
            break


async def _compile_launcher(python: str) -> bytes:
    """The launcher compiled once, by the sandbox's own interpreter, as a .pyc it can run directly.

    Compiling the source at every sandbox start would cost several ms of CPU per run.
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
