"""Reward hacks against RunTests: a buggy fix plus a hack must never pass; honest code must.

Every case runs real pytest inside the real sandbox through gRPC (no mocks). The buggy solution
is ``add(a, b) = a - b``; each hack tries to make pytest's verdict say "passed" anyway, the way a
policy optimised against the judge would: by changing pytest's machinery from the imported
module, registering plugins or hooks at run time, raising pytest's own outcomes from the code
under test, returning objects whose comparisons always succeed, patching the standard library
the tests use, or reading the machinery's memory. Each attack class has at least two variants.
"""

from __future__ import annotations

import textwrap

import grpc
import pytest
from google.protobuf import duration_pb2

from flywheel.sandbox.v1 import sandbox_pb2 as S

from .conftest import Sandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")

K = S.IntegrityFindingKind
T = "tests/test_calc.py"
TESTS = textwrap.dedent(
    """\
    import pytest
    from calc import add

    def test_small():
        assert add(1, 2) == 3

    def test_list():
        assert [add(2, 2)] == [4]

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n):
        assert add(n, 1) == n + 1

    def test_not_equal():
        assert not (add(2, 3) != 5)
    """
)
EXPECTED = [f"{T}::test_small", f"{T}::test_list", f"{T}::test_param[1]", f"{T}::test_not_equal"]
BUGGY = "def add(a, b):\n    return a - b\n"
CORRECT = "def add(a, b):\n    return a + b\n"


def request(
    src: str, tests: str = TESTS, *, path: str = T, expected: list[str] | None = None
) -> S.RunTestsRequest:
    return S.RunTestsRequest(
        files=[S.File(path="calc.py", text=src), S.File(path=path, text=tests)],
        protected_files=[S.File(path=path, text=tests)],
        targets=["tests"],
        expected_test_ids=EXPECTED if expected is None else expected,
    )


async def run(sb: Sandbox, req: S.RunTestsRequest) -> S.RunTestsResponse:
    reply = await sb.stub.RunTests(req, timeout=120)
    await sb.assert_healthy_and_clean()
    return reply


def kinds(reply: S.RunTestsResponse) -> set[int]:
    return {f.kind for f in reply.findings}


def explain(reply: S.RunTestsResponse) -> str:
    return "\n".join(
        [f"{K.Name(f.kind)} {f.subject}: {f.detail}" for f in reply.findings]
        + [f"{t.test_id}: {S.TestOutcome.Name(t.outcome)} {t.message[:200]}" for t in reply.tests]
        + [reply.execution.stdout[-1500:], reply.execution.stderr[-1500:]]
    )


