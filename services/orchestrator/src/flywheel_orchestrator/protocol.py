"""Tool protocols: the prompts an agent starts with and the parsing of its turns.

Three protocols (flywheel.common.v1.ToolProtocol):

- JSON: every assistant turn is exactly one JSON object, ``{"type":"tool_call","name":…,"args":{…}}``
  or ``{"type":"final","answer":…}``; tool results come back as user messages starting with
  ``[tool_result]``. One code fence around the object (```json … ```) is tolerated because many
  chat models add it; any other text is a BAD_SHAPE parse error.
- NATIVE: OpenAI tool calling (``tools`` in the request, ``tool_calls`` in the answer, ``role:
  tool`` results). A turn without tool calls is the final answer.
- IO: the JSON protocol with one tool, ``run_code``; the final answer carries the program:
  ``{"type":"final","code":…}``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_orchestrator.suites import IoTask, RepoTask, Task
from flywheel_orchestrator.tools import IO_TOOLS, REPO_TOOLS, SUBMIT_TOOL, ToolSpec

JSON = common_pb2.TOOL_PROTOCOL_JSON
NATIVE = common_pb2.TOOL_PROTOCOL_NATIVE
IO = common_pb2.TOOL_PROTOCOL_IO

TOOL_RESULT_PREFIX = "[tool_result]"
TESTS_PREFIX = "[tests]"

REPO_JSON_SYSTEM = """You are a coding agent. You fix a bug in a small Python repository by using tools.
Reply with exactly one JSON object per turn and nothing else:
{"type":"tool_call","name":"<tool>","args":{...}} to use a tool, or
{"type":"final","answer":"<one line>"} once your fix is written.
Tools:
- list_files {"rel_dir":"."}
- read_file {"rel_path":"<file>"}
- grep {"pattern":"<regex>"}
- write_file {"rel_path":"<file>","content":"<the whole new file>"}
Tool results come back as user messages starting with [tool_result]. You cannot run tests: the driver runs them and may show a [tests] summary. Do not edit the tests."""

REPO_NATIVE_SYSTEM = """You are a coding agent. You fix a bug in a small Python repository by calling the tools you are given (list_files, read_file, grep, write_file). write_file replaces the whole file. You cannot run tests: the driver runs them and may show a [tests] summary. Do not edit the tests. When your fix is written, answer with a one-line summary and no tool call."""

IO_JSON_SYSTEM = """You are a careful Python programmer solving a programming problem.
Reply with exactly one JSON object per turn and nothing else:
{"type":"tool_call","name":"run_code","args":{"code":"<complete program>","test_case_index":0}} to run your program on one test case, or
{"type":"final","code":"<complete program>"} to submit it.
The program reads standard input and writes standard output. Results come back as user messages starting with [tool_result]."""

IO_NATIVE_SYSTEM = """You are a careful Python programmer solving a programming problem. Call run_code to try a complete program (it reads standard input and writes standard output) on one test case, and submit to hand in the final program."""


def default_protocol(task: Task) -> common_pb2.ToolProtocol:
    return IO if isinstance(task, IoTask) else JSON


def effective_protocol(task: Task, requested: common_pb2.ToolProtocol) -> common_pb2.ToolProtocol:
    """The protocol an episode runs under; JSON on an I/O problem means IO (same encoding)."""
    if requested == common_pb2.TOOL_PROTOCOL_UNSPECIFIED:
        return default_protocol(task)
    if isinstance(task, IoTask) and requested == JSON:
        return IO
    return requested


def check_protocol(task: Task, requested: common_pb2.ToolProtocol) -> str | None:
    """Why the protocol cannot run this task, or None."""
    if requested == IO and isinstance(task, RepoTask):
        return f"protocol TOOL_PROTOCOL_IO applies to input/output problems; task {task.id!r} is a repo task"
    if requested not in (common_pb2.TOOL_PROTOCOL_UNSPECIFIED, JSON, NATIVE, IO):
        return f"unknown tool protocol {requested}"
    return None


def tools_for(task: Task, protocol: common_pb2.ToolProtocol) -> tuple[ToolSpec, ...]:
    if isinstance(task, IoTask):
        return IO_TOOLS + ((SUBMIT_TOOL,) if protocol == NATIVE else ())
    return REPO_TOOLS


def system_prompt(task: Task, protocol: common_pb2.ToolProtocol, skill: str = "") -> str:
    """The protocol's instructions, then the skill document (skills.py) when there is one: the
    tool format stays the protocol's, whatever the skill says."""
    if isinstance(task, IoTask):
        base = IO_NATIVE_SYSTEM if protocol == NATIVE else IO_JSON_SYSTEM
    else:
        base = REPO_NATIVE_SYSTEM if protocol == NATIVE else REPO_JSON_SYSTEM
    if not skill.strip():
        return base
    return f"{base.rstrip()}\n\n{SKILL_HEADING}\n\n{skill.strip()}\n"


#: The line that separates the protocol's instructions from the skill in a system prompt.
SKILL_HEADING = "# Skill"


def prompt_sha256(task: Task, protocol: common_pb2.ToolProtocol, skill: str = "") -> str:
    """SHA-256 (hex) of the exact system prompt an episode of ``task`` sends."""
    return hashlib.sha256(system_prompt(task, protocol, skill).encode()).hexdigest()


def task_prompt(task: Task) -> str:
    """The first user message."""
    if isinstance(task, RepoTask):
        return f"GOAL:\n{task.problem_statement}"
    head = f"{task.prompt.strip()}\n\n" if task.prompt.strip() else ""
    n = len(task.inputs)
    return f"{head}{task.question}\n\nThere are {n} test cases, numbered 0 to {n - 1}."


