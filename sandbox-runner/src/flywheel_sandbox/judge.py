"""Judging a program against input/output cases; the comparison runs here, outside the sandbox.

Comparator (documented default: ``TRAILING`` whitespace, case-sensitive, no numeric tolerance):

* ``EXACT``: the outputs must be equal character for character (after case folding if
  ``ignore_case``).
* ``TRAILING``: ``\\r\\n`` counts as ``\\n``; trailing spaces/tabs of each line and trailing empty
  lines are ignored. Interior whitespace still matters.
* ``TOKENS``: both outputs are split on any whitespace and the token lists are compared.
* A float tolerance (absolute and/or relative) makes the comparison token-wise whatever the
  whitespace mode; a token pair where both parse as finite decimal numbers passes if
  ``|a - e| <= abs_tol`` or ``|a - e| <= rel_tol * |e|``; other pairs must be equal as text.
"""

from __future__ import annotations

import asyncio
import codecs
import difflib
import enum
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from flywheel_sandbox.classify import Category, hint
from flywheel_sandbox.runner import Runner, RunResult, RunSpec, Status


class Whitespace(enum.Enum):
    EXACT = 1
    TRAILING = 2
    TOKENS = 3


class Verdict(enum.Enum):
    """Mirrors ``flywheel.sandbox.v1.Verdict``."""

    PASSED = 1
    WRONG_ANSWER = 2
    RUNTIME_ERROR = 3
    TIMEOUT = 4
    MEMORY_LIMIT = 5
    RESOURCE_LIMIT = 6
    SKIPPED = 7
    SANDBOX_ERROR = 8


@dataclass(frozen=True)
class Comparator:
    whitespace: Whitespace = Whitespace.TRAILING
    ignore_case: bool = False
    abs_tol: float = 0.0
    rel_tol: float = 0.0


@dataclass(frozen=True)
class Case:
    input: str
    expected: str


@dataclass
class CaseOutcome:
    index: int
    verdict: Verdict
    category: Category = Category.UNSPECIFIED
    diff: str = ""
    debug_hint: str = ""
    result: RunResult | None = None


@dataclass
class JudgeOutcome:
    cases: list[CaseOutcome]
    passed: int
    total: int
    verdict: Verdict

    @property
    def pass_fraction(self) -> float:
        return self.passed / self.total if self.total else 0.0


def cases_from_input_output(data: dict[str, object]) -> list[Case]:
    """Cases from the ``input_output`` shape ``{"inputs": [...], "outputs": [...]}`` of I/O problems."""
    inputs, outputs = data.get("inputs"), data.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("input_output needs two lists, 'inputs' and 'outputs'")
    if len(inputs) != len(outputs):
        raise ValueError(f"input_output has {len(inputs)} inputs but {len(outputs)} outputs")
    return [Case(str(i), str(o)) for i, o in zip(inputs, outputs, strict=True)]


_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def _fold(text: str, cmp: Comparator) -> str:
    return text.casefold() if cmp.ignore_case else text


