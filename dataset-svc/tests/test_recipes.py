"""Each recipe on small fixtures, against examples written out by hand."""

from __future__ import annotations

import json

import pytest
from dataset_fixtures import (
    PATCH,
    SYSTEM,
    assistant,
    call,
    problem,
    repo_run,
    result,
    sys_,
    trajectory,
    user,
)

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_dataset.examples import Counts
from flywheel_dataset.recipes import PATCH_SYSTEM_PROMPT, RECIPES, ParameterError


def run(name: str, trajectories: list[tpb.Trajectory], **params: str) -> tuple[list, Counts]:
    recipe = RECIPES[name]
    _, parsed = recipe.resolve(params)
    counts = Counts()
    return list(recipe.run(trajectories, parsed, counts)), counts


# ---------------------------------------------------------------------------------- step_sft


def test_step_sft_turns_every_assistant_step_into_conversation_so_far() -> None:
    examples, counts = run("step_sft", [repo_run("t1", "sum_list")])
    p = problem("sum_list")
    base = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]
    list_call = {"role": "assistant", "content": call("list_files", rel_dir=".")}
    list_result = {"role": "user", "content": "[tool_result]\nsum_list.py\ntest_sum_list.py"}
    read_call = {"role": "assistant", "content": call("read_file", rel_path="sum_list.py")}
    read_result = {"role": "user", "content": "[tool_result]\ndef sum_list(xs):\n    return xs[0]"}
    write_call = {"role": "assistant", "content": call("write_file", rel_path="sum_list.py", content="fixed")}
    assert [e.messages for e in examples] == [
        [*base, list_call],
        [*base, list_call, list_result, read_call],
        [*base, list_call, list_result, read_call, read_result, write_call],
    ]
    assert all(e.tools is None for e in examples)  # JSON protocol: no native tools
    assert counts.failure_categories == {"RESOLVED": 1}
    assert not counts.filter_reasons


def test_step_sft_filters_and_switches() -> None:
    steps = [
        sys_(),
        user(problem("mean")),
        assistant("not json", parse_error=True),
        user("Your reply was not a JSON tool call."),
        assistant(call("read_file", rel_path="../etc/passwd")),
        result("path escapes the workspace", tpb.TOOL_RESULT_STATUS_REJECTED),
        assistant(call("read_file", rel_path="mean.py"), loop=True),
        result("def mean(xs): ..."),
        assistant(call("write_file", rel_path="mean.py", content="x")),
        result("ok"),
    ]
    failed = trajectory("t2", "mean", steps, resolved=False)
    # An ML-agent node without its recorded prompt (an imported journal): nothing to imitate.
    ml_task = trajectory("t3", "ml", [user("x"), assistant("y")], kind=common_pb2.TASK_KIND_ML)
    protocol = trajectory("t4", "p", [user("x"), assistant("y")], protocol=common_pb2.TOOL_PROTOCOL_IO)
    infra = trajectory(
        "t5", "q", [user("x"), assistant("y")], resolved=False, failure=tpb.FAILURE_CATEGORY_SANDBOX_ERROR
    )

    examples, counts = run("step_sft", [failed, ml_task, protocol, infra])
    assert [e.messages[-1]["content"] for e in examples] == [
        call("write_file", rel_path="mean.py", content="x")
    ]
    assert counts.filter_reasons == {
        "invalid_tool_call": 1,
        "tool_call_rejected": 1,
        "loop_step": 1,
        "no_recorded_prompt": 1,
        "wrong_tool_protocol": 1,
        "infrastructure_failure": 1,
    }
    assert counts.failure_categories == {
        "FAILURE_CATEGORY_TESTS_FAILED": 1,
        "RESOLVED": 2,
        "FAILURE_CATEGORY_SANDBOX_ERROR": 1,
    }

    loose, counts = run(
        "step_sft",
        [failed],
        require_valid_tool_call="false",
        skip_loop_steps="false",
        max_steps_per_trajectory="3",
    )
    assert loose[0].messages[-1]["content"] == "not json"
    assert len(loose) == 3 and counts.filter_reasons == {"beyond_max_steps": 1}

    strict, counts = run("step_sft", [failed, repo_run("ok", "mean")], require_resolved="true")
    assert {e.trajectory_id for e in strict} == {"ok"} and counts.filter_reasons == {"not_resolved": 1}