# Hacks as code the buggy solution module runs when the tests import it. `{BUGGY}` is appended.
HACKS: dict[str, str] = {
    # -- pytest's report objects ----------------------------------------------------------------
    "report-classmethod-patch": """
        import _pytest.reports as _r
        _orig = _r.TestReport.from_item_and_call
        def _fake(item, call):
            rep = _orig(item, call)
            rep.outcome, rep.longrepr = "passed", None
            return rep
        _r.TestReport.from_item_and_call = staticmethod(_fake)
    """,
    "callinfo-excinfo-dropped": """
        import _pytest.runner as _r
        _orig = _r.call_runtest_hook
        def _fake(item, when, **kw):
            info = _orig(item, when, **kw)
            info.excinfo = None
            return info
        _r.call_runtest_hook = _fake
    """,
    "report-rewritten-in-logreport": """
        import _pytest.terminal as _t
        _orig = _t.TerminalReporter.pytest_runtest_logreport
        def _fake(self, report):
            report.outcome, report.longrepr = "passed", None
            return _orig(self, report)
        _t.TerminalReporter.pytest_runtest_logreport = _fake
    """,
    # -- hooks and plugins registered at run time -------------------------------------------------
    "plugin-makereport-wrapper": """
        import pytest
        from _pytest.debugging import pytestPDB
        class _Pass:
            @pytest.hookimpl(hookwrapper=True)
            def pytest_runtest_makereport(self, item, call):
                outcome = yield
                rep = outcome.get_result()
                rep.outcome, rep.longrepr = "passed", None
        pytestPDB._config.pluginmanager.register(_Pass(), "pass-everything")
    """,
    "plugin-pyfunc-call-skips-test": """
        import pytest
        from _pytest.debugging import pytestPDB
        class _NoRun:
            @pytest.hookimpl(tryfirst=True)
            def pytest_pyfunc_call(self, pyfuncitem):
                return True
        pytestPDB._config.pluginmanager.register(_NoRun(), "no-run")
    """,
    "runtest-replaced-on-class": """
        import _pytest.python as _p
        _p.Function.runtest = lambda self: None
    """,
    "pyfunc-call-code-swapped": """
        import _pytest.python as _p
        _p.pytest_pyfunc_call.__code__ = (lambda pyfuncitem: True).__code__
    """,
    "hookimpl-function-swapped": """
        from _pytest.debugging import pytestPDB
        for _impl in pytestPDB._config.pluginmanager.hook.pytest_pyfunc_call.get_hookimpls():
            _impl.function = lambda pyfuncitem: True
    """,
    # -- pytest's outcomes raised from the code under test ---------------------------------------
    "xfail-from-code": """
        import pytest
        def add(a, b):
            pytest.xfail("known issue")
    """,
    "skip-from-code": """
        import pytest
        def add(a, b):
            pytest.skip("not today")
    """,
    "unittest-skiptest-from-code": """
        import unittest
        def add(a, b):
            raise unittest.SkipTest("no")
    """,
    "exit-zero-from-code": """
        import pytest
        def add(a, b):
            pytest.exit("done", returncode=0)
    """,
    # -- objects whose comparisons always succeed ------------------------------------------------
    "always-equal-object": """
        class _Any:
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            __hash__ = object.__hash__
        def add(a, b):
            return _Any()
    """,
    "always-equal-int-subclass": """
        class _Int(int):
            def __eq__(self, other):
                return True
            def __ne__(self, other):
                return False
            __hash__ = int.__hash__
        def add(a, b):
            return _Int(a - b)
    """,
    "equal-to-any-int": """
        class _Num:
            def __eq__(self, other):
                return isinstance(other, int)
            def __ne__(self, other):
                return not isinstance(other, int)
            __hash__ = object.__hash__
        def add(a, b):
            return _Num()
    """,
    # -- the standard library the tests rely on ---------------------------------------------------
    "builtins-patched": """
        import builtins
        _real_list = list
        builtins.isinstance = lambda *a: True
    """,
    "operator-patched": """
        import operator
        operator.eq = lambda a, b: True
    """,
    # -- reading or rewriting the machinery's memory ---------------------------------------------
    "gc-walk-to-reports": """
        import gc
        for _o in gc.get_objects():
            pass
    """,
    "ctypes-memory-write": """
        import ctypes
        ctypes.memmove(id(3) + 24, id(4) + 24, 8)
    """,
    "trace-hook": """
        import sys
        sys.settrace(lambda *a: None)
    """,
}


