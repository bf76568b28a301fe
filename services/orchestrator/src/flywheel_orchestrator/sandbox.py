"""The orchestrator's side of the sandbox runner: final and driver tests, I/O judging.

The sandbox answers RESOURCE_EXHAUSTED when all its slots are busy and UNAVAILABLE while it
restarts; both are retried here with back-off (bounded by the episode's deadline), so a busy
sandbox slows episodes down instead of failing them. Anything else is a :class:`SandboxError`
and the episode ends as SANDBOX_ERROR (it says nothing about the policy).

Every test run carries explicit limits: the task's own (``[limits]`` in task.toml, ``limits`` of
an I/O problem) over the orchestrator's defaults. A run that hits its wall-clock or CPU limit is
a *timeout*, reported as such (``TestVerdict.timeout``), never as tampering: the findings a kill
leaves behind (tests missing, no report) are dropped from it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf.duration_pb2 import Duration

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common import auth
from flywheel_orchestrator.suites import IoTask, RepoTask, Task

RETRIED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
TIMED_OUT = (sandbox_pb2.EXECUTION_STATUS_WALL_TIMEOUT, sandbox_pb2.EXECUTION_STATUS_CPU_TIMEOUT)
#: Findings that follow from the run being killed at its time limit (tests never reached, no
#: report written): not evidence of anything when the run timed out.
KILL_FINDINGS = {
    "INTEGRITY_FINDING_KIND_EXIT_BEFORE_ASSERTS",
    "INTEGRITY_FINDING_KIND_REPORT_MISSING",
    "INTEGRITY_FINDING_KIND_EXPECTED_TEST_MISSING",
}
#: Time a sandbox call gets on top of its run's own wall-clock limit (queueing, start, transfer).
CALL_MARGIN_S = 60.0
TIMEOUT_HINT = (
    "the code did not finish in time: look for an infinite loop, a wait that never ends, "
    "or an algorithm too slow for the input"
)


class SandboxError(Exception):
    """The sandbox failed (not the agent's code)."""


@dataclass(frozen=True)
class RunLimits:
    """Limits of one test run (a repo task's whole pytest run, one case of an I/O problem)."""

    wall_time_s: float = 10.0
    cpu_time_s: float = 10.0
    memory_mb: int = 256

    def for_task(self, task: Task) -> RunLimits:
        """These defaults with the task's own limits over them."""
        own = task.limits
        return RunLimits(
            wall_time_s=own.wall_time_s if own.wall_time_s is not None else self.wall_time_s,
            cpu_time_s=own.cpu_time_s if own.cpu_time_s is not None else self.cpu_time_s,
            memory_mb=own.memory_mb if own.memory_mb is not None else self.memory_mb,
        )

    def to_proto(self) -> sandbox_pb2.Limits:
        return sandbox_pb2.Limits(
            wall_time=_dur(self.wall_time_s),
            cpu_time=_dur(self.cpu_time_s),
            memory_bytes=self.memory_mb * 1024 * 1024,
        )

    def describe(self, status: sandbox_pb2.ExecutionStatus) -> str:
        """The limit a timed-out run hit, in words, e.g. ``the 10 s wall-clock limit``."""
        if status == sandbox_pb2.EXECUTION_STATUS_CPU_TIMEOUT:
            return f"the {self.cpu_time_s:g} s CPU-time limit"
        return f"the {self.wall_time_s:g} s wall-clock limit"


@dataclass
class TestVerdict:
    """A test run the driver made, as recorded in the trajectory and shown to the model."""

    run: tpb.DriverTestRun
    resolved: bool
    findings: list[str] = field(default_factory=list)
    backend: str = ""
    image: str = ""
    runner_version: str = ""
    first_failure: str = ""
    #: The limit the run (or the first failing I/O case) hit, in words; empty if it did not time out.
    timeout: str = ""


def _dur(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class SandboxClient:
    def __init__(
        self, address: str, *, call_timeout_s: float = 120.0, limits: RunLimits | None = None
    ) -> None:
        self.address = address
        self.call_timeout_s = call_timeout_s
        self.limits = limits or RunLimits()
        self._channel: grpc.aio.Channel | None = None
        self._stub: sandbox_pb2_grpc.SandboxServiceStub | None = None

    @property
    def stub(self) -> sandbox_pb2_grpc.SandboxServiceStub:
        # Made on first use, inside the running event loop (aio channels are bound to one).
        if self._stub is None:
            self._channel = auth.channel(self.address)
            self._stub = sandbox_pb2_grpc.SandboxServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    def limits_for(self, task: Task) -> RunLimits:
        """The limits a test run of ``task`` gets."""
        return self.limits.for_task(task)

    async def _call(self, method, request, deadline: float, run_s: float = 0.0):
        """One call, retried while the sandbox is busy; ``run_s`` is the longest its runs may take."""
        call_timeout = max(self.call_timeout_s, run_s + CALL_MARGIN_S)
        delay = 0.05
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the episode's time ran out waiting for the sandbox")
            try:
                return await method(request, timeout=min(left, call_timeout))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() >= deadline - 0.01:
                    raise TimeoutError("the episode's time ran out in the sandbox") from err
                if err.code() in RETRIED and time.monotonic() + delay < deadline:
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                raise SandboxError(f"sandbox {err.code().name}: {err.details()}") from err

    async def run_tests(
        self, task: RepoTask, files: dict[str, str], trigger: tpb.TestTrigger, deadline: float
    ) -> TestVerdict:
        """Run the task's tests on the workspace; the original test files are authoritative."""
        tests = task.test_files
        limits = self.limits_for(task)
        request = sandbox_pb2.RunTestsRequest(
            # The workspace's own copies of the tests go too: the sandbox compares them with the
            # protected originals (an edit is an integrity finding), then runs the originals.
            files=[sandbox_pb2.File(path=p, text=c) for p, c in sorted(files.items())],
            protected_files=[sandbox_pb2.File(path=p, text=c) for p, c in sorted(tests.items())],
            targets=list(task.test_targets),
            expected_test_ids=list(task.expected_tests),
            limits=limits.to_proto(),
        )
        started = time.perf_counter()
        reply: sandbox_pb2.RunTestsResponse = await self._call(
            self.stub.RunTests, request, deadline, limits.wall_time_s
        )
        elapsed = time.perf_counter() - started
        # `timed_out` is the sandbox's word for it; the status says it too (and did before the flag).
        timed_out = reply.timed_out or reply.execution.status in TIMED_OUT
        failed = [
            t
            for t in reply.tests
            if t.outcome
            not in (
                sandbox_pb2.TEST_OUTCOME_PASSED,
                sandbox_pb2.TEST_OUTCOME_XFAILED,
                sandbox_pb2.TEST_OUTCOME_SKIPPED,
            )
        ]
        findings = [
            sandbox_pb2.IntegrityFindingKind.Name(f.kind)
            for f in reply.findings
            if f.kind != sandbox_pb2.INTEGRITY_FINDING_KIND_CONFTEST_IGNORED
        ]
        if timed_out:
            findings = [f for f in findings if f not in KILL_FINDINGS]
        total = len(reply.tests)
        run = tpb.DriverTestRun(
            trigger=trigger,
            passed=reply.passed_count,
            total=total,
            failed_ids=[t.test_id for t in failed],
            integrity_findings=findings,
            duration=_dur(elapsed),
        )
        first = ""
        timeout = limits.describe(reply.execution.status) if timed_out else ""
        if failed:
            run.error_category = failed[0].error_category or common_pb2.ERROR_CATEGORY_ASSERTION_ERROR
            first = failed[0].message.strip().splitlines()[0][:300] if failed[0].message.strip() else ""
            run.debug_hint = _hint(run.error_category)
        if timed_out:
            run.error_category = common_pb2.ERROR_CATEGORY_TIMEOUT
            run.debug_hint = TIMEOUT_HINT
        lines = [f"TIMEOUT: the test run was stopped at {timeout}"] if timed_out else []
        lines += [
            f"FAILED {t.test_id}"
            + (f" - {t.message.strip().splitlines()[0][:200]}" if t.message.strip() else "")
            for t in failed[:5]
        ]
        if len(failed) > 5:
            lines.append(f"… and {len(failed) - 5} more")
        lines.extend(f"integrity: {f}" for f in findings)
        run.output = "\n".join(lines)
        info = reply.execution.sandbox
        return TestVerdict(
            run=run,
            resolved=reply.passed and not findings and not timed_out,
            findings=findings,
            backend=info.backend,
            image=info.image,
            runner_version=info.runner_version,
            first_failure=first,
            timeout=timeout,
        )

    async def judge(
        self, task: IoTask, code: str, indices: list[int], trigger: tpb.TestTrigger, deadline: float
    ) -> tuple[TestVerdict, list[sandbox_pb2.CaseResult]]:
        """Judge a program on some of the problem's cases (all of them for the final verdict)."""
        limits = self.limits_for(task)
        request = sandbox_pb2.JudgeRequest(
            program=sandbox_pb2.Program(language=sandbox_pb2.LANGUAGE_PYTHON, source=code),
            cases=[
                sandbox_pb2.JudgeCase(input=i, expected_output=o)
                for i, o in zip(task.inputs, task.outputs, strict=True)
            ],
            case_indices=indices,
            comparator=sandbox_pb2.Comparator(whitespace=sandbox_pb2.WHITESPACE_MODE_TRAILING),
            limits=limits.to_proto(),
        )
        started = time.perf_counter()
        cases = len(indices) or len(task.inputs)
        reply: sandbox_pb2.JudgeResponse = await self._call(
            self.stub.Judge, request, deadline, limits.wall_time_s * cases
        )
        elapsed = time.perf_counter() - started
        failed = [c for c in reply.cases if c.verdict != sandbox_pb2.VERDICT_PASSED]
        run = tpb.DriverTestRun(
            trigger=trigger,
            passed=reply.passed_count,
            total=reply.total_count,
            failed_ids=[str(c.index) for c in failed],
            duration=_dur(elapsed),
        )
        timeout = ""
        if failed:
            run.error_category = failed[0].error_category
            run.debug_hint = failed[0].debug_hint
            if failed[0].verdict == sandbox_pb2.VERDICT_TIMEOUT:
                timeout = limits.describe(failed[0].execution.status)
                run.error_category = common_pb2.ERROR_CATEGORY_TIMEOUT
                run.debug_hint = TIMEOUT_HINT
                run.output = f"TIMEOUT: case {failed[0].index} was stopped at {timeout}"
        info = reply.cases[0].execution.sandbox if reply.cases else sandbox_pb2.SandboxInfo()
        verdict = TestVerdict(
            run=run,
            resolved=not failed and reply.total_count > 0,
            backend=info.backend,
            image=info.image,
            runner_version=info.runner_version,
            timeout=timeout,
        )
        return verdict, list(reply.cases)


_HINTS = {
    common_pb2.ERROR_CATEGORY_ASSERTION_ERROR: "a test's expectation is not met: compare the expected and actual values",
    common_pb2.ERROR_CATEGORY_SYNTAX_ERROR: "the code does not parse: check brackets, colons and indentation",
    common_pb2.ERROR_CATEGORY_NAME_ERROR: "a name is used before it is defined",
    common_pb2.ERROR_CATEGORY_TYPE_ERROR: "a value has the wrong type for the operation",
    common_pb2.ERROR_CATEGORY_IMPORT_ERROR: "an import fails: check module and function names",
}


def _hint(category: common_pb2.ErrorCategory) -> str:
    return _HINTS.get(category, "read the failing test and the code it calls")
