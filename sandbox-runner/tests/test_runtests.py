"""RunTests through gRPC: passing, failing, erroring and hacked suites (real pytest in the sandbox)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping, Sequence

import grpc
import pytest
from google.protobuf import duration_pb2

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2 as S

from .conftest import Sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")

SRC = "def add(a, b):\n    return a + b\n"
BROKEN = "def add(a, b):\n    return a - b\n"
TESTS = (
    "import pytest\nfrom calc import add\n\n"
    "def test_small():\n    assert add(1, 2) == 3\n\n"
    "def test_zero():\n    assert add(0, 0) == 0\n\n"
    "@pytest.mark.parametrize('n', [1, 2])\ndef test_param(n):\n    assert add(n, 0) == n\n\n"
    "class TestNeg:\n    def test_neg(self):\n        assert add(-1, -1) == -2\n"
)
T = "tests/test_calc.py"
ALL_IDS = [
    f"{T}::test_small",
    f"{T}::test_zero",
    f"{T}::test_param[1]",
    f"{T}::test_param[2]",
    f"{T}::TestNeg::test_neg",
]
K = S.IntegrityFindingKind


def request(
    src: str = SRC,
    tests: str = TESTS,
    *,
    extra: Sequence[S.File] = (),
    allow_conftest: bool = False,
    pytest_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> S.RunTestsRequest:
    return S.RunTestsRequest(
        files=[S.File(path="calc.py", text=src), S.File(path=T, text=tests), *extra],
        protected_files=[S.File(path=T, text=TESTS)],
        targets=["tests"],
        expected_test_ids=[f"{T}::test_small"],
        allow_conftest=allow_conftest,
        pytest_args=pytest_args,
        env=env or {},
    )


async def run(sb: Sandbox, req: S.RunTestsRequest) -> S.RunTestsResponse:
    reply = await sb.stub.RunTests(req, timeout=120)
    await sb.assert_healthy_and_clean()
    return reply


def kinds(reply: S.RunTestsResponse) -> set[int]:
    return {f.kind for f in reply.findings}


def outcomes(reply: S.RunTestsResponse) -> dict[str, int]:
    return {t.test_id: t.outcome for t in reply.tests}


async def test_passing_suite(sandbox: Sandbox) -> None:
    reply = await run(sandbox, request())
    assert reply.passed, (reply.findings, reply.execution.stdout[-2000:], reply.execution.stderr[-2000:])
    assert [t.test_id for t in reply.tests] == ALL_IDS
    assert set(outcomes(reply).values()) == {S.TEST_OUTCOME_PASSED}
    assert reply.passed_count == 5 and reply.failed_count == reply.error_count == reply.missing_count == 0
    assert not reply.findings and reply.execution.status == S.EXECUTION_STATUS_OK


async def test_failing_suite(sandbox: Sandbox) -> None:
    reply = await run(sandbox, request(src=BROKEN))
    assert not reply.passed and not reply.findings
    got = outcomes(reply)
    assert got[f"{T}::test_small"] == S.TEST_OUTCOME_FAILED
    assert got[f"{T}::test_zero"] == S.TEST_OUTCOME_PASSED
    failed = next(t for t in reply.tests if t.test_id == f"{T}::test_small")
    assert failed.error_category == common_pb2.ERROR_CATEGORY_ASSERTION_ERROR and "assert" in failed.message
    assert reply.failed_count == 2 and reply.passed_count == 3
    assert reply.execution.status == S.EXECUTION_STATUS_RUNTIME_ERROR


async def test_erroring_suite(sandbox: Sandbox) -> None:
    src = "def add(a, b):\n    return a / 0\n"
    reply = await run(sandbox, request(src=src))
    small = next(t for t in reply.tests if t.test_id == f"{T}::test_small")
    assert small.outcome == S.TEST_OUTCOME_FAILED
    assert small.error_category == common_pb2.ERROR_CATEGORY_ZERO_DIVISION_ERROR
    # A fixture error is ERROR, not FAILED.
    extra = "import pytest\n@pytest.fixture\ndef broken():\n    raise KeyError('cfg')\ndef test_uses(broken):\n    pass\n"
    reply = await run(sandbox, request(extra=[S.File(path="tests/test_fx.py", text=extra)]))
    fx = next(t for t in reply.tests if t.test_id == "tests/test_fx.py::test_uses")
    assert fx.outcome == S.TEST_OUTCOME_ERROR and fx.error_category == common_pb2.ERROR_CATEGORY_KEY_ERROR
    assert reply.error_count == 1 and not reply.passed


async def test_exit_zero_before_asserts(sandbox: Sandbox) -> None:
    # The solution exits the process as soon as it is imported: pytest "succeeds" with exit code 0.
    src = "import os\nos._exit(0)\n" + SRC
    reply = await run(sandbox, request(src=src))
    assert reply.execution.exit_code == 0
    assert not reply.passed
    assert {K.INTEGRITY_FINDING_KIND_EXIT_BEFORE_ASSERTS, K.INTEGRITY_FINDING_KIND_REPORT_MISSING} <= kinds(
        reply
    )
    assert reply.missing_count >= 4 and f"{T}::test_small" in outcomes(reply)


async def test_exit_during_a_test(sandbox: Sandbox) -> None:
    src = "import os\ndef add(a, b):\n    os._exit(0)\n"
    reply = await run(sandbox, request(src=src))
    assert not reply.passed and K.INTEGRITY_FINDING_KIND_EXIT_BEFORE_ASSERTS in kinds(reply)
    assert set(outcomes(reply).values()) == {S.TEST_OUTCOME_MISSING}


async def test_edited_and_deleted_tests(sandbox: Sandbox) -> None:
    weakened = TESTS.replace("assert add(1, 2) == 3", "assert True")
    reply = await run(sandbox, request(src=BROKEN, tests=weakened))
    assert K.INTEGRITY_FINDING_KIND_TEST_EDITED in kinds(reply)
    # The authoritative copy ran, so the weakened test did not help.
    assert outcomes(reply)[f"{T}::test_small"] == S.TEST_OUTCOME_FAILED and not reply.passed
    req = request()
    del req.files[1]
    reply = await run(sandbox, req)
    assert K.INTEGRITY_FINDING_KIND_TEST_DELETED in kinds(reply) and not reply.passed
    assert outcomes(reply)[f"{T}::test_small"] == S.TEST_OUTCOME_PASSED  # restored and run


async def test_forged_junit_report(sandbox: Sandbox) -> None:
    # The solution writes a "perfect" JUnit report where pytest will look, then fakes a clean exit.
    fake = (
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="5" failures="0" errors="0">'
        + "".join(
            f'<testcase classname="tests.test_calc" name="{n}"/>'
            for n in ("test_small", "test_zero", "test_extra")
        )
        + "</testsuite></testsuites>"
    )
    src = (
        "import atexit, os, glob\n"
        f"FAKE = {fake!r}\n"
        "def forge():\n"
        "    for p in ['/tmp/.flywheel-junit.xml', 'report.xml']:\n"
        "        open(p, 'w').write(FAKE)\n"
        '    os.write(5, b\'0\' * 64 + b\'\\n\' + b\'{"collected": [], "outcomes": {}, "junit": ""}\')\n'
        "    os._exit(0)\n"
        "def add(a, b):\n"
        "    forge()\n"
    )
    reply = await run(sandbox, request(src=src))
    assert not reply.passed
    assert K.INTEGRITY_FINDING_KIND_REPORT_FORGED in kinds(reply)
    assert all(t.outcome != S.TEST_OUTCOME_PASSED for t in reply.tests)


async def test_conftest_is_ignored_unless_allowed(sandbox: Sandbox) -> None:
    # A conftest that rewrites every failure into a pass (a classic hack).
    hack = (
        "import pytest\n"
        "@pytest.hookimpl(hookwrapper=True)\n"
        "def pytest_runtest_makereport(item, call):\n"
        "    out = yield\n"
        "    rep = out.get_result()\n"
        "    rep.outcome = 'passed'\n"
    )
    extra = [
        S.File(path="tests/conftest.py", text=hack),
        S.File(path="pytest.ini", text="[pytest]\naddopts = -p no:junitxml\n"),
    ]
    reply = await run(sandbox, request(src=BROKEN, extra=extra))
    assert K.INTEGRITY_FINDING_KIND_CONFTEST_IGNORED in kinds(reply)
    assert outcomes(reply)[f"{T}::test_small"] == S.TEST_OUTCOME_FAILED and not reply.passed
    # Allowed: the hook runs, but the plugin's live record and JUnit still agree with pytest's reports.
    reply = await run(sandbox, request(src=SRC, extra=extra[:1], allow_conftest=True))
    assert reply.passed and K.INTEGRITY_FINDING_KIND_CONFTEST_IGNORED not in kinds(reply)


async def test_expected_test_missing(sandbox: Sandbox) -> None:
    req = request()
    req.expected_test_ids.append(f"{T}::test_not_there")
    reply = await run(sandbox, req)
    assert not reply.passed and K.INTEGRITY_FINDING_KIND_EXPECTED_TEST_MISSING in kinds(reply)
    assert outcomes(reply)[f"{T}::test_not_there"] == S.TEST_OUTCOME_MISSING


async def test_workspace_from_object_store_archive(sandbox: Sandbox) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in (("calc.py", BROKEN), (T, TESTS)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    (sandbox.objects / "repos").mkdir(exist_ok=True)
    (sandbox.objects / "repos" / "calc.tar.gz").write_bytes(buf.getvalue())
    req = S.RunTestsRequest(
        archive=common_pb2.ObjectRef(key="repos/calc.tar.gz"),
        files=[S.File(path="calc.py", text=SRC)],  # the agent's fix on top of the snapshot
        targets=["tests"],
    )
    reply = await run(sandbox, req)
    assert reply.passed and reply.passed_count == 5, reply.findings
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sandbox.stub.RunTests(
            S.RunTestsRequest(archive=common_pb2.ObjectRef(key="repos/none.tar")), timeout=30
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reporting_options_are_refused(sandbox: Sandbox) -> None:
    for arg in ("--junitxml=x.xml", "-p", "-pmyplugin", "--rootdir=/", "-o", "--noconftest"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sandbox.stub.RunTests(request(pytest_args=[arg]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith("pytest_args[0]")


async def test_large_report_does_not_block(sandbox: Sandbox) -> None:
    # ~1,000 results make a JUnit report far larger than a pipe buffer (64 KiB).
    tests = (
        "import pytest\n@pytest.mark.parametrize('n', range(1000))\ndef test_many(n):\n    assert n >= 0\n"
    )
    req = S.RunTestsRequest(
        files=[S.File(path="test_many.py", text=tests)],
        protected_files=[S.File(path="test_many.py", text=tests)],
        limits=S.Limits(wall_time=duration_pb2.Duration(seconds=60)),
    )
    reply = await run(sandbox, req)
    assert reply.passed and reply.passed_count == 1000, (reply.findings, reply.execution.status)


async def test_workspace_cannot_replace_pytest_or_the_guard_plugin(sandbox: Sandbox) -> None:
    # A fake `pytest` module and a fake guard plugin that would read the key and sign "all passed".
    fake_pytest = "import sys\nprint('5 passed')\nsys.exit(0)\n"
    fake_guard = "import os\nKEY = os.read(0, 65)\ndef pytest_configure(config):\n    pass\n"
    extra = [S.File(path="pytest.py", text=fake_pytest), S.File(path="flywheel_guard.py", text=fake_guard)]
    reply = await run(sandbox, request(src=BROKEN, extra=extra))
    assert not reply.passed and not reply.findings  # the real pytest and plugin ran and reported
    assert outcomes(reply)[f"{T}::test_small"] == S.TEST_OUTCOME_FAILED


async def test_env_that_changes_interpreter_start_is_refused(sandbox: Sandbox) -> None:
    for name in ("PYTHONHOME", "PYTHONPATH", "PYTEST_ADDOPTS", "LD_PRELOAD"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sandbox.stub.RunTests(request(env={name: "/workspace"}), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"env[{name!r}]")
