"""Small hand-written trajectories for the recipe, hygiene and service tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_dataset.build import BuildContext, run_build
from flywheel_dataset.tokens import TokenCounter
from flywheel_dataset.validation import resolve_build, spec_from_build

SYSTEM = "You fix bugs in a repository. Answer with one JSON tool call per turn."
OK = tpb.TOOL_RESULT_STATUS_OK
REJECTED = tpb.TOOL_RESULT_STATUS_REJECTED


def call(name: str, **args: Any) -> str:
    return json.dumps({"type": "tool_call", "name": name, "args": args}, sort_keys=True)


def sys_(text: str = SYSTEM) -> tpb.Step:
    return tpb.Step(role=tpb.ROLE_SYSTEM, content=text)


def user(text: str) -> tpb.Step:
    return tpb.Step(role=tpb.ROLE_USER, content=text)


def assistant(text: str, *, parse_error: bool = False, loop: bool = False, **attributes: str) -> tpb.Step:
    step = tpb.Step(role=tpb.ROLE_ASSISTANT, content=text, loop_detected=loop, attributes=attributes)
    if parse_error:
        step.parse_error.CopyFrom(tpb.ParseError(kind=tpb.PARSE_ERROR_KIND_INVALID_JSON, message="not JSON"))
    else:
        try:
            body = json.loads(text)
            step.tool_calls.append(
                tpb.ToolCall(id="c", name=body["name"], arguments_json=json.dumps(body["args"]))
            )
        except (ValueError, KeyError, TypeError):
            pass
    return step


def result(text: str, status: int = OK) -> tpb.Step:
    return tpb.Step(
        role=tpb.ROLE_USER, content=f"[tool_result]\n{text}", tool_result=tpb.ToolResult(status=status)
    )


def trajectory(
    tid: str,
    task_id: str,
    steps: list[tpb.Step],
    *,
    resolved: bool = True,
    attempt: int = 0,
    suite: str = "repo-bugs",
    kind: int = common_pb2.TASK_KIND_REPO,
    protocol: int = common_pb2.TOOL_PROTOCOL_JSON,
    split: int = common_pb2.TASK_SPLIT_TRAIN,
    patch: str = "",
    failure: int = 0,
    failure_detail: str = "",
    run_id: str = "run-1",
) -> tpb.Trajectory:
    t = tpb.Trajectory(
        id=tid,
        task=tpb.TaskRef(suite=suite, task_id=task_id, kind=kind, split=split),
        tool_protocol=protocol,
        run_id=run_id,
        attempt=attempt,
        outcome=tpb.Outcome(
            resolved=resolved,
            final_patch=patch,
            failure_category=0 if resolved else (failure or tpb.FAILURE_CATEGORY_TESTS_FAILED),
            failure_detail=failure_detail,
        ),
    )
    for i, step in enumerate(steps):
        step.index = i
        t.steps.append(step)
    return t


def problem(task_id: str) -> str:
    return (
        f"The function {task_id} returns a wrong result for an empty list input; it should return zero "
        "instead of raising an exception when the list has no elements at all."
    )


def repo_run(tid: str, task_id: str, *, resolved: bool = True, attempt: int = 0, **kw: Any) -> tpb.Trajectory:
    """A short JSON-protocol episode: list, read, write; three assistant steps."""
    steps = [
        sys_(),
        user(problem(task_id)),
        assistant(call("list_files", rel_dir=".")),
        result(f"{task_id}.py\ntest_{task_id}.py"),
        assistant(call("read_file", rel_path=f"{task_id}.py")),
        result(f"def {task_id}(xs):\n    return xs[0]"),
        assistant(call("write_file", rel_path=f"{task_id}.py", content="fixed")),
        result("wrote 5 bytes"),
    ]
    return trajectory(tid, task_id, steps, resolved=resolved, attempt=attempt, **kw)


PATCH = "--- a/mod.py\n+++ b/mod.py\n@@ -1,2 +1,2 @@\n def f(xs):\n-    return xs[0]\n+    return xs[0] if xs else 0\n"


class ListSource:
    """Serves ExportTrajectories' filter semantics (run ids, suite, split) over a list."""

    def __init__(self, trajectories: list[tpb.Trajectory], on_read: object = None) -> None:
        self.trajectories = trajectories
        self.on_read = on_read

    def export(self, query: tpb.TrajectoryFilter) -> Iterator[tpb.Trajectory]:
        for n, t in enumerate(self.trajectories):
            if query.run_ids and t.run_id not in query.run_ids:
                continue
            if query.suite and t.task.suite != query.suite:
                continue
            if query.split and t.task.split != query.split:
                continue
            if callable(self.on_read):
                self.on_read(n)
            yield t


def make_build(recipe: str = "step_sft", **kw: object) -> dpb.DatasetBuild:
    build = dpb.DatasetBuild(recipe=recipe, source=dpb.DatasetSource(run_ids=["run-1"]), **kw)
    resolved = resolve_build(build, "")
    resolved.id = "dsb-test"
    return resolved


def build_now(
    store: FilesystemObjectStore,
    build: dpb.DatasetBuild,
    source: ListSource,
    cancel: threading.Event | None = None,
) -> dpb.Dataset:
    ctx = BuildContext(
        store=store,
        source=source,
        tokenizer=lambda _: TokenCounter(None, "approx"),
        cancel=cancel or threading.Event(),
    )
    return run_build(spec_from_build(build), ctx)
