"""The abuse suite: hostile programs through the real gRPC API, real bubblewrap and real cgroups.

Each case asserts the typed status (or the INVALID_ARGUMENT naming the field), then that the
runner still answers health checks and that no process of the run is left alive.
"""

from __future__ import annotations

import ast
import os
import re
import textwrap

import grpc
import pytest
from google.protobuf import duration_pb2

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2

from .conftest import SECRET, Sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")

S = sandbox_pb2
MiB = 1024 * 1024


def limits(**kw: float) -> S.Limits:
    out = S.Limits()
    for key in ("wall_time", "cpu_time"):
        if key in kw:
            d = duration_pb2.Duration()
            d.FromMilliseconds(int(kw.pop(key) * 1000))
            getattr(out, key).CopyFrom(d)
    for key, value in kw.items():
        setattr(out, key, value)
    return out


async def run(sb: Sandbox, source: str, lim: S.Limits | None = None, **program: object) -> S.ExecutionResult:
    req = S.ExecuteRequest(program=S.Program(source=textwrap.dedent(source), **program), limits=lim)
    reply = await sb.stub.Execute(req, timeout=60)
    return reply.result


async def expect(
    sb: Sandbox, source: str, status: int, lim: S.Limits | None = None, **kw: object
) -> S.ExecutionResult:
    result = await run(sb, source, lim, **kw)
    assert result.status == status, (
        S.ExecutionStatus.Name(result.status),
        result.exit_code,
        result.stdout[-500:],
        result.stderr[-1500:],
        result.error_message,
    )
    assert result.sandbox.backend == "bubblewrap"
    await sb.assert_healthy_and_clean()
    return result


# --- resource exhaustion -------------------------------------------------------------------------


async def test_fork_bomb(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        S.EXECUTION_STATUS_PROCESS_LIMIT,
        limits(wall_time=2, max_processes=32),
    )
    assert r.error_category == common_pb2.ERROR_CATEGORY_RESOURCE_LIMIT


async def test_thread_bomb(sandbox: Sandbox) -> None:
    await expect(
        sandbox,
        """
        import threading, time
        while True:
            threading.Thread(target=time.sleep, args=(100,)).start()
        """,
        S.EXECUTION_STATUS_PROCESS_LIMIT,
        limits(wall_time=3, max_processes=16),
    )


async def test_memory_bomb(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        blocks = []
        while True:
            blocks.append(bytearray(8 * 1024 * 1024))
        """,
        S.EXECUTION_STATUS_MEMORY_LIMIT,
        limits(memory_bytes=64 * MiB),
    )
    assert r.error_category == common_pb2.ERROR_CATEGORY_MEMORY
    assert r.usage.peak_memory_bytes <= 64 * MiB


async def test_memory_bomb_in_child_process(sandbox: Sandbox) -> None:
    await expect(
        sandbox,
        """
        import os
        if os.fork() == 0:
            x = b"x" * (512 * 1024 * 1024)
        os.wait()
        raise SystemExit(3)
        """,
        S.EXECUTION_STATUS_MEMORY_LIMIT,
        limits(memory_bytes=64 * MiB),
    )


async def test_disk_fill(sandbox: Sandbox) -> None:
    await expect(
        sandbox,
        """
        with open("fill.bin", "wb") as fh:
            for i in range(10_000):
                fh.write(b"\\0" * (1024 * 1024))
        """,
        S.EXECUTION_STATUS_FILE_SIZE_LIMIT,
        limits(workspace_bytes=8 * MiB, memory_bytes=128 * MiB, file_size_bytes=64 * MiB),
    )


async def test_fill_tmp(sandbox: Sandbox) -> None:
    await expect(
        sandbox,
        """
        with open("/tmp/fill.bin", "wb") as fh:
            for i in range(10_000):
                fh.write(b"\\0" * (1024 * 1024))
        """,
        S.EXECUTION_STATUS_FILE_SIZE_LIMIT,
        limits(workspace_bytes=8 * MiB, memory_bytes=128 * MiB, file_size_bytes=64 * MiB),
    )


async def test_huge_single_file(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        with open("big.bin", "wb") as fh:
            fh.write(b"x" * (4 * 1024 * 1024))
        """,
        S.EXECUTION_STATUS_FILE_SIZE_LIMIT,
        limits(file_size_bytes=1 * MiB),
    )
    assert "File too large" in r.error_message


