import datetime

from flywheel.common.v1 import common_pb2 as _common_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Language(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LANGUAGE_UNSPECIFIED: _ClassVar[Language]
    LANGUAGE_PYTHON: _ClassVar[Language]

class ExecutionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_STATUS_UNSPECIFIED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_OK: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_RUNTIME_ERROR: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_WALL_TIMEOUT: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_CPU_TIMEOUT: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_MEMORY_LIMIT: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_OUTPUT_LIMIT: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_FILE_SIZE_LIMIT: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_PROCESS_LIMIT: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_SANDBOX_ERROR: _ClassVar[ExecutionStatus]

class OutputStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_STREAM_UNSPECIFIED: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDOUT: _ClassVar[OutputStream]
    OUTPUT_STREAM_STDERR: _ClassVar[OutputStream]

class WhitespaceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WHITESPACE_MODE_UNSPECIFIED: _ClassVar[WhitespaceMode]
    WHITESPACE_MODE_EXACT: _ClassVar[WhitespaceMode]
    WHITESPACE_MODE_TRAILING: _ClassVar[WhitespaceMode]
    WHITESPACE_MODE_TOKENS: _ClassVar[WhitespaceMode]

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_PASSED: _ClassVar[Verdict]
    VERDICT_WRONG_ANSWER: _ClassVar[Verdict]
    VERDICT_RUNTIME_ERROR: _ClassVar[Verdict]
    VERDICT_TIMEOUT: _ClassVar[Verdict]
    VERDICT_MEMORY_LIMIT: _ClassVar[Verdict]
    VERDICT_RESOURCE_LIMIT: _ClassVar[Verdict]
    VERDICT_SKIPPED: _ClassVar[Verdict]
    VERDICT_SANDBOX_ERROR: _ClassVar[Verdict]

class TestOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEST_OUTCOME_UNSPECIFIED: _ClassVar[TestOutcome]
    TEST_OUTCOME_PASSED: _ClassVar[TestOutcome]
    TEST_OUTCOME_FAILED: _ClassVar[TestOutcome]
    TEST_OUTCOME_ERROR: _ClassVar[TestOutcome]
    TEST_OUTCOME_SKIPPED: _ClassVar[TestOutcome]
    TEST_OUTCOME_XFAILED: _ClassVar[TestOutcome]
    TEST_OUTCOME_XPASSED: _ClassVar[TestOutcome]
    TEST_OUTCOME_MISSING: _ClassVar[TestOutcome]

class IntegrityFindingKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTEGRITY_FINDING_KIND_UNSPECIFIED: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_EXIT_BEFORE_ASSERTS: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_TEST_EDITED: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_TEST_DELETED: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_REPORT_FORGED: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_REPORT_MISSING: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_EXPECTED_TEST_MISSING: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_CONFTEST_IGNORED: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_PYTEST_TAMPERED: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_OUTCOME_FROM_CODE_UNDER_TEST: _ClassVar[IntegrityFindingKind]
    INTEGRITY_FINDING_KIND_COMPARISON_FORGED: _ClassVar[IntegrityFindingKind]
LANGUAGE_UNSPECIFIED: Language
LANGUAGE_PYTHON: Language
EXECUTION_STATUS_UNSPECIFIED: ExecutionStatus
EXECUTION_STATUS_OK: ExecutionStatus
EXECUTION_STATUS_RUNTIME_ERROR: ExecutionStatus
EXECUTION_STATUS_WALL_TIMEOUT: ExecutionStatus
EXECUTION_STATUS_CPU_TIMEOUT: ExecutionStatus
EXECUTION_STATUS_MEMORY_LIMIT: ExecutionStatus
EXECUTION_STATUS_OUTPUT_LIMIT: ExecutionStatus
EXECUTION_STATUS_FILE_SIZE_LIMIT: ExecutionStatus
EXECUTION_STATUS_PROCESS_LIMIT: ExecutionStatus
EXECUTION_STATUS_SANDBOX_ERROR: ExecutionStatus
OUTPUT_STREAM_UNSPECIFIED: OutputStream
OUTPUT_STREAM_STDOUT: OutputStream
OUTPUT_STREAM_STDERR: OutputStream
WHITESPACE_MODE_UNSPECIFIED: WhitespaceMode
WHITESPACE_MODE_EXACT: WhitespaceMode
WHITESPACE_MODE_TRAILING: WhitespaceMode
WHITESPACE_MODE_TOKENS: WhitespaceMode
VERDICT_UNSPECIFIED: Verdict
VERDICT_PASSED: Verdict
VERDICT_WRONG_ANSWER: Verdict
VERDICT_RUNTIME_ERROR: Verdict
VERDICT_TIMEOUT: Verdict
VERDICT_MEMORY_LIMIT: Verdict
VERDICT_RESOURCE_LIMIT: Verdict
VERDICT_SKIPPED: Verdict
VERDICT_SANDBOX_ERROR: Verdict
TEST_OUTCOME_UNSPECIFIED: TestOutcome
TEST_OUTCOME_PASSED: TestOutcome
TEST_OUTCOME_FAILED: TestOutcome
TEST_OUTCOME_ERROR: TestOutcome
TEST_OUTCOME_SKIPPED: TestOutcome
TEST_OUTCOME_XFAILED: TestOutcome
TEST_OUTCOME_XPASSED: TestOutcome
TEST_OUTCOME_MISSING: TestOutcome
INTEGRITY_FINDING_KIND_UNSPECIFIED: IntegrityFindingKind
INTEGRITY_FINDING_KIND_EXIT_BEFORE_ASSERTS: IntegrityFindingKind
INTEGRITY_FINDING_KIND_TEST_EDITED: IntegrityFindingKind
INTEGRITY_FINDING_KIND_TEST_DELETED: IntegrityFindingKind
INTEGRITY_FINDING_KIND_REPORT_FORGED: IntegrityFindingKind
INTEGRITY_FINDING_KIND_REPORT_MISSING: IntegrityFindingKind
INTEGRITY_FINDING_KIND_EXPECTED_TEST_MISSING: IntegrityFindingKind
INTEGRITY_FINDING_KIND_CONFTEST_IGNORED: IntegrityFindingKind
INTEGRITY_FINDING_KIND_PYTEST_TAMPERED: IntegrityFindingKind
INTEGRITY_FINDING_KIND_OUTCOME_FROM_CODE_UNDER_TEST: IntegrityFindingKind
INTEGRITY_FINDING_KIND_COMPARISON_FORGED: IntegrityFindingKind

class File(_message.Message):
    __slots__ = ("path", "text", "data", "executable")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EXECUTABLE_FIELD_NUMBER: _ClassVar[int]
    path: str
    text: str
    data: bytes
    executable: bool
    def __init__(self, path: _Optional[str] = ..., text: _Optional[str] = ..., data: _Optional[bytes] = ..., executable: _Optional[bool] = ...) -> None: ...

class Program(_message.Message):
    __slots__ = ("language", "files", "source", "entrypoint", "args", "command", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    language: Language
    files: _containers.RepeatedCompositeFieldContainer[File]
    source: str
    entrypoint: str
    args: _containers.RepeatedScalarFieldContainer[str]
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    def __init__(self, language: _Optional[_Union[Language, str]] = ..., files: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., source: _Optional[str] = ..., entrypoint: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("wall_time", "cpu_time", "memory_bytes", "max_processes", "output_bytes", "file_size_bytes", "max_open_files", "workspace_bytes")
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_FILES_FIELD_NUMBER: _ClassVar[int]
    WORKSPACE_BYTES_FIELD_NUMBER: _ClassVar[int]
    wall_time: _duration_pb2.Duration
    cpu_time: _duration_pb2.Duration
    memory_bytes: int
    max_processes: int
    output_bytes: int
    file_size_bytes: int
    max_open_files: int
    workspace_bytes: int
    def __init__(self, wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cpu_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., memory_bytes: _Optional[int] = ..., max_processes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., file_size_bytes: _Optional[int] = ..., max_open_files: _Optional[int] = ..., workspace_bytes: _Optional[int] = ...) -> None: ...

class ResourceUsage(_message.Message):
    __slots__ = ("wall_time", "cpu_time", "peak_memory_bytes", "peak_processes", "queue_time")
    WALL_TIME_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIME_FIELD_NUMBER: _ClassVar[int]
    wall_time: _duration_pb2.Duration
    cpu_time: _duration_pb2.Duration
    peak_memory_bytes: int
    peak_processes: int
    queue_time: _duration_pb2.Duration
    def __init__(self, wall_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., cpu_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., peak_memory_bytes: _Optional[int] = ..., peak_processes: _Optional[int] = ..., queue_time: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SandboxInfo(_message.Message):
    __slots__ = ("backend", "image", "runner_version")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RUNNER_VERSION_FIELD_NUMBER: _ClassVar[int]
    backend: str
    image: str
    runner_version: str
    def __init__(self, backend: _Optional[str] = ..., image: _Optional[str] = ..., runner_version: _Optional[str] = ...) -> None: ...

class ExecutionResult(_message.Message):
    __slots__ = ("status", "exit_code", "stdout", "stdout_truncated", "stderr", "stderr_truncated", "usage", "error_category", "error_message", "sandbox")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    status: ExecutionStatus
    exit_code: int
    stdout: str
    stdout_truncated: bool
    stderr: str
    stderr_truncated: bool
    usage: ResourceUsage
    error_category: _common_pb2.ErrorCategory
    error_message: str
    sandbox: SandboxInfo
    def __init__(self, status: _Optional[_Union[ExecutionStatus, str]] = ..., exit_code: _Optional[int] = ..., stdout: _Optional[str] = ..., stdout_truncated: _Optional[bool] = ..., stderr: _Optional[str] = ..., stderr_truncated: _Optional[bool] = ..., usage: _Optional[_Union[ResourceUsage, _Mapping]] = ..., error_category: _Optional[_Union[_common_pb2.ErrorCategory, str]] = ..., error_message: _Optional[str] = ..., sandbox: _Optional[_Union[SandboxInfo, _Mapping]] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("program", "stdin", "limits")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    program: Program
    stdin: str
    limits: Limits
    def __init__(self, program: _Optional[_Union[Program, _Mapping]] = ..., stdin: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: ExecutionResult
    def __init__(self, result: _Optional[_Union[ExecutionResult, _Mapping]] = ...) -> None: ...

class ExecuteStreamRequest(_message.Message):
    __slots__ = ("program", "stdin", "limits")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    program: Program
    stdin: str
    limits: Limits
    def __init__(self, program: _Optional[_Union[Program, _Mapping]] = ..., stdin: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class ExecuteStreamResponse(_message.Message):
    __slots__ = ("output", "result")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    output: OutputChunk
    result: ExecutionResult
    def __init__(self, output: _Optional[_Union[OutputChunk, _Mapping]] = ..., result: _Optional[_Union[ExecutionResult, _Mapping]] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stream", "data", "elapsed")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    stream: OutputStream
    data: str
    elapsed: _duration_pb2.Duration
    def __init__(self, stream: _Optional[_Union[OutputStream, str]] = ..., data: _Optional[str] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class JudgeCase(_message.Message):
    __slots__ = ("input", "expected_output")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    input: str
    expected_output: str
    def __init__(self, input: _Optional[str] = ..., expected_output: _Optional[str] = ...) -> None: ...

class Comparator(_message.Message):
    __slots__ = ("whitespace", "ignore_case", "float_abs_tolerance", "float_rel_tolerance")
    WHITESPACE_FIELD_NUMBER: _ClassVar[int]
    IGNORE_CASE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_ABS_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    FLOAT_REL_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    whitespace: WhitespaceMode
    ignore_case: bool
    float_abs_tolerance: float
    float_rel_tolerance: float
    def __init__(self, whitespace: _Optional[_Union[WhitespaceMode, str]] = ..., ignore_case: _Optional[bool] = ..., float_abs_tolerance: _Optional[float] = ..., float_rel_tolerance: _Optional[float] = ...) -> None: ...

class JudgeRequest(_message.Message):
    __slots__ = ("program", "cases", "case_indices", "comparator", "limits", "stop_on_first_failure")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    CASES_FIELD_NUMBER: _ClassVar[int]
    CASE_INDICES_FIELD_NUMBER: _ClassVar[int]
    COMPARATOR_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    STOP_ON_FIRST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    program: Program
    cases: _containers.RepeatedCompositeFieldContainer[JudgeCase]
    case_indices: _containers.RepeatedScalarFieldContainer[int]
    comparator: Comparator
    limits: Limits
    stop_on_first_failure: bool
    def __init__(self, program: _Optional[_Union[Program, _Mapping]] = ..., cases: _Optional[_Iterable[_Union[JudgeCase, _Mapping]]] = ..., case_indices: _Optional[_Iterable[int]] = ..., comparator: _Optional[_Union[Comparator, _Mapping]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., stop_on_first_failure: _Optional[bool] = ...) -> None: ...

class CaseResult(_message.Message):
    __slots__ = ("index", "verdict", "error_category", "diff", "debug_hint", "execution")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    ERROR_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DIFF_FIELD_NUMBER: _ClassVar[int]
    DEBUG_HINT_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    index: int
    verdict: Verdict
    error_category: _common_pb2.ErrorCategory
    diff: str
    debug_hint: str
    execution: ExecutionResult
    def __init__(self, index: _Optional[int] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., error_category: _Optional[_Union[_common_pb2.ErrorCategory, str]] = ..., diff: _Optional[str] = ..., debug_hint: _Optional[str] = ..., execution: _Optional[_Union[ExecutionResult, _Mapping]] = ...) -> None: ...

class JudgeResponse(_message.Message):
    __slots__ = ("cases", "passed_count", "total_count", "pass_fraction", "verdict")
    CASES_FIELD_NUMBER: _ClassVar[int]
    PASSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_COUNT_FIELD_NUMBER: _ClassVar[int]
    PASS_FRACTION_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[CaseResult]
    passed_count: int
    total_count: int
    pass_fraction: float
    verdict: Verdict
    def __init__(self, cases: _Optional[_Iterable[_Union[CaseResult, _Mapping]]] = ..., passed_count: _Optional[int] = ..., total_count: _Optional[int] = ..., pass_fraction: _Optional[float] = ..., verdict: _Optional[_Union[Verdict, str]] = ...) -> None: ...

class RunTestsRequest(_message.Message):
    __slots__ = ("archive", "files", "protected_files", "targets", "expected_test_ids", "allow_conftest", "pytest_args", "limits", "env")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_FILES_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_TEST_IDS_FIELD_NUMBER: _ClassVar[int]
    ALLOW_CONFTEST_FIELD_NUMBER: _ClassVar[int]
    PYTEST_ARGS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    archive: _common_pb2.ObjectRef
    files: _containers.RepeatedCompositeFieldContainer[File]
    protected_files: _containers.RepeatedCompositeFieldContainer[File]
    targets: _containers.RepeatedScalarFieldContainer[str]
    expected_test_ids: _containers.RepeatedScalarFieldContainer[str]
    allow_conftest: bool
    pytest_args: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    env: _containers.ScalarMap[str, str]
    def __init__(self, archive: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., files: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., protected_files: _Optional[_Iterable[_Union[File, _Mapping]]] = ..., targets: _Optional[_Iterable[str]] = ..., expected_test_ids: _Optional[_Iterable[str]] = ..., allow_conftest: _Optional[bool] = ..., pytest_args: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., env: _Optional[_Mapping[str, str]] = ...) -> None: ...

class PerTestResult(_message.Message):
    __slots__ = ("test_id", "outcome", "duration", "message", "error_category")
    TEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    test_id: str
    outcome: TestOutcome
    duration: _duration_pb2.Duration
    message: str
    error_category: _common_pb2.ErrorCategory
    def __init__(self, test_id: _Optional[str] = ..., outcome: _Optional[_Union[TestOutcome, str]] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., message: _Optional[str] = ..., error_category: _Optional[_Union[_common_pb2.ErrorCategory, str]] = ...) -> None: ...

class IntegrityFinding(_message.Message):
    __slots__ = ("kind", "subject", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: IntegrityFindingKind
    subject: str
    detail: str
    def __init__(self, kind: _Optional[_Union[IntegrityFindingKind, str]] = ..., subject: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class RunTestsResponse(_message.Message):
    __slots__ = ("passed", "tests", "passed_count", "failed_count", "error_count", "skipped_count", "missing_count", "findings", "execution", "timed_out")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    TESTS_FIELD_NUMBER: _ClassVar[int]
    PASSED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_COUNT_FIELD_NUMBER: _ClassVar[int]
    MISSING_COUNT_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    tests: _containers.RepeatedCompositeFieldContainer[PerTestResult]
    passed_count: int
    failed_count: int
    error_count: int
    skipped_count: int
    missing_count: int
    findings: _containers.RepeatedCompositeFieldContainer[IntegrityFinding]
    execution: ExecutionResult
    timed_out: bool
    def __init__(self, passed: _Optional[bool] = ..., tests: _Optional[_Iterable[_Union[PerTestResult, _Mapping]]] = ..., passed_count: _Optional[int] = ..., failed_count: _Optional[int] = ..., error_count: _Optional[int] = ..., skipped_count: _Optional[int] = ..., missing_count: _Optional[int] = ..., findings: _Optional[_Iterable[_Union[IntegrityFinding, _Mapping]]] = ..., execution: _Optional[_Union[ExecutionResult, _Mapping]] = ..., timed_out: _Optional[bool] = ...) -> None: ...
