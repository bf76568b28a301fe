"""The sandbox runner through gRPC: Execute, ExecuteStream, Judge, back-pressure, start-up refusal."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from google.protobuf import duration_pb2

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2 as S
from flywheel.sandbox.v1 import sandbox_pb2_grpc
from flywheel_common import auth
from flywheel_sandbox.isolation import IsolationUnavailable
from flywheel_sandbox.service import build_app
from flywheel_sandbox.settings import SandboxSettings
from flywheel_testing.services import boot_service

from .conftest import Sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")


def wall(seconds: float) -> S.Limits:
    d = duration_pb2.Duration()
    d.FromMilliseconds(int(seconds * 1000))
    return S.Limits(wall_time=d)


async def execute(sb: Sandbox, source: str, stdin: str = "", **program: object) -> S.ExecutionResult:
    reply = await sb.stub.Execute(
        S.ExecuteRequest(program=S.Program(source=source, **program), stdin=stdin), timeout=30
    )
    return reply.result


async def test_hello_world_with_usage_and_lineage(sandbox: Sandbox) -> None:
    r = await execute(sandbox, 'print("hi")')
    assert r.status == S.EXECUTION_STATUS_OK and r.exit_code == 0
    assert r.stdout == "hi\n" and r.stderr == ""
    assert r.error_category == common_pb2.ERROR_CATEGORY_UNSPECIFIED and r.error_message == ""
    assert r.usage.peak_memory_bytes > 1_000_000 and r.usage.cpu_time.ToNanoseconds() > 0
    assert r.sandbox.backend == "bubblewrap" and r.sandbox.image.startswith("host:/usr (python 3.")
    assert r.sandbox.runner_version


async def test_stdin_args_files_env_and_exit_code(sandbox: Sandbox) -> None:
    prog = S.Program(
        entrypoint="app/run.py",
        args=["--n", "3"],
        env={"GREETING": "hello"},
        files=[
            S.File(
                path="app/run.py",
                text="import sys, os, util\nprint(util.f(sys.stdin.read()), sys.argv, os.environ['GREETING'])\nsys.exit(7)\n",
            ),
            S.File(path="app/util.py", text="def f(s):\n    return s.upper()\n"),
        ],
    )
    r = (await sandbox.stub.Execute(S.ExecuteRequest(program=prog, stdin="abc"), timeout=30)).result
    assert r.status == S.EXECUTION_STATUS_RUNTIME_ERROR and r.exit_code == 7, r.stderr
    assert r.stdout == "ABC ['app/run.py', '--n', '3'] hello\n"
    assert r.error_category == common_pb2.ERROR_CATEGORY_OTHER


async def test_explicit_command_and_executable_file(sandbox: Sandbox) -> None:
    prog = S.Program(
        command=["./go.sh", "x"],
        files=[S.File(path="go.sh", text="#!/bin/sh\necho sh:$1\n", executable=True)],
    )
    r = (await sandbox.stub.Execute(S.ExecuteRequest(program=prog), timeout=30)).result
    assert r.status == S.EXECUTION_STATUS_OK and r.stdout == "sh:x\n", r.stderr
    prog = S.Program(command=["no-such-program"])
    r = (await sandbox.stub.Execute(S.ExecuteRequest(program=prog), timeout=30)).result
    assert r.status == S.EXECUTION_STATUS_RUNTIME_ERROR and r.exit_code == 127


@pytest.mark.parametrize(
    ("source", "category", "message"),
    [
        ("x = (", common_pb2.ERROR_CATEGORY_SYNTAX_ERROR, "SyntaxError: '(' was never closed"),
        (
            "print(undefined)",
            common_pb2.ERROR_CATEGORY_NAME_ERROR,
            "NameError: name 'undefined' is not defined",
        ),
        ("1 + 'a'", common_pb2.ERROR_CATEGORY_TYPE_ERROR, "TypeError:"),
        ("[][1]", common_pb2.ERROR_CATEGORY_INDEX_ERROR, "IndexError: list index out of range"),
        ("{}['k']", common_pb2.ERROR_CATEGORY_KEY_ERROR, "KeyError: 'k'"),
        ("int('x')", common_pb2.ERROR_CATEGORY_VALUE_ERROR, "ValueError:"),
        ("1/0", common_pb2.ERROR_CATEGORY_ZERO_DIVISION_ERROR, "ZeroDivisionError: division by zero"),
        ("None.x", common_pb2.ERROR_CATEGORY_ATTRIBUTE_ERROR, "AttributeError:"),
        ("import numpy_not_here", common_pb2.ERROR_CATEGORY_IMPORT_ERROR, "ModuleNotFoundError:"),
        ("def f(): f()\nf()", common_pb2.ERROR_CATEGORY_RECURSION_ERROR, "RecursionError:"),
        ("assert 1 == 2, 'nope'", common_pb2.ERROR_CATEGORY_ASSERTION_ERROR, "AssertionError: nope"),
        ("input()", common_pb2.ERROR_CATEGORY_EOF_ERROR, "EOFError:"),
        ("class E(Exception): pass\nraise E('x')", common_pb2.ERROR_CATEGORY_OTHER, "E: x"),
    ],
)
async def test_error_categories(sandbox: Sandbox, source: str, category: int, message: str) -> None:
    r = await execute(sandbox, source)
    assert r.status == S.EXECUTION_STATUS_RUNTIME_ERROR and r.exit_code == 1
    assert r.error_category == category, (r.error_message, r.stderr)
    assert r.error_message.startswith(message), r.error_message
    assert "launcher" not in r.stderr  # the traceback starts at the user's code, as with `python3 main.py`


async def test_signal_exit_code(sandbox: Sandbox) -> None:
    r = await execute(sandbox, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert r.status == S.EXECUTION_STATUS_RUNTIME_ERROR and r.exit_code == -11


async def test_execute_stream_sends_output_then_result(sandbox: Sandbox) -> None:
    src = "import sys, time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.2)\nprint('err', file=sys.stderr)\n"
    req = S.ExecuteStreamRequest(program=S.Program(source=src))
    messages = [m async for m in sandbox.stub.ExecuteStream(req, timeout=30)]
    chunks = [m.output for m in messages if m.WhichOneof("event") == "output"]
    assert messages[-1].WhichOneof("event") == "result"
    assert sum(1 for m in messages if m.WhichOneof("event") == "result") == 1
    assert len([c for c in chunks if c.stream == S.OUTPUT_STREAM_STDOUT]) >= 3  # streamed as produced
    assert "".join(c.data for c in chunks if c.stream == S.OUTPUT_STREAM_STDOUT) == "0\n1\n2\n"
    assert any(c.stream == S.OUTPUT_STREAM_STDERR and c.data == "err\n" for c in chunks)
    elapsed = [c.elapsed.ToMilliseconds() for c in chunks if c.stream == S.OUTPUT_STREAM_STDOUT]
    assert elapsed == sorted(elapsed) and elapsed[-1] - elapsed[0] >= 300
    assert messages[-1].result.stdout == "0\n1\n2\n" and messages[-1].result.status == S.EXECUTION_STATUS_OK


async def test_cancelling_a_stream_kills_the_run(sandbox: Sandbox) -> None:
    req = S.ExecuteStreamRequest(
        program=S.Program(source="import time\nprint('go', flush=True)\ntime.sleep(60)")
    )
    call = sandbox.stub.ExecuteStream(req, timeout=30)
    first = await call.read()
    assert first.output.data == "go\n"
    call.cancel()
    for _ in range(100):
        if not sandbox.runner._active and not sandbox.runner._slots.locked() and sandbox.runner._waiting == 0:
            break
        await asyncio.sleep(0.05)
    await sandbox.assert_healthy_and_clean()


async def test_full_queue_is_resource_exhausted_never_a_hang(sandbox: Sandbox) -> None:
    # max_concurrency=2 and queue_size=4 in the fixture: 6 fit, the rest are refused at once.
    req = S.ExecuteRequest(program=S.Program(source="import time; time.sleep(1.5)"))
    calls = [sandbox.stub.Execute(req, timeout=30) for _ in range(10)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    done = [r for r in results if not isinstance(r, BaseException)]
    assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
    assert "queue is full" in refused[0].details()
    assert len(done) == 6 and len(refused) == 4
    assert all(r.result.status == S.EXECUTION_STATUS_OK for r in done)
    assert max(r.result.usage.queue_time.ToMilliseconds() for r in done) >= 1000
    await sandbox.assert_healthy_and_clean()


async def test_bad_program_fields(sandbox: Sandbox) -> None:
    cases = [
        (S.ExecuteRequest(), "program"),
        (S.ExecuteRequest(program=S.Program(source="x", command=["a"], args=["b"])), "program.command"),
        (
            S.ExecuteRequest(program=S.Program(entrypoint="missing.py", files=[S.File(path="a.py")])),
            "program.entrypoint",
        ),
        (S.ExecuteRequest(program=S.Program(source="x", files=[S.File(path="main.py")])), "program.source"),
        (S.ExecuteRequest(program=S.Program(source="x", env={"BAD=NAME": "1"})), "program.env"),
        (
            S.ExecuteRequest(program=S.Program(source="x", files=[S.File(path="a"), S.File(path="a/b")])),
            "program.files",
        ),
    ]
    for req, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sandbox.stub.Execute(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(field), err.value.details()


# --- start-up: isolation or an explicit, loud unsafe mode ------------------------------------------


async def test_refuses_to_start_without_bubblewrap(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    env = {"FLYWHEEL_OBJECT_STORE_ROOT": str(tmp_path / "o")}
    with pytest.raises(IsolationUnavailable, match="bubblewrap"):
        async with boot_service(build_app, SandboxSettings, env):
            pass


async def test_unsafe_local_mode_is_explicit_and_loud(
    tmp_path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    env = {"FLYWHEEL_OBJECT_STORE_ROOT": str(tmp_path / "o"), "FLYWHEEL_SANDBOX_UNSAFE_LOCAL": "true"}
    with caplog.at_level(logging.WARNING, logger="flywheel.sandbox"):
        async with boot_service(build_app, SandboxSettings, env) as address:
            async with auth.channel(address) as channel:
                stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
                r = (
                    await stub.Execute(S.ExecuteRequest(program=S.Program(source="print(6*7)")), timeout=30)
                ).result
    assert r.status == S.EXECUTION_STATUS_OK and r.stdout == "42\n"
    assert r.sandbox.backend == "unsafe-local"
    assert any("UNSAFE LOCAL MODE" in rec.getMessage() for rec in caplog.records)


async def test_warm_interpreter_behaves_like_python3_main_py(sandbox: Sandbox) -> None:
    # The warm launcher starts python3 with -S; the parts of `site` programs rely on are restored.
    src = (
        "import sys, pytest, atexit\n"
        "atexit.register(lambda: print('atexit ran'))\n"
        "print(__name__, sys.argv, sys.path[0], 'pytest' in sys.modules)\n"
        "exit(3)\n"
    )
    r = await execute(sandbox, src)
    assert r.stdout == "__main__ ['main.py'] /workspace True\natexit ran\n", r.stderr
    assert r.exit_code == 3 and r.status == S.EXECUTION_STATUS_RUNTIME_ERROR
    r = await execute(
        sandbox,
        "import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.3), print('late'))).start()\n",
    )
    assert r.stdout == "late\n"  # non-daemon threads are joined before exit
    r = await execute(sandbox, "raise SystemExit('bye')")
    assert r.exit_code == 1 and r.stderr == "bye\n"


async def test_max_processes_counts_the_programs_processes_exactly(sandbox: Sandbox) -> None:
    src = (
        "import os, time\nkids = []\ntry:\n    for _ in range(10):\n        pid = os.fork()\n"
        "        if pid == 0:\n            time.sleep(5)\n            os._exit(0)\n        kids.append(pid)\n"
        "except OSError:\n    pass\nprint(len(kids))\n"
    )
    req = S.ExecuteRequest(program=S.Program(source=src), limits=S.Limits(max_processes=4))
    r = (await sandbox.stub.Execute(req, timeout=30)).result
    assert r.stdout == "3\n" and r.status == S.EXECUTION_STATUS_OK, r  # itself + 3 children
    assert sandbox.runner.tree is not None
    if (sandbox.runner.tree.parents["pids"] / "pids.peak").exists():
        assert r.usage.peak_processes == 4  # exact, from pids.peak of the run's cgroup
    else:
        assert 1 <= r.usage.peak_processes <= 4  # sampled by the watchdog on older kernels
    assert r.usage.wall_time.seconds < 3  # the sleeping children died with the run
    await sandbox.assert_healthy_and_clean()


@pytest.mark.parametrize(
    ("python", "message"),
    [("/nonexistent/python3", "interpreter"), ("/bin/false", "cannot compile the launcher")],
)
async def test_refuses_to_start_with_a_broken_interpreter(tmp_path, python: str, message: str) -> None:
    env = {"FLYWHEEL_OBJECT_STORE_ROOT": str(tmp_path / "o"), "FLYWHEEL_SANDBOX_PYTHON": python}
    with pytest.raises(IsolationUnavailable, match=message):
        async with boot_service(build_app, SandboxSettings, env):
            pass