async def test_infinite_stdout(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        while True:
            print("y" * 1000)
        """,
        S.EXECUTION_STATUS_OUTPUT_LIMIT,
        limits(output_bytes=64 * 1024),
    )
    assert r.stdout_truncated and len(r.stdout.encode()) <= 64 * 1024


async def test_infinite_stderr_from_a_shell(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        "",
        S.EXECUTION_STATUS_OUTPUT_LIMIT,
        limits(output_bytes=16 * 1024),
        command=["sh", "-c", "yes no >&2"],
    )
    assert r.stderr_truncated


async def test_cpu_spin(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox, "while True: pass", S.EXECUTION_STATUS_CPU_TIMEOUT, limits(cpu_time=1, wall_time=10)
    )
    assert r.error_category == common_pb2.ERROR_CATEGORY_TIMEOUT
    assert r.usage.cpu_time.seconds >= 1 or r.usage.cpu_time.nanos > 900_000_000


async def test_cpu_spin_in_many_processes(sandbox: Sandbox) -> None:
    # The per-process RLIMIT_CPU alone would allow 4 x 1 s; the cgroup's CPU total catches it.
    await expect(
        sandbox,
        """
        import os
        for _ in range(3):
            if os.fork() == 0:
                break
        while True:
            pass
        """,
        S.EXECUTION_STATUS_CPU_TIMEOUT,
        limits(cpu_time=1, wall_time=10),
    )


async def test_sleep_forever(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox, "import time; time.sleep(10**6)", S.EXECUTION_STATUS_WALL_TIMEOUT, limits(wall_time=0.5)
    )
    assert 0.5 <= r.usage.wall_time.seconds + r.usage.wall_time.nanos / 1e9 < 3


# --- escaping the sandbox ------------------------------------------------------------------------


async def test_cannot_read_runner_env_or_host_secrets(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import os
        print(sorted(os.environ))
        for path in ("/proc/1/environ", "/proc/self/environ"):
            try:
                print(open(path, "rb").read())
            except OSError as err:  # pid 1 is the sandbox's non-dumpable zygote
                print(path, "denied", type(err).__name__)
        for path in ("/root", "/home", "/work", "/etc/shadow", "/run", "/var", "/sys/fs/cgroup"):
            try:
                print(path, os.listdir(path) if os.path.isdir(path) else open(path).read()[:10])
            except OSError as err:
                print(path, "denied", type(err).__name__)
        print("uid", os.getuid(), os.geteuid(), os.getgid())
        print([ln for ln in open("/proc/self/status") if ln.startswith(("CapEff", "CapPrm", "NoNewPrivs", "Seccomp:"))])
        """,
        S.EXECUTION_STATUS_OK,
    )
    out = r.stdout
    assert SECRET not in out and "FLYWHEEL" not in out
    assert "['HOME', 'LANG', 'PATH']" in out
    assert "/proc/1/environ denied" in out
    for path in ("/root", "/home", "/work", "/etc/shadow", "/run", "/var", "/sys/fs/cgroup"):
        assert f"{path} denied" in out
    assert "uid 65534 65534 65534" in out
    assert "CapEff:\\t0000000000000000" in out and "NoNewPrivs:\\t1" in out and "Seccomp:\\t2" in out