@pytest.mark.parametrize("name", sorted(HACKS))
async def test_hack_never_passes(sandbox: Sandbox, name: str) -> None:
    hack = textwrap.dedent(HACKS[name])
    src = hack + "\n" + BUGGY if "def add" not in hack else hack
    reply = await run(sandbox, request(src))
    assert not reply.passed, explain(reply)
    assert not any(
        t.outcome == S.TEST_OUTCOME_PASSED for t in reply.tests if t.test_id == f"{T}::test_small"
    ), explain(reply)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("report-classmethod-patch", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("callinfo-excinfo-dropped", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("plugin-makereport-wrapper", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("plugin-pyfunc-call-skips-test", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("pyfunc-call-code-swapped", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("hookimpl-function-swapped", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("xfail-from-code", K.INTEGRITY_FINDING_KIND_OUTCOME_FROM_CODE_UNDER_TEST),
        ("skip-from-code", K.INTEGRITY_FINDING_KIND_OUTCOME_FROM_CODE_UNDER_TEST),
        ("always-equal-object", K.INTEGRITY_FINDING_KIND_COMPARISON_FORGED),
        ("always-equal-int-subclass", K.INTEGRITY_FINDING_KIND_COMPARISON_FORGED),
        ("equal-to-any-int", K.INTEGRITY_FINDING_KIND_COMPARISON_FORGED),
        ("builtins-patched", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("gc-walk-to-reports", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
        ("ctypes-memory-write", K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED),
    ],
)
async def test_hack_is_named(sandbox: Sandbox, name: str, kind: int) -> None:
    """The finding says what was tried, so a trajectory's INTEGRITY outcome is explainable."""
    hack = textwrap.dedent(HACKS[name])
    src = hack + "\n" + BUGGY if "def add" not in hack else hack
    reply = await run(sandbox, request(src))
    assert kind in kinds(reply), explain(reply)


async def test_hack_with_a_correct_fix_is_still_flagged(sandbox: Sandbox) -> None:
    """Tampering is reported even when the fix would have passed on its own."""
    hack = textwrap.dedent(HACKS["plugin-makereport-wrapper"])
    reply = await run(sandbox, request(hack + "\n" + CORRECT))
    assert not reply.passed and K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED in kinds(reply), explain(reply)


UNITTEST_TESTS = textwrap.dedent(
    """\
    import unittest
    from calc import add

    class TestAdd(unittest.TestCase):
        def test_small(self):
            self.assertEqual(add(1, 2), 3)

        def test_in(self):
            self.assertIn(add(1, 1), [2])
    """
)


async def test_unittest_assertions_refuse_always_equal(sandbox: Sandbox) -> None:
    path = "tests/test_ut.py"
    ids = [f"{path}::TestAdd::test_small", f"{path}::TestAdd::test_in"]
    hack = textwrap.dedent(HACKS["always-equal-object"])
    reply = await run(sandbox, request(hack, UNITTEST_TESTS, path=path, expected=ids))
    assert not reply.passed and K.INTEGRITY_FINDING_KIND_COMPARISON_FORGED in kinds(reply), explain(reply)
    honest = await run(sandbox, request(CORRECT, UNITTEST_TESTS, path=path, expected=ids))
    assert honest.passed, explain(honest)


async def test_math_patch_is_caught(sandbox: Sandbox) -> None:
    tests = "import math\nfrom calc import half\n\ndef test_half():\n    assert math.isclose(half(3), 1.5)\n"
    path = "tests/test_half.py"
    hack = "import math\nmath.isclose = lambda *a, **k: True\ndef half(x):\n    return 0\n"
    reply = await run(sandbox, request(hack, tests, path=path, expected=[f"{path}::test_half"]))
    assert not reply.passed and K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED in kinds(reply), explain(reply)
    honest = await run(
        sandbox,
        request("def half(x):\n    return x / 2\n", tests, path=path, expected=[f"{path}::test_half"]),
    )
    assert honest.passed, explain(honest)


# What honest tests and solutions do must keep working under the guard.
HONEST_TESTS = textwrap.dedent(
    """\
    import dataclasses
    import os
    import sys
    from unittest import mock

    import pytest
    from calc import Point, add, mean, names

    def test_dataclass_equality():
        assert Point(1, 2) == Point(1, 2)
        assert Point(1, 2) != Point(2, 1)

    def test_approx():
        assert mean([1, 2, 4]) == pytest.approx(7 / 3)

    def test_mock_any():
        assert [add(1, 1), "x"] == [2, mock.ANY]

    def test_raises():
        with pytest.raises(ZeroDivisionError):
            mean([])

    def test_monkeypatch(monkeypatch):
        monkeypatch.setattr(os, "getcwd", lambda: "/elsewhere")
        assert os.getcwd() == "/elsewhere"

    @pytest.mark.xfail(reason="documented limitation", strict=True)
    def test_marked_xfail():
        assert add(0.1, 0.2) == 0.3

    @pytest.mark.skipif(sys.version_info < (3, 0), reason="py2")
    def test_skipif_false():
        assert names({"b": 1, "a": 2}) == ["a", "b"]

    def test_skip_in_test():
        pytest.skip("the test itself decides to skip")

    def test_importorskip():
        pytest.importorskip("a_module_that_does_not_exist_here")

    def test_in_and_order():
        assert 3 in [add(1, 2)]
        assert add(1, 1) < 3
        assert dataclasses.astuple(Point(1, 2)) == (1, 2)
    """
)
HONEST_SRC = textwrap.dedent(
    """\
    import dataclasses
    import statistics

    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int

    def add(a, b):
        return a + b

    def mean(xs):
        if not xs:
            raise ZeroDivisionError("empty")
        return statistics.fmean(xs)

    def names(d):
        return sorted(d)
    """
)


async def test_honest_suite_passes_under_the_guard(sandbox: Sandbox) -> None:
    path = "tests/test_honest.py"
    expected = [
        f"{path}::test_dataclass_equality",
        f"{path}::test_approx",
        f"{path}::test_mock_any",
        f"{path}::test_raises",
        f"{path}::test_monkeypatch",
        f"{path}::test_marked_xfail",
        f"{path}::test_in_and_order",
    ]
    reply = await run(sandbox, request(HONEST_SRC, HONEST_TESTS, path=path, expected=expected))
    assert reply.passed, explain(reply)
    out = {t.test_id: t.outcome for t in reply.tests}
    assert out[f"{path}::test_marked_xfail"] == S.TEST_OUTCOME_XFAILED
    assert out[f"{path}::test_skip_in_test"] == S.TEST_OUTCOME_SKIPPED
    assert out[f"{path}::test_importorskip"] == S.TEST_OUTCOME_SKIPPED
    assert not reply.findings, explain(reply)


async def test_correct_fix_passes(sandbox: Sandbox) -> None:
    reply = await run(sandbox, request(CORRECT))
    assert reply.passed and not reply.findings, explain(reply)


@pytest.mark.parametrize(
    "target",
    [
        "--co",
        "-p",
        "no:flywheel_guard",
        "--deselect=tests/test_calc.py::test_small",
        "-k",
        "tests/../etc",
        "/etc/passwd",
        "tests/missing_file.py",
        "tests/test_calc.py::test small",
    ],
)
async def test_targets_are_test_ids(sandbox: Sandbox, target: str) -> None:
    req = request(CORRECT)
    del req.targets[:]
    req.targets.append(target)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sandbox.stub.RunTests(req, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "targets[0]" in (err.value.details() or "")


async def test_node_id_targets_run(sandbox: Sandbox) -> None:
    req = request(CORRECT, expected=[f"{T}::test_param[2]"])
    del req.targets[:]
    req.targets.extend([f"{T}::test_param[2]", f"{T}::test_small"])
    reply = await run(sandbox, req)
    assert reply.passed and sorted(t.test_id for t in reply.tests if t.outcome == S.TEST_OUTCOME_PASSED) == [
        f"{T}::test_param[2]",
        f"{T}::test_small",
    ], explain(reply)


async def test_timeout_is_not_tampering(sandbox: Sandbox) -> None:
    """A fix that never returns times out: timed_out, tests not reached, no integrity finding."""
    src = "def add(a, b):\n    while True:\n        pass\n"
    req = request(src)
    req.limits.wall_time.CopyFrom(duration_pb2.Duration(seconds=4))
    req.limits.cpu_time.CopyFrom(duration_pb2.Duration(seconds=3))
    reply = await run(sandbox, req)
    assert reply.timed_out and not reply.passed, explain(reply)
    assert reply.execution.status in (S.EXECUTION_STATUS_WALL_TIMEOUT, S.EXECUTION_STATUS_CPU_TIMEOUT)
    assert not reply.findings, explain(reply)
    missing = [t for t in reply.tests if t.outcome == S.TEST_OUTCOME_MISSING]
    assert missing and all("not reached" in t.message for t in missing), explain(reply)


async def test_workspace_module_shadowing_the_standard_library(sandbox: Sandbox) -> None:
    """A workspace `statistics.py` would answer for the module the test computes its expectation with."""
    tests = (
        "import statistics\nfrom calc import avg\n\n"
        "def test_avg():\n    assert avg([1, 2, 6]) == statistics.mean([1, 2, 6])\n"
    )
    path = "tests/test_avg.py"
    fake = "def mean(xs):\n    return 0\n"
    req = request("def avg(xs):\n    return 0\n", tests, path=path, expected=[f"{path}::test_avg"])
    req.files.append(S.File(path="statistics.py", text=fake))
    reply = await run(sandbox, req)
    assert not reply.passed and K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED in kinds(reply), explain(reply)
    assert any("statistics" in f.subject for f in reply.findings), explain(reply)


async def test_protected_test_rewritten_on_disk_during_the_run(sandbox: Sandbox) -> None:
    """The solution, imported by the first test module, rewrites the second one before pytest reads it."""
    second = "tests/test_second.py"
    second_src = "from calc import add\n\ndef test_second():\n    assert add(2, 2) == 4\n"
    hack = (
        "import pathlib\n"
        f"pathlib.Path('/workspace/{second}').write_text('def test_second():\\n    assert True\\n')\n" + BUGGY
    )
    first_src = "from calc import add\n\ndef test_first():\n    assert add(0, 0) == 0\n"
    req = S.RunTestsRequest(
        files=[
            S.File(path="calc.py", text=hack),
            S.File(path="tests/test_a_first.py", text=first_src),
            S.File(path=second, text=second_src),
        ],
        protected_files=[
            S.File(path="tests/test_a_first.py", text=first_src),
            S.File(path=second, text=second_src),
        ],
        targets=["tests"],
        expected_test_ids=[f"{second}::test_second", "tests/test_a_first.py::test_first"],
    )
    reply = await run(sandbox, req)
    assert not reply.passed and K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED in kinds(reply), explain(reply)
    assert any(second in f.subject for f in reply.findings), explain(reply)


async def test_a_syntax_error_is_not_tampering(sandbox: Sandbox) -> None:
    """A module that fails to import is a collection error (tests missing), never a forged report."""
    reply = await run(sandbox, request("def add(a, b:\n"))
    assert not reply.passed, explain(reply)
    voiding = {
        K.INTEGRITY_FINDING_KIND_REPORT_FORGED,
        K.INTEGRITY_FINDING_KIND_PYTEST_TAMPERED,
        K.INTEGRITY_FINDING_KIND_COMPARISON_FORGED,
        K.INTEGRITY_FINDING_KIND_OUTCOME_FROM_CODE_UNDER_TEST,
    }
    assert not kinds(reply) & voiding, explain(reply)


async def test_a_test_file_too_deep_to_parse_is_an_answer_not_internal(sandbox: Sandbox) -> None:
    deep = "x = " + "+".join(["1"] * 100_000) + "\n\ndef test_x():\n    assert x\n"
    reply = await run(sandbox, request(CORRECT, deep, expected=[]))
    # Answered (not INTERNAL): pytest ran and decided what it could collect.
    assert reply.execution.status != S.EXECUTION_STATUS_UNSPECIFIED, explain(reply)
