"""Judge: the comparator (plain functions) and every verdict through gRPC."""

from __future__ import annotations

import pytest
from google.protobuf import duration_pb2

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2 as S
from flywheel_sandbox.judge import (
    Comparator,
    Whitespace,
    cases_from_input_output,
    decode_output,
    head_bytes,
    kept_output_bytes,
    outputs_match,
    short_diff,
    tail_bytes,
)

from .conftest import Sandbox

# --- comparator ----------------------------------------------------------------------------------

TRAILING = Comparator()
EXACT = Comparator(Whitespace.EXACT)
TOKENS = Comparator(Whitespace.TOKENS)


@pytest.mark.parametrize(
    ("expected", "actual", "cmp", "match"),
    [
        ("1 2\n3\n", "1 2\n3\n", EXACT, True),
        ("1 2\n3\n", "1 2\n3", EXACT, False),
        ("1 2\n3\n", "1 2  \r\n3\n\n\n", TRAILING, True),
        ("1 2\n3\n", "1  2\n3\n", TRAILING, False),  # interior whitespace matters
        ("1 2\n3\n", "1\n2 3", TOKENS, True),
        ("1 2 3", "1 2", TOKENS, False),
        ("YES\n", "yes\n", TRAILING, False),
        ("YES\n", "yes\n", Comparator(ignore_case=True), True),
        ("Straße", "STRASSE", Comparator(ignore_case=True), True),  # Unicode case folding
        ("0.3333333", "0.333334", Comparator(abs_tol=1e-5), True),
        ("0.3333333", "0.3334", Comparator(abs_tol=1e-5), False),
        ("1000000", "1000010", Comparator(rel_tol=1e-4), True),
        ("1000000", "1001000", Comparator(rel_tol=1e-4), False),
        ("2.5 abc", "2.50000001 abc", Comparator(abs_tol=1e-6), True),
        ("2.5 abc", "2.5 abd", Comparator(abs_tol=1e-6), False),
        ("nan", "nan", Comparator(abs_tol=1.0), True),  # equal text is equal
        ("1.0", "inf", Comparator(abs_tol=1e9), False),
        ("1.0", "1.0000001", TRAILING, False),  # no tolerance: numbers compare as text
    ],
)
def test_comparator(expected: str, actual: str, cmp: Comparator, match: bool) -> None:
    assert outputs_match(expected, actual, cmp) is match


def test_short_diff_is_bounded() -> None:
    exp = "\n".join(str(i) for i in range(100))
    act = "\n".join(str(i * 2) + "x" * 300 for i in range(100))
    diff = short_diff(exp, act)
    lines = diff.splitlines()
    assert len(lines) <= 20 and all(len(line) <= 200 for line in lines)
    assert lines[0].startswith("--- expected") and lines[-1].startswith("…")
    assert "whitespace" in short_diff("a\n", "a")
    assert short_diff("a\n", "a \n").endswith("+a ")


def test_comparison_stays_exact_past_the_diff_caps() -> None:
    """The diff looks at a window; the verdict always compares the whole outputs."""
    expected = "".join(f"{i} {i * 3}\n" for i in range(300_000))  # ~3.7 MB, far past DIFF_SCAN_BYTES
    last_char = expected[:-2] + "x\n"
    middle = expected.replace("150000 450000\n", "150000 450001\n")
    for cmp in (TRAILING, EXACT, TOKENS, Comparator(abs_tol=1e-9)):
        assert outputs_match(expected, expected, cmp)
        assert not outputs_match(expected, last_char, cmp)
        assert not outputs_match(expected, middle, cmp)
    diff = short_diff(expected, middle).splitlines()
    assert diff[2].startswith("@@ -150000,") and "-150000 450000" in diff and "+150000 450001" in diff
    assert outputs_match(expected, expected + "\n\n", TRAILING) and not outputs_match(
        expected, expected + "\n", EXACT
    )


def test_short_diff_walks_past_differences_the_comparator_ignores() -> None:
    expected = "x\n" * 10_000 + "A\n"
    actual = "x  \n" * 10_000 + "B\n"
    trailing = short_diff(expected, actual).splitlines()
    assert trailing[2].startswith("@@ -10000,") and trailing[3:6] == [" x", "-A", "+B"], trailing
    exact = short_diff(expected, actual, EXACT).splitlines()
    assert exact[2].startswith("@@ -1,") and exact[3] == "-x"  # for EXACT the spaces are the difference
    # Past the scan budget the diff shows the raw difference and says what counts comes later.
    far = short_diff("x\n" * 100_000 + "A\n", "x \n" * 100_000 + "B\n").splitlines()
    assert "comparator ignores" in far[2] and len(far) <= 20


