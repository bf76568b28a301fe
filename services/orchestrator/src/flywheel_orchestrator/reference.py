"""The reference teacher: a task's reference solution replayed as a tool-protocol episode.

It needs no model, so demonstrations exist on a machine with nothing to call. The turns are
what a careful agent would do — look at the files, read the code to change, write the fix, say
it is done (for I/O problems: try the program on a case, then submit it) — and they go through
the same driver as a model's turns: real tool results, real tests in the sandbox, a real
outcome. Trajectories say where they came from: ``teacher_kind = REFERENCE``, an empty policy
model and the label ``teacher=reference``.
"""

from __future__ import annotations

import json
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel_orchestrator import protocol as proto
from flywheel_orchestrator.model import ModelTurn
from flywheel_orchestrator.suites import IoTask, RepoTask, Task

REFERENCE_LABEL = ("teacher", "reference")


def _json_turn(obj: dict[str, Any]) -> ModelTurn:
    return ModelTurn(content=json.dumps(obj, ensure_ascii=False), finish_reason="stop")


def _native_turn(n: int, name: str, args: dict[str, Any]) -> ModelTurn:
    call = {
        "id": f"ref-{n}",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)},
    }
    return ModelTurn(content="", tool_calls=[call], finish_reason="tool_calls")


def reference_actions(task: Task) -> list[tuple[str, dict[str, Any]]]:
    """The (tool, args) calls of the reference episode, without the final answer."""
    if isinstance(task, RepoTask):
        calls: list[tuple[str, dict[str, Any]]] = [("list_files", {"rel_dir": "."})]
        for path in sorted(task.fix):
            if path in task.files:
                calls.append(("read_file", {"rel_path": path}))
        for path in sorted(task.fix):
            calls.append(("write_file", {"rel_path": path, "content": task.fix[path]}))
        return calls
    return [("run_code", {"code": task.reference_solution, "test_case_index": 0})]


class ReferencePolicy:
    """Yields the scripted turns one by one, whatever the conversation says."""

    model = ""

    def __init__(self, task: Task, protocol: common_pb2.ToolProtocol) -> None:
        if not task.has_reference:
            raise ValueError(f"task {task.id!r} has no reference solution")
        self.protocol = protocol
        turns: list[ModelTurn] = []
        actions = reference_actions(task)
        if protocol == proto.NATIVE:
            turns = [_native_turn(n, name, args) for n, (name, args) in enumerate(actions)]
            if isinstance(task, IoTask):
                turns.append(_native_turn(len(actions), "submit", {"code": task.reference_solution}))
            else:
                turns.append(ModelTurn(content=f"Fixed: {task.title}", finish_reason="stop"))
        else:
            turns = [_json_turn({"type": "tool_call", "name": name, "args": args}) for name, args in actions]
            if isinstance(task, IoTask):
                turns.append(_json_turn({"type": "final", "code": task.reference_solution}))
            else:
                turns.append(_json_turn({"type": "final", "answer": f"Fixed: {task.title}"}))
        self._turns = turns
        self._next = 0

    @property
    def turns(self) -> int:
        """Assistant turns of the script, the final answer included."""
        return len(self._turns)

    async def turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        sampling: common_pb2.SamplingParams,
        timeout_s: float,
    ) -> ModelTurn:
        del messages, tools, sampling, timeout_s
        turn = self._turns[min(self._next, len(self._turns) - 1)]
        self._next += 1
        return ModelTurn(
            content=turn.content,
            tool_calls=[dict(c) for c in turn.tool_calls],
            finish_reason=turn.finish_reason,
        )
