"""Recipes: documented rules that turn trajectories into training examples.

Every recipe is a plain streaming function ``(trajectories, params, counts) -> Iterator[Example]``
over Trajectory protos. Trajectories of one task must arrive next to each other (the builder
groups them; see ``build.py``): recipes that compare rollouts of a task (``patch_sft``,
``dpo_steps``) look at one task's group at a time, so memory holds one task, never the whole
input. Everything a recipe drops is counted in ``counts.filter_reasons`` under a reason name
that the recipe's description lists.

Common to every recipe (checked first, counted once per trajectory):

- ``captured_not_supported``: a call captured at the gateway (teacher kind CAPTURED) given to a
  recipe that cannot use one. A captured call is one served answer with the caller's feedback
  as its only outcome (see ``captured.py``): no tests, no patch, no rollouts of the same task
  to compare. Only ``step_sft`` reads captured calls;
- ``wrong_task_kind``: the task kind is set and not one the recipe reads;
- ``infrastructure_failure``: the episode failed with MODEL_ERROR or SANDBOX_ERROR, so it says
  nothing about the policy (RL recipes count these as masked episodes instead);
- ``no_steps``: the trajectory has no steps.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_dataset.captured import FAILURE, feedback_of, is_captured
from flywheel_dataset.examples import Counts, Example
from flywheel_dataset.messages import (
    Message,
    failure_category_name,
    problem_statement,
    trajectory_messages,
    trajectory_tools,
    words,
)
from flywheel_dataset.rl import GRPO_DOC, grpo_groups

SFT_FORMATS = (
    dpb.OUTPUT_FORMAT_CHAT_MESSAGES,
    dpb.OUTPUT_FORMAT_CHATML,
    dpb.OUTPUT_FORMAT_ALPACA,
    dpb.OUTPUT_FORMAT_SHAREGPT,
)
PREFERENCE_FORMATS = (dpb.OUTPUT_FORMAT_TRL_PREFERENCE, dpb.OUTPUT_FORMAT_TOGETHER_DPO)
RL_FORMATS = (dpb.OUTPUT_FORMAT_GRPO_TOKENS,)

_INFRA_FAILURES = (tpb.FAILURE_CATEGORY_MODEL_ERROR, tpb.FAILURE_CATEGORY_SANDBOX_ERROR)


# ------------------------------------------------------------------------------------ parameters


class ParameterError(ValueError):
    """A parameter value could not be parsed; ``name`` is the parameter."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(problem)
        self.name = name


@dataclass(frozen=True)
class Param:
    name: str
    type: dpb.ParameterType
    default: str
    description: str
    allowed: tuple[str, ...] = ()
    pattern: str = ""  #: a regular expression the whole text must match (empty text always passes)

    def parse(self, text: str) -> Any:
        text = text.strip()
        if self.type == dpb.PARAMETER_TYPE_BOOL:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ParameterError(self.name, f"{text!r} is not a boolean (true or false)")
        if self.type == dpb.PARAMETER_TYPE_INT:
            try:
                value = int(text)
            except ValueError:
                raise ParameterError(self.name, f"{text!r} is not an integer") from None
            if value < 0:
                raise ParameterError(self.name, f"must be >= 0, got {value}")
            return value
        if self.type == dpb.PARAMETER_TYPE_STRING_LIST:
            return tuple(v.strip() for v in text.split(",") if v.strip())
        if self.pattern and text and not re.fullmatch(self.pattern, text):
            raise ParameterError(self.name, f"{text!r} must match {self.pattern}")
        if self.allowed and text not in self.allowed:
            raise ParameterError(self.name, f"{text!r} is not one of {', '.join(self.allowed)}")
        return text


def _bool(name: str, default: bool, description: str) -> Param:
    return Param(name, dpb.PARAMETER_TYPE_BOOL, "true" if default else "false", description)


def _int(name: str, default: int, description: str) -> Param:
    return Param(name, dpb.PARAMETER_TYPE_INT, str(default), description)