def test_short_diff_cost_is_bounded_for_any_output() -> None:
    import time

    lines = [f"{i} {i * i}" for i in range(1_000_000)]  # ~13 MB
    expected = "\n".join(lines)
    reordered = "\n".join(lines[1::2] + lines[::2])  # the shape that makes a whole-output difflib quadratic
    one_line = "7" * 10_000_000
    started = time.monotonic()
    for exp, act in ((expected, reordered), (one_line, one_line[:-1] + "8"), (one_line, "x" + one_line)):
        diff = short_diff(exp, act).splitlines()
        assert 3 <= len(diff) <= 20 and all(len(line) <= 200 for line in diff), diff
    assert time.monotonic() - started < 5.0  # generous: well under a second when the machine is idle


def test_output_kept_in_a_response_is_cut_at_character_boundaries() -> None:
    text = ("é" * 10 + "🙂" * 10).encode()
    for keep in range(len(text) + 1):
        head, cut = head_bytes(text, keep)
        tail, cut_tail = tail_bytes(text, keep)
        assert len(head) <= keep and len(tail) <= keep and cut == cut_tail == (keep < len(text))
        assert text.startswith(head) and text.endswith(tail)
        head.decode("utf-8"), tail.decode("utf-8")  # whole characters only
    assert kept_output_bytes(1) == 64 * 1024 and kept_output_bytes(10_000) == 1024  # the floor
    assert kept_output_bytes(100) == 2 * 1024 * 1024 // 200


def test_stepwise_decoding_equals_one_decode() -> None:
    import random

    rng = random.Random(7)
    data = bytes(rng.getrandbits(8) for _ in range(3 * 1024 * 1024 + 5)) + "é🙂".encode() * 1000
    assert decode_output(data) == data.decode("utf-8", "replace")
    aligned = ("a" * (1024 * 1024 - 1) + "🙂" * 3).encode()  # a character across the 1 MiB step
    assert decode_output(aligned) == aligned.decode()


def test_cases_from_input_output_format() -> None:
    cases = cases_from_input_output(
        {"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"], "remote": False}
    )
    assert [(c.input, c.expected) for c in cases] == [("1 2\n", "3\n"), ("3 4\n", "7\n")]
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        cases_from_input_output({"inputs": ["a", "b"], "outputs": ["c"]})


# --- verdicts through gRPC -----------------------------------------------------------------------

pytestmark_async = pytest.mark.asyncio(loop_scope="module")

SUM = "a, b = map(int, input().split())\nprint(a + b)\n"


def case(i: str, o: str) -> S.JudgeCase:
    return S.JudgeCase(input=i, expected_output=o)


@pytestmark_async
async def test_judge_pass_wrong_answer_and_fraction(sandbox: Sandbox) -> None:
    req = S.JudgeRequest(
        program=S.Program(source=SUM), cases=[case("1 2\n", "3\n"), case("2 2\n", "5\n"), case("10 5", "15")]
    )
    reply = await sandbox.stub.Judge(req, timeout=60)
    assert [c.index for c in reply.cases] == [0, 1, 2]
    assert [c.verdict for c in reply.cases] == [S.VERDICT_PASSED, S.VERDICT_WRONG_ANSWER, S.VERDICT_PASSED]
    wrong = reply.cases[1]
    assert wrong.error_category == common_pb2.ERROR_CATEGORY_WRONG_ANSWER
    assert "-5" in wrong.diff and "+4" in wrong.diff and wrong.debug_hint
    assert reply.cases[0].debug_hint == "" and reply.cases[0].diff == ""
    assert reply.passed_count == 2 and reply.total_count == 3
    assert reply.pass_fraction == pytest.approx(2 / 3)
    assert reply.verdict == S.VERDICT_WRONG_ANSWER


@pytestmark_async
async def test_judge_runtime_error_has_category_and_hint(sandbox: Sandbox) -> None:
    src = "xs = list(map(int, input().split()))\nprint(xs[5])\n"
    reply = await sandbox.stub.Judge(
        S.JudgeRequest(program=S.Program(source=src), cases=[case("1 2", "2")]), timeout=60
    )
    c = reply.cases[0]
    assert c.verdict == S.VERDICT_RUNTIME_ERROR
    assert c.error_category == common_pb2.ERROR_CATEGORY_INDEX_ERROR
    assert "list bounds" in c.debug_hint and "\n" not in c.debug_hint
    assert c.execution.error_message == "IndexError: list index out of range"
    assert reply.verdict == S.VERDICT_RUNTIME_ERROR and reply.pass_fraction == 0


