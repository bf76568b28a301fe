"""Reused sandboxes: a run sees nothing of the run before it, and cannot reach the zygote.

A runner with one slot and a pool of one sandbox, so consecutive runs land on the same sandbox
whenever it is reused (``RunResult.sandbox_id`` / ``sandbox_run`` say which one and how often).
Everything is real: bubblewrap, cgroups, the zygote, the seccomp filters.
"""

from __future__ import annotations

import asyncio
import os
import textwrap
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import pytest_asyncio

from flywheel_sandbox.runner import MAX_RUNS_PER_SANDBOX, FileSpec, Limits, Runner, RunResult, RunSpec, Status

from .conftest import stray_sandbox_processes

pytestmark = pytest.mark.asyncio(loop_scope="module")

MiB = 1024 * 1024
DEFAULTS = Limits(
    wall_s=10.0,
    cpu_s=10.0,
    memory_bytes=256 * MiB,
    max_processes=64,
    output_bytes=1 * MiB,
    file_size_bytes=16 * MiB,
    max_open_files=256,
    workspace_bytes=64 * MiB,
)

# What a run prints about the state it was given (compared between a fresh and a reused sandbox).
STATE = """
import os, resource, signal, sys
def listing(path):
    return sorted(os.listdir(path))
print("workspace", listing("/workspace"))
print("tmp", listing("/tmp"), "shm", listing("/dev/shm"))
for path in ("/workspace", "/tmp", "/dev/shm"):
    st = os.stat(path)
    print(path, oct(st.st_mode), st.st_uid, sorted(os.listxattr(path)))
print("cwd", os.getcwd())
print("env", sorted(os.environ))
mask = os.umask(0); os.umask(mask); print("umask", oct(mask))
print("fds", sorted(int(f) for f in os.listdir("/proc/self/fd")))
print("signals", [int(signal.getsignal(s) is signal.SIG_DFL) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGALRM)],
      signal.getsignal(signal.SIGINT) is signal.default_int_handler, signal.pthread_sigmask(signal.SIG_BLOCK, []))
print("rlimits", [resource.getrlimit(getattr(resource, n)) for n in sorted(dir(resource)) if n.startswith("RLIMIT_")
      and n not in ("RLIMIT_CPU", "RLIMIT_OFILE")])
print("sched", os.getpriority(os.PRIO_PROCESS, 0), sorted(os.sched_getaffinity(0)), os.sched_getscheduler(0))
print("procs", sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid())))
print("modules", "leak" in sys.modules, "sysv", [open(f"/proc/sysvipc/{k}").read().count(chr(10)) for k in ("shm", "sem", "msg")])
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runner() -> AsyncIterator[Runner]:
    r = Runner(
        python="/usr/bin/python3",
        default_limits=DEFAULTS,
        max_concurrency=1,
        queue_size=8,
        warm_pool_size=1,
        cpu_cores_per_run=1.0,
    )
    await r.start()
    try:
        yield r
    finally:
        await r.close()


async def run(runner: Runner, source: str, limits: Limits = DEFAULTS) -> RunResult:
    spec = RunSpec(files=[FileSpec("main.py", textwrap.dedent(source).encode())], limits=limits)
    return await runner.execute(spec)


async def state(runner: Runner) -> tuple[RunResult, str]:
    r = await run(runner, STATE)
    assert r.status is Status.OK, (r.status, r.stderr_text)
    return r, r.stdout_text


async def assert_clean(runner: Runner) -> None:
    await runner.wait_idle()
    assert runner.leftover_processes() == {}
    for _ in range(40):
        stray = stray_sandbox_processes(runner)
        if not stray:
            break
        await asyncio.sleep(0.05)
    assert stray == []


async def test_a_reused_sandbox_shows_nothing_of_the_previous_run(runner: Runner) -> None:
    first, fresh = await state(runner)
    dirty = await run(
        runner,
        """
        import os, signal, resource, sys
        os.makedirs("/workspace/pkg/deep", exist_ok=True)
        open("/workspace/pkg/deep/answer.txt", "w").write("42")
        open("/workspace/main.py", "a").write("# changed by the first run")
        os.symlink("/workspace/pkg", "/tmp/link")
        open("/tmp/secret", "w").write("secret")
        open("/dev/shm/sem.x", "wb").write(b"x" * 100000)
        os.mkfifo("/tmp/fifo")
        os.chmod("/workspace", 0o700); os.chmod("/tmp", 0o777)
        os.setxattr("/workspace", "user.note", b"left")
        os.environ["LEAK"] = "1"
        os.chdir("/tmp")
        os.umask(0o077)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 20, 1 << 20))
        keep = open("/workspace/pkg/deep/answer.txt")
        sys.modules["leak"] = sys
        print("dirtied")
        """,
    )
    assert dirty.status is Status.OK and dirty.stdout == b"dirtied\n", dirty.stderr_text
    second, again = await state(runner)
    assert dirty.sandbox_id == first.sandbox_id == second.sandbox_id  # one sandbox, reused
    assert second.sandbox_run == first.sandbox_run + 2
    assert again.replace("procs", "") == fresh.replace("procs", ""), (fresh, again)
    assert "workspace ['main.py']" in again and "tmp [] shm []" in again
    assert "/workspace 0o40755 65534 []" in again and "cwd /workspace" in again
    assert "'LEAK'" not in again and "umask 0o22" in again and "fds [0, 1, 2, 3]" in again  # 3: the listing
    assert "modules False" in again
    await assert_clean(runner)


async def test_a_background_process_is_killed_and_its_sandbox_not_reused(runner: Runner) -> None:
    before, _ = await state(runner)
    daemon = await run(
        runner,
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                while True:  # a daemon that keeps writing
                    open("/tmp/daemon", "a").write("x")
                    time.sleep(0.01)
            os._exit(0)
        time.sleep(0.1)
        print("started", os.path.exists("/tmp/daemon"))
        """,
    )
    assert daemon.status is Status.OK and daemon.stdout == b"started True\n", daemon.stderr_text
    assert daemon.sandbox_id == before.sandbox_id
    after, out = await state(runner)
    assert after.sandbox_id != daemon.sandbox_id and after.sandbox_run == 1  # destroyed, not reused
    assert "tmp [] shm []" in out and "procs []" in out, out
    await assert_clean(runner)


