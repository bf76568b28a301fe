"""The ML-engineering agent: a draft / debug / improve tree search over whole solutions.

The search follows AIDE's (the agent of seed 000): each *node* is one complete Python script
with its plan, its execution output and either a validation metric or a bug. Each step picks
what to do next:

1. **draft** a new solution while fewer than ``num_drafts`` drafts exist;
2. else, with probability ``debug_prob``, **debug** a buggy leaf whose chain of debug fixes is at
   most ``max_debug_depth`` deep (chosen at random among those);
3. else **draft** again if no node works yet, or **improve** the best working node (greedy).

With ``reflection`` on, every draft, debug and improve node gets one **reflect** child right after
it ran: the model first critiques the code and its output *without* fixing anything, then edits
the code according to that critique (two calls); the edited script runs as its own node, so the
tree shows what reflection changed. (The seed reflects before running and keeps only the edited
code; running both costs one more execution and keeps the evidence.) ``prompt_style = "simple"``
uses short, direct prompts that small open models follow better.

What the model never sees: the held-out labels and the held-out score. A node's metric is the
*validation* metric the script itself prints (``validation metric: <number>``) from a split of
the training data, as in AIDE; the search ranks nodes by it. Separately, the judge
(``mltasks.judge``) scores every node's ``submission/submission.csv`` against the held-out labels,
which stay in the orchestrator: the sandbox gets ``data/`` only. The held-out score is recorded on
the node for evaluation and datasets, never put into a prompt.

A node is *buggy* when the run failed (exception, time or memory limit), wrote no valid
submission, or printed no validation metric; the reason is the node's analysis, shown to the
debug step with the output's tail.

Each episode is one trajectory (kind ML, no tool protocol) laid out as the trajectory store's
AIDE importer writes a journal, so ``journal_pairs`` reads it directly and :func:`export_journal`
gives a ``journal.json`` that imports back to the same pairs:

* step 0 (USER): the task description the drafts were given;
* per node, an ASSISTANT step (``<plan>\\n\\n```python\\n<code>\\n```````) with attributes
  ``aide.node_id``, ``aide.stage`` (draft/debug/improve by the parent, as the importer derives
  it), ``aide.buggy``, ``aide.metric``, ``aide.maximize`` and ours: ``mle.operator``
  (draft/debug/improve/reflect), ``mle.heldout``, ``mle.debug_depth``, ``mle.valid_submission``;
  ``parent_index`` names the parent node's output step; ``mle.prompt`` (JSON list of chat
  messages) is the exact prompt of the one model call whose answer the node's content is, so
  ``step_sft`` can train on what the model saw (unset on reflect nodes, which take two calls);
* then a USER step with the execution output and the analysis (``tool_result.status`` ERROR for a
  buggy node), ``parent_index`` the node's ASSISTANT step.

Settings: ``FLYWHEEL_ORCHESTRATOR_MLE_*`` (:class:`MleSettings`). The journal export
(``journal_of``, ``export_journal``) lives in ``flywheel_common.journal``, shared with the CLI.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel.common.v1 import common_pb2
from flywheel.sandbox.v1 import sandbox_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.journal import export_journal, journal_of, parse_answer
from flywheel_orchestrator.mltasks import SUBMISSION, MlTask, judge
from flywheel_orchestrator.model import ModelError, ModelTurn, Policy
from flywheel_orchestrator.sandbox import SandboxClient, SandboxError

F = tpb
#: Line a solution prints with its validation score; the last one counts.
METRIC_LINE = re.compile(r"validation[ _]metric\s*[:=]\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)", re.I)
#: The harness's line before the submission's content on stdout (the harness writes it last).
MARKER = "\n<<<flywheel-submission>>>\n"
RUNNER = "_flywheel_run.py"
#: Runs ``solution.py`` as ``python3 solution.py`` would, then copies the submission to stdout:
#: the sandbox returns stdout and stderr only, and the predictions must reach the judge.
RUNNER_SOURCE = f"""\
import os, runpy, sys, traceback
os.makedirs("submission", exist_ok=True)
sys.argv = ["solution.py"]
status = 0
try:
    runpy.run_path("solution.py", run_name="__main__")
