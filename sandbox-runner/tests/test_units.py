"""Plain-function tests of the domain modules (no sandbox, no gRPC)."""

from __future__ import annotations

import os

import pytest

from flywheel_common.errors import InvalidArgument
from flywheel_sandbox.classify import Category, last_exception
from flywheel_sandbox.runner import FileSpec, Status, _classify
from flywheel_sandbox.settings import SandboxSettings
from flywheel_sandbox.testrun import forbidden_arg, static_test_ids
from flywheel_sandbox.workspace import FileCaps, check_files, check_path

T = "tests/test_calc.py"


def test_settings_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SANDBOX_PORT", "6123")
    monkeypatch.setenv("FLYWHEEL_SANDBOX_MAX_CONCURRENCY", "3")
    s = SandboxSettings()
    assert s.port == 6123 and s.max_concurrency == 3 and s.pool_size == 3 and s.unsafe_local is False
    monkeypatch.delenv("FLYWHEEL_SANDBOX_MAX_CONCURRENCY")
    assert SandboxSettings().max_concurrency == os.cpu_count()
    with pytest.raises(ValueError, match="default_memory_bytes is above max_memory_bytes"):
        SandboxSettings(default_memory_bytes=2 << 30, max_memory_bytes=1 << 30)


def test_static_collection() -> None:
    src = (
        b"import pytest\ndef test_a():\n    pass\nasync def test_b():\n    pass\ndef helper():\n    pass\n"
        b"class TestC:\n    def test_m(self):\n        pass\n    def other(self):\n        pass\n"
        b"class TestWithInit:\n    def __init__(self):\n        pass\n    def test_x(self):\n        pass\n"
    )
    assert static_test_ids(T, src) == [f"{T}::test_a", f"{T}::test_b", f"{T}::TestC::test_m"]
    assert static_test_ids("x.py", b"def (") is None


@pytest.mark.parametrize(
    ("arg", "refused"),
    [
        ("-x", False),
        ("-k", False),
        ("test_a", False),
        ("--junitxml=a", True),
        ("-pfoo", True),
        ("-p", True),
        ("--rootdir", True),
        ("-q", False),
    ],
)
def test_forbidden_pytest_args(arg: str, refused: bool) -> None:
    assert forbidden_arg(arg) is refused


def test_paths_and_file_caps() -> None:
    assert check_path("f", "a/b.py") == "a/b.py"
    for bad in ("", "/abs", "../x", "a/./b", "a//b", "a\\b", "a\x00b", "x" * 2000):
        with pytest.raises(InvalidArgument, match=r"^f: "):
            check_path("f", bad)
    caps = FileCaps(max_files=2, max_file_bytes=10, max_request_bytes=15)
    with pytest.raises(InvalidArgument, match="has 3 files"):
        check_files("files", [FileSpec(f"{i}", b"") for i in range(3)], caps)
    with pytest.raises(InvalidArgument, match=r"files\[0\]: 'a' is 11 bytes"):
        check_files("files", [FileSpec("a", b"x" * 11)], caps)
    with pytest.raises(InvalidArgument, match="total 20 bytes"):
        check_files("files", [FileSpec("a", b"x" * 10), FileSpec("b", b"x" * 10)], caps)
    with pytest.raises(InvalidArgument, match="appears twice"):
        check_files("files", [FileSpec("a", b""), FileSpec("a", b"")], caps)


def test_last_exception() -> None:
    tb = 'Traceback (most recent call last):\n  File "main.py", line 1, in <module>\nmod.CustomThing: boom\n'
    assert last_exception(tb) == ("CustomThing", "mod.CustomThing: boom")
    assert last_exception('  File "main.py", line 1\n    x = (\n        ^\nSyntaxError: bad\n') == (
        "SyntaxError",
        "SyntaxError: bad",
    )
    assert last_exception("some log line\n") is None
    assert last_exception("") is None


def _cls(
    *,
    killed: Status | None = None,
    launcher: bytes = b"S",
    exit_code: int = 0,
    stderr: str = "",
    oom: int = 0,
    pid_hits: int = 0,
    cpu_s: float = 0.1,
    cpu_limit: float = 1.0,
    peak_mem: int = 0,
    mem_limit: int = 1,
) -> tuple[Status, Category, str]:
    """_classify with the observations of a clean run, but for the ones given."""
    return _classify(
        killed=killed,
        launcher=launcher,
        exit_code=exit_code,
        stderr=stderr,
        oom=oom,
        pid_hits=pid_hits,
        cpu_s=cpu_s,
        cpu_limit=cpu_limit,
        peak_mem=peak_mem,
        mem_limit=mem_limit,
    )


def test_status_precedence() -> None:
    assert _cls()[0] is Status.OK
    assert _cls(launcher=b"Ebad path")[0] is Status.SANDBOX_ERROR
    assert _cls(launcher=b"", exit_code=1)[0] is Status.SANDBOX_ERROR
    assert _cls(killed=Status.OUTPUT_LIMIT, oom=1)[0] is Status.OUTPUT_LIMIT
    assert _cls(oom=1, exit_code=-9, killed=Status.WALL_TIMEOUT)[0] is Status.MEMORY_LIMIT
    assert _cls(pid_hits=3, exit_code=1)[0] is Status.PROCESS_LIMIT
    assert _cls(pid_hits=3, exit_code=0)[0] is Status.OK  # hit the limit, handled it, exited cleanly
    assert _cls(exit_code=-24)[0] is Status.CPU_TIMEOUT
    assert _cls(killed=Status.WALL_TIMEOUT, exit_code=-9)[:2] == (Status.WALL_TIMEOUT, Category.TIMEOUT)
    assert _cls(exit_code=-25)[0] is Status.FILE_SIZE_LIMIT
    r = _cls(
        exit_code=1,
        stderr="Traceback (most recent call last):\nOSError: [Errno 28] No space left on device\n",
    )
    assert r[0] is Status.FILE_SIZE_LIMIT
    assert _cls(exit_code=3)[:2] == (Status.RUNTIME_ERROR, Category.OTHER)
