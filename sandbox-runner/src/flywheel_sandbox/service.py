"""The gRPC surface of the sandbox runner.

Thin transport: the servicer validates and maps protobuf messages to the domain code
(``runner``, ``judge``, ``testrun``, ``workspace``) and back. Isolation, limits, judging and the
pytest cross-checks live in those modules and are tested without gRPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import cast

import grpc
from google.protobuf import duration_pb2

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from flywheel_common.errors import InvalidArgument, NotFound, shown
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding
from flywheel_sandbox import judge as judging
from flywheel_sandbox import testrun
from flywheel_sandbox.classify import Category
from flywheel_sandbox.runner import RUNNER_VERSION, FileSpec, Limits, Runner, RunResult, RunSpec, Status
from flywheel_sandbox.settings import SandboxSettings
from flywheel_sandbox.workspace import (
    FileCaps,
    check_env,
    check_files,
    check_path,
    extract_archive,
    max_archive_bytes,
)

NAME = "sandbox-runner"
DESCRIPTOR = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"]
log = logging.getLogger("flywheel.sandbox")


def _seconds(d: duration_pb2.Duration) -> float:
    return d.seconds + d.nanos / 1e9


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(max(0.0, seconds) * 1e9))
    return out


# Below these a run cannot even start its interpreter (memory) or hold its workspace.
MINIMA = {"memory_bytes": 16 * 1024 * 1024, "workspace_bytes": 64 * 1024, "max_open_files": 16}


def build_limits(settings: SandboxSettings, msg: sandbox_pb2.Limits, field: str = "limits") -> Limits:
    """Request limits: zero → the configured default, negative or above the maximum → INVALID_ARGUMENT."""
    s = settings

    def pick(name: str, value: float, default: float, maximum: float) -> float:
        if value < 0:
            raise InvalidArgument(f"{field}.{name}", f"is negative ({value})")
        if value == 0:
            return default
        if value > maximum:
            raise InvalidArgument(f"{field}.{name}", f"{value:g} is above the configured maximum {maximum:g}")
        if value < MINIMA.get(name, 0):
            raise InvalidArgument(f"{field}.{name}", f"{value:g} is below the minimum {MINIMA[name]:g}")
        return value

    return Limits(
        wall_s=pick("wall_time", _seconds(msg.wall_time), s.default_wall_time_s, s.max_wall_time_s),
        cpu_s=pick("cpu_time", _seconds(msg.cpu_time), s.default_cpu_time_s, s.max_cpu_time_s),
        memory_bytes=int(pick("memory_bytes", msg.memory_bytes, s.default_memory_bytes, s.max_memory_bytes)),
        max_processes=int(
            pick("max_processes", msg.max_processes, s.default_max_processes, s.max_max_processes)
        ),
        output_bytes=int(pick("output_bytes", msg.output_bytes, s.default_output_bytes, s.max_output_bytes)),
        file_size_bytes=int(
            pick("file_size_bytes", msg.file_size_bytes, s.default_file_size_bytes, s.max_file_size_bytes)
        ),
        max_open_files=int(
            pick("max_open_files", msg.max_open_files, s.default_max_open_files, s.max_max_open_files)
        ),
        workspace_bytes=int(
            pick("workspace_bytes", msg.workspace_bytes, s.default_workspace_bytes, s.max_workspace_bytes)
        ),
    )


def _files(msgs: list[sandbox_pb2.File]) -> list[FileSpec]:
    out = []
    for f in msgs:
        data = f.data if f.WhichOneof("content") == "data" else f.text.encode("utf-8")
        out.append(FileSpec(f.path, data, f.executable))
    return out


class SandboxService(sandbox_pb2_grpc.SandboxServiceServicer):
    """``flywheel.sandbox.v1.SandboxService``."""

    def __init__(self, settings: SandboxSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps
        defaults = build_limits(settings, sandbox_pb2.Limits())
        self.runner = Runner(
            python=settings.python,
            default_limits=defaults,
            max_concurrency=settings.max_concurrency,
            queue_size=settings.queue_size,
            warm_pool_size=settings.pool_size,
            cpu_cores_per_run=settings.cpu_cores_per_run,
            unsafe_local=settings.unsafe_local,
            cgroup_version=settings.cgroup_version,
        )
        self.caps = FileCaps(settings.max_files, settings.max_file_bytes, settings.max_request_bytes)

    # --- mapping -------------------------------------------------------------------------------

    def _program(self, program: sandbox_pb2.Program, limits: Limits, field: str = "program") -> RunSpec:
        files = _files(list(program.files))
        entry = program.entrypoint or "main.py"
        if program.command:
            if program.entrypoint or program.args:
                raise InvalidArgument(f"{field}.command", "cannot be combined with entrypoint or args")
            if not program.command[0]:
                raise InvalidArgument(f"{field}.command", "its first element (the program) is empty")
        else:
            check_path(f"{field}.entrypoint", entry)
        if program.language not in (sandbox_pb2.LANGUAGE_UNSPECIFIED, sandbox_pb2.LANGUAGE_PYTHON):
            raise InvalidArgument(f"{field}.language", f"unsupported language {program.language}")
        if program.source:
            if any(f.path == entry for f in files):
                raise InvalidArgument(f"{field}.source", f"files already holds the entry file {entry!r}")
            files.append(FileSpec(entry, program.source.encode("utf-8")))
        if not files and not program.command:
            raise InvalidArgument(field, "has neither source, files nor command")
        if not program.command and not any(f.path == entry for f in files):
            raise InvalidArgument(f"{field}.entrypoint", f"{entry!r} is not among the program's files")
        check_files(f"{field}.files", files, self.caps)
        _fits_workspace(files, limits)
        env = dict(program.env)
        check_env(f"{field}.env", env)
        for i, arg in enumerate([*program.args, *program.command]):
            if "\x00" in arg:
                raise InvalidArgument(f"{field}.args[{i}]", "contains a NUL byte")
        return RunSpec(
            files=files,
            limits=limits,
            entry=entry,
            args=list(program.args),
            argv=list(program.command),
            env=env,
        )

    def _result(self, r: RunResult) -> sandbox_pb2.ExecutionResult:
        return sandbox_pb2.ExecutionResult(
            status=_status(r.status),
            exit_code=r.exit_code,
            stdout=judging.decode_output(r.stdout),
            stdout_truncated=r.stdout_truncated,
            stderr=judging.decode_output(r.stderr),
            stderr_truncated=r.stderr_truncated,
            usage=sandbox_pb2.ResourceUsage(
                wall_time=_duration(r.wall_s),
                cpu_time=_duration(r.cpu_s),
                peak_memory_bytes=r.peak_memory_bytes,
                peak_processes=r.peak_processes,
                queue_time=_duration(r.queue_s),
            ),
            error_category=_category(r.category),
            error_message=r.error_message,
            sandbox=sandbox_pb2.SandboxInfo(
                backend=r.backend, image=self.runner.image, runner_version=RUNNER_VERSION
            ),
        )

    def _exec_spec(self, request: sandbox_pb2.ExecuteRequest | sandbox_pb2.ExecuteStreamRequest) -> RunSpec:
        if not request.HasField("program"):
            raise InvalidArgument("program", "is required")
        limits = build_limits(self.settings, request.limits)
        spec = self._program(request.program, limits)
        spec.stdin = request.stdin.encode("utf-8")
        if len(spec.stdin) > self.settings.max_request_bytes:
            raise InvalidArgument(
                "stdin", f"is {len(spec.stdin)} bytes, over {self.settings.max_request_bytes}"
            )
        return spec

    async def _archive_files(self, key: str) -> list[FileSpec]:
        """The files of the request's archive, read and extracted in a worker thread within the caps.

        Never more than ``max_archive_bytes`` is read from the store, and extraction streams (see
        ``workspace.extract_archive``), so neither a huge object nor a compression bomb reaches the
        runner's memory or blocks its event loop.
        """
        limit = max_archive_bytes(self.caps)

        def fetch() -> bytes:
            with self.deps.store.open(key) as stream:
                return stream.read(limit + 1)

        try:
            blob = await asyncio.to_thread(fetch)
        except LookupError as err:
            raise NotFound(f"archive.key: no object {shown(key)} in the object store") from err
        except ValueError as err:
            raise InvalidArgument("archive.key", str(err)) from err
        if len(blob) > limit:
            raise InvalidArgument(
                "archive.key",
                f"{shown(key)} is larger than {limit} bytes, more than any archive a request may use "
                "(max_request_bytes plus tar headers)",
            )
        return await asyncio.to_thread(extract_archive, "archive", key, blob, self.caps)

    # --- RPCs ----------------------------------------------------------------------------------

    async def Execute(
        self, request: sandbox_pb2.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> sandbox_pb2.ExecuteResponse:
        spec = self._exec_spec(request)
        result = await self.runner.execute(spec)
        # Decoding up to 2 x 64 MiB of output is CPU work: off the event loop (see decode_output).
        return sandbox_pb2.ExecuteResponse(result=await asyncio.to_thread(self._result, result))

    async def ExecuteStream(
        self, request: sandbox_pb2.ExecuteStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sandbox_pb2.ExecuteStreamResponse]:
        spec = self._exec_spec(request)
        chunks: asyncio.Queue[sandbox_pb2.ExecuteStreamResponse | None] = asyncio.Queue()
        streams = {"stdout": sandbox_pb2.OUTPUT_STREAM_STDOUT, "stderr": sandbox_pb2.OUTPUT_STREAM_STDERR}

        async def on_output(stream: str, text: str, elapsed: float) -> None:
            chunk = sandbox_pb2.OutputChunk(stream=streams[stream], data=text, elapsed=_duration(elapsed))
            await chunks.put(sandbox_pb2.ExecuteStreamResponse(output=chunk))

        async def run() -> RunResult:
            try:
                return await self.runner.execute(spec, on_output)
            finally:
                await chunks.put(None)

        task = asyncio.ensure_future(run())
        try:
            while (item := await chunks.get()) is not None:
                yield item
            result = await task
            yield sandbox_pb2.ExecuteStreamResponse(result=await asyncio.to_thread(self._result, result))
        finally:
            if not task.done():
                task.cancel()  # the caller went away: cancelling the run kills its sandbox
                await asyncio.gather(task, return_exceptions=True)

    async def Judge(
        self, request: sandbox_pb2.JudgeRequest, context: grpc.aio.ServicerContext
    ) -> sandbox_pb2.JudgeResponse:
        if not request.HasField("program"):
            raise InvalidArgument("program", "is required")
        if not request.cases:
            raise InvalidArgument("cases", "needs at least one case")
        if len(request.cases) > self.settings.max_judge_cases:
            raise InvalidArgument(
                "cases", f"has {len(request.cases)} cases, at most {self.settings.max_judge_cases}"
            )
        for i in request.case_indices:
            if not 0 <= i < len(request.cases):
                raise InvalidArgument(
                    "case_indices", f"{i} is out of range (there are {len(request.cases)} cases)"
                )
        c = request.comparator
        if c.float_abs_tolerance < 0 or c.float_rel_tolerance < 0:
            raise InvalidArgument("comparator", "tolerances must be >= 0")
        ws = c.whitespace or sandbox_pb2.WHITESPACE_MODE_TRAILING
        if ws not in (1, 2, 3):
            raise InvalidArgument("comparator.whitespace", f"unknown mode {ws}")
        cmp = judging.Comparator(
            judging.Whitespace(ws), c.ignore_case, c.float_abs_tolerance, c.float_rel_tolerance
        )
        limits = build_limits(self.settings, request.limits)
        spec = self._program(request.program, limits)
        cases = [judging.Case(k.input, k.expected_output) for k in request.cases]
        total_input = sum(len(k.input) for k in cases)
        if total_input > self.settings.max_request_bytes:
            raise InvalidArgument(
                "cases", f"inputs total {total_input} bytes, over {self.settings.max_request_bytes}"
            )
        outcome = await judging.judge(
            self.runner,
            spec,
            cases,
            list(request.case_indices),
            cmp,
            request.stop_on_first_failure,
            parallel=self.settings.max_concurrency,
        )
        return sandbox_pb2.JudgeResponse(
            cases=[
                sandbox_pb2.CaseResult(
                    index=o.index,
                    verdict=_verdict(o.verdict),
                    error_category=_category(o.category),
                    diff=o.diff,
                    debug_hint=o.debug_hint,
                    execution=self._result(o.result) if o.result is not None else None,
                )
                for o in outcome.cases
            ],
            passed_count=outcome.passed,
            total_count=outcome.total,
            pass_fraction=outcome.pass_fraction,
            verdict=_verdict(outcome.verdict),
        )

    async def RunTests(
        self, request: sandbox_pb2.RunTestsRequest, context: grpc.aio.ServicerContext
    ) -> sandbox_pb2.RunTestsResponse:
        limits = build_limits(self.settings, request.limits)
        files: list[FileSpec] = []
        if request.HasField("archive") and request.archive.key:
            files = await self._archive_files(request.archive.key)
        overlay = _files(list(request.files))
        check_files("files", overlay, self.caps)
        merged = {f.path: f for f in files}
        merged.update({f.path: f for f in overlay})
        protected = _files(list(request.protected_files))
        check_files("protected_files", protected, self.caps)
        all_files = list(merged.values())
        check_files("files", all_files, self.caps, already=sum(len(p.data) for p in protected))
        _fits_workspace([*all_files, *protected], limits)
        workspace_paths = [*merged, *(p.path for p in protected)]
        for i, t in enumerate(request.targets):
            problem = testrun.target_problem(t, workspace_paths)
            if problem is not None:
                raise InvalidArgument(f"targets[{i}]", problem)
        for i, arg in enumerate(request.pytest_args):
            if testrun.forbidden_arg(arg):
                raise InvalidArgument(
                    f"pytest_args[{i}]", f"{arg!r} changes collection or reporting and is not allowed"
                )
        env = dict(request.env)
        check_env("env", env)
        for name in env:
            if name.startswith(testrun.FORBIDDEN_ENV_PREFIXES):
                raise InvalidArgument(
                    f"env[{name!r}]", "changes how Python or pytest start and is not allowed here"
                )
        outcome = await testrun.run_tests(
            self.runner,
            files=all_files,
            protected=protected,
            targets=list(request.targets),
            expected_ids=list(request.expected_test_ids),
            allow_conftest=request.allow_conftest,
            pytest_args=list(request.pytest_args),
            limits=limits,
            env=env,
        )
        counts = outcome.counts
        return sandbox_pb2.RunTestsResponse(
            passed=outcome.passed,
            tests=[
                sandbox_pb2.PerTestResult(
                    test_id=t.test_id,
                    outcome=_outcome(t.outcome),
                    duration=_duration(t.duration_s),
                    message=t.message,
                    error_category=_category(t.category),
                )
                for t in outcome.tests
            ],
            passed_count=counts[testrun.Outcome.PASSED] + counts[testrun.Outcome.XFAILED],
            failed_count=counts[testrun.Outcome.FAILED] + counts[testrun.Outcome.XPASSED],
            error_count=counts[testrun.Outcome.ERROR],
            skipped_count=counts[testrun.Outcome.SKIPPED],
            missing_count=counts[testrun.Outcome.MISSING],
            findings=[
                sandbox_pb2.IntegrityFinding(
                    kind=_finding(f.kind),
                    subject=f.subject,
                    detail=f.detail,
                )
                for f in outcome.findings
            ],
            execution=self._result(outcome.execution),
            timed_out=outcome.timed_out,
        )


def _fits_workspace(files: list[FileSpec], limits: Limits) -> None:
    total = sum(len(f.data) for f in files)
    if total > limits.workspace_bytes:
        raise InvalidArgument(
            "limits.workspace_bytes",
            f"the workspace ({limits.workspace_bytes} bytes) cannot hold the files ({total} bytes)",
        )


# The runner's enums mirror the proto enums name for name. EnumTypeWrapper.Value() is typed as
# returning a plain int; the number it returns is a member of the enum it was called on, hence
# the casts.


def _status(status: Status) -> sandbox_pb2.ExecutionStatus:
    value = sandbox_pb2.ExecutionStatus.Value(f"EXECUTION_STATUS_{status.name}")
    return cast(sandbox_pb2.ExecutionStatus, value)


def _verdict(verdict: judging.Verdict) -> sandbox_pb2.Verdict:
    return cast(sandbox_pb2.Verdict, sandbox_pb2.Verdict.Value(f"VERDICT_{verdict.name}"))


def _outcome(outcome: testrun.Outcome) -> sandbox_pb2.TestOutcome:
    return cast(sandbox_pb2.TestOutcome, sandbox_pb2.TestOutcome.Value(f"TEST_OUTCOME_{outcome.name}"))


def _finding(kind: testrun.Finding) -> sandbox_pb2.IntegrityFindingKind:
    value = sandbox_pb2.IntegrityFindingKind.Value(f"INTEGRITY_FINDING_KIND_{kind.name}")
    return cast(sandbox_pb2.IntegrityFindingKind, value)


def _category(cat: Category) -> common_pb2.ErrorCategory:
    return cast(common_pb2.ErrorCategory, common_pb2.ErrorCategory.Value(f"ERROR_CATEGORY_{cat.name}"))


def build_app(settings: SandboxSettings) -> GrpcApp:
    """The service's gRPC app; start-up checks the isolation (refusing to serve without it)."""
    deps = Dependencies(settings, NAME, events=False, objects=True)
    servicer = SandboxService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, sandbox_pb2_grpc.add_SandboxServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    app.on_startup.append(servicer.runner.start)
    app.on_shutdown.append(servicer.runner.close)
    return app
