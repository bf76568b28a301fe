"""The episode driver: one policy, one task, one full trajectory.

The driver owns the conversation. It asks the policy for a turn, parses it under the tool
protocol, runs the tool (file tools on the in-memory workspace, code runs in the sandbox),
answers with the result, and keeps the budgets: iterations, tokens, wall time, consecutive parse
errors (each gets a corrective message first) and loop detections. Tests are run by the driver
only — after writes or at the end, per the test policy — and the final tests, always in the
sandbox, decide the outcome. Every message sent to or received from the model is a step of the
trajectory, with its timing, usage and what the driver made of it.

Outcome rules (``Outcome.failure_category`` when not resolved), first match wins:
MODEL_ERROR / SANDBOX_ERROR (infrastructure), INTEGRITY (tests tampered with), NO_CHANGE (a repo
episode that never changed a file, or an I/O episode with no program), the reason the episode
was stopped (PARSE_ERRORS, LOOP, ITERATION_LIMIT, TOKEN_BUDGET, TIME_BUDGET), TIMEOUT (the final
test run, or the first failing I/O case, hit its wall-clock or CPU limit: slow or looping code,
never counted as tampering), then TESTS_FAILED (repo) or WRONG_ANSWER / RUNTIME_ERROR (I/O).

Reward: as the episode runs, the driver collects what rule ``flywheel-reward/v1`` needs (the
agent's own test runs and their pass counts, ``run_code`` verdicts per case index, executed tool
calls, failed runs); at the end ``rewards.episode_reward`` turns them and the outcome into
``Outcome.reward_detail`` (and ``Outcome.reward``, its total), for model and reference episodes
alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import run_pb2
from flywheel.sandbox.v1 import sandbox_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.jobs import now
from flywheel_orchestrator import protocol as proto
from flywheel_orchestrator.model import ModelError, ModelTurn, Policy
from flywheel_orchestrator.rewards import EpisodeFacts, episode_reward
from flywheel_orchestrator.sandbox import SandboxClient, SandboxError, TestVerdict
from flywheel_orchestrator.suites import IoTask, RepoTask, Task
from flywheel_orchestrator.tools import ToolArgumentError, ToolOutcome, Workspace, io_run_args, submit_args

F = tpb  # FailureCategory values live in trajectory_pb2

#: Findings that mean the agent tampered with the tests. The others (a report or an expected test
#: missing) also follow from code that breaks pytest's collection, e.g. a syntax error the agent
#: wrote: those episodes fail as TESTS_FAILED, with the findings in the test run. A run stopped at
#: its time limit never has EXIT_BEFORE_ASSERTS here (sandbox.py drops what the kill leaves
#: behind), so a timeout is never called tampering.
TAMPERING = {
    "INTEGRITY_FINDING_KIND_TEST_EDITED",
    "INTEGRITY_FINDING_KIND_TEST_DELETED",
    "INTEGRITY_FINDING_KIND_EXIT_BEFORE_ASSERTS",
    # The sandbox's guard saw the code under test change pytest's machinery, forge a report or a
    # comparison, or raise pytest's own outcomes: never an accident of a syntax error.
    "INTEGRITY_FINDING_KIND_REPORT_FORGED",
    "INTEGRITY_FINDING_KIND_PYTEST_TAMPERED",
    "INTEGRITY_FINDING_KIND_OUTCOME_FROM_CODE_UNDER_TEST",
    "INTEGRITY_FINDING_KIND_COMPARISON_FORGED",
}


@dataclass(frozen=True)
class Limits:
    max_iterations: int
    max_tokens: int
    max_wall_time_s: float
    max_consecutive_parse_errors: int
    max_loop_detections: int
    model_timeout_s: float
    max_tool_output_chars: int = 6000


@dataclass
class EpisodeSpec:
    trajectory_id: str
    run_id: str
    attempt: int
    suite: str
    suite_version: str
    task: Task
    protocol: common_pb2.ToolProtocol  # effective protocol (never UNSPECIFIED)
    test_policy: run_pb2.TestPolicy  # never UNSPECIFIED
    limits: Limits
    sampling: common_pb2.SamplingParams
    teacher_kind: tpb.TeacherKind
    policy_info: tpb.Policy
    labels: dict[str, str] = field(default_factory=dict)
    #: Weights of the episode reward as the request gave them (unset fields take the defaults).
    reward: tpb.RewardWeights = field(default_factory=tpb.RewardWeights)
    #: The run's skill document (appended to the protocol's system prompt); "" for none.
    skill: str = ""


@dataclass
class EpisodeTimes:
    """Where the episode's wall time went (the benchmark's overhead = total - model - sandbox)."""

    model_s: float = 0.0
    sandbox_s: float = 0.0
    total_s: float = 0.0


def _dur(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(max(0, int(seconds * 1e9)))
    return d


class _Stop(Exception):
    def __init__(self, category: tpb.FailureCategory, detail: str) -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail


def test_summary(verdict: TestVerdict, *, io: bool = False) -> str:
    run = verdict.run
    what = "cases" if io else "tests"
    if verdict.resolved:
        return f"{proto.TESTS_PREFIX} PASS: {run.passed}/{run.total} {what} passed."
    if verdict.timeout:
        stopped = "a case was" if io else "the test run was"
        head = (
            f"{proto.TESTS_PREFIX} TIMEOUT: the {what} timed out: {stopped} stopped at {verdict.timeout}; "
            f"{run.passed}/{run.total} {what} passed."
        )
    else:
        head = f"{proto.TESTS_PREFIX} FAIL: {run.passed}/{run.total} {what} passed."
    parts = [head]
    if run.output:
        parts.append(run.output[:1500])
    if run.debug_hint:
        parts.append(f"hint: {run.debug_hint}")
    return "\n".join(parts)


class Episode:
    """Runs one episode; ``await Episode(...).run()`` returns the finished trajectory."""

    def __init__(self, spec: EpisodeSpec, policy: Policy, sandbox: SandboxClient) -> None:
        self.spec = spec
        self.policy = policy
        self.sandbox = sandbox
        self.task = spec.task
        self.io = isinstance(spec.task, IoTask)
        self.tools = proto.tools_for(spec.task, spec.protocol)
        self.tool_names = {t.name for t in self.tools}
        self.workspace = (
            Workspace(dict(spec.task.files), max_output_chars=spec.limits.max_tool_output_chars)
            if isinstance(spec.task, RepoTask)
            else None
        )
        self.messages: list[dict[str, Any]] = []
        self.steps: list[tpb.Step] = []
        self.times = EpisodeTimes()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.parse_errors = 0
        self.consecutive_parse_errors = 0
        self.loop_detections = 0
        self.iterations = 0
        self.call_history: list[str] = []
        self.last_code: str | None = None
        self.final_code: str | None = None
        self.wrote = False
        self.sandbox_info: TestVerdict | None = None
        self.finished_normally = False
        # Facts for the reward (rewards.py): the agent's own runs during the episode.
        self.tool_calls_executed = 0
        self.failed_runs = 0  # mid-episode test runs / run_code cases that did not pass
        self.best_test_fraction = 0.0  # repo tasks: best passed/total of a mid-episode test run
        self.cases_passed: set[int] = set()  # I/O problems: case indexes a run_code passed

    # ------------------------------------------------------------------------------ helpers

    def _add(self, role: tpb.Role, content: str, **fields: Any) -> tpb.Step:
        step = tpb.Step(index=len(self.steps), role=role, content=content, **fields)
        self.steps.append(step)
        return step

    def _send(self, role: str, content: str, step_role: tpb.Role, **fields: Any) -> tpb.Step:
        self.messages.append({"role": role, "content": content})
        return self._add(step_role, content, start_time=now(), **fields)

    def _left(self) -> float:
        return self.deadline - time.monotonic()

    async def _tests(self, trigger: tpb.TestTrigger) -> TestVerdict:
        started = time.perf_counter()
        try:
            if isinstance(self.task, RepoTask):
                assert self.workspace is not None
                verdict = await self.sandbox.run_tests(
                    self.task, self.workspace.files, trigger, self.deadline
                )
            else:
                assert self.final_code is not None
                verdict, _ = await self.sandbox.judge(
                    self.task, self.final_code, list(range(len(self.task.inputs))), trigger, self.deadline
                )
        finally:
            self.times.sandbox_s += time.perf_counter() - started
        self.sandbox_info = verdict
        return verdict

    # ------------------------------------------------------------------------------ the loop

    async def run(self) -> tpb.Trajectory:
        spec = self.spec
        start_ts = now()
        started = time.perf_counter()
        self.deadline = time.monotonic() + spec.limits.max_wall_time_s
        system = proto.system_prompt(self.task, spec.protocol, spec.skill)
        self._send("system", system, tpb.ROLE_SYSTEM)
        self._send("user", proto.task_prompt(self.task), tpb.ROLE_USER)
        stop: _Stop | None = None
        try:
            await self._loop()
        except _Stop as s:
            stop = s
        outcome = await self._outcome(stop)
        self.times.total_s = time.perf_counter() - started
        return self._trajectory(start_ts, outcome)

    async def _loop(self) -> None:
        spec, limits = self.spec, self.spec.limits
        openai_tools = [t.to_openai() for t in self.tools] if spec.protocol == proto.NATIVE else None
        while True:
            if self.iterations >= limits.max_iterations:
                raise _Stop(F.FAILURE_CATEGORY_ITERATION_LIMIT, f"reached {limits.max_iterations} iterations")
            used = self.prompt_tokens + self.completion_tokens
            if used >= limits.max_tokens:
                raise _Stop(F.FAILURE_CATEGORY_TOKEN_BUDGET, f"used {used} of {limits.max_tokens} tokens")
            left = self._left()
            if left <= 0:
                raise _Stop(F.FAILURE_CATEGORY_TIME_BUDGET, f"used the {limits.max_wall_time_s:.0f} s budget")
            turn_start = now()
            t0 = time.perf_counter()
            try:
                turn = await self.policy.turn(
                    self.messages, openai_tools, spec.sampling, min(left, limits.model_timeout_s)
                )
            except TimeoutError as err:
                self.times.model_s += time.perf_counter() - t0
                if self._left() <= 0.05:
                    raise _Stop(F.FAILURE_CATEGORY_TIME_BUDGET, str(err)) from None
                raise _Stop(F.FAILURE_CATEGORY_MODEL_ERROR, str(err)) from None
            except ModelError as err:
                self.times.model_s += time.perf_counter() - t0
                raise _Stop(F.FAILURE_CATEGORY_MODEL_ERROR, str(err)) from None
            self.times.model_s += time.perf_counter() - t0
            self.iterations += 1
            self.prompt_tokens += turn.prompt_tokens
            self.completion_tokens += turn.completion_tokens
            if spec.protocol == proto.NATIVE:
                done = await self._native_turn(turn, turn_start)
            else:
                done = await self._json_turn(turn, turn_start)
            if done:
                self.finished_normally = True
                return

    def _assistant_step(self, turn: ModelTurn, started: Timestamp) -> tpb.Step:
        message: dict[str, Any] = {"role": "assistant", "content": turn.content}
        if turn.tool_calls:
            message["tool_calls"] = turn.tool_calls
        self.messages.append(message)
        return self._add(
            tpb.ROLE_ASSISTANT,
            turn.content,
            start_time=started,
            duration=_dur(turn.latency_s),
            usage=common_pb2.TokenUsage(
                prompt_tokens=turn.prompt_tokens, completion_tokens=turn.completion_tokens
            ),
            finish_reason=turn.finish_reason,
            **turn.step_fields(),
        )

    def _parse_failed(self, step: tpb.Step, err: proto.TurnParseError) -> None:
        step.parse_error.CopyFrom(tpb.ParseError(kind=err.kind, message=err.message))
        self.parse_errors += 1
        self.consecutive_parse_errors += 1

    def _check_parse_budget(self) -> None:
        limit = self.spec.limits.max_consecutive_parse_errors
        if self.consecutive_parse_errors >= limit:
            raise _Stop(F.FAILURE_CATEGORY_PARSE_ERRORS, f"{limit} parse errors in a row")

    def _is_loop(self, action: proto.Action, step: tpb.Step) -> bool:
        self.call_history.append(proto.call_signature(action))
        if proto.detect_loop(self.call_history):
            step.loop_detected = True
            self.loop_detections += 1
            return True
        return False

    def _loop_budget(self) -> None:
        if self.loop_detections >= self.spec.limits.max_loop_detections:
            raise _Stop(F.FAILURE_CATEGORY_LOOP, f"{self.loop_detections} loop detections")

    async def _execute(self, action: proto.Action) -> tuple[ToolOutcome, tpb.DriverTestRun | None, str]:
        """Run one parsed call. Returns (outcome, test run to attach, extra text for the message).

        Raises ToolArgumentError for bad arguments (the caller records a parse error)."""
        if self.workspace is not None:
            outcome = self.workspace.run(action.name, action.args)
            if outcome.written:
                self.wrote = True
                if self.spec.test_policy == run_pb2.TEST_POLICY_AFTER_WRITE:
                    verdict = await self._tests(tpb.TEST_TRIGGER_AFTER_WRITE)
                    if verdict.run.total:
                        self.best_test_fraction = max(
                            self.best_test_fraction, verdict.run.passed / verdict.run.total
                        )
                    self.failed_runs += int(not verdict.resolved)
                    return outcome, verdict.run, test_summary(verdict)
            return outcome, None, ""
        assert isinstance(self.task, IoTask)
        if action.name == "submit":
            self.final_code = submit_args(action.args)
            return ToolOutcome("submitted"), None, ""
        code, index = io_run_args(action.args, len(self.task.inputs))
        self.last_code = code
        started = time.perf_counter()
        try:
            verdict, cases = await self.sandbox.judge(
                self.task, code, [index], tpb.TEST_TRIGGER_RUN_CODE, self.deadline
            )
        finally:
            self.times.sandbox_s += time.perf_counter() - started
        self.sandbox_info = verdict
        verdict.run.trigger = tpb.TEST_TRIGGER_RUN_CODE
        if cases and cases[0].verdict == sandbox_pb2.VERDICT_PASSED:
            self.cases_passed.add(index)
        else:
            self.failed_runs += 1
        return _case_feedback(index, cases, self.task, verdict.timeout), verdict.run, ""

    async def _run_call(
        self, action: proto.Action, step: tpb.Step
    ) -> tuple[ToolOutcome, tpb.DriverTestRun | None, str]:
        try:
            result = await self._execute(action)
        except ToolArgumentError as err:
            self._parse_failed(step, proto.TurnParseError(tpb.PARSE_ERROR_KIND_BAD_ARGUMENTS, str(err)))
            return ToolOutcome("", tpb.TOOL_RESULT_STATUS_REJECTED, str(err)), None, ""
        except SandboxError as err:
            raise _Stop(F.FAILURE_CATEGORY_SANDBOX_ERROR, str(err)) from None
        except TimeoutError as err:
            raise _Stop(F.FAILURE_CATEGORY_TIME_BUDGET, str(err)) from None
        self.consecutive_parse_errors = 0
        if result[0].status != tpb.TOOL_RESULT_STATUS_REJECTED:
            self.tool_calls_executed += 1
        return result

    def _result_proto(self, action: proto.Action, outcome: ToolOutcome) -> tpb.ToolResult:
        return tpb.ToolResult(
            tool_call_id=action.call_id,
            tool_name=action.name,
            status=outcome.status,
            error=outcome.error,
            output_truncated=outcome.truncated,
            written_paths=outcome.written,
            error_category=outcome.category,
        )

    async def _json_turn(self, turn: ModelTurn, started: Timestamp) -> bool:
        step = self._assistant_step(turn, started)
        call_id = f"call-{step.index}"
        try:
            action = proto.parse_json_turn(turn.content, self.tool_names, call_id=call_id, io=self.io)
        except proto.TurnParseError as err:
            if isinstance(err, proto.UnknownTool):
                step.tool_calls.append(
                    tpb.ToolCall(id=call_id, name=err.action.name, arguments_json=err.action.arguments_json)
                )
            self._parse_failed(step, err)
            self._send(
                "user",
                proto.corrective_message(err.message, self.spec.protocol),
                tpb.ROLE_USER,
                tool_result=tpb.ToolResult(
                    tool_call_id=call_id, status=tpb.TOOL_RESULT_STATUS_REJECTED, error=err.message
                ),
            )
            self._check_parse_budget()
            return False
        if action.kind == "final":
            self.consecutive_parse_errors = 0
            if self.io:
                self.final_code = action.code
            return True
        step.tool_calls.append(
            tpb.ToolCall(id=call_id, name=action.name, arguments_json=action.arguments_json)
        )
        if self._is_loop(action, step):
            text = (
                f"{proto.TOOL_RESULT_PREFIX}\nerror: loop detected: this call repeats your earlier calls "
                "with the same arguments. Do something different."
            )
            self._send(
                "user",
                text,
                tpb.ROLE_USER,
                tool_result=tpb.ToolResult(
                    tool_call_id=call_id,
                    tool_name=action.name,
                    status=tpb.TOOL_RESULT_STATUS_REJECTED,
                    error="loop detected",
                ),
            )
            self._loop_budget()
            return False
        t0 = time.perf_counter()
        outcome, test_run, extra = await self._run_call(action, step)
        body = outcome.shown()
        if step.HasField("parse_error"):
            text = proto.corrective_message(outcome.error, self.spec.protocol)
        else:
            text = f"{proto.TOOL_RESULT_PREFIX}\n{body}"
        if extra:
            text += f"\n{extra}"
        msg_step = self._send(
            "user",
            text,
            tpb.ROLE_USER,
            tool_result=self._result_proto(action, outcome),
            duration=_dur(time.perf_counter() - t0),
        )
        if test_run is not None:
            msg_step.test_run.CopyFrom(test_run)
        if step.HasField("parse_error"):
            self._check_parse_budget()
        return False

    async def _native_turn(self, turn: ModelTurn, started: Timestamp) -> bool:
        step = self._assistant_step(turn, started)
        if not turn.tool_calls:
            self.consecutive_parse_errors = 0
            if self.io and self.final_code is None:
                self.final_code = self.last_code
            return True
        for n, call in enumerate(turn.tool_calls):
            if not call.get("id"):
                call["id"] = f"call-{step.index}-{n}"
        submitted = False
        pending_tests: tpb.DriverTestRun | None = None
        last_tool_step: tpb.Step | None = None
        extras: list[str] = []
        for call in turn.tool_calls:
            call_id = call["id"]
            fn = call.get("function") or {}
            step.tool_calls.append(
                tpb.ToolCall(id=call_id, name=fn.get("name") or "", arguments_json=fn.get("arguments") or "")
            )
            t0 = time.perf_counter()
            try:
                action = proto.parse_native_call(call, self.tool_names)
            except proto.TurnParseError as err:
                if not step.HasField("parse_error"):  # one parse error per turn, however many calls
                    self._parse_failed(step, err)
                action = proto.Action("call", call_id=call_id, name=fn.get("name") or "")
                outcome: ToolOutcome = ToolOutcome("", tpb.TOOL_RESULT_STATUS_REJECTED, err.message)
                test_run = None
            else:
                if self._is_loop(action, step):
                    outcome, test_run = (
                        ToolOutcome(
                            "",
                            tpb.TOOL_RESULT_STATUS_REJECTED,
                            "loop detected: this call repeats your earlier calls; do something different",
                        ),
                        None,
                    )
                else:
                    outcome, test_run, extra = await self._run_call(action, step)
                    if extra:
                        extras.append(extra)
                    if action.name == "submit" and outcome.status == tpb.TOOL_RESULT_STATUS_OK:
                        submitted = True
            content = outcome.shown()
            self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})
            last_tool_step = self._add(
                tpb.ROLE_TOOL,
                content,
                tool_call_id=call_id,
                start_time=now(),
                tool_result=self._result_proto(action, outcome),
                duration=_dur(time.perf_counter() - t0),
            )
            if test_run is not None:
                last_tool_step.test_run.CopyFrom(test_run)
                pending_tests = test_run
        if extras and last_tool_step is not None:
            joined = "\n".join(extras)
            last_tool_step.content += f"\n{joined}"
            self.messages[-1]["content"] += f"\n{joined}"
            if pending_tests is not None:
                last_tool_step.test_run.CopyFrom(pending_tests)
        if step.HasField("parse_error"):
            self._check_parse_budget()
        if step.loop_detected:
            self._loop_budget()
        return submitted

    # ------------------------------------------------------------------------------ outcome

    async def _outcome(self, stop: _Stop | None) -> tpb.Outcome:
        """The outcome (see the module's rules) with the episode's reward."""
        out = await self._judge(stop)
        if self.io:
            cases = len(self.task.inputs) if isinstance(self.task, IoTask) else 0
            test_runs = len(self.cases_passed) / cases if cases else 0.0
        else:
            test_runs = self.best_test_fraction
        facts = EpisodeFacts(
            resolved=out.resolved,
            tests_passed=out.tests_passed,
            tests_total=out.tests_total,
            failure_category=out.failure_category,
            failure_detail=out.failure_detail,
            test_runs=test_runs,
            tool_calls_executed=self.tool_calls_executed,
            failed_runs=self.failed_runs,
            parse_errors=self.parse_errors,
        )
        detail = episode_reward(facts, self.spec.reward)
        out.reward_detail.CopyFrom(detail)
        out.reward = detail.total
        return out

    async def _judge(self, stop: _Stop | None) -> tpb.Outcome:
        out = tpb.Outcome()
        infra = stop is not None and stop.category in (
            F.FAILURE_CATEGORY_MODEL_ERROR,
            F.FAILURE_CATEGORY_SANDBOX_ERROR,
        )
        if self.io and self.final_code is None:
            self.final_code = self.last_code
        changed = (
            bool(self.workspace.changed()) if self.workspace is not None else self.final_code is not None
        )
        if self.workspace is not None:
            out.final_patch = self.workspace.patch()
        verdict: TestVerdict | None = None
        if changed and not (stop is not None and stop.category == F.FAILURE_CATEGORY_SANDBOX_ERROR):
            # The final tests decide the outcome, whatever stopped the episode; they get their
            # own time (the episode's budget may be spent) so a verdict is always reached, even
            # when every run is stopped at its limit.
            runs = len(self.task.inputs) if isinstance(self.task, IoTask) else 1
            own = 120.0 + runs * self.sandbox.limits_for(self.task).wall_time_s
            self.deadline = max(self.deadline, time.monotonic() + own)
            try:
                verdict = await self._tests(tpb.TEST_TRIGGER_FINAL)
            except (SandboxError, TimeoutError) as err:
                stop = _Stop(F.FAILURE_CATEGORY_SANDBOX_ERROR, f"final tests: {err}")
                infra = True
        if verdict is not None:
            out.tests_passed = verdict.run.passed
            out.tests_total = verdict.run.total
            if self.finished_normally and self.spec.test_policy == run_pb2.TEST_POLICY_END:
                summary = test_summary(verdict, io=self.io)
                self._send("user", summary, tpb.ROLE_USER, test_run=verdict.run)
        resolved = verdict is not None and verdict.resolved and not infra
        out.resolved = resolved
        if resolved:
            return out
        if infra:
            assert stop is not None
            out.failure_category, out.failure_detail = stop.category, stop.detail
        elif verdict is not None and set(verdict.findings) & TAMPERING:
            out.failure_category = F.FAILURE_CATEGORY_INTEGRITY
            out.failure_detail = ", ".join(verdict.findings)
        elif not changed:
            out.failure_category = F.FAILURE_CATEGORY_NO_CHANGE
            out.failure_detail = "no file was changed" if not self.io else "no program was written"
            if stop is not None:
                out.failure_detail += f"; stopped: {stop.detail}"
        elif stop is not None:
            out.failure_category, out.failure_detail = stop.category, stop.detail
        elif verdict is not None and verdict.timeout:
            out.failure_category = F.FAILURE_CATEGORY_TIMEOUT
            what = "cases" if self.io else "tests"
            out.failure_detail = (
                f"{'a case' if self.io else 'the test run'} was stopped at {verdict.timeout}; "
                f"{verdict.run.passed}/{verdict.run.total} {what} passed"
            )
        elif self.io:
            assert verdict is not None
            out.failure_category = (
                F.FAILURE_CATEGORY_WRONG_ANSWER
                if verdict.run.error_category
                in (common_pb2.ERROR_CATEGORY_WRONG_ANSWER, common_pb2.ERROR_CATEGORY_UNSPECIFIED)
                else F.FAILURE_CATEGORY_RUNTIME_ERROR
            )
            out.failure_detail = f"{verdict.run.passed}/{verdict.run.total} cases passed"
        else:
            assert verdict is not None
            out.failure_category = F.FAILURE_CATEGORY_TESTS_FAILED
            out.failure_detail = f"{verdict.run.passed}/{verdict.run.total} tests passed" + (
                f"; first failure: {verdict.first_failure}" if verdict.first_failure else ""
            )
        return out

    def _trajectory(self, start_ts: Timestamp, outcome: tpb.Outcome) -> tpb.Trajectory:
        spec = self.spec
        traj = tpb.Trajectory(
            id=spec.trajectory_id,
            task=tpb.TaskRef(
                suite=spec.suite,
                suite_version=spec.suite_version,
                task_id=self.task.id,
                split=self.task.split,
                kind=self.task.kind,
            ),
            policy=spec.policy_info,
            teacher_kind=spec.teacher_kind,
            tool_protocol=spec.protocol,
            tools=[t.to_proto() for t in self.tools],
            steps=self.steps,
            outcome=outcome,
            run_id=spec.run_id,
            attempt=spec.attempt,
            start_time=start_ts,
            end_time=now(),
            labels=spec.labels,
        )
        if self.sandbox_info is not None and self.sandbox_info.backend:
            traj.sandbox.CopyFrom(
                tpb.SandboxRef(
                    backend=self.sandbox_info.backend,
                    image=self.sandbox_info.image,
                    runner_version=self.sandbox_info.runner_version,
                )
            )
        return traj


def _case_feedback(
    index: int, cases: list[sandbox_pb2.CaseResult], task: IoTask, timeout: str = ""
) -> ToolOutcome:
    if not cases:
        return ToolOutcome("", tpb.TOOL_RESULT_STATUS_ERROR, "the judge returned no result")
    case = cases[0]
    if case.verdict == sandbox_pb2.VERDICT_PASSED:
        return ToolOutcome(f"test case {index}: PASSED")
    verdict = sandbox_pb2.Verdict.Name(case.verdict).removeprefix("VERDICT_")
    category = common_pb2.ErrorCategory.Name(case.error_category).removeprefix("ERROR_CATEGORY_")
    lines = [f"test case {index}: {verdict} ({category})", f"input:\n{task.inputs[index][:500]}"]
    if timeout:
        lines.insert(1, f"the program timed out: it was stopped at {timeout}")
    if case.diff:
        lines.append(f"diff (expected vs got):\n{case.diff[:1200]}")
    stderr = case.execution.stderr.strip()
    if stderr:
        lines.append(f"stderr:\n{stderr[-800:]}")
    if case.debug_hint:
        lines.append(f"hint: {case.debug_hint}")
    return ToolOutcome(
        "\n".join(lines),
        tpb.TOOL_RESULT_STATUS_ERROR,
        f"{verdict} ({category})",
        category=case.error_category,
    )


def episode_result(traj: tpb.Trajectory) -> run_pb2.EpisodeResult:
    """The summary streamed by WatchRun and counted by runs and evaluations."""
    assistant = [s for s in traj.steps if s.role == tpb.ROLE_ASSISTANT]
    usage = common_pb2.TokenUsage(
        prompt_tokens=sum(s.usage.prompt_tokens for s in assistant),
        completion_tokens=sum(s.usage.completion_tokens for s in assistant),
    )
    wall = _dur((traj.end_time.ToNanoseconds() - traj.start_time.ToNanoseconds()) / 1e9)
    return run_pb2.EpisodeResult(
        model=traj.policy.model,
        task_id=traj.task.task_id,
        attempt=traj.attempt,
        trajectory_id=traj.id,
        resolved=traj.outcome.resolved,
        failure_category=traj.outcome.failure_category,
        steps=len(assistant),
        parse_errors=sum(s.HasField("parse_error") for s in assistant),
        loop_detections=sum(s.loop_detected for s in assistant),
        wrote_file=any(s.tool_result.written_paths for s in traj.steps),
        usage=usage,
        wall_time=wall,
        reward=traj.outcome.reward,
        reward_masked=traj.outcome.reward_detail.masked,
    )
