"""Skill optimisation: train the agent's playbook (its skill) the way a trainer trains weights.

A ``SkillOptimization`` is a job of the job core (``flywheel_common.jobs``) under
``orchestrator/skillopts/``. Its work is a table of stages (``handlers``); each stage reads the
resource, does its work through idempotent effects (runs created with the request id
``<id>-s<step>-<stage>``, skills stored by content hash, optimiser answers kept as side data
``<id>/s<step>-<call>.json``), sets the next stage and is saved in one write together with its
``StageRecord``. A restart therefore resumes at the stage it was in: a completed stage is never
run again, none is skipped, a run it had started is found again by its request id, and an
optimiser call that had answered is read back rather than asked again.

One step (the seed's six stages)::

    ROLLOUT   the current skill on a TRAIN minibatch (times ``accumulation``), one rollout run
    REFLECT   the optimiser model on batches of failures and of successes → patches (JSON)
    AGGREGATE equal edits merged level by level (fan-in ``aggregate_fanout``), support summed
    SELECT    ranked (support, failures first, first seen) and cut to the step's edit budget
    UPDATE    the kept edits applied to the current skill (protected sections respected)
    EVALUATE  the candidate on the selection tasks; the gate accepts or rejects it

Epochs walk the TRAIN tasks (selection tasks held out) in a seeded order. At the end of an epoch
``slow_update`` asks the optimiser for edits from the epoch's before/after pairs (each step's
edits with the selection score before and after and the verdict), which go through SELECT,
UPDATE and EVALUATE like any step; ``meta_skill`` then rewrites the optimiser's memory (lessons
on which edits worked), given to every later reflection. At the end TEST runs the baseline, the
best-on-selection and the final skill on the TEST split.

The gate. A candidate is accepted when its selection pass rate exceeds the current skill's by
more than ``min_improvement`` (a strict improvement when 0). A tie keeps the current skill (the
smaller change wins) unless ``accept_ties``; ties are compared exactly, as both rates are counts
over the same episodes. Noise: the current skill's score is the one measured when it was accepted
(never re-drawn, so a lucky re-run cannot unseat it); ``selection_rollouts`` and
``min_improvement`` trade evaluation cost against false accepts. "Best" is the highest selection
score, the earliest on ties.

Malformed optimiser output (no JSON object, wrong shape, an unknown op, an edit missing its
anchor…) is recorded in the step's ``malformed`` with the reason and contributes no edit; an
optimiser that cannot be reached fails the job (UNAVAILABLE) rather than pretend it had nothing
to say. Tokens are counted per stage: the target's from its runs' counters, the optimiser's from
each answer's usage (an answer lost to a crash before it was kept is asked again and only the kept
one is counted).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import openai
from google.protobuf import json_format

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as spb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import InvalidArgument
from flywheel_common.events import EventBus
from flywheel_common.jobs import Announcement, Job, JobFailed, JobTable, now
from flywheel_common.objectstore import ObjectStore
from flywheel_orchestrator import skills as skill_docs
from flywheel_orchestrator import validation as check
from flywheel_orchestrator.model import ModelClient
from flywheel_orchestrator.runs import RunManager

log = logging.getLogger("flywheel.orchestrator.skillopt")

PREFIX = "orchestrator/skillopts/"
S = spb  # stage and enum names read better as S.SKILL_OPT_STAGE_…
OUTPUT_ONLY = (
    "id",
    "state",
    "error",
    "stage",
    "epoch",
    "steps_total",
    "baseline_skill_id",
    "current_skill_id",
    "current_score",
    "best_skill_id",
    "best_score",
    "baseline_score",
    "resolved_selection_task_ids",
    "steps",
    "history",
    "usage",
    "meta_skill_text",
    "test",
    "report",
    "create_time",
    "start_time",
    "end_time",
    "next_minibatch",
)
OPS = {
    "append": spb.SKILL_EDIT_OP_APPEND,
    "insert_after": spb.SKILL_EDIT_OP_INSERT_AFTER,
    "replace": spb.SKILL_EDIT_OP_REPLACE,
    "delete": spb.SKILL_EDIT_OP_DELETE,
}
#: Characters of a trajectory's last assistant turn shown to the optimiser.
TURN_CHARS = 800
#: Characters of a task statement shown to the optimiser.
TASK_CHARS = 600
EPS = 1e-12
#: Completion tokens of one optimiser answer unless ``optimizer_max_tokens`` says otherwise.
OPTIMIZER_MAX_TOKENS = 2048

REFLECT_SYSTEM = """You improve the SKILL of a coding agent: a Markdown playbook appended to its \
system prompt. You see the current skill and some of the agent's episodes with their outcome. \
Propose edits to the skill that would make failures succeed (or keep successes succeeding).
Answer with ONE JSON object and nothing else:
{"edits": [{"op": "append" | "insert_after" | "replace" | "delete",
            "section": "<protected section name, append only; omit for the end of the skill>",
            "anchor": "<exact text of the skill to act on; insert_after, replace, delete>",
            "content": "<new text; append, insert_after, replace>",
            "rationale": "<why, in one sentence>",
            "support": <how many of the shown episodes support this edit>}]}
