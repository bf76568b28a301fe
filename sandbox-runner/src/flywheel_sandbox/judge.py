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


def short_diff(expected: str, actual: str, max_lines: int = 20, width: int = 200) -> str:
    """A unified diff (expected → actual) of at most ``max_lines`` lines of ``width`` characters."""
    lines = list(
        difflib.unified_diff(
            expected.splitlines(), actual.splitlines(), "expected", "actual", lineterm="", n=1
        )
    )
    if not lines and expected != actual:
        lines = [
            "(outputs differ only in whitespace or line endings)",
            f"expected: {expected!r}",
            f"actual:   {actual!r}",
        ]
    out = [line if len(line) <= width else line[: width - 1] + "…" for line in lines[:max_lines]]
    if len(lines) > max_lines:
        out[-1] = f"… {len(lines) - max_lines + 1} more diff lines"
    return "\n".join(out)


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


def verdict_for(index: int, case: Case, result: RunResult, cmp: Comparator) -> CaseOutcome:
    if result.status is Status.OK:
        actual = result.stdout_text
        if outputs_match(case.expected, actual, cmp):
            return CaseOutcome(index, Verdict.PASSED, result=result)
        return CaseOutcome(
            index,
            Verdict.WRONG_ANSWER,
            Category.WRONG_ANSWER,
            short_diff(case.expected, actual),
            hint(Category.WRONG_ANSWER),
            result,
        )
    verdict = _VERDICT_BY_STATUS[result.status]
    return CaseOutcome(index, verdict, result.category, "", hint(result.category), result)


async def judge(
    runner: Runner,
    program: RunSpec,
    cases: Sequence[Case],
    indices: Sequence[int],
    cmp: Comparator,
    stop_on_first_failure: bool,
    parallel: int,
) -> JudgeOutcome:
    """Runs ``program`` once per selected case (stdin = the case's input) and judges each output."""
    chosen = sorted(set(indices)) if indices else list(range(len(cases)))
    outcomes: dict[int, CaseOutcome] = {}

    async def one(i: int) -> CaseOutcome:
        result = await runner.execute(replace(program, stdin=cases[i].input.encode()))
        return verdict_for(i, cases[i], result, cmp)

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

        await asyncio.gather(*(gated(i) for i in chosen))
    ordered = [outcomes[i] for i in chosen]
    passed = sum(o.verdict is Verdict.PASSED for o in ordered)
    first_bad = next((o.verdict for o in ordered if o.verdict not in (Verdict.PASSED, Verdict.SKIPPED)), None)
    return JudgeOutcome(ordered, passed, len(ordered), first_bad or Verdict.PASSED)