RecipeFn = Callable[[Iterable[tpb.Trajectory], dict[str, Any], Counts], Iterator[Example]]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    kind: dpb.DatasetKind
    params: tuple[Param, ...]
    task_kinds: tuple[common_pb2.TaskKind, ...]
    fn: RecipeFn = field(repr=False)
    #: The recipe sorts out infrastructure failures itself (RL: they are masked episodes, counted
    #: in ``rl_stats``), so the common ``infrastructure_failure`` filter lets them through.
    own_infra_filter: bool = False
    #: The recipe has a rule for calls captured at the gateway; others drop them
    #: (``captured_not_supported``).
    reads_captured: bool = False

    @property
    def formats(self) -> tuple[dpb.OutputFormat, ...]:
        if self.kind == dpb.DATASET_KIND_RL:
            return RL_FORMATS
        return SFT_FORMATS if self.kind == dpb.DATASET_KIND_SFT else PREFERENCE_FORMATS

    @property
    def default_format(self) -> dpb.OutputFormat:
        return self.formats[0]

    def resolve(self, given: dict[str, str]) -> tuple[dict[str, str], dict[str, Any]]:
        """(every parameter as text, every parameter parsed); unknown names raise ParameterError."""
        known = {p.name: p for p in self.params}
        for name in given:
            if name not in known:
                raise ParameterError(
                    name, f"unknown parameter of recipe {self.name}; known: {', '.join(sorted(known))}"
                )
        texts = {p.name: given.get(p.name, p.default).strip() for p in self.params}
        return texts, {name: known[name].parse(text) for name, text in texts.items()}

    def run(
        self, trajectories: Iterable[tpb.Trajectory], params: dict[str, Any], counts: Counts
    ) -> Iterator[Example]:
        """Apply the common filters, then the recipe; yields examples in input order."""
        return self.fn(self._admitted(trajectories, counts), params, counts)

    def _admitted(self, trajectories: Iterable[tpb.Trajectory], counts: Counts) -> Iterator[tpb.Trajectory]:
        for trajectory in trajectories:
            counts.failure_categories[failure_category_name(trajectory.outcome)] += 1
            kind = trajectory.task.kind
            if is_captured(trajectory) and not self.reads_captured:
                counts.drop("captured_not_supported")
            elif kind and kind not in self.task_kinds:
                counts.drop("wrong_task_kind")
            elif not self.own_infra_filter and is_infra_failure(trajectory):
                counts.drop("infrastructure_failure")
            elif not trajectory.steps:
                counts.drop("no_steps")
            else:
                yield trajectory


def is_infra_failure(trajectory: tpb.Trajectory) -> bool:
    """The episode ended on MODEL_ERROR or SANDBOX_ERROR: it says nothing about the policy."""
    outcome = trajectory.outcome
    return not outcome.resolved and outcome.failure_category in _INFRA_FAILURES


def by_task(trajectories: Iterable[tpb.Trajectory]) -> Iterator[list[tpb.Trajectory]]:
    """Consecutive trajectories of the same (suite, task id), as lists."""
    for _, group in itertools.groupby(trajectories, key=lambda t: (t.task.suite, t.task.task_id)):
        yield list(group)


def _example(trajectory: tpb.Trajectory, messages: list[Message], **kw: Any) -> Example:
    return Example(trajectory.id, trajectory.task.suite, trajectory.task.task_id, messages, **kw)


def _next_tool_result(steps: Any, index: int) -> tpb.ToolResult | None:
    """The result of the tool call made at ``steps[index]``: the first later non-assistant step
    that carries a tool result, before the next assistant turn."""
    for step in steps[index + 1 :]:
        if step.role == tpb.ROLE_ASSISTANT:
            return None
        if step.HasField("tool_result"):
            return step.tool_result
    return None


def _similarity(task: str, before: Message | None, target: str) -> str:
    """Bounded text for near-duplicate detection: task, the message just before, the target."""
    parts = [task[:2000], (before or {}).get("content", "")[:2000], target[:4000]]
    return "\n".join(parts)


# -------------------------------------------------------------------------------------- step_sft

STEP_SFT_DOC = """\
**What becomes an example**: every ASSISTANT step of a tool-protocol trajectory (JSON or native
tool calls) becomes one example: the conversation before it, exactly as the model saw it, then
that step as the final assistant message. Native tool calls are kept as `tool_calls` and the
trajectory's tools as `tools`.

**Filters** (reason names in the manifest):
- `wrong_tool_protocol` (trajectory): the trajectory is not JSON or native tool protocol;
- `not_resolved` (trajectory): `require_resolved` is true and the episode did not resolve;
- `invalid_tool_call` (step): `require_valid_tool_call` is true and the step has a parse error;
- `tool_call_rejected` (step): `require_valid_tool_call` is true and the driver rejected or the
  tool failed on the step's call (tool result REJECTED or ERROR);
- `loop_step` (step): `skip_loop_steps` is true and the driver flagged the step as a loop;
- `empty_step` (step): the step has neither text nor a tool call;
- `beyond_max_steps` (step): the step is past the first `max_steps_per_trajectory` kept steps.

**Captured gateway calls** (teacher kind CAPTURED, e.g. from a `captured_traffic` source): a call
is the conversation the caller sent plus the answer the gateway served, and its caller's
feedback is its outcome (success = resolved). So:
- only the served answer (the last assistant step) is a target; the assistant turns before it
  are the caller's history, not answers this call served (`caller_history`, per step);
- a call whose caller reported failure is never a target (`failure_feedback`, trajectory);
- `require_resolved` keeps only calls with success feedback (the others count as
  `not_resolved`); with its default (false) calls without feedback are kept too. The source's
  `feedback` filter narrows what is read before this rule applies.

**ML-agent trajectories** (task kind ML, the orchestrator's draft / debug / improve search): such
a trajectory is a tree, not a conversation — each node was one model call with its own prompt
(the task, a parent's code and output…), recorded on the node's ASSISTANT step as the attribute
`mle.prompt` (a JSON list of chat messages). Each node becomes one example: that prompt, then
the node (plan and fenced code, as the prompt asked) as the assistant message. Filters:
- `not_resolved` (trajectory): as above (resolved = the search ended with a valid submission);
- `buggy_node` (step): `require_valid_tool_call` is true and the node's script failed, wrote no
  valid submission or printed no validation metric (`aide.buggy`);
- `no_recorded_prompt` (step): the node carries no `mle.prompt` — reflect nodes (two calls,
  critique then edit) and journals imported from elsewhere; `journal_pairs` reads those;
- `beyond_max_steps` (step): as above.
"""