except SystemExit as stop:
    status = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
except BaseException:
    traceback.print_exc()
    status = 1
sys.stdout.flush()
sys.stderr.flush()
try:
    with open({SUBMISSION!r}, encoding="utf-8", errors="replace") as handle:
        sys.stdout.write({MARKER!r} + handle.read())
except OSError:
    pass
sys.exit(status)
"""
#: One core: numerical libraries must not start a thread per CPU of the host.
SOLUTION_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
Operator = Literal["draft", "debug", "improve", "reflect"]


class MleSettings(BaseSettings):
    """The search's knobs, read from ``FLYWHEEL_ORCHESTRATOR_MLE_*``."""

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_ORCHESTRATOR_MLE_", extra="ignore")

    max_nodes: int = Field(
        8, ge=1, le=200, description="Nodes (executed scripts) per episode, reflect nodes included."
    )
    num_drafts: int = Field(3, ge=1, le=50, description="Drafts made before any debug or improve step.")
    debug_prob: float = Field(
        0.5, ge=0, le=1, description="Chance a step debugs a buggy leaf (when one qualifies)."
    )
    max_debug_depth: int = Field(
        3, ge=0, le=20, description="Longest chain of debug fixes below a buggy node."
    )
    reflection: bool = Field(False, description="Two-step reflection (critique, then edit) after each node.")
    prompt_style: Literal["default", "simple"] = Field(
        "default", description='"simple": short prompts for small open models.'
    )
    memory_mb: int = Field(
        1536, ge=64, description="Memory of one solution's run when the task sets none (MiB)."
    )
    max_output_chars: int = Field(3000, ge=200, description="Tail of a run's output shown to the model.")
    preview_rows: int = Field(3, ge=0, le=20, description="Rows of each data file shown in the prompt.")


@dataclass
class Node:
    """One solution: what was asked, what the model wrote, what running it gave."""

    id: str
    step: int
    operator: Operator
    parent: str | None
    plan: str = ""
    code: str = ""
    term_out: str = ""
    analysis: str = ""
    exec_time_s: float = 0.0
    metric: float | None = None  #: validation metric the script printed (drives the search)
    heldout: float | None = None  #: the judge's score on the held-out labels (never shown)
    valid_submission: bool = False
    buggy: bool = True
    debug_depth: int = 0
    children: list[str] = field(default_factory=list)
    usage: common_pb2.TokenUsage = field(default_factory=common_pb2.TokenUsage)
    model_s: float = 0.0
    #: The messages of the call whose answer is this node's plan and code (empty for reflect).
    prompt: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stage(self) -> str:
        """The journal's stage (what the importer derives from the parent)."""
        return "draft" if self.parent is None else ("debug" if self.operator == "debug" else "improve")


@dataclass
class MleSpec:
    """What one ML episode needs; the run fills it like the tool loop's EpisodeSpec."""

    trajectory_id: str
    run_id: str
    attempt: int
    suite: str
    suite_version: str
    task: MlTask
    sampling: common_pb2.SamplingParams
    teacher_kind: tpb.TeacherKind
    policy_info: tpb.Policy
    max_wall_time_s: float
    model_timeout_s: float
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class MleTimes:
    """Where the episode's wall time went (same fields as the tool loop's EpisodeTimes)."""

    model_s: float = 0.0
    sandbox_s: float = 0.0
    total_s: float = 0.0


class _Stop(Exception):
    def __init__(self, category: tpb.FailureCategory, detail: str) -> None:
        super().__init__(detail)
        self.category = category
        self.detail = detail


# ------------------------------------------------------------------------------------- prompts


