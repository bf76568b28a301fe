"""The agent's tools and the in-memory workspace they act on.

A repo episode's workspace is a dict of path → text, never a host folder: the model's file
tools run here, in the orchestrator, at memory speed and with no way to touch the host, and only
the tests run in the sandbox (with the workspace's files sent along). Every argument is checked,
and a bad one comes back as a :class:`ToolArgumentError` that the driver turns into a parse
error of kind BAD_ARGUMENTS with a corrective message.
"""

from __future__ import annotations

import difflib
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import regex  # the `regex` package: like `re`, plus a timeout, so a model's pattern cannot hang us

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb


class ToolArgumentError(ValueError):
    """The call's arguments are missing, of the wrong type or not allowed (e.g. a path escape)."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    schema: dict[str, Any]

    def to_proto(self) -> tpb.ToolDefinition:
        return tpb.ToolDefinition(
            name=self.name,
            description=self.description,
            parameters_json_schema=json.dumps(self.schema, sort_keys=True),
        )

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.schema},
        }


def _schema(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


REPO_TOOLS = (
    ToolSpec(
        "list_files",
        "List the files under a folder of the repository.",
        _schema(
            {
                "rel_dir": {
                    "type": "string",
                    "description": "Folder relative to the repository root; '.' is the root.",
                },
                "max_files": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "At most this many paths (default 200).",
                },
            },
            [],
        ),
    ),
    ToolSpec(
        "read_file",
        "Read a text file of the repository.",
        _schema(
            {
                "rel_path": {"type": "string", "description": "File path relative to the repository root."},
                "max_chars": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "Return at most this many characters.",
                },
            },
            ["rel_path"],
        ),
    ),
    ToolSpec(
        "grep",
        "Search the repository's files for a regular expression; returns path:line: text.",
        _schema(
            {
                "pattern": {"type": "string", "description": "Python regular expression."},
                "rel_dir": {"type": "string", "description": "Folder to search (default '.')."},
                "max_matches": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "At most this many matches (default 50).",
                },
            },
            ["pattern"],
        ),
    ),
    ToolSpec(
        "write_file",
        "Replace (or create) a file of the repository with the given full content.",
        _schema(
            {
                "rel_path": {"type": "string", "description": "File path relative to the repository root."},
                "content": {"type": "string", "description": "The complete new content of the file."},
            },
            ["rel_path", "content"],
        ),
    ),
)

IO_TOOLS = (
    ToolSpec(
        "run_code",
        "Run a complete Python program on one of the problem's test cases; the judge says whether "
        "its output is right and, if not, why.",
        _schema(
            {
                "code": {
                    "type": "string",
                    "description": "The complete Python 3 program (reads stdin, writes stdout).",
                },
                "test_case_index": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "0-based index of the test case.",
                },
            },
            ["code", "test_case_index"],
        ),
    ),
)

#: Native protocol only: the final answer of an I/O problem is a call, as tool-calling models expect.
SUBMIT_TOOL = ToolSpec(
    "submit",
    "Submit the final program; it is judged on every test case and the episode ends.",
    _schema({"code": {"type": "string", "description": "The complete Python 3 program."}}, ["code"]),
)


def _arg(args: dict[str, Any], name: str, kind: type, *, default: Any = None, required: bool = False) -> Any:
    if name not in args or args[name] is None:
        if required:
            raise ToolArgumentError(f"argument `{name}` is required")
        return default
    value = args[name]
    if kind is int and isinstance(value, bool):
        raise ToolArgumentError(f"argument `{name}` must be an integer")
    if not isinstance(value, kind):
        raise ToolArgumentError(f"argument `{name}` must be {'a string' if kind is str else 'an integer'}")
    return value


def check_path(value: str, *, what: str = "rel_path", allow_root: bool = False) -> str:
    """A workspace-relative POSIX path, or ToolArgumentError naming why it is refused."""
    if "\x00" in value or "\\" in value:
        raise ToolArgumentError(f"`{what}` {value!r} contains a NUL or a backslash")
    if value.startswith(("/", "~")) or (len(value) > 1 and value[1] == ":"):
        raise ToolArgumentError(f"`{what}` {value!r} must be relative to the repository root")
    norm = posixpath.normpath(value or ".")
    if norm == ".." or norm.startswith("../"):
        raise ToolArgumentError(f"`{what}` {value!r} escapes the repository")
    if norm == "." and not allow_root:
        raise ToolArgumentError(f"`{what}` must name a file, not the repository root")
    return norm


@dataclass
class ToolOutcome:
    """What one tool call returned, before it is shown to the model."""

    output: str
    status: tpb.ToolResultStatus = tpb.TOOL_RESULT_STATUS_OK
    error: str = ""
    truncated: bool = False
    written: list[str] = field(default_factory=list)
    #: code runs judged by the sandbox: the ErrorCategory of a failure
    category: common_pb2.ErrorCategory = common_pb2.ERROR_CATEGORY_UNSPECIFIED

    def shown(self) -> str:
        """The text the model sees: the output, or the error when there is none."""
        return self.output if self.output or not self.error else f"error: {self.error}"


@dataclass
class Workspace:
    """The files of one repo episode, starting from the task's snapshot."""

    files: dict[str, str]
    original: dict[str, str] = field(default_factory=dict)
    max_output_chars: int = 6000
    grep_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        if not self.original:
            self.original = dict(self.files)

    def _cut(self, text: str, limit: int | None = None) -> tuple[str, bool]:
        cap = min(limit or self.max_output_chars, self.max_output_chars)
        if len(text) <= cap:
            return text, False
        return text[:cap] + f"\n… [truncated: {len(text) - cap} more characters]", True

    def changed(self) -> list[str]:
        paths = set(self.files) | set(self.original)
        return sorted(p for p in paths if self.files.get(p) != self.original.get(p))

    def patch(self) -> str:
        """Unified diff of the workspace against the snapshot (the trajectory's final_patch)."""
        chunks: list[str] = []
        for path in self.changed():
            before = self.original.get(path, "").splitlines(keepends=True)
            after = self.files.get(path, "").splitlines(keepends=True)
            chunks.extend(difflib.unified_diff(before, after, f"a/{path}", f"b/{path}"))
        return "".join(chunks)

    def run(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        if name == "list_files":
            return self.list_files(args)
        if name == "read_file":
            return self.read_file(args)
        if name == "grep":
            return self.grep(args)
        if name == "write_file":
            return self.write_file(args)
        raise KeyError(name)

    def _under(self, rel_dir: str) -> list[str]:
        if rel_dir == ".":
            return sorted(self.files)
        prefix = rel_dir.rstrip("/") + "/"
        return sorted(p for p in self.files if p.startswith(prefix))

    def list_files(self, args: dict[str, Any]) -> ToolOutcome:
        rel_dir = check_path(_arg(args, "rel_dir", str, default="."), what="rel_dir", allow_root=True)
        limit = max(1, _arg(args, "max_files", int, default=200))
        paths = self._under(rel_dir)
        if not paths:
            if rel_dir in self.files:
                return ToolOutcome("", tpb.TOOL_RESULT_STATUS_ERROR, f"{rel_dir} is a file, not a folder")
            return ToolOutcome("", tpb.TOOL_RESULT_STATUS_ERROR, f"no such folder: {rel_dir}")
        shown = paths[:limit]
        text = "\n".join(shown)
        if len(paths) > limit:
            text += f"\n… [{len(paths) - limit} more files]"
        out, cut = self._cut(text)
        return ToolOutcome(out, truncated=cut or len(paths) > limit)

    def read_file(self, args: dict[str, Any]) -> ToolOutcome:
        path = check_path(_arg(args, "rel_path", str, required=True))
        limit = _arg(args, "max_chars", int, default=None)
        if limit is not None and limit < 1:
            raise ToolArgumentError("argument `max_chars` must be at least 1")
        if path not in self.files:
            if self._under(path):
                return ToolOutcome("", tpb.TOOL_RESULT_STATUS_ERROR, f"{path} is a folder; use list_files")
            return ToolOutcome("", tpb.TOOL_RESULT_STATUS_ERROR, f"no such file: {path}")
        out, cut = self._cut(self.files[path], limit)
        return ToolOutcome(out, truncated=cut)

    def grep(self, args: dict[str, Any]) -> ToolOutcome:
        pattern = _arg(args, "pattern", str, required=True)
        if not pattern or len(pattern) > 500:
            raise ToolArgumentError("argument `pattern` must be 1-500 characters")
        rel_dir = check_path(_arg(args, "rel_dir", str, default="."), what="rel_dir", allow_root=True)
        limit = max(1, _arg(args, "max_matches", int, default=50))
        try:
            compiled = regex.compile(pattern)
        except regex.error:
            compiled = regex.compile(regex.escape(pattern))  # not a regex: search it literally
        hits: list[str] = []
        total = 0
        try:
            for path in self._under(rel_dir) or ([rel_dir] if rel_dir in self.files else []):
                for n, line in enumerate(self.files[path].splitlines(), start=1):
                    if compiled.search(line, timeout=self.grep_timeout_s):
                        total += 1
                        if len(hits) < limit:
                            hits.append(f"{path}:{n}: {line}")
        except TimeoutError:
            return ToolOutcome(
                "", tpb.TOOL_RESULT_STATUS_ERROR, "the pattern took too long to match; simplify it"
            )
        if not hits:
            return ToolOutcome("no matches")
        text = "\n".join(hits)
        if total > limit:
            text += f"\n… [{total - limit} more matches]"
        out, cut = self._cut(text)
        return ToolOutcome(out, truncated=cut or total > limit)

    def write_file(self, args: dict[str, Any]) -> ToolOutcome:
        path = check_path(_arg(args, "rel_path", str, required=True))
        content = _arg(args, "content", str, required=True)
        if len(content.encode()) > 256 * 1024:
            raise ToolArgumentError("argument `content` is over 256 KiB")
        if any(p.startswith(path + "/") for p in self.files):
            return ToolOutcome("", tpb.TOOL_RESULT_STATUS_ERROR, f"{path} is a folder")
        existed = path in self.files
        self.files[path] = content
        verb = "updated" if existed else "created"
        return ToolOutcome(f"{verb} {path} ({len(content)} characters)", written=[path])


def io_run_args(args: dict[str, Any], cases: int) -> tuple[str, int]:
    """(code, case index) of a run_code call, checked against the problem's case count."""
    code = _arg(args, "code", str, required=True)
    if not code.strip():
        raise ToolArgumentError("argument `code` is empty")
    index = _arg(args, "test_case_index", int, default=0)
    if not 0 <= index < cases:
        raise ToolArgumentError(f"argument `test_case_index` must be between 0 and {cases - 1}")
    return code, index


def submit_args(args: dict[str, Any]) -> str:
    code = _arg(args, "code", str, required=True)
    if not code.strip():
        raise ToolArgumentError("argument `code` is empty")
    return code