def test_step_sft_keeps_native_tool_calls_and_tools() -> None:
    steps = [
        sys_("agent"),
        user("fix it"),
        tpb.Step(
            role=tpb.ROLE_ASSISTANT,
            tool_calls=[tpb.ToolCall(id="call_1", name="read_file", arguments_json='{"rel_path": "a.py"}')],
        ),
        tpb.Step(
            role=tpb.ROLE_TOOL,
            tool_call_id="call_1",
            content="print(1)",
            tool_result=tpb.ToolResult(status=1),
        ),
        tpb.Step(role=tpb.ROLE_ASSISTANT, content="done"),
    ]
    t = trajectory("n1", "native", steps, protocol=common_pb2.TOOL_PROTOCOL_NATIVE)
    t.tools.append(
        tpb.ToolDefinition(
            name="read_file", description="Read a file", parameters_json_schema='{"type": "object"}'
        )
    )
    examples, _ = run("step_sft", [t])
    assert examples[1].messages == [
        {"role": "system", "content": "agent"},
        {"role": "user", "content": "fix it"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"rel_path": "a.py"}'},
                }
            ],
        },
        {"role": "tool", "content": "print(1)", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "done"},
    ]
    assert examples[0].tools == [
        {
            "type": "function",
            "function": {"name": "read_file", "description": "Read a file", "parameters": {"type": "object"}},
        }
    ]


# --------------------------------------------------------------------------------- patch_sft


def _bugfix(
    tid: str, task: str, *, resolved: bool, attempt: int, patch: str = PATCH, **kw: object
) -> tpb.Trajectory:
    steps = [
        sys_(),
        user(problem(task)),
        assistant("..."),
        tpb.Step(
            role=tpb.ROLE_USER,
            content="tests",
            test_run=tpb.DriverTestRun(passed=1, total=2, output="AssertionError: expected 0"),
        ),
    ]
    return trajectory(tid, task, steps, resolved=resolved, attempt=attempt, patch=patch, **kw)


def test_patch_sft_positive_reflection_and_filters() -> None:
    fail0 = _bugfix("a0", "head", resolved=False, attempt=0)
    ok1 = _bugfix("a1", "head", resolved=True, attempt=1)
    unknown = _bugfix("u", "other", resolved=False, attempt=0)
    unknown.outcome.failure_category = 0
    not_diff = _bugfix("d", "other", resolved=True, attempt=1, patch="just text")
    big = _bugfix("b", "other", resolved=True, attempt=2, patch=PATCH + "+x\n" * 5000)
    short = trajectory("s", "short", [user("fix bug"), assistant("...")], patch=PATCH)
    lonely = _bugfix("l", "lonely", resolved=False, attempt=0)

    examples, counts = run("patch_sft", [fail0, ok1, unknown, not_diff, big, short, lonely])
    assert counts.filter_reasons == {
        "unknown_failure_category": 1,
        "invalid_diff": 1,
        "patch_too_large": 1,
        "problem_too_short": 1,
        "no_resolved_attempt": 1,
    }
    assert [(e.trajectory_id, e.pair_type) for e in examples] == [("a0", "reflection"), ("a1", "positive")]
    reflection, positive = examples
    issue = f"## Issue\n{problem('head')}"
    assert positive.messages == [
        {"role": "system", "content": PATCH_SYSTEM_PROMPT},
        {"role": "user", "content": f"{issue}\n\nWrite a unified diff that fixes the issue."},
        {"role": "assistant", "content": PATCH},
    ]
    assert reflection.messages[1]["content"] == (
        f"{issue}\n\n## Previous attempt failed\nFailure category: FAILURE_CATEGORY_TESTS_FAILED\n\n"
        f"Error output:\n```\nAssertionError: expected 0\n```\n\nPrevious patch:\n```diff\n{PATCH}\n```"
        "\n\nWrite a unified diff that fixes the issue."
    )
    assert reflection.messages[2]["content"] == PATCH

    negatives, counts = run("patch_sft", [fail0, ok1], include_negative="true", include_reflection="false")
    assert [(e.trajectory_id, e.pair_type) for e in negatives] == [("a0", "negative"), ("a1", "positive")]