def step_sft(trajectories: Iterable[tpb.Trajectory], p: dict[str, Any], counts: Counts) -> Iterator[Example]:
    tool_protocols = (common_pb2.TOOL_PROTOCOL_JSON, common_pb2.TOOL_PROTOCOL_NATIVE)
    for trajectory in trajectories:
        if trajectory.task.kind == common_pb2.TASK_KIND_ML:
            yield from _ml_node_examples(trajectory, p, counts)
            continue
        if trajectory.tool_protocol not in tool_protocols:
            counts.drop("wrong_tool_protocol")
            continue
        captured = is_captured(trajectory)
        if captured and feedback_of(trajectory) == FAILURE:
            counts.drop("failure_feedback")
            continue
        if p["require_resolved"] and not trajectory.outcome.resolved:
            counts.drop("not_resolved")
            continue
        messages = trajectory_messages(trajectory)
        tools = trajectory_tools(trajectory)
        task = problem_statement(trajectory)
        steps = trajectory.steps
        served = _last_assistant(steps) if captured else None
        kept = 0
        limit = p["max_steps_per_trajectory"]
        for i, step in enumerate(steps):
            if step.role != tpb.ROLE_ASSISTANT:
                continue
            if served is not None and i != served:
                counts.drop("caller_history")
                continue
            if p["require_valid_tool_call"] and step.HasField("parse_error"):
                counts.drop("invalid_tool_call")
                continue
            if p["skip_loop_steps"] and step.loop_detected:
                counts.drop("loop_step")
                continue
            if p["require_valid_tool_call"]:
                result = _next_tool_result(steps, i)
                if result is not None and result.status in (
                    tpb.TOOL_RESULT_STATUS_REJECTED,
                    tpb.TOOL_RESULT_STATUS_ERROR,
                ):
                    counts.drop("tool_call_rejected")
                    continue
            if not step.content and not step.tool_calls:
                counts.drop("empty_step")
                continue
            if limit and kept >= limit:
                counts.drop("beyond_max_steps")
                continue
            kept += 1
            target = messages[i]
            yield _example(
                trajectory,
                messages[: i + 1],
                tools=tools,
                pair_type="step",
                similarity_text=_similarity(task, messages[i - 1] if i else None, _target_text(target)),
            )


def _ml_node_examples(trajectory: tpb.Trajectory, p: dict[str, Any], counts: Counts) -> Iterator[Example]:
    """step_sft on an ML-agent search: each node's own prompt → the node (see STEP_SFT_DOC)."""
    if p["require_resolved"] and not trajectory.outcome.resolved:
        counts.drop("not_resolved")
        return
    task = problem_statement(trajectory)
    kept = 0
    limit = p["max_steps_per_trajectory"]
    for step in trajectory.steps:
        if step.role != tpb.ROLE_ASSISTANT:
            continue
        if p["require_valid_tool_call"] and step.attributes.get("aide.buggy") == "true":
            counts.drop("buggy_node")
            continue
        prompt = _recorded_prompt(step)
        if prompt is None:
            counts.drop("no_recorded_prompt")
            continue
        if not step.content:
            counts.drop("empty_step")
            continue
        if limit and kept >= limit:
            counts.drop("beyond_max_steps")
            continue
        kept += 1
        yield _example(
            trajectory,
            [*prompt, {"role": "assistant", "content": step.content}],
            pair_type="step",
            similarity_text=_similarity(task, prompt[-1], step.content),
        )