def describe_data(task: MlTask, rows: int = 3) -> str:
    """What the agent knows about the data: files, row counts, columns and a few rows."""
    lines = []
    for path, content in sorted(task.data.items()):
        text = content.decode("utf-8", errors="replace")
        if path.endswith(".csv"):
            table = text.splitlines()
            lines.append(f"- `{path}`: {max(len(table) - 1, 0)} rows; columns: {table[0] if table else ''}")
            lines.extend(f"    {row[:200]}" for row in table[1 : 1 + rows])
        else:
            lines.append(f"- `{path}`: {len(content)} bytes")
    return "\n".join(lines)


def task_description(task: MlTask, rows: int = 3) -> str:
    """The task as every draft sees it (also step 0 of the trajectory and the journal's task)."""
    direction = "higher is better" if task.maximize else "lower is better"
    return (
        f"# {task.title}\n\n{task.problem_statement}\n\n"
        f"Metric: {task.metric} ({direction}). Target column: `{task.target}`; id column: `{task.id_column}`.\n\n"
        f"Data (in ./data/):\n{describe_data(task, rows)}"
    )


def _rules(task: MlTask, simple: bool) -> str:
    if simple:
        return (
            "Rules: one Python script. Use pandas, numpy and scikit-learn. "
            f"Read ./data/train.csv and ./data/test.csv. Print `validation metric: <number>` "
            f"({task.metric} on a part of train.csv you held out). Write ./{SUBMISSION} with columns "
            f"`{task.id_column}` and `{task.target}`, one row per row of test.csv. "
            f"It must finish within {task.time_budget_s:g} s on one CPU core."
        )
    return (
        "Implementation rules:\n"
        "- A single self-contained Python 3 script; numpy, pandas and scikit-learn are installed, "
        "nothing else can be installed and there is no network.\n"
        f"- It runs on one CPU core and must finish within {task.time_budget_s:g} seconds.\n"
        "- Hold out part of ./data/train.csv (or cross-validate), compute the task's metric there "
        f"and print it as one line `validation metric: <number>` ({task.metric}).\n"
        f"- Write predictions for every row of ./data/test.csv to ./{SUBMISSION} with the columns "
        f"`{task.id_column}` and `{task.target}` (create the folder).\n"
    )


def _format(simple: bool) -> str:
    if simple:
        return "Answer with a short plan (2-3 sentences), then the full script in one ```python block."
    return (
        "Answer format: first a short plan in plain text (3-5 sentences: the model, the features, "
        "the validation), then the complete script in ONE ```python code block. No other text."
    )


def _memory(nodes: list[Node], task: MlTask) -> str:
    good = [n for n in nodes if not n.buggy and n.metric is not None]
    if not good:
        return ""
    lines = ["Earlier working solutions (plan, validation metric):"]
    for n in good[-6:]:
        lines.append(f"- {n.plan.splitlines()[0][:200] if n.plan else '(no plan)'} -> {n.metric:.4f}")
    return "\n".join(lines)


def _tail(text: str, limit: int) -> str:
    return text if len(text) <= limit else "[…]\n" + text[-limit:]


def draft_prompt(task: MlTask, nodes: list[Node], s: MleSettings) -> list[dict[str, Any]]:
    simple = s.prompt_style == "simple"
    intro = (
        "You write a machine learning solution."
        if simple
        else "You are an expert machine learning engineer. Write a first, relatively simple solution "
        "to the task below (no ensembling or hyper-parameter search yet)."
    )
    parts = [intro, task_description(task, s.preview_rows), _rules(task, simple)]
    memory = _memory(nodes, task)
    if memory:
        parts.append(memory + "\nTry a different approach from these.")
    parts.append(_format(simple))
    return [{"role": "user", "content": "\n\n".join(parts)}]