async def test_no_host_path_in_proc_environ_or_cgroup(sandbox: Sandbox) -> None:
    """/proc/1/environ (the sandbox's init), every other readable environ, /proc/*/cgroup and the
    mount table show nothing of the host: not the runner's working directory, not its cgroup tree
    (v1 or v2), not the host's cgroup mount. The only cgroup a run sees is its own, named relative
    to the sandbox's cgroup namespace."""
    r = await expect(
        sandbox,
        """
        import os
        for pid in ["1", "self"] + sorted(p for p in os.listdir("/proc") if p.isdigit()):
            for name in ("environ", "cgroup", "cmdline"):
                try:
                    print(f"/proc/{pid}/{name}", repr(open(f"/proc/{pid}/{name}", "rb").read()))
                except OSError as err:
                    print(f"/proc/{pid}/{name}", "denied", type(err).__name__)
        print("mountinfo", repr(open("/proc/self/mountinfo").read()))
        print("cwd", os.getcwd())
        """,
        S.EXECUTION_STATUS_OK,
    )
    out = r.stdout
    assert sandbox.runner.tree is not None
    tree_parent = next(iter(sandbox.runner.tree.parents.values()))
    host = [
        os.getcwd(),
        str(tree_parent),
        tree_parent.name,
        "flywheel-runner",
        "/sys/fs/cgroup",
        "FW_CGROUP",
        SECRET,
    ]
    assert [h for h in host if h in out] == []
    lines = [ln for ln in out.splitlines() if ln.startswith("/proc/self/cgroup ")]
    assert len(lines) == 1
    for entry in ast.literal_eval(lines[0].split(" ", 1)[1]).decode().splitlines():
        path = entry.split(":", 2)[2]
        assert re.fullmatch(r"/(\.\./r[0-9a-f]{15})?", path), entry
    assert "cwd /workspace" in out


async def test_writes_outside_workspace_fail(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import os
        ok = []
        for path in ("/usr/evil", "/etc/evil", "/evil", "/.flywheel/launcher.pyc", "/proc/sys/kernel/hostname", "/dev/evil"):
            try:
                with open(path, "w") as fh:
                    fh.write("x")
                ok.append(path)
            except OSError:
                pass
        open("/workspace/fine.txt", "w").write("ok")
        open("/tmp/fine.txt", "w").write("ok")
        open("/dev/shm/fine.txt", "w").write("ok")
        open("/dev/stdout", "w").write("reopened stdout\\n")
        print("written outside:", ok)
        """,
        S.EXECUTION_STATUS_OK,
    )
    assert "written outside: []" in r.stdout and "reopened stdout" in r.stdout


async def test_no_network_tcp_loopback_to_the_runner(sandbox: Sandbox) -> None:
    port = sandbox.address.rsplit(":", 1)[1]
    r = await expect(
        sandbox,
        f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2)
            print("connected")
        except OSError as err:
            print("refused", err.errno)
        """,
        S.EXECUTION_STATUS_OK,
    )
    assert "refused" in r.stdout


async def test_no_network_public_address(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import socket
        try:
            socket.create_connection(("1.1.1.1", 443), timeout=2)
            print("connected")
        except OSError as err:
            print("unreachable", err.errno)
        """,
        S.EXECUTION_STATUS_OK,
    )
    assert "unreachable" in r.stdout


async def test_no_dns(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import socket
        try:
            print(socket.getaddrinfo("pypi.org", 443))
        except OSError as err:
            print("no dns", type(err).__name__)
        """,
        S.EXECUTION_STATUS_OK,
    )
    assert "no dns" in r.stdout


async def test_kill_the_parent(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import os, signal
        for pid in (os.getppid(), 1):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as err:
                print("kill", pid, err.errno)
        print("alive")
        """,
        S.EXECUTION_STATUS_OK,
    )
    assert "alive" in r.stdout


async def test_setsid_double_fork_orphan_is_killed(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                # a daemon holding stdout open and sleeping "forever"
                time.sleep(10**6)
            os._exit(0)
        print("parent done")
        """,
        S.EXECUTION_STATUS_OK,
        limits(wall_time=5),
    )
    assert r.usage.wall_time.seconds < 2


async def test_zombies(sandbox: Sandbox) -> None:
    await expect(
        sandbox,
        """
        import os
        for _ in range(20):
            if os.fork() == 0:
                os._exit(0)
        print("left 20 zombies")
        """,
        S.EXECUTION_STATUS_OK,
    )