def _recorded_prompt(step: tpb.Step) -> list[Message] | None:
    """The chat messages of ``mle.prompt``, or None when absent or not a list of text messages."""
    try:
        prompt = json.loads(step.attributes.get("mle.prompt", ""))
    except json.JSONDecodeError:
        return None
    if not isinstance(prompt, list) or not prompt:
        return None
    messages: list[Message] = []
    for m in prompt:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            return None
        if not isinstance(m.get("content"), str):
            return None
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def _last_assistant(steps: Any) -> int:
    """Index of the last assistant step (-1 when there is none)."""
    for i in range(len(steps) - 1, -1, -1):
        if steps[i].role == tpb.ROLE_ASSISTANT:
            return i
    return -1


def _target_text(message: Message) -> str:
    calls = message.get("tool_calls")
    if not calls:
        return message.get("content") or ""
    return (message.get("content") or "") + json.dumps([c["function"] for c in calls])


# ------------------------------------------------------------------------------------- patch_sft

PATCH_SYSTEM_PROMPT = (
    "You are a software engineer who fixes bugs. You are given an issue and, after a failed "
    "attempt, what went wrong. Answer with a minimal unified diff that fixes the issue, and nothing else."
)

PATCH_SFT_DOC = """\
**What becomes an example** (bug-fix trajectories; the problem is the first user message, the
patch is `Outcome.final_patch`; the system message is a fixed patch-writing prompt):
- *positive*: a resolved trajectory → (problem → its patch);
- *negative* (only with `include_negative`): an unresolved trajectory with failure context →
  (problem + failure category + error output + the failed patch → the failed patch). It teaches
  reading failure context; off by default since its target is a patch that failed;
- *reflection* (with `include_reflection`): for a task with a resolved attempt, every unresolved
  attempt that passed the filters → (problem + that attempt's failure category, error output and
  patch → the resolved attempt's patch). The resolved attempt is the one with the highest
  `attempt` number.

**Filters** (per trajectory, first match counts):
- `unknown_failure_category`: unresolved, and the imported label is `unknown` or there is
  neither a failure category nor a label;
- `empty_patch`: no final patch;
- `invalid_diff`: the patch is not a unified diff (no `---`/`+++` header or no `@@` hunk);
- `patch_too_large`: the patch is longer than `max_patch_chars` characters;
- `problem_too_short`: the problem has fewer than `min_problem_words` words;
- `no_failure_context` (negative pairs only): unresolved with no test output or failure detail;
- `no_resolved_attempt` (counted per unresolved trajectory when `include_reflection` is on and
  its task has no resolved attempt, so no reflection pair could be made).
"""


def _diff_problem(patch: str, max_chars: int) -> str | None:
    stripped = patch.strip()
    if not stripped:
        return "empty_patch"
    if not (stripped.startswith("---") or stripped.startswith("diff --git")):
        return "invalid_diff"
    if "\n+++ " not in patch or not re.search(r"^@@ .* @@", patch, re.MULTILINE):
        return "invalid_diff"
    if len(patch) > max_chars:
        return "patch_too_large"
    return None


def _failure_context(trajectory: tpb.Trajectory) -> str:
    """The last test output the driver showed, else the failure detail."""
    for step in reversed(trajectory.steps):
        if step.HasField("test_run") and step.test_run.output:
            return step.test_run.output
    return trajectory.outcome.failure_detail


def _patch_prompt(problem: str, failed: tpb.Trajectory | None, max_problem: int) -> str:
    parts = [f"## Issue\n{problem[:max_problem]}"]
    if failed is not None:
        category = failure_category_name(failed.outcome)
        context = _failure_context(failed)[:1500]
        parts.append(
            f"## Previous attempt failed\nFailure category: {category}\n\n"
            f"Error output:\n```\n{context}\n```\n\nPrevious patch:\n```diff\n{failed.outcome.final_patch[:3000]}\n```"
        )
    parts.append("Write a unified diff that fixes the issue.")
    return "\n\n".join(parts)


def patch_sft(trajectories: Iterable[tpb.Trajectory], p: dict[str, Any], counts: Counts) -> Iterator[Example]:
    for group in by_task(trajectories):
        passed: list[tpb.Trajectory] = []
        for trajectory in group:
            outcome = trajectory.outcome
            problem = problem_statement(trajectory)
            label = outcome.failure_detail.strip().lower()
            if not outcome.resolved and (label == "unknown" or (not outcome.failure_category and not label)):
                reason: str | None = "unknown_failure_category"
            else:
                reason = _diff_problem(outcome.final_patch, p["max_patch_chars"])
            if reason is None and len(words(problem)) < p["min_problem_words"]:
                reason = "problem_too_short"
            if reason:
                counts.drop(reason)
                continue
            passed.append(trajectory)
        resolved = [t for t in passed if t.outcome.resolved]
        final = max(resolved, key=lambda t: (t.attempt, t.id)) if resolved else None
        for trajectory in passed:
            problem = problem_statement(trajectory)
            system = {"role": "system", "content": PATCH_SYSTEM_PROMPT}
            if trajectory.outcome.resolved:
                if p["include_positive"]:
                    yield _patch_example(trajectory, system, problem, None, trajectory, "positive", p)
                continue
            if p["include_negative"]:
                if _failure_context(trajectory).strip():
                    yield _patch_example(trajectory, system, problem, trajectory, trajectory, "negative", p)
                else:
                    counts.drop("no_failure_context")
            if p["include_reflection"]:
                if final is None:
                    counts.drop("no_resolved_attempt")
                else:
                    yield _patch_example(trajectory, system, problem, trajectory, final, "reflection", p)