@pytest.mark.parametrize(
    ("what", "source"),
    [
        (
            "a SysV shared memory segment",
            """
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            print(libc.shmget(0, 4096, 0o1600) >= 0)  # IPC_PRIVATE, IPC_CREAT | 0600
            """,
        ),
        (
            "a TCP socket in TIME_WAIT",
            """
            import socket
            srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
            c = socket.create_connection(srv.getsockname()); s, _ = srv.accept()
            s.close(); c.close(); srv.close()
            print(True)
            """,
        ),
        (
            "more files than the clean-up takes",
            """
            import os
            for i in range(300):
                open(f"/tmp/f{i}", "w").close()
            print(True)
            """,
        ),
    ],
)
async def test_leftovers_that_outlive_the_run_destroy_the_sandbox(
    runner: Runner, what: str, source: str
) -> None:
    before, _ = await state(runner)
    left = await run(runner, source)
    assert left.status is Status.OK and left.stdout == b"True\n", (what, left.stderr_text)
    assert left.sandbox_id == before.sandbox_id
    after, out = await state(runner)
    assert after.sandbox_id != left.sandbox_id, what
    assert "tmp [] shm []" in out and "sysv [1, 1, 1]" in out, out
    await assert_clean(runner)


async def test_tampering_with_the_zygote_only_fails_itself(runner: Runner) -> None:
    before, fresh = await state(runner)
    attack = await run(
        runner,
        """
        import ctypes, errno, fcntl, os, resource, signal
        libc = ctypes.CDLL(None, use_errno=True)
        def attempt(name, fn):
            try:
                fn()
                print(name, "ok")
            except OSError as err:
                print(name, errno.errorcode.get(err.errno, err.errno))
        def raw(name, *args):
            rc = getattr(libc, name)(*args)
            if rc == -1:
                raise OSError(ctypes.get_errno(), name)
        assert os.getppid() == 1
        for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGKILL):
            attempt(f"kill {sig.name}", lambda: os.kill(1, sig))
        attempt("kill all", lambda: os.kill(-1, signal.SIGKILL))
        attempt("prlimit", lambda: resource.prlimit(1, resource.RLIMIT_NOFILE, (8, 8)))
        attempt("nice", lambda: os.setpriority(os.PRIO_PROCESS, 1, 19))
        attempt("nice group", lambda: os.setpriority(os.PRIO_PGRP, 1, 19))
        attempt("nice user", lambda: os.setpriority(os.PRIO_USER, os.getuid(), 19))
        attempt("affinity", lambda: os.sched_setaffinity(1, {0}))
        attempt("scheduler", lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0)))
        attempt("ioprio", lambda: raw("syscall", 251, 1, 1, 3 << 13))  # ioprio_set(PROCESS, 1, IDLE)
        attempt("pidfd", lambda: os.pidfd_open(1))
        attempt("mem", lambda: open("/proc/1/mem", "r+b"))
        attempt("environ", lambda: open("/proc/1/environ", "rb").read())
        attempt("fds", lambda: os.listdir("/proc/1/fd"))
        attempt("ptrace", lambda: raw("ptrace", 16, 1, None, None))
        r, w = os.pipe()
        attempt("setown", lambda: fcntl.fcntl(r, fcntl.F_SETOWN, 1))
        attempt("mq_open", lambda: raw("mq_open", b"/q", os.O_CREAT | os.O_RDWR, 0o600, None))
        print("still here")
        """,
    )
    assert attack.status is Status.OK, attack.stderr_text
    out = attack.stdout_text
    assert "still here" in out
    for denied in ("prlimit", "nice", "nice group", "nice user", "affinity", "scheduler", "ioprio", "pidfd"):
        assert f"{denied} EPERM" in out, out
    for denied in ("mem", "environ", "fds"):
        assert f"{denied} EACCES" in out, out
    assert "ptrace EPERM" in out and "setown EPERM" in out and "mq_open EPERM" in out, out
    # Signals from inside the namespace to its init are dropped by the kernel: they "succeed".
    after, again = await state(runner)
    assert after.sandbox_id == attack.sandbox_id == before.sandbox_id  # nothing changed: still reused
    assert again.replace("procs", "") == fresh.replace("procs", ""), (fresh, again)
    await assert_clean(runner)