Text between <!-- protected: NAME --> and <!-- /protected --> may only be appended to."""

SLOW_SYSTEM = """You improve the SKILL of a coding agent over a whole epoch. You see the current \
skill and, for each step of the epoch, the edits that were tried, the selection pass rate before \
and after, and whether they were kept. Propose edits that consolidate what worked and undo what \
did not. Answer with ONE JSON object in the same format as a reflection: {"edits": [...]}, each \
edit with op, section, anchor, content, rationale and support."""

META_SYSTEM = """You keep the optimiser's memory across epochs: short lessons about which kinds \
of skill edits help this agent and which do not. You see the previous memory and this epoch's \
steps. Answer with ONE JSON object and nothing else: {"meta_skill": "<the new memory, at most \
20 lines of Markdown>"}"""


# ---------------------------------------------------------------------------------- pure parts


def budget_at(budget: spb.EditBudget, k: int, total: int) -> int:
    """Edits allowed at minibatch step ``k`` (1-based) of ``total`` under the schedule."""
    hi = budget.initial or 3
    lo = min(budget.minimum or 1, hi)
    frac = 0.0 if total <= 1 else min(1.0, (k - 1) / (total - 1))
    if budget.schedule == spb.EDIT_BUDGET_SCHEDULE_LINEAR:
        return max(lo, round(hi + (lo - hi) * frac))
    if budget.schedule == spb.EDIT_BUDGET_SCHEDULE_COSINE:
        return max(lo, round(lo + (hi - lo) * (1 + math.cos(math.pi * frac)) / 2))
    return hi


def _order_key(seed: int, salt: str, task_id: str) -> str:
    return hashlib.sha256(f"{seed}:{salt}:{task_id}".encode()).hexdigest()


def select_tasks(train: list[str], given: list[str], size: int, seed: int) -> list[str]:
    """The selection tasks: ``given``, else ``size`` (a third by default) TRAIN tasks by a stable hash."""
    if given:
        return list(given)
    n = size or max(1, len(train) // 3)
    return sorted(sorted(train, key=lambda t: _order_key(seed, "selection", t))[:n])


def epoch_order(pool: list[str], seed: int, epoch: int) -> list[str]:
    return sorted(pool, key=lambda t: _order_key(seed, f"epoch-{epoch}", t))


def extract_json(text: str) -> Any:
    """The first JSON object in ``text`` (a code fence around it tolerated); ValueError if none."""
    fenced = re.search(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    candidates = [fenced.group(1)] if fenced else []
    start = text.find("{")
    if start >= 0:
        candidates.append(text[start : text.rfind("}") + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object in the answer")


def parse_edits(text: str, source: str, batch_size: int) -> tuple[list[spb.SkillEdit], list[str]]:
    """(edits, problems) from an optimiser answer; a bad edit is a problem, the others stand."""
    try:
        doc = extract_json(text)
    except ValueError as err:
        return [], [str(err)]
    if not isinstance(doc, dict) or not isinstance(doc.get("edits"), list):
        return [], ['the answer is not an object with an "edits" list']
    edits: list[spb.SkillEdit] = []
    problems: list[str] = []
    for i, raw in enumerate(doc["edits"]):
        if not isinstance(raw, dict):
            problems.append(f"edits[{i}] is not an object")
            continue
        op = OPS.get(str(raw.get("op", "")).lower())
        if op is None:
            problems.append(f"edits[{i}].op {raw.get('op')!r} is not one of {', '.join(OPS)}")
            continue
        fields = {k: raw.get(k) or "" for k in ("section", "anchor", "content", "rationale")}
        if not all(isinstance(v, str) for v in fields.values()):
            problems.append(f"edits[{i}]: section, anchor, content and rationale must be strings")
            continue
        if op != spb.SKILL_EDIT_OP_APPEND and not fields["anchor"]:
            problems.append(f"edits[{i}]: {raw['op']} needs an anchor")
            continue
        if op != spb.SKILL_EDIT_OP_DELETE and not fields["content"].strip():
            problems.append(f"edits[{i}]: {raw['op']} needs content")
            continue
        try:
            support = int(raw.get("support") or batch_size)
        except (TypeError, ValueError):
            support = batch_size
        edits.append(
            spb.SkillEdit(
                op=op,
                section=fields["section"],
                anchor=fields["anchor"],
                content=fields["content"],
                rationale=fields["rationale"],
                support=max(1, min(support, batch_size)),
                source=source,
            )
        )
    return edits, problems


def _edit_key(e: spb.SkillEdit) -> tuple[int, str, str, str]:
    norm = " ".join
    return (e.op, e.section, norm(e.anchor.split()), norm(e.content.split()).lower())


def merge(edits: list[spb.SkillEdit]) -> list[spb.SkillEdit]:
    """Equal edits (same op, section, anchor and content up to whitespace/case) become one."""
    out: dict[tuple[int, str, str, str], spb.SkillEdit] = {}
    for e in edits:
        key = _edit_key(e)
        have = out.get(key)
        if have is None:
            copy = spb.SkillEdit()
            copy.CopyFrom(e)
            out[key] = copy
            continue
        have.support += e.support
        if e.rationale and e.rationale not in have.rationale.split("; "):
            have.rationale = f"{have.rationale}; {e.rationale}" if have.rationale else e.rationale
        if e.source == "failure":
            have.source = "failure"
    return list(out.values())


def aggregate(groups: list[list[spb.SkillEdit]], fanout: int) -> list[spb.SkillEdit]:
    """Hierarchical merge: groups of ``fanout`` patch lists merged level by level to one list."""
    level = [merge(g) for g in groups] or [[]]
    fanout = max(2, fanout)
    while len(level) > 1:
        level = [merge([e for g in level[i : i + fanout] for e in g]) for i in range(0, len(level), fanout)]
    return level[0]


def rank(edits: list[spb.SkillEdit]) -> list[spb.SkillEdit]:
    """Most support first; failures before successes; then the order they were first seen."""
    indexed = list(enumerate(edits))
    indexed.sort(key=lambda p: (-p[1].support, p[1].source != "failure", p[0]))
    return [e for _, e in indexed]


def gate(candidate: float, current: float, margin: float, accept_ties: bool) -> tuple[bool, str]:
    """(accepted, reason) — see the module docstring for ties and noise."""
    if candidate > current + margin + EPS:
        return True, f"selection {candidate:.3f} > {current:.3f} + margin {margin:g}"
    if accept_ties and margin == 0 and abs(candidate - current) <= EPS:
        return True, f"selection {candidate:.3f} ties {current:.3f}; ties accepted"
    if abs(candidate - current) <= EPS:
        return False, f"selection {candidate:.3f} ties {current:.3f}; the current skill stays"
    return False, f"selection {candidate:.3f} is not above {current:.3f} + margin {margin:g}"


# ---------------------------------------------------------------------------------- report


def report_markdown(o: spb.SkillOptimization) -> str:
    lines = [
        f"# Skill optimisation {o.id}",
        "",
        f"Suite `{o.suite}`, target `{o.target_model}`, optimiser `{o.optimizer_model}`.",
        "",
        "| | skill | selection | TEST |",
        "|---|---|---:|---:|",
        f"| baseline | `{o.baseline_skill_id}` | {o.baseline_score:.3f} | {o.test.baseline:.3f} |",
        f"| best on selection | `{o.best_skill_id}` | {o.best_score:.3f} | {o.test.best:.3f} |",
        f"| final | `{o.current_skill_id}` | {o.current_score:.3f} | {o.test.final:.3f} |",
        "",
        f"TEST episodes per skill: {o.test.episodes}.",
        "",
        "## Steps",
        "",
        "| step | epoch | kind | budget | proposed | applied | before | candidate | verdict |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in o.steps:
        applied = sum(1 for e in s.selected if e.applied)
        verdict = spb.SkillGateDecision.Name(s.decision).removeprefix("SKILL_GATE_DECISION_").lower()
        lines.append(
            f"| {s.index} | {s.epoch} | {'slow' if s.slow_update else 'minibatch'} | {s.budget} | "
            f"{len(s.proposed)} | {applied} | {s.score_before:.3f} | {s.candidate_score:.3f} | {verdict} |"
        )
    lines += ["", "## Tokens per stage", "", "| stage | target | optimiser | calls |", "|---|---:|---:|---:|"]
    for u in o.usage:
        name = spb.SkillOptStage.Name(u.stage).removeprefix("SKILL_OPT_STAGE_").lower()
        t, p = u.target, u.optimizer
        lines.append(
            f"| {name} | {t.prompt_tokens + t.completion_tokens} | "
            f"{p.prompt_tokens + p.completion_tokens} | {u.optimizer_calls} |"
        )
    return "\n".join(lines) + "\n"


def report_png(o: spb.SkillOptimization) -> bytes:
    """Selection score per step: accepted candidates as green dots, rejected as red crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = [0] + [s.index for s in o.steps]
    current = [o.baseline_score]
    for s in o.steps:
        current.append(s.candidate_score if s.decision == spb.SKILL_GATE_DECISION_ACCEPTED else current[-1])
    ax.step(xs, current, where="post", color="tab:blue", label="current skill")
    acc = [(s.index, s.candidate_score) for s in o.steps if s.decision == spb.SKILL_GATE_DECISION_ACCEPTED]
    rej = [(s.index, s.candidate_score) for s in o.steps if s.decision == spb.SKILL_GATE_DECISION_REJECTED]
    if acc:
        ax.scatter(*zip(*acc, strict=True), color="tab:green", marker="o", zorder=3, label="accepted")
    if rej:
        ax.scatter(*zip(*rej, strict=True), color="tab:red", marker="x", zorder=3, label="rejected")
    ax.set_xlabel("step")
    ax.set_ylabel("selection pass rate")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{o.id}: TEST {o.test.baseline:.2f} → best {o.test.best:.2f} / final {o.test.final:.2f}")
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------- manager