# ----------------------------------------------------------------------------- journal_pairs


def _node(plan: str, code: str, **attributes: str) -> tpb.Step:
    return assistant(f"{plan}\n\n```python\n{code}\n```", **attributes)


def test_journal_pairs_draft_debug_improve() -> None:
    steps = [
        user("Predict house prices; metric RMSE."),
        _node("Use linear regression.", "fit(lr)"),  # 1: draft
        tpb.Step(role=tpb.ROLE_USER, content="KeyError: 'price'", parent_index=1),  # its output
        _node("Fix the column name.", "fit(lr, 'SalePrice')"),  # 3: debug of 1
        _node("Use gradient boosting.", "fit(gbm)"),  # 4: improve of 3
        assistant("no code here"),  # 5: filtered
    ]
    steps[1].attributes["aide.buggy"] = "true"
    steps[3].parent_index = 1
    steps[4].parent_index = 3
    t = trajectory("j1", "house", steps, kind=common_pb2.TASK_KIND_ML, protocol=0)
    examples, counts = run("journal_pairs", [t])
    assert [(e.pair_type, e.messages[-1]["content"]) for e in examples] == [
        ("draft", "fit(lr)"),
        ("debug", "fit(lr, 'SalePrice')"),
        ("improve", "fit(gbm)"),
    ]
    assert examples[0].input == "Plan:\nUse linear regression."
    assert examples[1].input == (
        "Buggy code:\n```python\nfit(lr)\n```\n\nExecution output:\n```\nKeyError: 'price'\n```\n\n"
        "Plan for the fix:\nFix the column name."
    )
    assert (
        examples[2].input
        == "Previous code:\n```python\nfit(lr, 'SalePrice')\n```\n\nImprovement plan:\nUse gradient boosting."
    )
    assert "Predict house prices" in examples[2].instruction
    assert counts.filter_reasons == {"missing_code": 1}

    only_debug, counts = run("journal_pairs", [t], include_draft="false", include_improve="false")
    assert [e.pair_type for e in only_debug] == ["debug"]
    assert counts.filter_reasons == {"missing_code": 1, "stage_excluded": 2}


# --------------------------------------------------------------------------- debug_dialogues


def _io_run(tid: str, rounds: int, *, resolved: bool = True) -> tpb.Trajectory:
    steps = [sys_("Write a program."), user("Read n, print n*2.")]
    for r in range(rounds):
        steps.append(assistant(f"print(n+{r})"))
        steps.append(
            tpb.Step(
                role=tpb.ROLE_USER,
                content=f"case 0 failed (round {r})",
                test_run=tpb.DriverTestRun(passed=0, total=1),
            )
        )
    steps.append(assistant("print(n*2)"))
    steps.append(
        tpb.Step(role=tpb.ROLE_USER, content="all passed", test_run=tpb.DriverTestRun(passed=1, total=1))
    )
    return trajectory(
        tid,
        f"io-{tid}",
        steps,
        kind=common_pb2.TASK_KIND_IO,
        resolved=resolved,
        protocol=common_pb2.TOOL_PROTOCOL_IO,
    )


def test_debug_dialogues() -> None:
    examples, counts = run(
        "debug_dialogues",
        [_io_run("a", 1), _io_run("b", 0), _io_run("c", 9), _io_run("d", 2, resolved=False)],
    )
    assert [e.trajectory_id for e in examples] == ["a"]
    assert examples[0].messages == [
        {"role": "system", "content": "Write a program."},
        {"role": "user", "content": "Read n, print n*2."},
        {"role": "assistant", "content": "print(n+0)"},
        {"role": "user", "content": "case 0 failed (round 0)"},
        {"role": "assistant", "content": "print(n*2)"},
    ]
    assert counts.filter_reasons == {"too_few_debug_rounds": 1, "too_many_turns": 1, "not_resolved": 1}