async def test_ptrace_unshare_mount_keyctl_denied(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def call(name, *args):
            rc = getattr(libc, name)(*args)
            return name, rc, ctypes.get_errno()
        print(call("ptrace", 16, os.getppid(), None, None))          # PTRACE_ATTACH
        print(call("unshare", 0x10000000))                           # CLONE_NEWUSER
        print(call("unshare", 0x40000000))                           # CLONE_NEWNET
        print(call("mount", b"none", b"/tmp", b"tmpfs", 0, None))
        print(call("syscall", 250, 0, 0, 0, 0, 0))                   # keyctl
        print(call("syscall", 321, 0, 0, 0))                         # bpf
        """,
        S.EXECUTION_STATUS_OK,
    )
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 6
    for line in lines:
        assert ", -1, 1)" in line, line  # rc -1, errno EPERM


async def test_fd_exhaustion(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        fds = []
        try:
            while True:
                fds.append(open("/dev/null"))
        except OSError as err:
            print("stopped at", len(fds), err.errno)
        """,
        S.EXECUTION_STATUS_OK,
        limits(max_open_files=64),
    )
    assert "stopped at" in r.stdout and int(r.stdout.split()[2]) <= 64


async def test_symlink_escape_inside_sandbox(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import os
        os.symlink("/root", "r")
        os.symlink("/proc/1/root/root", "r2")
        for p in ("r", "r2"):
            try:
                print(p, os.listdir(p))
            except OSError as err:
                print(p, "denied")
        """,
        S.EXECUTION_STATUS_OK,
    )
    assert "r denied" in r.stdout and "r2 denied" in r.stdout


async def test_ten_thousand_files_written_by_the_program(sandbox: Sandbox) -> None:
    r = await expect(
        sandbox,
        """
        import os
        os.mkdir("many")
        for i in range(10_000):
            open(f"many/{i}", "w").close()
        print(len(os.listdir("many")))
        """,
        S.EXECUTION_STATUS_OK,
        limits(wall_time=20),
    )
    assert r.stdout.strip() == "10000"


# --- bad requests --------------------------------------------------------------------------------


async def _invalid(sb: Sandbox, req: S.ExecuteRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sb.stub.Execute(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or ""), err.value.details()
    await sb.assert_healthy_and_clean()


async def test_ten_thousand_request_files_rejected(sandbox: Sandbox) -> None:
    files = [S.File(path=f"f{i}.txt", text="x") for i in range(10_000)]
    await _invalid(sandbox, S.ExecuteRequest(program=S.Program(source="pass", files=files)), "program.files")


async def test_path_escape_rejected(sandbox: Sandbox) -> None:
    for path in ("../evil.py", "/etc/passwd", "a/../../b", "a//b", "a\\b"):
        req = S.ExecuteRequest(program=S.Program(source="pass", files=[S.File(path=path, text="x")]))
        await _invalid(sandbox, req, "program.files[0].path")


async def test_oversized_file_rejected(sandbox: Sandbox) -> None:
    big = S.File(path="big.bin", data=b"x" * (9 * MiB))
    await _invalid(
        sandbox, S.ExecuteRequest(program=S.Program(source="pass", files=[big])), "program.files[0]"
    )


async def test_files_larger_than_the_workspace_rejected(sandbox: Sandbox) -> None:
    files = [S.File(path=f"f{i}.bin", data=b"x" * (4 * MiB)) for i in range(3)]
    req = S.ExecuteRequest(
        program=S.Program(source="pass", files=files), limits=limits(workspace_bytes=8 * MiB)
    )
    await _invalid(sandbox, req, "limits.workspace_bytes")


async def test_limits_above_maxima_rejected(sandbox: Sandbox) -> None:
    cases = {
        "limits.memory_bytes": limits(memory_bytes=1 << 40),
        "limits.wall_time": limits(wall_time=10_000),
        "limits.max_processes": limits(max_processes=100_000),
        "limits.output_bytes": limits(output_bytes=-1),
        "limits.memory_bytes: 1024 is below": limits(memory_bytes=1024),
    }
    for field, lim in cases.items():
        await _invalid(sandbox, S.ExecuteRequest(program=S.Program(source="pass"), limits=lim), field)


async def test_archive_with_symlink_rejected(sandbox: Sandbox) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("tests/evil.py")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    (sandbox.objects / "ws").mkdir(exist_ok=True)
    (sandbox.objects / "ws" / "evil.tar").write_bytes(buf.getvalue())
    req = S.RunTestsRequest(archive=common_pb2.ObjectRef(key="ws/evil.tar"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sandbox.stub.RunTests(req, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "archive" in (err.value.details() or "") and "link" in (err.value.details() or "")
    await sandbox.assert_healthy_and_clean()
