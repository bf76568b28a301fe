"""Trajectory steps as OpenAI-style chat messages, and the few text helpers every recipe shares.

A message is a plain ``dict`` in the OpenAI / Together chat shape, because that is what the
output formats and TRL consume: ``{"role", "content"}``, plus ``tool_calls`` on an assistant turn
of a native-protocol trajectory and ``tool_call_id`` on a ``tool`` message. Under the JSON tool
protocol the call *is* the assistant's text, so no ``tool_calls`` are added there.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb

Message = dict[str, Any]

_ROLE_NAMES = {
    tpb.ROLE_SYSTEM: "system",
    tpb.ROLE_USER: "user",
    tpb.ROLE_ASSISTANT: "assistant",
    tpb.ROLE_TOOL: "tool",
}


def step_message(step: tpb.Step, protocol: int) -> Message:
    """One step as a chat message (see the module docstring for the shape)."""
    role = _ROLE_NAMES.get(step.role, "user")
    message: Message = {"role": role, "content": step.content}
    if role == "assistant" and protocol == common_pb2.TOOL_PROTOCOL_NATIVE and step.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments_json or "{}"},
            }
            for call in step.tool_calls
        ]
    elif role == "tool":
        message["tool_call_id"] = step.tool_call_id or step.tool_result.tool_call_id
    return message


def trajectory_messages(trajectory: tpb.Trajectory) -> list[Message]:
    """Every step of a trajectory as a message, in order."""
    protocol = trajectory.tool_protocol
    return [step_message(step, protocol) for step in trajectory.steps]


def trajectory_tools(trajectory: tpb.Trajectory) -> list[dict[str, Any]] | None:
    """The tools offered to a native-protocol agent, as OpenAI function tools; None otherwise.

    JSON-protocol agents get their tools described in the system prompt, so adding them again
    as native tools would teach a different interface than the one the agent used.
    """
    if trajectory.tool_protocol != common_pb2.TOOL_PROTOCOL_NATIVE or not trajectory.tools:
        return None
    tools = []
    for tool in trajectory.tools:
        try:
            parameters = json.loads(tool.parameters_json_schema) if tool.parameters_json_schema else {}
        except json.JSONDecodeError:
            parameters = {}
        tools.append(
            {
                "type": "function",
                "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
            }
        )
    return tools


def problem_statement(trajectory: tpb.Trajectory) -> str:
    """The task as the agent first saw it: the content of the first USER step ('' if none)."""
    for step in trajectory.steps:
        if step.role == tpb.ROLE_USER:
            return step.content
    return ""


def system_prompt(trajectory: tpb.Trajectory) -> str:
    for step in trajectory.steps:
        if step.role == tpb.ROLE_SYSTEM:
            return step.content
    return ""


def message_text(message: Message) -> str:
    """The text a message contributes to a model's input: content plus tool calls as JSON."""
    calls = message.get("tool_calls")
    if not calls:
        return message.get("content") or ""
    rendered = json.dumps(
        [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls],
        ensure_ascii=False,
    )
    content = message.get("content") or ""
    return f"{content}\n{rendered}" if content else rendered


_WORD = re.compile(r"[0-9a-z]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words: the unit of the overlap and similarity measures."""
    return _WORD.findall(text.lower())


def failure_category_name(outcome: tpb.Outcome) -> str:
    """The outcome's failure category as reported in manifests.

    ``RESOLVED`` for a resolved episode; the FailureCategory name otherwise, or the importer's
    own label (``failure_detail``) when the category is unset but the source gave one.
    """
    if outcome.resolved:
        return "RESOLVED"
    if outcome.failure_category:
        return tpb.FailureCategory.Name(outcome.failure_category)
    if outcome.failure_detail:
        return outcome.failure_detail.strip()[:64] or "FAILURE_CATEGORY_UNSPECIFIED"
    return "FAILURE_CATEGORY_UNSPECIFIED"