def _patch_example(
    source: tpb.Trajectory,
    system: Message,
    problem: str,
    failed: tpb.Trajectory | None,
    answer: tpb.Trajectory,
    pair_type: str,
    p: dict[str, Any],
) -> Example:
    prompt = _patch_prompt(problem, failed, p["max_problem_chars"])
    patch = answer.outcome.final_patch
    messages = [system, {"role": "user", "content": prompt}, {"role": "assistant", "content": patch}]
    return _example(
        source,
        messages,
        instruction=PATCH_SYSTEM_PROMPT,
        input=prompt,
        pair_type=pair_type,
        similarity_text=_similarity(prompt, None, patch),
    )


# --------------------------------------------------------------------------------- journal_pairs

JOURNAL_DOC = """\
**What becomes an example**: ML-agent journals (AIDE; one journal is one trajectory whose
ASSISTANT steps are the nodes of a tree, linked by `parent_index`). Every node with a plan and
code becomes an instruction pair whose output is the node's code:
- *draft* (no parent): task description + the node's plan → code;
- *debug* (the parent was buggy): the parent's code, its execution output and the node's plan → code;
- *improve* (the parent worked): task description, the parent's code and the plan → code.
A node's parent is the step `parent_index` names or, when that is the parent's output step (as
the AIDE importer writes it), that step's own `parent_index`. The stage comes from the
`aide.stage` attribute, else from the parent as above. The plan is the
`aide.plan` attribute, else the text before the first fenced code block; the code is the
`aide.code` attribute, else the first fenced code block. A node's execution output is its
`aide.term_out` attribute, else the first later non-assistant step whose `parent_index` is the
node. The task description is the user/system text before the first node, else the
`aide.task` label, else `<suite>/<task id>`.

**Filters** (per node): `missing_code`, `missing_plan`, `missing_parent` (the parent index is
not an assistant step), `stage_excluded` (the stage's `include_*` switch is off),
`buggy_output` (`skip_buggy_outputs` and the node itself is buggy).
"""