class SkillOptManager:
    def __init__(
        self,
        store: Callable[[], ObjectStore],
        bus: Callable[[], EventBus | None],
        runs: RunManager,
        models: ModelClient,
    ) -> None:
        self._store = store
        self.runs = runs
        self.models = models
        self.table: JobTable[spb.SkillOptimization, Job[spb.SkillOptimization]] = JobTable(
            store=store,
            bus=bus,
            prefix=PREFIX,
            message_class=spb.SkillOptimization,
            kind="skill optimisation",
            id_prefix="skopt",
            announce=lambda _o: list[Announcement](),  # no event of its own yet; its runs announce
            make_job=Job,
            on_cancel=self._cancel,
        )
        Handler = Callable[[Job[spb.SkillOptimization]], Any]
        self.handlers: dict[int, Handler] = {
            S.SKILL_OPT_STAGE_BASELINE: self._baseline,
            S.SKILL_OPT_STAGE_ROLLOUT: self._rollout,
            S.SKILL_OPT_STAGE_REFLECT: self._reflect,
            S.SKILL_OPT_STAGE_AGGREGATE: self._aggregate,
            S.SKILL_OPT_STAGE_SELECT: self._select,
            S.SKILL_OPT_STAGE_UPDATE: self._update,
            S.SKILL_OPT_STAGE_EVALUATE: self._evaluate,
            S.SKILL_OPT_STAGE_SLOW_UPDATE: self._slow_update,
            S.SKILL_OPT_STAGE_META_SKILL: self._meta,
            S.SKILL_OPT_STAGE_TEST: self._test,
        }

    @property
    def store(self) -> ObjectStore:
        return self._store()

    async def start(self) -> None:
        await self.table.start(self._launch)

    async def stop(self) -> None:
        await self.table.stop()

    # ------------------------------------------------------------------------------ requests

    def _train(self, o: spb.SkillOptimization) -> list[str]:
        suite = check.suite(self.runs.catalog, o.suite, "optimization")
        return sorted(t.id for t in suite.select(common_pb2.TASK_SPLIT_TRAIN, []))

    def validate(self, o: spb.SkillOptimization) -> None:
        path = "optimization"
        suite = check.suite(self.runs.catalog, o.suite, path)
        train = check.tasks(suite, common_pb2.TASK_SPLIT_TRAIN, [], path)
        test = check.tasks(suite, common_pb2.TASK_SPLIT_TEST, o.test_task_ids, path, "test_task_ids")
        if not o.target_model:
            raise InvalidArgument(f"{path}.target_model", "is required (a gateway model name)")
        if not o.optimizer_model:
            raise InvalidArgument(f"{path}.optimizer_model", "is required (a gateway model name)")
        if not o.HasField("initial_skill") or not o.initial_skill.WhichOneof("source"):
            raise InvalidArgument(f"{path}.initial_skill", "is required (skill_id or text)")
        if o.episode.HasField("skill"):
            raise InvalidArgument(f"{path}.episode.skill", "must be unset: the optimisation sets it")
        check.episode(o.episode, train + test, path)
        check.labels(o.labels, path)
        ids = {t.id for t in train}
        for i, t in enumerate(o.selection_task_ids):
            if t not in ids:
                raise InvalidArgument(
                    f"{path}.selection_task_ids[{i}]", f"{t!r} is not a TRAIN task of {o.suite!r}"
                )
        for name in (
            "selection_size",
            "minibatch_size",
            "accumulation",
            "epochs",
            "max_steps",
            "rollouts_per_task",
            "selection_rollouts",
            "reflect_batch_size",
            "aggregate_fanout",
            "optimizer_max_tokens",
        ):
            if getattr(o, name) < 0:
                raise InvalidArgument(f"{path}.{name}", "must be >= 0 (0 means the default)")
        for name in ("rollouts_per_task", "selection_rollouts"):
            if getattr(o, name) > self.runs.settings.max_rollouts_per_task:
                raise InvalidArgument(f"{path}.{name}", f"at most {self.runs.settings.max_rollouts_per_task}")
        if o.budget.initial < 0 or o.budget.minimum < 0:
            raise InvalidArgument(f"{path}.budget", "initial and minimum must be >= 0 (0 means the default)")
        if o.budget.initial and o.budget.minimum > o.budget.initial:
            raise InvalidArgument(f"{path}.budget.minimum", "must not exceed budget.initial")
        if not 0 <= o.min_improvement < 1:
            raise InvalidArgument(f"{path}.min_improvement", "must be in [0, 1)")
        selection = select_tasks(sorted(ids), list(o.selection_task_ids), o.selection_size, o.seed)
        if len(selection) >= len(ids):
            raise InvalidArgument(
                f"{path}.selection_task_ids" if o.selection_task_ids else f"{path}.selection_size",
                f"leaves no TRAIN task for minibatches ({len(ids)} TRAIN tasks)",
            )

    async def create(self, o: spb.SkillOptimization, request_id: str = "") -> spb.SkillOptimization:
        self.validate(o)
        clean = spb.SkillOptimization()
        clean.CopyFrom(o)
        for name in OUTPUT_ONLY:
            clean.ClearField(name)
        sid = await self.runs.resolve_skill(clean.initial_skill, "optimization.initial_skill")
        clean.initial_skill.skill_id = sid
        train = self._train(clean)

        def prepare(new: spb.SkillOptimization) -> None:
            selection = select_tasks(train, list(new.selection_task_ids), new.selection_size, new.seed)
            new.resolved_selection_task_ids.extend(selection)
            pool = [t for t in train if t not in selection]
            per_epoch = math.ceil(len(pool) / self._chunk(new))
            total = per_epoch * (new.epochs or 1)
            new.steps_total = min(total, new.max_steps) if new.max_steps else total
            new.stage = S.SKILL_OPT_STAGE_BASELINE
            new.baseline_skill_id = new.current_skill_id = new.best_skill_id = sid

        job, created = await self.table.create(clean, request_id, prepare=prepare)
        if created:
            self._launch(job)
        return self.table.snapshot(job)

    def get(self, opt_id: str) -> spb.SkillOptimization:
        return self.table.get(opt_id)

    def page(self, request: opb.ListSkillOptimizationsRequest) -> tuple[list[spb.SkillOptimization], str]:
        def keep(o: spb.SkillOptimization) -> bool:
            return not request.state or o.state == request.state

        return self.table.page(keep, request.page_size, request.page_token)

    async def cancel(self, opt_id: str) -> spb.SkillOptimization:
        return await self.table.cancel(opt_id)

    async def _cancel(self, job: Job[spb.SkillOptimization]) -> None:
        for run_job in list(self.runs.table.jobs.values()):
            r = run_job.resource
            if r.labels.get("skill_optimization_id") == job.id and not run_job.terminal:
                await self.runs.cancel(r.id)
        await self.table.cancel_task(job)

    async def watch(self, opt_id: str) -> AsyncIterator[spb.SkillOptimization]:
        async for item in self.table.watch(opt_id):
            if isinstance(item, spb.SkillOptimization):
                yield item

    # ------------------------------------------------------------------------------ running

    def _launch(self, job: Job[spb.SkillOptimization]) -> None:
        self.table.launch(job, self._execute)

    async def _execute(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        await self.table.set_running(job)
        while o.stage != S.SKILL_OPT_STAGE_DONE:
            stage = o.stage
            handler = self.handlers.get(stage)
            if handler is None:
                raise JobFailed(f"unknown stage {stage}", grpc.StatusCode.INTERNAL)
            step = o.steps[-1].index if o.steps and stage not in (S.SKILL_OPT_STAGE_BASELINE,) else 0
            epoch = o.epoch
            await handler(job)  # sets the next stage; nothing is saved until it returns
            if stage in (S.SKILL_OPT_STAGE_ROLLOUT, S.SKILL_OPT_STAGE_SLOW_UPDATE):
                step = o.steps[-1].index  # these stages open a step
            if stage == S.SKILL_OPT_STAGE_TEST:
                step = 0
            o.history.append(spb.StageRecord(epoch=epoch, step=step, stage=stage, end_time=now()))
            await self.table.save(job)  # the stage's effects and the next stage, in one write

    @staticmethod
    def _chunk(o: spb.SkillOptimization) -> int:
        return (o.minibatch_size or 4) * (o.accumulation or 1)

    def _usage(self, o: spb.SkillOptimization, stage: int) -> spb.StageUsage:
        for u in o.usage:
            if u.stage == stage:
                return u
        u = o.usage.add(stage=stage)
        return u

    def _pool(self, o: spb.SkillOptimization) -> list[str]:
        train = self._train(o)
        return [t for t in train if t not in set(o.resolved_selection_task_ids)]

    async def _skill_text(self, skill_id: str) -> str:
        return (await asyncio.to_thread(self.runs.skills.get, skill_id)).text

    async def _play(
        self,
        job: Job[spb.SkillOptimization],
        key: str,
        split: common_pb2.TaskSplit,
        task_ids: list[str],
        skill_id: str,
        rollouts: int,
        stage: int,
    ) -> tuple[str, list[run_pb2.EpisodeResult]]:
        """A run of the target with ``skill_id`` (request id ``<id>-<key>``: once, even across a
        restart); (its id, its results). Its tokens count towards ``stage``."""
        o = job.resource
        episode = run_pb2.EpisodeSettings()
        episode.CopyFrom(o.episode)
        episode.skill.skill_id = skill_id
        run = run_pb2.Run(
            suite=o.suite,
            split=split,
            task_ids=task_ids,
            teacher_kind=tpb.TEACHER_KIND_MODEL,
            model=o.target_model,
            rollouts_per_task=rollouts,
            episode=episode,
            labels={**o.labels, "skill_optimization_id": o.id},
        )
        created = await self.runs.create(run, f"{o.id}-{key}")
        try:
            await self.runs.job(created.id).done.wait()
        except asyncio.CancelledError:
            if job.cancel_requested:  # a cancel, not a shutdown (then the run resumes with us)
                await asyncio.shield(self.runs.cancel(created.id))
            raise
        done = self.runs.get(created.id)
        if done.state == common_pb2.JOB_STATE_CANCELLED:
            raise asyncio.CancelledError
        if done.state != common_pb2.JOB_STATE_SUCCEEDED:
            raise JobFailed(f"run {done.id} ({key}) failed: {done.error.message}", grpc.StatusCode.ABORTED)
        c = done.counters
        if c.episodes_finished and c.episodes_errored == c.episodes_finished:
            # Every episode an infrastructure error (model or sandbox down): a score of 0 would be a lie.
            raise JobFailed(
                f"run {done.id} ({key}): every episode ended on an infrastructure error "
                f"(target model {o.target_model!r} or the sandbox unavailable); see its trajectories",
                grpc.StatusCode.UNAVAILABLE,
            )
        u = self._usage(o, stage)
        u.target.prompt_tokens += done.counters.usage.prompt_tokens
        u.target.completion_tokens += done.counters.usage.completion_tokens
        return done.id, await self.runs.results(done.id)

    @staticmethod
    def _score(results: list[run_pb2.EpisodeResult]) -> float:
        return sum(1 for r in results if r.resolved) / len(results) if results else 0.0

    async def _ask(
        self, job: Job[spb.SkillOptimization], key: str, system: str, user: str, stage: int
    ) -> str:
        """The optimiser's answer, kept as side data ``<key>`` so a restart reads it back."""
        o = job.resource
        kept = await asyncio.to_thread(self.table.records.load_side, o.id, key)
        if kept is None:
            try:
                async with self.models.limit:
                    reply = await self.models.client.chat.completions.create(
                        model=o.optimizer_model,
                        messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                        temperature=0,
                        max_tokens=o.optimizer_max_tokens or OPTIMIZER_MAX_TOKENS,
                        timeout=self.runs.settings.skillopt_optimizer_timeout_s,
                    )
            except openai.APIError as err:
                raise JobFailed(
                    f"optimiser model {o.optimizer_model!r} failed: {err}", grpc.StatusCode.UNAVAILABLE
                ) from None
            usage = reply.usage
            kept = {
                "text": reply.choices[0].message.content or "",
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "completion_tokens": usage.completion_tokens if usage else 0,
            }
            await asyncio.to_thread(self.table.records.save_side, o.id, key, kept)
        u = self._usage(o, stage)
        u.optimizer.prompt_tokens += int(kept["prompt_tokens"])
        u.optimizer.completion_tokens += int(kept["completion_tokens"])
        u.optimizer_calls += 1
        return str(kept["text"])

    def _budget(self, o: spb.SkillOptimization, slow: bool) -> int:
        k = sum(1 for s in o.steps if not s.slow_update)
        if slow:
            return budget_at(o.budget, o.steps_total, o.steps_total)
        return budget_at(o.budget, k, o.steps_total)

    # ------------------------------------------------------------------------------ stages

    async def _baseline(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        _, results = await self._play(
            job,
            "baseline",
            common_pb2.TASK_SPLIT_TRAIN,
            list(o.resolved_selection_task_ids),
            o.baseline_skill_id,
            o.selection_rollouts or 1,
            S.SKILL_OPT_STAGE_BASELINE,
        )
        o.baseline_score = o.current_score = o.best_score = self._score(results)
        o.stage = S.SKILL_OPT_STAGE_ROLLOUT if o.steps_total else S.SKILL_OPT_STAGE_TEST

    async def _rollout(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        chunk = self._chunk(o)
        order = epoch_order(self._pool(o), o.seed, o.epoch)
        tasks = order[o.next_minibatch * chunk : (o.next_minibatch + 1) * chunk]
        step = o.steps.add(
            index=len(o.steps) + 1,
            epoch=o.epoch,
            train_task_ids=tasks,
            skill_before_id=o.current_skill_id,
            score_before=o.current_score,
        )
        step.budget = self._budget(o, slow=False)
        run_id, results = await self._play(
            job,
            f"s{step.index}-rollout",
            common_pb2.TASK_SPLIT_TRAIN,
            tasks,
            o.current_skill_id,
            o.rollouts_per_task or 1,
            S.SKILL_OPT_STAGE_ROLLOUT,
        )
        step.rollout_run_id = run_id
        step.rollout_episodes = len(results)
        step.rollout_resolved = sum(1 for r in results if r.resolved)
        o.stage = S.SKILL_OPT_STAGE_REFLECT

    async def _digest(self, result: run_pb2.EpisodeResult) -> str:
        reply = await self.runs.trajectories.GetTrajectory(
            tpb.GetTrajectoryRequest(trajectory_id=result.trajectory_id, view=tpb.TRAJECTORY_VIEW_FULL),
            timeout=self.runs.settings.trajectory_timeout_s,
        )
        t = reply.trajectory
        task = next((s.content for s in t.steps if s.role == tpb.ROLE_USER), "")
        last = next((s.content for s in reversed(t.steps) if s.role == tpb.ROLE_ASSISTANT), "")
        verdict = (
            "RESOLVED"
            if t.outcome.resolved
            else f"FAILED ({tpb.FailureCategory.Name(t.outcome.failure_category)}: {t.outcome.failure_detail[:300]})"
        )
        return (
            f"### task {t.task.task_id} — {verdict}\n"
            f"Task: {task[:TASK_CHARS]}\n"
            f"Last agent turn: {last[:TURN_CHARS]}\n"
        )

    async def _reflect(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        step = o.steps[-1]
        results = await self.runs.results(step.rollout_run_id)
        skill = await self._skill_text(step.skill_before_id)
        mb = max(1, o.minibatch_size or 4)
        position = {t: i // mb for i, t in enumerate(step.train_task_ids)}
        size = max(1, o.reflect_batch_size or 4)
        batches: list[tuple[str, list[run_pb2.EpisodeResult]]] = []
        for minibatch in range(o.accumulation or 1):  # each minibatch reflected on its own
            mine = [r for r in results if position.get(r.task_id, 0) == minibatch]
            for source, keep in (("failure", False), ("success", True)):
                chosen = [r for r in mine if r.resolved == keep]
                batches += [(source, chosen[i : i + size]) for i in range(0, len(chosen), size)]
        groups: list[list[dict[str, Any]]] = []
        del step.malformed[:]
        raw = 0
        for k, (source, batch) in enumerate(batches):
            digests = [await self._digest(r) for r in batch]
            memory = f"\n## Lessons so far (meta skill)\n{o.meta_skill_text}\n" if o.meta_skill_text else ""
            user = (
                f"## Current skill\n{skill}\n{memory}\n"
                f"## {len(batch)} {'failed' if source == 'failure' else 'successful'} episodes\n\n"
                + "\n".join(digests)
            )
            text = await self._ask(
                job, f"s{step.index}-reflect-{k}", REFLECT_SYSTEM, user, S.SKILL_OPT_STAGE_REFLECT
            )
            edits, problems = parse_edits(text, source, len(batch))
            step.malformed.extend(f"reflection {k} ({source}s): {p}" for p in problems)
            raw += len(edits)
            groups.append([json_format.MessageToDict(e) for e in edits])
        step.raw_edits = raw
        await asyncio.to_thread(
            self.table.records.save_side, o.id, f"s{step.index}-patches", {"groups": groups}
        )
        o.stage = S.SKILL_OPT_STAGE_AGGREGATE

    async def _aggregate(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        step = o.steps[-1]
        side = await asyncio.to_thread(self.table.records.load_side, o.id, f"s{step.index}-patches")
        groups = [
            [json_format.ParseDict(e, spb.SkillEdit()) for e in g] for g in (side or {}).get("groups", [])
        ]
        del step.proposed[:]
        step.proposed.extend(aggregate(groups, o.aggregate_fanout or 4))
        o.stage = S.SKILL_OPT_STAGE_SELECT

    async def _select(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        step = o.steps[-1]
        ranked = rank(list(step.proposed))
        del step.proposed[:]
        step.proposed.extend(ranked)
        del step.selected[:]
        step.selected.extend(ranked[: step.budget])
        o.stage = S.SKILL_OPT_STAGE_UPDATE

    async def _update(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        step = o.steps[-1]
        before = await self._skill_text(step.skill_before_id)
        edits = list(step.selected)
        after = skill_docs.apply_edits(before, edits)
        del step.selected[:]
        step.selected.extend(edits)
        if after == before or not any(e.applied for e in edits):
            step.decision = S.SKILL_GATE_DECISION_NO_CHANGE
            step.reason = "no edit applied; the current skill stays"
            step.candidate_score = step.score_before
            self._after_step(o)
            return
        skill, _ = await asyncio.to_thread(
            self.runs.skills.put, after, parent_id=step.skill_before_id, optimization_id=o.id
        )
        step.candidate_skill_id = skill.id
        o.stage = S.SKILL_OPT_STAGE_EVALUATE

    async def _evaluate(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        step = o.steps[-1]
        run_id, results = await self._play(
            job,
            f"s{step.index}-eval",
            common_pb2.TASK_SPLIT_TRAIN,
            list(o.resolved_selection_task_ids),
            step.candidate_skill_id,
            o.selection_rollouts or 1,
            S.SKILL_OPT_STAGE_EVALUATE,
        )
        step.eval_run_id = run_id
        step.candidate_score = self._score(results)
        accepted, step.reason = gate(
            step.candidate_score, step.score_before, o.min_improvement, o.accept_ties
        )
        step.decision = S.SKILL_GATE_DECISION_ACCEPTED if accepted else S.SKILL_GATE_DECISION_REJECTED
        if accepted:
            o.current_skill_id, o.current_score = step.candidate_skill_id, step.candidate_score
            if step.candidate_score > o.best_score + EPS:
                o.best_skill_id, o.best_score = step.candidate_skill_id, step.candidate_score
        self._after_step(o)

    def _after_step(self, o: spb.SkillOptimization) -> None:
        """The stage after a step's verdict."""
        step = o.steps[-1]
        if step.slow_update:
            self._after_slow(o)
            return
        o.next_minibatch += 1
        done = sum(1 for s in o.steps if not s.slow_update)
        epoch_over = o.next_minibatch * self._chunk(o) >= len(self._pool(o))
        if done >= o.steps_total or epoch_over:
            if o.slow_update:
                o.stage = S.SKILL_OPT_STAGE_SLOW_UPDATE
            else:
                self._after_slow(o)
        else:
            o.stage = S.SKILL_OPT_STAGE_ROLLOUT

    def _after_slow(self, o: spb.SkillOptimization) -> None:
        if o.meta_skill:
            o.stage = S.SKILL_OPT_STAGE_META_SKILL
        else:
            self._next_epoch(o)

    def _next_epoch(self, o: spb.SkillOptimization) -> None:
        done = sum(1 for s in o.steps if not s.slow_update)
        if done >= o.steps_total or o.epoch + 1 >= (o.epochs or 1):
            o.stage = S.SKILL_OPT_STAGE_TEST
        else:
            o.epoch += 1
            o.next_minibatch = 0
            o.stage = S.SKILL_OPT_STAGE_ROLLOUT

    def _epoch_pairs(self, o: spb.SkillOptimization) -> str:
        lines = []
        for s in o.steps:
            if s.epoch != o.epoch:
                continue
            verdict = spb.SkillGateDecision.Name(s.decision).removeprefix("SKILL_GATE_DECISION_").lower()
            edits = "; ".join(
                f"{spb.SkillEditOp.Name(e.op).removeprefix('SKILL_EDIT_OP_').lower()} {e.content!r}"
                + (f" at {e.anchor!r}" if e.anchor else "")
                for e in s.selected
                if e.applied
            )
            lines.append(
                f"- step {s.index}: edits [{edits or 'none'}]; selection {s.score_before:.3f} -> "
                f"{s.candidate_score:.3f}; {verdict}"
            )
        return "\n".join(lines)

    async def _slow_update(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        skill = await self._skill_text(o.current_skill_id)
        step = o.steps.add(
            index=len(o.steps) + 1,
            epoch=o.epoch,
            slow_update=True,
            skill_before_id=o.current_skill_id,
            score_before=o.current_score,
        )
        step.budget = self._budget(o, slow=True)
        user = f"## Current skill\n{skill}\n\n## Steps of epoch {o.epoch}\n{self._epoch_pairs(o)}\n"
        text = await self._ask(job, f"s{step.index}-slow", SLOW_SYSTEM, user, S.SKILL_OPT_STAGE_SLOW_UPDATE)
        edits, problems = parse_edits(text, "slow_update", max(1, len(o.steps)))
        step.malformed.extend(f"slow update: {p}" for p in problems)
        step.raw_edits = len(edits)
        step.proposed.extend(aggregate([edits], o.aggregate_fanout or 4))
        o.stage = S.SKILL_OPT_STAGE_SELECT

    async def _meta(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        user = (
            f"## Previous memory\n{o.meta_skill_text or '(none)'}\n\n"
            f"## Steps of epoch {o.epoch}\n{self._epoch_pairs(o)}\n"
        )
        text = await self._ask(job, f"e{o.epoch}-meta", META_SYSTEM, user, S.SKILL_OPT_STAGE_META_SKILL)
        try:
            doc = extract_json(text)
            if not isinstance(doc, dict) or not isinstance(doc.get("meta_skill"), str):
                raise ValueError('the answer is not an object with a "meta_skill" string')
            o.meta_skill_text = doc["meta_skill"].strip()
        except ValueError as err:
            if o.steps:
                o.steps[-1].malformed.append(
                    f"meta skill of epoch {o.epoch}: {err}; the previous memory stays"
                )
        self._next_epoch(o)

    async def _test(self, job: Job[spb.SkillOptimization]) -> None:
        o = job.resource
        wanted = {"baseline": o.baseline_skill_id, "best": o.best_skill_id, "final": o.current_skill_id}
        plays: dict[str, tuple[str, list[run_pb2.EpisodeResult]]] = {}
        for skill_id in dict.fromkeys(wanted.values()):  # one run per distinct skill
            plays[skill_id] = await self._play(
                job,
                f"test-{skill_id}",
                common_pb2.TASK_SPLIT_TEST,
                list(o.test_task_ids),
                skill_id,
                o.selection_rollouts or 1,
                S.SKILL_OPT_STAGE_TEST,
            )
        t = o.test
        for name, skill_id in wanted.items():
            run_id, results = plays[skill_id]
            setattr(t, name, self._score(results))
            setattr(t, f"{name}_run_id", run_id)
            t.episodes = len(results)
        await self._write_report(o)
        o.stage = S.SKILL_OPT_STAGE_DONE

    async def _write_report(self, o: spb.SkillOptimization) -> None:
        prefix = f"reports/{o.id}/"
        o.report.json.key = f"{prefix}skillopt.json"
        o.report.markdown.key = f"{prefix}skillopt.md"
        del o.report.charts[:]
        chart = o.report.charts.add(key=f"{prefix}skillopt.png")
        md = report_markdown(o).encode()
        png = await asyncio.to_thread(report_png, o)
        body = json_format.MessageToJson(o, preserving_proto_field_name=True).encode()
        store = self.store

        def write() -> None:
            store.put(o.report.markdown.key, md, content_type="text/markdown", overwrite=True)
            store.put(chart.key, png, content_type="image/png", overwrite=True)
            store.put(o.report.json.key, body, content_type="application/json", overwrite=True)

        await asyncio.to_thread(write)