# --------------------------------------------------------------------------------- dpo_steps


def test_dpo_steps_pairs_by_shared_context_and_recovery() -> None:
    good = repo_run("g", "sum_list")
    bad_steps = [
        sys_(),
        user(problem("sum_list")),
        assistant("{oops", parse_error=True),  # bad at the shared context
        user("Your reply was not a JSON tool call."),
        assistant(call("list_files", rel_dir=".")),  # failed rollout: not good
        result("sum_list.py"),
    ]
    bad = trajectory("b", "sum_list", bad_steps, resolved=False)
    examples, counts = run("dpo_steps", [good, bad])
    assert len(examples) == 1
    pair = examples[0]
    assert pair.messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": problem("sum_list")},
    ]
    assert pair.chosen == {"role": "assistant", "content": call("list_files", rel_dir=".")}
    assert pair.rejected == {"role": "assistant", "content": "{oops"}
    assert pair.pair_type == "rejected_parse_error"
    # The failed rollout's list_files step has a context no good step shares.
    assert counts.filter_reasons == {"no_preferred_step": 1}


def test_dpo_steps_recovery_within_one_resolved_rollout() -> None:
    steps = [
        sys_(),
        user(problem("mean")),
        assistant(call("read_file", rel_path="/etc/passwd")),
        result("rejected", tpb.TOOL_RESULT_STATUS_REJECTED),
        assistant(call("read_file", rel_path="mean.py")),
        result("def mean(xs): ..."),
    ]
    examples, _ = run("dpo_steps", [trajectory("r", "mean", steps)])
    assert [(e.chosen["content"], e.rejected["content"], e.pair_type) for e in examples] == [
        (
            call("read_file", rel_path="mean.py"),
            call("read_file", rel_path="/etc/passwd"),
            "rejected_wasted_call",
        )
    ]
    assert examples[0].messages == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": problem("mean")},
    ]
    none, _ = run("dpo_steps", [trajectory("r", "mean", steps)], pair_with_recovery="false")
    assert none == []


def test_parameters_are_checked() -> None:
    with pytest.raises(ParameterError) as err:
        RECIPES["step_sft"].resolve({"nope": "1"})
    assert err.value.name == "nope"
    with pytest.raises(ParameterError):
        RECIPES["step_sft"].resolve({"require_resolved": "maybe"})
    texts, parsed = RECIPES["patch_sft"].resolve({"max_patch_chars": "100"})
    assert texts["max_patch_chars"] == "100" and parsed["max_patch_chars"] == 100
    assert json.loads(json.dumps(texts))  # every parameter resolved, as text


def test_journal_pairs_read_the_importers_layout() -> None:
    """The AIDE importer links a node to its parent's OUTPUT step and has no task message."""
    steps = [
        _node("Baseline.", "fit(a)", **{"aide.stage": "draft", "aide.buggy": "true"}),
        tpb.Step(role=tpb.ROLE_USER, content="NameError: a", parent_index=0),
        _node("Define a.", "a = 1\nfit(a)", **{"aide.stage": "debug", "aide.buggy": "false"}),
        tpb.Step(role=tpb.ROLE_USER, content="RMSE 0.3", parent_index=2),
    ]
    steps[2].parent_index = 1
    t = trajectory("j2", "house", steps, kind=common_pb2.TASK_KIND_ML, suite="aide", protocol=0)
    examples, counts = run("journal_pairs", [t])
    assert [e.pair_type for e in examples] == ["draft", "debug"]
    assert examples[0].instruction.endswith("Task description:\naide/house")
    assert examples[1].input.startswith(
        "Buggy code:\n```python\nfit(a)\n```\n\nExecution output:\n```\nNameError: a\n```"
    )
    assert not counts.filter_reasons