@pytestmark_async
async def test_judge_timeout_memory_resource_verdicts(sandbox: Sandbox) -> None:
    wall = duration_pb2.Duration()
    wall.FromMilliseconds(500)
    src = (
        "s = input()\n"
        "if s == 'loop':\n    while True: pass\n"
        "if s == 'mem':\n    x = bytearray(512 * 1024 * 1024)\n"
        "if s == 'out':\n    print('z' * 10**6)\n"
        "print(s)\n"
    )
    req = S.JudgeRequest(
        program=S.Program(source=src),
        cases=[case("loop", ""), case("mem", ""), case("out", ""), case("ok", "ok")],
        limits=S.Limits(wall_time=wall, memory_bytes=64 * 1024 * 1024, output_bytes=1000),
    )
    reply = await sandbox.stub.Judge(req, timeout=60)
    assert [c.verdict for c in reply.cases] == [
        S.VERDICT_TIMEOUT,
        S.VERDICT_MEMORY_LIMIT,
        S.VERDICT_RESOURCE_LIMIT,
        S.VERDICT_PASSED,
    ]
    assert reply.cases[0].error_category == common_pb2.ERROR_CATEGORY_TIMEOUT
    assert reply.cases[1].error_category == common_pb2.ERROR_CATEGORY_MEMORY
    assert reply.cases[2].error_category == common_pb2.ERROR_CATEGORY_RESOURCE_LIMIT
    await sandbox.assert_healthy_and_clean()


@pytestmark_async
async def test_judge_stop_on_first_failure_and_case_indices(sandbox: Sandbox) -> None:
    cases = [case("1 1", "2"), case("1 1", "3"), case("2 2", "4")]
    req = S.JudgeRequest(program=S.Program(source=SUM), cases=cases, stop_on_first_failure=True)
    reply = await sandbox.stub.Judge(req, timeout=60)
    assert [c.verdict for c in reply.cases] == [S.VERDICT_PASSED, S.VERDICT_WRONG_ANSWER, S.VERDICT_SKIPPED]
    assert not reply.cases[2].HasField("execution") and reply.total_count == 3
    req = S.JudgeRequest(program=S.Program(source=SUM), cases=cases, case_indices=[2])
    reply = await sandbox.stub.Judge(req, timeout=60)
    assert [(c.index, c.verdict) for c in reply.cases] == [(2, S.VERDICT_PASSED)]
    assert reply.pass_fraction == 1.0 and reply.verdict == S.VERDICT_PASSED


@pytestmark_async
async def test_judge_comparator_options_through_grpc(sandbox: Sandbox) -> None:
    src = "print('%.6f' % (1/3))\nprint('YES')\n"
    cases = [case("", "0.333333333\nyes\n")]
    plain = await sandbox.stub.Judge(S.JudgeRequest(program=S.Program(source=src), cases=cases), timeout=60)
    assert plain.cases[0].verdict == S.VERDICT_WRONG_ANSWER
    cmp = S.Comparator(ignore_case=True, float_abs_tolerance=1e-5)
    tol = await sandbox.stub.Judge(
        S.JudgeRequest(program=S.Program(source=src), cases=cases, comparator=cmp), timeout=60
    )
    assert tol.cases[0].verdict == S.VERDICT_PASSED


@pytestmark_async
async def test_judge_bad_requests(sandbox: Sandbox) -> None:
    import grpc

    bad = [
        (S.JudgeRequest(program=S.Program(source=SUM)), "cases"),
        (
            S.JudgeRequest(program=S.Program(source=SUM), cases=[case("", "")], case_indices=[3]),
            "case_indices",
        ),
        (
            S.JudgeRequest(
                program=S.Program(source=SUM),
                cases=[case("", "")],
                comparator=S.Comparator(float_abs_tolerance=-1),
            ),
            "comparator",
        ),
    ]
    for req, field in bad:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sandbox.stub.Judge(req, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and (
            err.value.details() or ""
        ).startswith(field)


@pytestmark_async
async def test_a_case_refused_by_a_full_queue_fails_the_call_and_stops_the_others(sandbox: Sandbox) -> None:
    """The runner has 2 slots and 4 places in its queue: 8 cases at once leave 2 refused."""
    from flywheel_common.errors import ResourceExhausted
    from flywheel_sandbox.judge import Case, judge
    from flywheel_sandbox.runner import FileSpec, RunSpec

    spec = RunSpec(
        files=[FileSpec("main.py", b"import time\ntime.sleep(2)\nprint(input())\n")],
        limits=sandbox.runner.defaults,
    )
    cases = [Case(str(i), str(i)) for i in range(8)]
    with pytest.raises(ResourceExhausted, match="queue is full"):
        await judge(sandbox.runner, spec, cases, [], Comparator(), False, parallel=8)
    await sandbox.assert_healthy_and_clean()
