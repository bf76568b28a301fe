"""The orchestrator's side of the sandbox runner: final and driver tests, I/O judging.

The sandbox answers RESOURCE_EXHAUSTED when all its slots are busy and UNAVAILABLE while it
restarts; both are retried here with back-off (bounded by the episode's deadline), so a busy
sandbox slows episodes down instead of failing them. Anything else is a :class:`SandboxError`
and the episode ends as SANDBOX_ERROR (it says nothing about the policy).
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
from flywheel_orchestrator.suites import IoTask, RepoTask

RETRIED = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


class SandboxError(Exception):
    """The sandbox failed (not the agent's code)."""


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


def _dur(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


class SandboxClient:
    def __init__(self, address: str, *, call_timeout_s: float = 120.0) -> None:
        self.address = address
        self.call_timeout_s = call_timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: sandbox_pb2_grpc.SandboxServiceStub | None = None

    @property
    def stub(self) -> sandbox_pb2_grpc.SandboxServiceStub:
        # Made on first use, inside the running event loop (aio channels are bound to one).
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.address)
            self._stub = sandbox_pb2_grpc.SandboxServiceStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def _call(self, method, request, deadline: float):
        delay = 0.05
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the episode's time ran out waiting for the sandbox")
            try:
                return await method(request, timeout=min(left, self.call_timeout_s))
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
        request = sandbox_pb2.RunTestsRequest(
            # The workspace's own copies of the tests go too: the sandbox compares them with the
            # protected originals (an edit is an integrity finding), then runs the originals.
            files=[sandbox_pb2.File(path=p, text=c) for p, c in sorted(files.items())],
            protected_files=[sandbox_pb2.File(path=p, text=c) for p, c in sorted(tests.items())],
            targets=list(task.test_targets),
            expected_test_ids=list(task.expected_tests),
        )
        started = time.perf_counter()
        reply: sandbox_pb2.RunTestsResponse = await self._call(self.stub.RunTests, request, deadline)
        elapsed = time.perf_counter() - started
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
        if failed:
            run.error_category = failed[0].error_category or common_pb2.ERROR_CATEGORY_ASSERTION_ERROR
            first = failed[0].message.strip().splitlines()[0][:300] if failed[0].message.strip() else ""
            run.debug_hint = _hint(run.error_category)
        lines = [
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
            resolved=reply.passed and not findings,
            findings=findings,
            backend=info.backend,
            image=info.image,
            runner_version=info.runner_version,
            first_failure=first,
        )

    async def judge(
        self, task: IoTask, code: str, indices: list[int], trigger: tpb.TestTrigger, deadline: float
    ) -> tuple[TestVerdict, list[sandbox_pb2.CaseResult]]:
        """Judge a program on some of the problem's cases (all of them for the final verdict)."""
        request = sandbox_pb2.JudgeRequest(
            program=sandbox_pb2.Program(language=sandbox_pb2.LANGUAGE_PYTHON, source=code),
            cases=[
                sandbox_pb2.JudgeCase(input=i, expected_output=o)
                for i, o in zip(task.inputs, task.outputs, strict=True)
            ],
            case_indices=indices,
            comparator=sandbox_pb2.Comparator(whitespace=sandbox_pb2.WHITESPACE_MODE_TRAILING),
        )
        started = time.perf_counter()
        reply: sandbox_pb2.JudgeResponse = await self._call(self.stub.Judge, request, deadline)
        elapsed = time.perf_counter() - started
        failed = [c for c in reply.cases if c.verdict != sandbox_pb2.VERDICT_PASSED]
        run = tpb.DriverTestRun(
            trigger=trigger,
            passed=reply.passed_count,
            total=reply.total_count,
            failed_ids=[str(c.index) for c in failed],
            duration=_dur(elapsed),
        )
        if failed:
            run.error_category = failed[0].error_category
            run.debug_hint = failed[0].debug_hint
        info = reply.cases[0].execution.sandbox if reply.cases else sandbox_pb2.SandboxInfo()
        verdict = TestVerdict(
            run=run,
            resolved=not failed and reply.total_count > 0,
            backend=info.backend,
            image=info.image,
            runner_version=info.runner_version,
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