_FENCE = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)```", re.DOTALL)


def _plan_and_code(step: tpb.Step) -> tuple[str, str]:
    plan = step.attributes.get("aide.plan", "")
    code = step.attributes.get("aide.code", "")
    if not code:
        match = _FENCE.search(step.content)
        if match:
            code = match.group(1).strip("\n")
            plan = plan or step.content[: match.start()].strip()
    return plan.strip(), code.strip()


def _term_out(steps: Any, index: int) -> str:
    node = steps[index]
    if "aide.term_out" in node.attributes:
        return node.attributes["aide.term_out"]
    for step in steps[index + 1 :]:
        if step.role != tpb.ROLE_ASSISTANT and step.HasField("parent_index") and step.parent_index == index:
            return step.content
    return ""


def _parent_node(steps: Any, j: int) -> int | None:
    """The assistant step a node builds on: ``parent_index`` names it directly, or names its
    output step (the importer's layout), whose own ``parent_index`` is the node."""
    if not 0 <= j < len(steps):
        return None
    if steps[j].role == tpb.ROLE_ASSISTANT:
        return j
    if steps[j].HasField("parent_index"):
        k = steps[j].parent_index
        if 0 <= k < len(steps) and steps[k].role == tpb.ROLE_ASSISTANT:
            return k
    return None


def _journal_task(trajectory: tpb.Trajectory) -> str:
    """The task description: the user/system text before the first node, else the task's name."""
    parts = []
    for step in trajectory.steps:
        if step.role == tpb.ROLE_ASSISTANT:
            break
        if step.role in (tpb.ROLE_USER, tpb.ROLE_SYSTEM) and step.content:
            parts.append(step.content)
    named = f"{trajectory.task.suite}/{trajectory.task.task_id}"
    return "\n\n".join(parts) or trajectory.labels.get("aide.task", "") or named


def journal_pairs(
    trajectories: Iterable[tpb.Trajectory], p: dict[str, Any], counts: Counts
) -> Iterator[Example]:
    for trajectory in trajectories:
        task = _journal_task(trajectory)
        steps = trajectory.steps
        for node in steps:
            if node.role != tpb.ROLE_ASSISTANT:
                continue
            plan, code = _plan_and_code(node)
            if not code:
                counts.drop("missing_code")
                continue
            if not plan:
                counts.drop("missing_plan")
                continue
            parent = None
            if node.HasField("parent_index"):
                parent = _parent_node(steps, node.parent_index)
                if parent is None:
                    counts.drop("missing_parent")
                    continue
            stage = node.attributes.get("aide.stage", "")
            if stage not in ("draft", "debug", "improve"):
                if parent is None:
                    stage = "draft"
                else:
                    stage = "debug" if steps[parent].attributes.get("aide.buggy") == "true" else "improve"
            if not p[f"include_{stage}"]:
                counts.drop("stage_excluded")
                continue
            if p["skip_buggy_outputs"] and node.attributes.get("aide.buggy") == "true":
                counts.drop("buggy_output")
                continue
            if stage == "draft" or parent is None:
                instruction = (
                    "Given the following machine learning task, write Python code that implements "
                    f"the plan.\n\nTask description:\n{task}"
                )
                input_text = f"Plan:\n{plan}"
            elif stage == "debug":
                _, parent_code = _plan_and_code(steps[parent])
                instruction = (
                    "The following Python code for a machine learning task has a bug, shown by its "
                    "execution output. Fix it following the plan and give the full corrected code."
                )
                input_text = (
                    f"Buggy code:\n```python\n{parent_code}\n```\n\n"
                    f"Execution output:\n```\n{_term_out(steps, parent)[: p['max_output_chars']]}\n```\n\n"
                    f"Plan for the fix:\n{plan}"
                )
            else:
                _, parent_code = _plan_and_code(steps[parent])
                instruction = (
                    "Improve the following Python code for a machine learning task as the plan says. "
                    f"Give the full improved code.\n\nTask description:\n{task}"
                )
                input_text = f"Previous code:\n```python\n{parent_code}\n```\n\nImprovement plan:\n{plan}"
            messages = [
                {"role": "user", "content": f"{instruction}\n\n{input_text}"},
                {"role": "assistant", "content": code},
            ]
            yield _example(
                trajectory,
                messages,
                instruction=instruction,
                input=input_text,
                pair_type=stage,
                similarity_text=_similarity(instruction, None, input_text[-2000:] + code),
            )


# ------------------------------------------------------------------------------- debug_dialogues

DEBUG_DOC = """\
**What becomes an example**: an I/O-problem trajectory (the agent writes a program, the driver
runs it on test cases and answers with the result and a hint) becomes one multi-turn
conversation: the whole trajectory, every assistant turn a target. A debugging round is a test
run (USER or TOOL step with a test result) where some case failed.

**Filters** (per trajectory):
- `not_resolved`: `require_resolved` and the final program did not pass every case;
- `too_few_debug_rounds`: fewer failed test runs than `min_debug_rounds` (a one-shot solve is
  not a debugging dialogue);
- `too_many_turns`: more assistant turns than `max_assistant_turns` (0 = no limit);
- `parse_error`: `allow_parse_errors` is false and some assistant turn has a parse error.
"""


def debug_dialogues(
    trajectories: Iterable[tpb.Trajectory], p: dict[str, Any], counts: Counts
) -> Iterator[Example]:
    for trajectory in trajectories:
        if p["require_resolved"] and not trajectory.outcome.resolved:
            counts.drop("not_resolved")
            continue
        steps = trajectory.steps
        rounds = sum(1 for s in steps if s.HasField("test_run") and s.test_run.passed < s.test_run.total)
        turns = sum(1 for s in steps if s.role == tpb.ROLE_ASSISTANT)
        if rounds < p["min_debug_rounds"]:
            counts.drop("too_few_debug_rounds")
            continue
        if p["max_assistant_turns"] and turns > p["max_assistant_turns"]:
            counts.drop("too_many_turns")
            continue
        if not p["allow_parse_errors"] and any(s.HasField("parse_error") for s in steps):
            counts.drop("parse_error")
            continue
        messages = trajectory_messages(trajectory)
        # A conversation must end with the turn to learn: drop the trailing feedback messages.
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        if not messages:
            counts.drop("no_steps")
            continue
        yield _example(
            trajectory,
            messages,
            tools=trajectory_tools(trajectory),
            pair_type="dialogue",
            similarity_text=_similarity(problem_statement(trajectory), None, _target_text(messages[-1])),
        )


# ------------------------------------------------------------------------------------- dpo_steps

DPO_DOC = """\
**What becomes an example**: preference pairs at the step level, from the rollouts of one task.
Two assistant steps are comparable when the conversation before them is identical (same
context: e.g. the first step of every rollout of a task, or later steps while rollouts agree).
Every assistant step is labelled:
- *good*: no parse error, not flagged as a loop, its tool call neither rejected nor failed nor an
  exact repeat of an earlier call of the rollout (a wasted call), and its rollout resolved;
- *bad*, with its reason: `parse_error`, `loop`, `wasted_call` (rejected, failed or repeated
  call), or `failed_rollout` (an otherwise fine step of an unresolved rollout, only with
  `reject_failed_rollout_steps`).

**Pairing rules**:
1. In each context, every bad step is paired with a good step of the same context (good steps
   taken in turn, ordered by trajectory id and step index): prompt = the context, chosen = the
   good step, rejected = the bad step.
2. With `pair_with_recovery`, a `parse_error`/`wasted_call` step whose own rollout's next
   assistant step is good is also paired with that step (same context: the state did not change,
   the agent only got a correction).
3. A pair whose chosen and rejected texts are identical is dropped (`identical_outputs`).
4. At most `max_pairs_per_context` pairs per context (`over_pair_limit` counts the rest).
Bad steps with nothing to pair are counted as `no_preferred_step`.
"""


def _context_hashes(messages: list[Message]) -> list[bytes]:
    """hashes[i] identifies messages[:i] (the context before step i), computed incrementally."""
    digest = hashlib.blake2b(digest_size=16)
    hashes = []
    for message in messages:
        hashes.append(digest.copy().digest())
        digest.update(json.dumps(message, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\x00")
    return hashes


def _label_steps(trajectory: tpb.Trajectory, reject_failed: bool) -> list[tuple[int, str | None]]:
    """(step index, bad reason or None for good) for every assistant step; steps of failed
    rollouts that are fine get None when reject_failed is off and are then never used."""
    labels = []
    seen_calls: set[tuple[str, str]] = set()
    steps = trajectory.steps
    for i, step in enumerate(steps):
        if step.role != tpb.ROLE_ASSISTANT:
            continue
        reason: str | None = None
        calls = {(c.name, c.arguments_json) for c in step.tool_calls}
        if step.HasField("parse_error"):
            reason = "parse_error"
        elif step.loop_detected:
            reason = "loop"
        else:
            result = _next_tool_result(steps, i)
            rejected = result is not None and result.status in (
                tpb.TOOL_RESULT_STATUS_REJECTED,
                tpb.TOOL_RESULT_STATUS_ERROR,
            )
            if rejected or (calls and calls <= seen_calls):
                reason = "wasted_call"
            elif not trajectory.outcome.resolved:
                reason = "failed_rollout" if reject_failed else "unusable"
        seen_calls |= calls
        labels.append((i, reason))
    return labels


def dpo_steps(trajectories: Iterable[tpb.Trajectory], p: dict[str, Any], counts: Counts) -> Iterator[Example]:
    limit = p["max_pairs_per_context"]
    for group in by_task(trajectories):
        group.sort(key=lambda t: t.id)
        # context hash -> [(trajectory, step index)] of good and of bad steps, in order.
        good: dict[bytes, list[tuple[int, int]]] = {}
        bad: dict[bytes, list[tuple[int, int, str]]] = {}
        recoveries: dict[tuple[int, int], int] = {}
        prepared = []
        for t_index, trajectory in enumerate(group):
            messages = trajectory_messages(trajectory)
            hashes = _context_hashes(messages)
            labels = _label_steps(trajectory, p["reject_failed_rollout_steps"])
            prepared.append((trajectory, messages, hashes))
            for n, (i, reason) in enumerate(labels):
                if reason is None:
                    good.setdefault(hashes[i], []).append((t_index, i))
                elif reason != "unusable":
                    bad.setdefault(hashes[i], []).append((t_index, i, reason))
                    if p["pair_with_recovery"] and reason in ("parse_error", "wasted_call"):
                        following = labels[n + 1] if n + 1 < len(labels) else None
                        if following is not None and following[1] is None:
                            recoveries[(t_index, i)] = following[0]
        for context, rejected_steps in bad.items():
            candidates = good.get(context, [])
            made = 0
            turn = 0
            for t_index, i, reason in rejected_steps:
                trajectory, messages, _ = prepared[t_index]
                options: list[tuple[int, int]] = []
                if candidates:
                    options.append(candidates[turn % len(candidates)])
                    turn += 1
                if (t_index, i) in recoveries:
                    options.append((t_index, recoveries[(t_index, i)]))
                if not options:
                    counts.drop("no_preferred_step")
                    continue
                for g_traj, g_step in options:
                    chosen = prepared[g_traj][1][g_step]
                    rejected = messages[i]
                    if _target_text(chosen) == _target_text(rejected):
                        counts.drop("identical_outputs")
                        continue
                    if limit and made >= limit:
                        counts.drop("over_pair_limit")
                        continue
                    made += 1
                    yield _example(
                        trajectory,
                        messages[:i],
                        tools=trajectory_tools(trajectory),
                        chosen=chosen,
                        rejected=rejected,
                        pair_type=f"rejected_{reason}",
                        similarity_text=_similarity(
                            problem_statement(trajectory),
                            messages[i - 1] if i else None,
                            _target_text(chosen) + "\n" + _target_text(rejected),
                        ),
                    )


# ---------------------------------------------------------------------------------------- registry

_REPO, _IO, _ML, _CHAT = (
    common_pb2.TASK_KIND_REPO,
    common_pb2.TASK_KIND_IO,
    common_pb2.TASK_KIND_ML,
    common_pb2.TASK_KIND_CHAT,
)

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "step_sft",
            STEP_SFT_DOC,
            dpb.DATASET_KIND_SFT,
            (
                _bool("require_resolved", False, "Only use trajectories that resolved their task."),
                _bool(
                    "require_valid_tool_call",
                    True,
                    "Skip steps with a parse error or whose call was rejected or failed.",
                ),
                _bool("skip_loop_steps", True, "Skip steps the driver flagged as a loop."),
                _int(
                    "max_steps_per_trajectory", 0, "At most this many examples per trajectory; 0 = no limit."
                ),
            ),
            (_REPO, _IO, _ML, _CHAT),
            step_sft,
            reads_captured=True,
        ),
        Recipe(
            "patch_sft",
            PATCH_SFT_DOC,
            dpb.DATASET_KIND_SFT,
            (
                _int("min_problem_words", 20, "Minimum words in the problem statement."),
                _int("max_patch_chars", 8000, "Maximum patch length, in characters."),
                _int("max_problem_chars", 4000, "The problem is cut to this many characters in prompts."),
                _bool("include_positive", True, "Make positive pairs from resolved trajectories."),
                _bool("include_negative", False, "Make negative pairs (failure context → failed patch)."),
                _bool("include_reflection", True, "Make reflection pairs (failed attempt → final patch)."),
            ),
            (_REPO,),
            patch_sft,
        ),
        Recipe(
            "journal_pairs",
            JOURNAL_DOC,
            dpb.DATASET_KIND_SFT,
            (
                _bool("include_draft", True, "Make draft pairs."),
                _bool("include_debug", True, "Make debug pairs."),
                _bool("include_improve", True, "Make improve pairs."),
                _bool("skip_buggy_outputs", False, "Skip nodes whose own code was buggy."),
                _int("max_output_chars", 2000, "Execution output is cut to this many characters."),
            ),
            (_ML,),
            journal_pairs,
        ),
        Recipe(
            "debug_dialogues",
            DEBUG_DOC,
            dpb.DATASET_KIND_SFT,
            (
                _bool("require_resolved", True, "Only dialogues that end with a correct program."),
                _int("min_debug_rounds", 1, "Minimum failed test runs in the dialogue."),
                _int("max_assistant_turns", 8, "Maximum assistant turns; 0 = no limit."),
                _bool("allow_parse_errors", False, "Keep trajectories with parse errors."),
            ),
            (_IO,),
            debug_dialogues,
        ),
        Recipe(
            "dpo_steps",
            DPO_DOC,
            dpb.DATASET_KIND_PREFERENCE,
            (
                _bool(
                    "reject_failed_rollout_steps",
                    True,
                    "Use fine steps of failed rollouts as rejected steps.",
                ),
                _bool("pair_with_recovery", True, "Pair a bad step with its rollout's next good step."),
                _int("max_pairs_per_context", 4, "Maximum pairs per context; 0 = no limit."),
            ),
            (_REPO, _IO, _CHAT),
            dpo_steps,
        ),
        Recipe(
            "grpo_groups",
            GRPO_DOC,
            dpb.DATASET_KIND_RL,
            (
                _bool(
                    "normalize_std", True, "Divide advantages by the group's reward std (false: Dr. GRPO)."
                ),
                _bool(
                    "drop_zero_advantage_groups", True, "Drop groups whose episodes all got the same reward."
                ),
                _int("min_group_size", 2, "Groups with fewer kept episodes are dropped (0 and 1: none is)."),
                Param(
                    "policy_adapter",
                    dpb.PARAMETER_TYPE_STRING,
                    "",
                    "The policy every turn must come from: name/vN, base, or empty for any single one.",
                    pattern=r"base|[a-z0-9][a-z0-9._-]{0,62}/v[1-9][0-9]*",
                ),
                Param(
                    "policy_digest",
                    dpb.PARAMETER_TYPE_STRING,
                    "",
                    "Content digest (sha256:...) every turn's adapter must have; empty: not checked.",
                    pattern=r"sha256:[0-9a-f]{64}",
                ),
            ),
            (_REPO, _IO),
            grpo_groups,
            own_infra_filter=True,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}") from None