def debug_prompt(task: MlTask, parent: Node, s: MleSettings) -> list[dict[str, Any]]:
    simple = s.prompt_style == "simple"
    intro = (
        "This script has a bug. Fix it."
        if simple
        else "You are an expert machine learning engineer. The script below, written for the task, "
        "has a bug shown by its output. Find the cause, describe the fix in the plan, and give the "
        "whole corrected script."
    )
    parts = [
        intro,
        task_description(task, s.preview_rows),
        f"Script:\n```python\n{parent.code}\n```",
        f"Output:\n```\n{_tail(parent.term_out, s.max_output_chars)}\n```",
        f"Problem: {parent.analysis}",
        _rules(task, simple),
        _format(simple),
    ]
    return [{"role": "user", "content": "\n\n".join(parts)}]


def improve_prompt(task: MlTask, parent: Node, nodes: list[Node], s: MleSettings) -> list[dict[str, Any]]:
    simple = s.prompt_style == "simple"
    direction = "higher" if task.maximize else "lower"
    intro = (
        f"Make this script's validation {task.metric} {direction} with one change."
        if simple
        else "You are an expert machine learning engineer. Improve the best solution so far with ONE "
        f"atomic change (a better model, a feature, a hyper-parameter) that should make the validation "
        f"{task.metric} {direction}; say in the plan what you change and why."
    )
    parts = [
        intro,
        task_description(task, s.preview_rows),
        f"Current script (validation metric {parent.metric}):\n```python\n{parent.code}\n```",
    ]
    memory = _memory(nodes, task)
    if memory and not simple:
        parts.append(memory)
    parts += [_rules(task, simple), _format(simple)]
    return [{"role": "user", "content": "\n\n".join(parts)}]


def critique_prompt(task: MlTask, node: Node, s: MleSettings) -> list[dict[str, Any]]:
    simple = s.prompt_style == "simple"
    intro = (
        "Review this script. List its mistakes or weak points as numbered items. Do NOT write code."
        if simple
        else "You are reviewing a machine learning script and its output. List, as numbered items, "
        "concrete mistakes (bugs, leakage, a wrong submission format, a wrong metric) and the most "
        "promising fix for its weak points. Do NOT write or fix any code: only the critique. If "
        "nothing needs changing, answer exactly `No changes needed.`"
    )
    result = f"validation metric {node.metric}" if not node.buggy else f"buggy: {node.analysis}"
    parts = [
        intro,
        task_description(task, s.preview_rows),
        f"Script:\n```python\n{node.code}\n```",
        f"Output ({result}):\n```\n{_tail(node.term_out, s.max_output_chars)}\n```",
    ]
    return [{"role": "user", "content": "\n\n".join(parts)}]


def edit_prompt(task: MlTask, node: Node, critique: str, s: MleSettings) -> list[dict[str, Any]]:
    simple = s.prompt_style == "simple"
    intro = (
        "Change the script as the review says. Change nothing else."
        if simple
        else "Edit the script so that it addresses every point of the review below, and nothing else."
    )
    parts = [
        intro,
        f"Script:\n```python\n{node.code}\n```",
        f"Review:\n{critique}",
        _rules(task, simple),
        _format(simple),
    ]
    return [{"role": "user", "content": "\n\n".join(parts)}]


def validation_metric(stdout: str) -> float | None:
    found = METRIC_LINE.findall(stdout)
    if not found:
        return None
    try:
        return float(found[-1])
    except ValueError:
        return None


# --------------------------------------------------------------------------------------- agent