@dataclass
class Action:
    """One parsed action of an assistant turn."""

    kind: str  # "call" or "final"
    call_id: str = ""
    name: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    arguments_json: str = ""
    answer: str = ""
    code: str | None = None


class TurnParseError(Exception):
    def __init__(self, kind: tpb.ParseErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```$", re.S)


def parse_json_turn(text: str, tool_names: set[str], *, call_id: str, io: bool) -> Action:
    """Parse one JSON-protocol turn, or raise TurnParseError with the kind and a message the
    model sees in its corrective message."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        raise TurnParseError(tpb.PARSE_ERROR_KIND_BAD_SHAPE, "the reply is empty; send one JSON object")
    if not body.startswith("{"):
        try:
            json.loads(body)
        except json.JSONDecodeError:
            raise TurnParseError(
                tpb.PARSE_ERROR_KIND_INVALID_JSON, "the reply is not JSON; send exactly one JSON object"
            ) from None
        raise TurnParseError(tpb.PARSE_ERROR_KIND_BAD_SHAPE, "the reply must be a JSON object")
    decoder = json.JSONDecoder()
    try:
        obj, end = decoder.raw_decode(body)
    except json.JSONDecodeError as err:
        raise TurnParseError(
            tpb.PARSE_ERROR_KIND_INVALID_JSON,
            f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}",
        ) from None
    rest = body[end:].strip()
    if rest:
        try:
            decoder.raw_decode(rest)
            raise TurnParseError(
                tpb.PARSE_ERROR_KIND_MULTIPLE_ACTIONS,
                "send one action per turn (found more than one JSON object)",
            )
        except json.JSONDecodeError:
            raise TurnParseError(
                tpb.PARSE_ERROR_KIND_BAD_SHAPE, "text after the JSON object; send the JSON object alone"
            ) from None
    if not isinstance(obj, dict):
        raise TurnParseError(tpb.PARSE_ERROR_KIND_BAD_SHAPE, "the reply must be a JSON object")
    kind = obj.get("type")
    if kind == "final":
        if io:
            code = obj.get("code")
            if not isinstance(code, str) or not code.strip():
                raise TurnParseError(
                    tpb.PARSE_ERROR_KIND_BAD_ARGUMENTS, 'a final answer needs "code": the complete program'
                )
            return Action("final", code=code)
        answer = obj.get("answer", "")
        return Action("final", answer=answer if isinstance(answer, str) else json.dumps(answer))
    if kind != "tool_call":
        raise TurnParseError(tpb.PARSE_ERROR_KIND_BAD_SHAPE, '"type" must be "tool_call" or "final"')
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise TurnParseError(tpb.PARSE_ERROR_KIND_BAD_SHAPE, 'a tool call needs "name"')
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise TurnParseError(tpb.PARSE_ERROR_KIND_BAD_ARGUMENTS, '"args" must be a JSON object')
    action = Action("call", call_id=call_id, name=name, args=args, arguments_json=json.dumps(args))
    if name not in tool_names:
        raise _Unknown(action, tool_names)
    return action


class _Unknown(TurnParseError):
    """Unknown tool; carries the parsed call so the trajectory still records what was asked."""

    def __init__(self, action: Action, tool_names: set[str]) -> None:
        super().__init__(
            tpb.PARSE_ERROR_KIND_UNKNOWN_TOOL,
            f"unknown tool {action.name!r}; the tools are {', '.join(sorted(tool_names))}",
        )
        self.action = action


UnknownTool = _Unknown


def parse_native_call(call: dict[str, Any], tool_names: set[str]) -> Action:
    """One OpenAI tool call (``{"id", "function": {"name", "arguments"}}``)."""
    fn = call.get("function") or {}
    name = fn.get("name") or ""
    raw = fn.get("arguments") or "{}"
    action = Action("call", call_id=call.get("id") or "", name=name, arguments_json=raw)
    try:
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as err:
        raise TurnParseError(
            tpb.PARSE_ERROR_KIND_INVALID_JSON, f"the arguments of {name!r} are not valid JSON: {err.msg}"
        ) from None
    if not isinstance(args, dict):
        raise TurnParseError(
            tpb.PARSE_ERROR_KIND_BAD_ARGUMENTS, f"the arguments of {name!r} must be an object"
        )
    action.args = args
    if name not in tool_names:
        raise _Unknown(action, tool_names)
    return action


def corrective_message(message: str, protocol: common_pb2.ToolProtocol) -> str:
    """What the model is told after a turn it got wrong."""
    if protocol == NATIVE:
        return f"error: {message}"
    example = (
        '{"type":"tool_call","name":"run_code","args":{"code":"...","test_case_index":0}}'
        if protocol == IO
        else '{"type":"tool_call","name":"read_file","args":{"rel_path":"main.py"}}'
    )
    return f"{TOOL_RESULT_PREFIX}\nerror: {message}\nReply with exactly one JSON object, e.g. {example}"


def call_signature(action: Action) -> str:
    return action.name + ":" + json.dumps(action.args, sort_keys=True, default=str)


def detect_loop(history: list[str]) -> bool:
    """The last call repeats the one before it, or ends a short cycle (period 2 or 3) that has
    now happened twice in a row, e.g. A B A B or A B C A B C."""
    if len(history) >= 2 and history[-1] == history[-2]:
        return True
    for period in (2, 3):
        if len(history) >= 2 * period and history[-period:] == history[-2 * period : -period]:
            return True
    return False