async def test_a_zygote_changed_from_outside_is_caught_and_never_reused(runner: Runner) -> None:
    # Whatever might get past the guard filter: the zygote compares its own state after each run.
    first, fresh = await state(runner)
    await runner.wait_idle()  # re-armed and back in the pool
    sb = next(iter(runner._pool))
    os.setpriority(os.PRIO_PROCESS, sb.zygote, 7)  # as root, from the host
    victim, _ = await state(runner)  # its child was forked before the change
    assert victim.sandbox_id == first.sandbox_id
    after, again = await state(runner)
    assert after.sandbox_id != victim.sandbox_id and after.sandbox_run == 1
    assert again.replace("procs", "") == fresh.replace("procs", "")
    await assert_clean(runner)


@pytest.mark.parametrize(
    ("source", "limits", "status"),
    [
        ("import time; time.sleep(30)", replace(DEFAULTS, wall_s=0.5), Status.WALL_TIMEOUT),
        ("x = bytearray(512 * 1024 * 1024)", DEFAULTS, Status.MEMORY_LIMIT),
        ("print('big')", replace(DEFAULTS, workspace_bytes=32 * MiB), Status.OK),
    ],
    ids=["timeout", "memory", "workspace-size"],
)
async def test_runs_in_doubt_never_leave_their_sandbox_to_the_next(
    runner: Runner, source: str, limits: Limits, status: Status
) -> None:
    r = await run(runner, source, limits)
    assert r.status is status, (r.status, r.stderr_text)
    nxt, _ = await state(runner)
    assert nxt.sandbox_id != r.sandbox_id
    if limits.workspace_bytes != DEFAULTS.workspace_bytes:
        assert r.sandbox_run == 1  # started on demand for its size, destroyed after
    await assert_clean(runner)


async def test_exit_status_and_usage_are_the_runs_own(runner: Runner) -> None:
    # The zygote reaps the child itself: an exit status of 130 is 130, a signal is -N.
    r = await run(runner, "import os; os._exit(130)")
    assert r.exit_code == 130 and r.status is Status.RUNTIME_ERROR
    r = await run(runner, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert r.exit_code == -15
    # Usage comes from the run's own new cgroup: a second run is not charged for the first.
    hog = await run(runner, "x = bytearray(96 * 1024 * 1024); sum(range(3_000_000))")
    small = await run(runner, "print(1)")
    assert small.sandbox_id == hog.sandbox_id and small.sandbox_run == hog.sandbox_run + 1
    assert hog.peak_memory_bytes > 90 * MiB and small.peak_memory_bytes < 32 * MiB
    assert small.cpu_s < hog.cpu_s and small.peak_processes == 1


async def test_a_sandbox_is_retired_after_its_quota_of_runs(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flywheel_sandbox.runner as runner_module

    assert MAX_RUNS_PER_SANDBOX > 2
    monkeypatch.setattr(runner_module, "MAX_RUNS_PER_SANDBOX", 2)
    seen = [await run(runner, "print(1)") for _ in range(4)]
    assert all(r.status is Status.OK for r in seen)
    # The first run retires the sandbox it found (already past the quota); then 1, 2, retired, 1.
    assert [r.sandbox_run for r in seen[1:]] == [1, 2, 1]
    assert seen[1].sandbox_id == seen[2].sandbox_id != seen[3].sandbox_id != seen[0].sandbox_id
    await assert_clean(runner)