def _trailing(text: str) -> list[str]:
    lines = [line.rstrip(" \t\r") for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _tokens_equal(exp: str, act: str, cmp: Comparator) -> bool:
    if exp == act:
        return True
    if (cmp.abs_tol or cmp.rel_tol) and _NUMBER.match(exp) and _NUMBER.match(act):
        e, a = float(exp), float(act)
        if not (math.isfinite(e) and math.isfinite(a)):
            return False
        diff = abs(a - e)
        return diff <= cmp.abs_tol or diff <= cmp.rel_tol * abs(e)
    return False


def outputs_match(expected: str, actual: str, cmp: Comparator) -> bool:
    expected, actual = _fold(expected, cmp), _fold(actual, cmp)
    if cmp.abs_tol or cmp.rel_tol or cmp.whitespace is Whitespace.TOKENS:
        exp, act = expected.split(), actual.split()
        return len(exp) == len(act) and all(_tokens_equal(e, a, cmp) for e, a in zip(exp, act, strict=True))
    if cmp.whitespace is Whitespace.EXACT:
        return expected == actual
    return _trailing(expected) == _trailing(actual)


# The diff is a display aid, so its work is capped whatever the outputs' size: it finds the first
# differing character with block comparisons (C speed), then walks line pairs from there in chunks
# of DIFF_SCAN_BYTES (at most DIFF_SCAN_LINES lines each, DIFF_SCAN_ROUNDS chunks in all) to the
# first pair that differs under the comparator's rules, and hands difflib at most
# DIFF_WINDOW_LINES lines of each side from there. The verdict never depends on it:
# ``outputs_match`` compares the whole outputs exactly.
DIFF_SCAN_BYTES = 256 * 1024
DIFF_SCAN_LINES = 4096
DIFF_SCAN_ROUNDS = 16
DIFF_WINDOW_LINES = 60
DIFF_BLOCK_LINES = 6  # lines of each side shown of one changed block
_BLOCK = 1 << 16


def _first_char_difference(a: str, b: str) -> int:
    """Index of the first character where ``a`` and ``b`` differ (the shorter length if one is a prefix)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i : i + _BLOCK] == b[i : i + _BLOCK]:
        i += _BLOCK
    end = min(i + _BLOCK, n)
    while i < end and a[i] == b[i]:
        i += 1
    return i


@dataclass
class _Chunk:
    lines: list[str]  # whole lines, without their "\n"
    at_end: bool  # the lines reach the end of the text
    huge_line: bool  # the next line alone is longer than DIFF_SCAN_BYTES (``lines`` holds its start)


def _chunk(text: str, pos: int) -> _Chunk:
    """The whole lines of ``text`` from offset ``pos``: about DIFF_SCAN_BYTES of them."""
    end = pos + DIFF_SCAN_BYTES
    lines = text[pos:end].split("\n")
    if end >= len(text):
        if lines[-1] == "":
            lines.pop()  # the text ends with a newline (or nothing is left)
        return _Chunk(lines[:DIFF_SCAN_LINES], len(lines) <= DIFF_SCAN_LINES, False)
    if len(lines) == 1:
        return _Chunk(lines, False, True)
    lines.pop()  # cut mid-line: the last piece is not a whole line
    return _Chunk(lines[:DIFF_SCAN_LINES], False, False)


def _lines_same(exp: str, act: str, cmp: Comparator) -> bool:
    """Whether two lines are equal under the comparator's rules, as far as one line can tell."""
    exp, act = _fold(exp, cmp), _fold(act, cmp)
    if cmp.abs_tol or cmp.rel_tol or cmp.whitespace is Whitespace.TOKENS:
        e, a = exp.split(), act.split()
        return len(e) == len(a) and all(_tokens_equal(x, y, cmp) for x, y in zip(e, a, strict=True))
    if cmp.whitespace is Whitespace.EXACT:
        return exp == act
    return exp.rstrip(" \t\r") == act.rstrip(" \t\r")


def _line_key(line: str, cmp: Comparator) -> str:
    """A line as the comparator sees it (numbers within a tolerance still differ as text)."""
    line = _fold(line, cmp)
    if cmp.abs_tol or cmp.rel_tol or cmp.whitespace is Whitespace.TOKENS:
        return " ".join(line.split())
    if cmp.whitespace is Whitespace.EXACT:
        return line
    return line.rstrip(" \t\r")


@dataclass
class _Where:
    """A line both outputs have reached: its 0-based number and its offset in each."""

    line: int
    exp_pos: int
    act_pos: int


def _locate(
    expected: str, actual: str, cmp: Comparator, start: _Where, before: _Where
) -> tuple[_Where, _Where] | str:
    """The first line pair from ``start`` that differs under ``cmp``, and the line before it
    (``before`` is the one before ``start``).

    Returns ``"none"`` when no line differs in a way ``cmp`` counts, ``"budget"`` when the scan
    budget ran out first.
    """
    here = start
    for _ in range(DIFF_SCAN_ROUNDS):
        exp, act = _chunk(expected, here.exp_pos), _chunk(actual, here.act_pos)
        if exp.huge_line or act.huge_line:
            return here, before
        shared = min(len(exp.lines), len(act.lines))
        for e, a in zip(exp.lines[:shared], act.lines[:shared], strict=True):
            if not _lines_same(e, a, cmp):
                return here, before
            before = here
            here = _Where(here.line + 1, here.exp_pos + len(e) + 1, here.act_pos + len(a) + 1)
        if exp.at_end and act.at_end:
            rest = exp.lines[shared:] + act.lines[shared:]
            exact = cmp.whitespace is Whitespace.EXACT and not (cmp.abs_tol or cmp.rel_tol)
            if rest and (exact or any(line.strip() for line in rest)):  # extra blank lines do not count
                return here, before
            return "none"
        if shared == 0:  # one output has ended, the other goes on
            return here, before
    return "budget"


def _shown(line: str, width: int) -> str:
    line = line.replace("\r", "\\r")
    return line if len(line) <= width else line[: width - 1] + "…"


def _line_count(text: str) -> int:
    return text.count("\n") + (0 if not text or text.endswith("\n") else 1)


def short_diff(
    expected: str,
    actual: str,
    cmp: Comparator | None = None,
    max_lines: int = 20,
    width: int = 200,
) -> str:
    """A unified-style diff (expected → actual) of at most ``max_lines`` lines of ``width`` characters.

    It starts one line before the first line that differs under ``cmp``'s rules (default
    TRAILING), and its hunk headers carry the outputs' real line numbers. Its cost is bounded
    whatever the outputs' size (see DIFF_SCAN_BYTES).
    """
    cmp = cmp or Comparator()
    at = _first_char_difference(expected, actual)
    if at == len(expected) == len(actual):
        return ""
    line_start = expected.rfind("\n", 0, at) + 1  # the same in both: they agree up to ``at``
    first = _Where(expected.count("\n", 0, line_start), line_start, line_start)
    previous = expected.rfind("\n", 0, line_start - 1) + 1 if line_start else 0
    before = _Where(first.line - 1, previous, previous) if line_start else first
    found = _locate(expected, actual, cmp, first, before)
    note = ""
    if isinstance(found, str):
        exp, act = _chunk(expected, line_start), _chunk(actual, line_start)
        if [x.removesuffix("\r") for x in exp.lines] == [x.removesuffix("\r") for x in act.lines]:
            lo = max(0, at - 40)
            return "\n".join(
                [
                    "(outputs differ only in whitespace or line endings)",
                    f"first difference: line {first.line + 1}, character {at - line_start + 1}",
                    _shown(f"expected: {expected[lo : at + 60]!r}", width),
                    _shown(f"actual:   {actual[lo : at + 60]!r}", width),
                ]
            )
        if found == "budget":
            note = "… these lines differ only in ways the comparator ignores; what counts comes later"
        window = before  # show the first raw difference
    else:
        window = found[1]
    exp, act = _chunk(expected, window.exp_pos), _chunk(actual, window.act_pos)
    exp_win, act_win = exp.lines[:DIFF_WINDOW_LINES], act.lines[:DIFF_WINDOW_LINES]
    head = [f"--- expected ({_line_count(expected)} lines)", f"+++ actual ({_line_count(actual)} lines)"]
    body: list[str] = []
    # Lines are matched by what the comparator sees (so ignored differences show as context), or
    # as they are when no difference it counts was found; they are shown as they are.
    if isinstance(found, str):
        exp_keys, act_keys = exp_win, act_win
    else:
        exp_keys, act_keys = [_line_key(x, cmp) for x in exp_win], [_line_key(x, cmp) for x in act_win]
    matcher = difflib.SequenceMatcher(None, exp_keys, act_keys, autojunk=False)
    for group in matcher.get_grouped_opcodes(1):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        body.append(f"@@ -{window.line + i1 + 1},{i2 - i1} +{window.line + j1 + 1},{j2 - j1} @@")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                body.extend(" " + _shown(line, width - 1) for line in exp_win[a1:a2])
                continue
            # A long changed block shows the start of both sides rather than only the expected one.
            cut = DIFF_BLOCK_LINES if tag == "replace" else max_lines
            body.extend("-" + _shown(line, width - 1) for line in exp_win[a1:a2][:cut])
            body.extend("+" + _shown(line, width - 1) for line in act_win[b1:b2][:cut])
            if max(a2 - a1, b2 - b1) > cut:
                body.append(f"… {max(a2 - a1, b2 - b1) - cut} more changed lines in this block")
    if note:
        body.insert(0, note)
    more = any(not c.at_end or len(c.lines) > DIFF_WINDOW_LINES for c in (exp, act))
    room = max_lines - len(head)
    if len(body) > room or (more and len(body) >= room):
        body = [*body[: room - 1], f"… diff cut at {max_lines} lines; more differences may follow"]
    elif more:
        body.append(
            f"… the diff compared {DIFF_WINDOW_LINES} lines from line {window.line + 1}; more may differ"
        )
    return "\n".join(head + body)


_VERDICT_BY_STATUS = {
    Status.RUNTIME_ERROR: Verdict.RUNTIME_ERROR,
    Status.WALL_TIMEOUT: Verdict.TIMEOUT,
    Status.CPU_TIMEOUT: Verdict.TIMEOUT,
    Status.MEMORY_LIMIT: Verdict.MEMORY_LIMIT,
    Status.OUTPUT_LIMIT: Verdict.RESOURCE_LIMIT,
    Status.FILE_SIZE_LIMIT: Verdict.RESOURCE_LIMIT,
    Status.PROCESS_LIMIT: Verdict.RESOURCE_LIMIT,
    Status.SANDBOX_ERROR: Verdict.SANDBOX_ERROR,
}


# What a Judge response keeps of each case's output: the run's own cap (``Limits.output_bytes``,
# up to 64 MiB) times up to 1000 cases would otherwise sit in the runner's memory and in one reply.
# stdout keeps its head, stderr its tail (where a traceback ends); the verdict and the diff are
# made from the whole output before it is cut.
CASE_OUTPUT_BYTES = 64 * 1024
RESPONSE_OUTPUT_BYTES = 2 * 1024 * 1024
MIN_CASE_OUTPUT_BYTES = 1024
_DECODE_STEP = 1 << 20


def decode_output(data: bytes) -> str:
    """``data.decode("utf-8", "replace")`` in 1 MiB steps.

    One ``decode`` of 64 MiB of invalid bytes holds the GIL for most of a second; in steps, a
    worker thread doing it lets the event loop (and its health checks) run in between.
    """
    if len(data) <= _DECODE_STEP:
        return data.decode("utf-8", "replace")
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    view = memoryview(data)
    parts = [decoder.decode(view[i : i + _DECODE_STEP]) for i in range(0, len(data), _DECODE_STEP)]
    parts.append(decoder.decode(b"", final=True))
    return "".join(parts)


def _utf8_boundary(data: bytes, at: int) -> int:
    """``at`` moved back so that ``data[:at]`` does not end inside a UTF-8 sequence."""
    for back in range(1, 4):
        if at - back < 0:
            break
        byte = data[at - back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for its lead byte
            continue
        if byte >= 0xC0:
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            if length > back:
                return at - back
        break
    return at


def head_bytes(data: bytes, keep: int) -> tuple[bytes, bool]:
    """At most ``keep`` bytes from the start (never ending mid-character), and whether any were cut."""
    if len(data) <= keep:
        return data, False
    return data[: _utf8_boundary(data, keep)], True


def tail_bytes(data: bytes, keep: int) -> tuple[bytes, bool]:
    """At most ``keep`` bytes from the end (never starting mid-character), and whether any were cut."""
    if len(data) <= keep:
        return data, False
    start = len(data) - keep
    while start < len(data) and data[start] & 0xC0 == 0x80:
        start += 1
    return data[start:], True


def _trimmed(result: RunResult, keep: int) -> RunResult:
    stdout, out_cut = head_bytes(result.stdout, keep)
    stderr, err_cut = tail_bytes(result.stderr, keep)
    if not (out_cut or err_cut):
        return result
    return replace(
        result,
        stdout=stdout,
        stdout_truncated=result.stdout_truncated or out_cut,
        stderr=stderr,
        stderr_truncated=result.stderr_truncated or err_cut,
    )


def kept_output_bytes(case_count: int) -> int:
    """Bytes of stdout (and of stderr) a response keeps per case, for ``case_count`` cases."""
    share = RESPONSE_OUTPUT_BYTES // (2 * max(1, case_count))
    return max(MIN_CASE_OUTPUT_BYTES, min(CASE_OUTPUT_BYTES, share))


def verdict_for(
    index: int, case: Case, result: RunResult, cmp: Comparator, keep: int = CASE_OUTPUT_BYTES
) -> CaseOutcome:
    """The case's verdict (and diff) from its whole output; the outcome keeps ``keep`` bytes of it.

    CPU-bound on large outputs (linear in their size): the service calls it in a worker thread.
    """
    if result.status is Status.OK:
        actual = decode_output(result.stdout)
        if outputs_match(case.expected, actual, cmp):
            return CaseOutcome(index, Verdict.PASSED, result=_trimmed(result, keep))
        return CaseOutcome(
            index,
            Verdict.WRONG_ANSWER,
            Category.WRONG_ANSWER,
            short_diff(case.expected, actual, cmp),
            hint(Category.WRONG_ANSWER),
            _trimmed(result, keep),
        )
    verdict = _VERDICT_BY_STATUS[result.status]
    return CaseOutcome(index, verdict, result.category, "", hint(result.category), _trimmed(result, keep))


async def judge(
    runner: Runner,
    program: RunSpec,
    cases: Sequence[Case],
    indices: Sequence[int],
    cmp: Comparator,
    stop_on_first_failure: bool,
    parallel: int,
) -> JudgeOutcome:
    """Runs ``program`` once per selected case (stdin = the case's input) and judges each output.

    Comparison and diff run in worker threads, so a long output never stalls the event loop; each
    case's output is cut to its share of RESPONSE_OUTPUT_BYTES as soon as it is judged. If one
    case fails (e.g. the runner's queue is full), the cases still running are cancelled.
    """
    chosen = sorted(set(indices)) if indices else list(range(len(cases)))
    keep = kept_output_bytes(len(chosen))
    outcomes: dict[int, CaseOutcome] = {}

    async def one(i: int) -> CaseOutcome:
        result = await runner.execute(replace(program, stdin=cases[i].input.encode()))
        return await asyncio.to_thread(verdict_for, i, cases[i], result, cmp, keep)

    if stop_on_first_failure:
        failed = False
        for i in chosen:
            if failed:
                outcomes[i] = CaseOutcome(i, Verdict.SKIPPED)
                continue
            outcomes[i] = await one(i)
            failed = outcomes[i].verdict is not Verdict.PASSED
    else:
        gate = asyncio.Semaphore(max(1, parallel))

        async def gated(i: int) -> None:
            async with gate:
                outcomes[i] = await one(i)

        try:
            async with asyncio.TaskGroup() as group:
                for i in chosen:
                    group.create_task(gated(i))
        except BaseExceptionGroup as failed:
            # The first case's error as it is (e.g. RESOURCE_EXHAUSTED), not wrapped in a group.
            raise failed.exceptions[0] from None
    ordered = [outcomes[i] for i in chosen]
    passed = sum(o.verdict is Verdict.PASSED for o in ordered)
    first_bad = next((o.verdict for o in ordered if o.verdict not in (Verdict.PASSED, Verdict.SKIPPED)), None)
    return JudgeOutcome(ordered, passed, len(ordered), first_bad or Verdict.PASSED)