def _dur(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(max(0, int(seconds * 1e9)))
    return d


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


class MleEpisode:
    """One ML episode: the search over a task, then its trajectory."""

    def __init__(
        self, spec: MleSpec, policy: Policy, sandbox: SandboxClient, settings: MleSettings | None = None
    ) -> None:
        self.spec = spec
        self.task = spec.task
        self.policy = policy
        self.sandbox = sandbox
        self.settings = settings or MleSettings()
        self.nodes: list[Node] = []
        self.times = MleTimes()
        self.rng = random.Random(spec.trajectory_id)
        self.sandbox_info: sandbox_pb2.SandboxInfo | None = None
        self.deadline = 0.0
        #: Called with each node once it ran (progress displays, tests).
        self.on_node: list[Any] = []

    # ------------------------------------------------------------------------------ policy

    def _leaf(self, node: Node) -> bool:
        return not node.children

    def best(self) -> Node | None:
        good = [n for n in self.nodes if not n.buggy and n.metric is not None]
        if not good:
            return None
        pick = max if self.task.maximize else min
        return pick(good, key=lambda n: n.metric if n.metric is not None else 0.0)

    def next_action(self) -> tuple[Operator, Node | None]:
        """What the next step does (the seed's search policy)."""
        s = self.settings
        drafts = [n for n in self.nodes if n.operator == "draft"]
        if len(drafts) < s.num_drafts:
            return "draft", None
        if self.rng.random() < s.debug_prob:
            debuggable = [
                n for n in self.nodes if n.buggy and self._leaf(n) and n.debug_depth <= s.max_debug_depth
            ]
            if debuggable:
                return "debug", self.rng.choice(debuggable)
        best = self.best()
        if best is None:
            return "draft", None
        return "improve", best

    # ------------------------------------------------------------------------------ model

    async def _ask(self, messages: list[dict[str, Any]], node: Node) -> str:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Stop(F.FAILURE_CATEGORY_TIME_BUDGET, "the episode's time ran out")
        started = time.perf_counter()
        try:
            turn: ModelTurn = await self.policy.turn(
                messages, None, self.spec.sampling, min(self.spec.model_timeout_s, left)
            )
        except ModelError as err:
            raise _Stop(F.FAILURE_CATEGORY_MODEL_ERROR, str(err)) from None
        except TimeoutError:
            raise _Stop(
                F.FAILURE_CATEGORY_TIME_BUDGET, "the model did not answer before the deadline"
            ) from None
        spent = time.perf_counter() - started
        node.model_s += spent
        self.times.model_s += spent
        node.usage.prompt_tokens += turn.prompt_tokens
        node.usage.completion_tokens += turn.completion_tokens
        return turn.content or ""

    # ------------------------------------------------------------------------------ running

    async def execute(self, code: str) -> tuple[str, str | None, float, sandbox_pb2.ExecutionResult]:
        """Run a script on the task's data: (its output, the submission's text or None, seconds, result)."""
        task = self.task
        own = task.limits
        wall = own.wall_time_s if own is not None and own.wall_time_s is not None else task.time_budget_s
        cpu = own.cpu_time_s if own is not None and own.cpu_time_s is not None else wall
        memory = own.memory_mb if own is not None and own.memory_mb is not None else self.settings.memory_mb
        files = [sandbox_pb2.File(path=p, data=c) for p, c in sorted(task.data.items())]
        files += [
            sandbox_pb2.File(path="solution.py", text=code),
            sandbox_pb2.File(path=RUNNER, text=RUNNER_SOURCE),
        ]
        request = sandbox_pb2.ExecuteRequest(
            program=sandbox_pb2.Program(
                language=sandbox_pb2.LANGUAGE_PYTHON, files=files, entrypoint=RUNNER, env=SOLUTION_ENV
            ),
            limits=sandbox_pb2.Limits(
                wall_time=_dur(wall), cpu_time=_dur(cpu), memory_bytes=memory * 1024 * 1024
            ),
        )
        started = time.perf_counter()
        # The run gets its own time even when the episode's is nearly spent: a node is whole.
        deadline = max(self.deadline, time.monotonic() + wall + 60.0)
        reply: sandbox_pb2.ExecuteResponse = await self.sandbox._call(
            self.sandbox.stub.Execute, request, deadline, wall
        )
        spent = time.perf_counter() - started
        self.times.sandbox_s += spent
        result = reply.result
        if result.sandbox.backend:
            self.sandbox_info = result.sandbox
        stdout = result.stdout
        submission = None
        cut = stdout.rfind(MARKER)
        if cut >= 0:
            stdout, submission = stdout[:cut], stdout[cut + len(MARKER) :]
        output = stdout
        if result.stderr:
            output += ("\n" if stdout and not stdout.endswith("\n") else "") + result.stderr
        return output, submission, spent, result

    async def _run_node(self, node: Node) -> None:
        if not node.code.strip():
            node.buggy = True
            node.analysis = "the answer had no code (no ```python block, or an empty one)"
            return
        output, submission, spent, result = await self.execute(node.code)
        node.exec_time_s = round(spent, 3)
        node.term_out = output
        status = result.status
        problems = []
        if status != sandbox_pb2.EXECUTION_STATUS_OK:
            if status == sandbox_pb2.EXECUTION_STATUS_SANDBOX_ERROR:
                raise _Stop(F.FAILURE_CATEGORY_SANDBOX_ERROR, f"sandbox: {result.error_message}")
            what = sandbox_pb2.ExecutionStatus.Name(status).removeprefix("EXECUTION_STATUS_")
            if status in (
                sandbox_pb2.EXECUTION_STATUS_WALL_TIMEOUT,
                sandbox_pb2.EXECUTION_STATUS_CPU_TIMEOUT,
            ):
                problems.append(
                    f"the script was stopped at the {self.task.time_budget_s:g} s time budget ({what})"
                )
            else:
                problems.append(
                    f"the script failed ({what}): {result.error_message or 'exit ' + str(result.exit_code)}"
                )
        verdict = judge(self.task, submission)
        node.valid_submission = verdict.valid
        if verdict.valid:
            node.heldout = verdict.score
        elif status == sandbox_pb2.EXECUTION_STATUS_OK:
            problems.append(verdict.error)
        node.metric = validation_metric(output)
        if node.metric is None and status == sandbox_pb2.EXECUTION_STATUS_OK:
            problems.append("the script printed no `validation metric: <number>` line")
        node.buggy = bool(problems)
        node.analysis = (
            "; ".join(problems) if problems else f"validation metric {node.metric:.6g}; submission valid"
        )
        if node.buggy:
            node.metric = None

    # ------------------------------------------------------------------------------ search

    def _new(self, operator: Operator, parent: Node | None) -> Node:
        node = Node(
            id=f"n{len(self.nodes)}",
            step=len(self.nodes),
            operator=operator,
            parent=parent.id if parent else None,
            debug_depth=(parent.debug_depth + 1) if parent is not None and operator == "debug" else 0,
        )
        return node

    def _add(self, node: Node) -> None:
        if node.parent is not None:
            self._by_id(node.parent).children.append(node.id)
        self.nodes.append(node)
        for callback in self.on_node:
            callback(self, node)

    def _by_id(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    async def step(self) -> Node:
        """One step of the search: choose, ask, run; the node is added to the tree."""
        operator, parent = self.next_action()
        node = self._new(operator, parent)
        if operator == "draft":
            messages = draft_prompt(self.task, self.nodes, self.settings)
        elif operator == "debug":
            assert parent is not None
            messages = debug_prompt(self.task, parent, self.settings)
        else:
            assert parent is not None
            messages = improve_prompt(self.task, parent, self.nodes, self.settings)
        node.prompt = messages
        node.plan, node.code = parse_answer(await self._ask(messages, node))
        await self._run_node(node)
        self._add(node)
        return node

    async def reflect(self, target: Node) -> Node:
        """The two-step reflection on ``target``: critique (no code), then an edit by the critique."""
        node = self._new("reflect", target)
        critique = (await self._ask(critique_prompt(self.task, target, self.settings), node)).strip()
        plan, code = parse_answer(
            await self._ask(edit_prompt(self.task, target, critique, self.settings), node)
        )
        node.plan = f"Critique:\n{critique}" + (f"\n\nEdit:\n{plan}" if plan else "")
        node.code = code
        await self._run_node(node)
        self._add(node)
        return node

    async def search(self) -> _Stop | None:
        s = self.settings
        try:
            while len(self.nodes) < s.max_nodes:
                node = await self.step()
                if s.reflection and len(self.nodes) < s.max_nodes:
                    await self.reflect(node)
                if time.monotonic() >= self.deadline:
                    return _Stop(F.FAILURE_CATEGORY_TIME_BUDGET, "the episode's time budget was spent")
        except _Stop as stop:
            return stop
        except (SandboxError, TimeoutError) as err:
            return _Stop(F.FAILURE_CATEGORY_SANDBOX_ERROR, str(err))
        return None

    async def run(self) -> tpb.Trajectory:
        started = time.perf_counter()
        start_ts = _now()
        self.deadline = time.monotonic() + self.spec.max_wall_time_s
        stop = await self.search()
        self.times.total_s = time.perf_counter() - started
        return self.trajectory(start_ts, stop)

    # ------------------------------------------------------------------------------ record

    def outcome(self, stop: _Stop | None) -> tpb.Outcome:
        out = tpb.Outcome()
        best = self.best()
        infra = stop is not None and stop.category in (
            F.FAILURE_CATEGORY_MODEL_ERROR,
            F.FAILURE_CATEGORY_SANDBOX_ERROR,
        )
        out.resolved = best is not None and best.heldout is not None
        if best is not None and best.heldout is not None:
            normalised = self.task.normalised(best.heldout)
            out.reward = normalised if normalised is not None else best.heldout
        if infra:
            assert stop is not None
            out.failure_category, out.failure_detail = stop.category, stop.detail
            out.reward_detail.masked = True
            out.reward = 0.0
        elif not out.resolved:
            out.failure_category = F.FAILURE_CATEGORY_OTHER
            out.failure_detail = "no node produced a valid submission with a validation metric" + (
                f"; stopped: {stop.detail}" if stop is not None else ""
            )
        return out

    def trajectory(self, start_ts: Timestamp, stop: _Stop | None) -> tpb.Trajectory:
        spec, task = self.spec, self.task
        traj = tpb.Trajectory(
            id=spec.trajectory_id,
            task=tpb.TaskRef(
                suite=spec.suite,
                suite_version=spec.suite_version,
                task_id=task.id,
                split=task.split,
                kind=common_pb2.TASK_KIND_ML,
            ),
            policy=spec.policy_info,
            teacher_kind=spec.teacher_kind,
            tool_protocol=common_pb2.TOOL_PROTOCOL_UNSPECIFIED,
            outcome=self.outcome(stop),
            run_id=spec.run_id,
            attempt=spec.attempt,
            start_time=start_ts,
            end_time=_now(),
            labels=spec.labels,
        )
        traj.steps.add(
            index=0, role=tpb.ROLE_USER, content=task_description(task, self.settings.preview_rows)
        )
        output_step: dict[str, int] = {}
        for n in self.nodes:
            a = traj.steps.add(index=len(traj.steps), role=tpb.ROLE_ASSISTANT)
            # A fence inside the plan (a critique quoting code) would be read as the node's code.
            plan = n.plan.replace("```", "'''")
            a.content = f"{plan}\n\n```python\n{n.code}\n```" if plan else f"```python\n{n.code}\n```"
            if n.parent is not None:
                a.parent_index = output_step[n.parent]
            a.usage.CopyFrom(n.usage)
            a.duration.CopyFrom(_dur(n.model_s))
            a.attributes.update(
                {
                    "aide.node_id": n.id,
                    "aide.stage": n.stage,
                    "aide.buggy": str(n.buggy).lower(),
                    "aide.maximize": str(task.maximize).lower(),
                    "mle.operator": n.operator,
                    "mle.debug_depth": str(n.debug_depth),
                    "mle.valid_submission": str(n.valid_submission).lower(),
                }
            )
            if n.metric is not None:
                a.attributes["aide.metric"] = repr(float(n.metric))
            if n.heldout is not None:
                a.attributes["mle.heldout"] = repr(float(n.heldout))
            if n.prompt:
                a.attributes["mle.prompt"] = json.dumps(n.prompt, ensure_ascii=False)
            r = traj.steps.add(index=len(traj.steps), role=tpb.ROLE_USER, parent_index=a.index)
            r.content = n.term_out + (f"\n\n{n.analysis}" if n.analysis else "")
            r.tool_result.status = tpb.TOOL_RESULT_STATUS_ERROR if n.buggy else tpb.TOOL_RESULT_STATUS_OK
            r.attributes.update({"aide.node_id": n.id, "mle.analysis": n.analysis})
            r.duration.CopyFrom(_dur(n.exec_time_s))
            output_step[n.id] = r.index
        best = self.best()
        traj.labels["mle.nodes"] = str(len(self.nodes))
        traj.labels["mle.valid"] = str(any(n.valid_submission for n in self.nodes)).lower()
        if best is not None:
            traj.labels["aide.best_node"] = best.id
            if best.metric is not None:
                traj.labels["mle.best_metric"] = repr(best.metric)
            if best.heldout is not None:
                traj.labels["mle.best_heldout"] = repr(best.heldout)
                normalised = task.normalised(best.heldout)
                if normalised is not None:
                    traj.labels["mle.normalised"] = repr(round(normalised, 6))
        if self.sandbox_info is not None and self.sandbox_info.backend:
            traj.sandbox.CopyFrom(
                tpb.SandboxRef(
                    backend=self.sandbox_info.backend,
                    image=self.sandbox_info.image,
                    runner_version=self.sandbox_info.runner_version,
                )
            )
        return traj


# ------------------------------------------------------------------------------------ reference


class MleReferencePolicy:
    """The reference teacher of an ML task: one draft whose code is the task's reference solution."""

    model = ""

    def __init__(self, task: MlTask) -> None:
        if not task.has_reference:
            raise ValueError(f"task {task.id!r} has no reference solution")
        plan = (
            task.reference_solution.split('"""')[1].strip()
            if task.reference_solution.startswith('"""')
            else ""
        )
        self.answer = (
            f"{plan or 'The reference solution.'}\n\n```python\n{task.reference_solution.strip()}\n```"
        )

    async def turn(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        sampling: common_pb2.SamplingParams,
        timeout_s: float,
    ) -> ModelTurn:
        del messages, tools, sampling, timeout_s
        return ModelTurn(content=self.answer, finish_reason="stop")


#: The search a reference episode runs: the reference, once.
REFERENCE_SETTINGS = {"max_nodes": 1, "num_drafts": 1, "reflection": False}


# -------------------------------------------------------------------------------------- journal


def summary(traj: tpb.Trajectory) -> Mapping[str, Any]:
    """The ML figures of one stored trajectory (from its labels; used by reports)."""
    labels = traj.labels

    def num(key: str) -> float | None:
        return float(labels[key]) if key in labels else None

    return {
        "task_id": traj.task.task_id,
        "nodes": int(labels.get("mle.nodes", "0")),
        "valid": labels.get("mle.valid") == "true",
        "best_metric": num("mle.best_metric"),
        "heldout": num("mle.best_heldout"),
        "normalised": num("mle.normalised"),
        "wall_s": (traj.end_time.ToNanoseconds() - traj.start_time.ToNanoseconds()) / 1e9,
    }


__all__ = ["MleEpisode", "MleSettings", "MleSpec", "Node", "export_journal", "journal_of", "parse_answer"]
