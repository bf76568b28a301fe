"""Joint loops: improve the prompt, train an adapter, or both — and measure which bought more.

A loop of kind ``SKILL_THEN_LORA`` or ``LORA_THEN_SKILL`` is a parent of the job core (like a
multi-round loop) whose stages each wait on one child: a skill optimisation
(``SkillOptManager``, stage ``SKILL_OPTIMIZATION``) or an imitation LoRA round (a child loop,
stage ``ROUND``). Three children run in sequence, then one TEST run per arm::

    SKILL_THEN_LORA   1 skill optimisation of the incumbent, from the starting skill S0 → S
                      2 LoRA round whose rollouts (and its own evaluation) play with S   → A_S
                      3 LoRA round playing with S0 (the comparison's LoRA-alone arm)      → A
    LORA_THEN_SKILL   1 LoRA round playing with S0                                       → A
                      2 skill optimisation targeting A, from S0                          → S_A
                      3 skill optimisation of the incumbent, from S0 (skill-alone arm)   → S

    COMPARISON        START (incumbent, S0) · SKILL (incumbent, S) · LORA (A, S0) ·
                      BOTH (A_S, S) or (A, S_A): each one TEST run, ``eval_rollouts_per_task``

The starting skill S0 is ``joint.skill_optimization.initial_skill``: every arm differs from START
only by what its method changed. Gains are pass rates on TEST minus START's, all measured by the
comparison's own runs (the children's own TEST figures are not mixed in). The spend of an arm is
the sum of the spends of the children it needed (``JointSpend``: training episodes, the target's
and the optimiser's tokens, inference and training wall seconds with the trainer's device), so
BOTH costs what both of its children cost. The children's own TEST measurements are excluded
from every spend.

The gate (the loop's ``gate``) compares the best arm (highest TEST pass rate; ties go to the
simpler arm: SKILL, then LORA, then BOTH) with START. When it promotes, the loop's alias is set
at once (no canary: the gateway routes by model only, so a canary cannot split a skill change)
to the arm's model together with its skill: an adapter, a skill on the incumbent, or the pair.

Resume: every child is created with the request id ``<loop id>-joint-<k>`` and every arm's run
with ``<loop id>-compare-<arm>``, so a restart between creating and recording gets the same
child back; a finished child is recorded in ``joint_steps`` before the next one starts, and a
recorded step is never started again. Child loops end with their parent's stage table in
charge; they never move an alias themselves (``LoopManager._gate``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from typing import TYPE_CHECKING, Any

import grpc

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as spb
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel_common.errors import FlywheelError, InvalidArgument, Unavailable
from flywheel_common.jobs import SUCCEEDED, TERMINAL, JobFailed
from flywheel_orchestrator.gate import decide
from flywheel_orchestrator.metrics import model_metrics

if TYPE_CHECKING:
    from flywheel_orchestrator.loops import Handler, LoopJob, LoopManager
    from flywheel_orchestrator.skillopt import SkillOptManager

log = logging.getLogger("flywheel.orchestrator.joint")

S = lpb
KINDS = (S.LOOP_KIND_SKILL_THEN_LORA, S.LOOP_KIND_LORA_THEN_SKILL)
#: The children of each kind, in order: (what, role).
PLAN = {
    S.LOOP_KIND_SKILL_THEN_LORA: (("skill", "sequence"), ("lora", "sequence"), ("lora", "comparison")),
    S.LOOP_KIND_LORA_THEN_SKILL: (("lora", "sequence"), ("skill", "sequence"), ("skill", "comparison")),
}
ARMS = (S.JOINT_ARM_KIND_START, S.JOINT_ARM_KIND_SKILL, S.JOINT_ARM_KIND_LORA, S.JOINT_ARM_KIND_BOTH)
#: The skill optimisation's fields a joint loop fills itself.
FILLED = ("suite", "target_model", "episode", "test_task_ids")


def arm_name(kind: int) -> str:
    return lpb.JointArmKind.Name(kind).removeprefix("JOINT_ARM_KIND_").lower()


def seconds(start: Any, end: Any) -> float:
    """Seconds between two Timestamps; 0 when either is unset."""
    if (not start.seconds and not start.nanos) or (not end.seconds and not end.nanos):
        return 0.0
    return max(0.0, (end.ToNanoseconds() - start.ToNanoseconds()) / 1e9)


def add_spend(total: lpb.JointSpend, part: lpb.JointSpend) -> None:
    total.rollouts += part.rollouts
    for name in ("target_tokens", "optimizer_tokens"):
        t, p = getattr(total, name), getattr(part, name)
        t.prompt_tokens += p.prompt_tokens
        t.completion_tokens += p.completion_tokens
    total.inference_seconds += part.inference_seconds
    total.train_seconds += part.train_seconds
    if part.train_device and part.train_device not in total.train_device.split(", "):
        total.train_device = ", ".join(d for d in (total.train_device, part.train_device) if d)


def arm_steps(kind: int, arm: int) -> tuple[int, ...]:
    """Indexes of the ``joint_steps`` an arm needed (BOTH: the first two, in either order)."""
    if arm == S.JOINT_ARM_KIND_BOTH:
        return (0, 1)
    if arm == S.JOINT_ARM_KIND_SKILL:
        return (0,) if kind == S.LOOP_KIND_SKILL_THEN_LORA else (2,)
    if arm == S.JOINT_ARM_KIND_LORA:
        return (2,) if kind == S.LOOP_KIND_SKILL_THEN_LORA else (0,)
    return ()


def arm_plays(loop: lpb.Loop, start_skill: str) -> list[tuple[int, str, str]]:
    """(arm, model, skill) of every arm, from the recorded steps."""
    s = loop.joint_steps
    inc = loop.incumbent_model
    if loop.kind == S.LOOP_KIND_SKILL_THEN_LORA:
        skill, both_model, lora = s[0].result_skill_id, s[1].result_model, s[2].result_model
        both_skill = skill
    else:
        lora, both_model, both_skill, skill = (
            s[0].result_model,
            s[0].result_model,
            s[1].result_skill_id,
            s[2].result_skill_id,
        )
    return [
        (S.JOINT_ARM_KIND_START, inc, start_skill),
        (S.JOINT_ARM_KIND_SKILL, inc, skill),
        (S.JOINT_ARM_KIND_LORA, lora, start_skill),
        (S.JOINT_ARM_KIND_BOTH, both_model, both_skill),
    ]


def validate(loop: lpb.Loop, path: str) -> None:
    """The fields only joint loops have (the imitation fields are checked as for any loop)."""
    o = loop.joint.skill_optimization
    sub = f"{path}.joint.skill_optimization"
    if not o.optimizer_model:
        raise InvalidArgument(f"{sub}.optimizer_model", "is required (a gateway model name)")
    if not o.HasField("initial_skill") or not o.initial_skill.WhichOneof("source"):
        raise InvalidArgument(
            f"{sub}.initial_skill", "is required: the starting skill S0 every arm is compared from"
        )
    for name in FILLED:
        if o.HasField(name) if name == "episode" else bool(getattr(o, name)):
            raise InvalidArgument(f"{sub}.{name}", "is filled by the loop; leave it unset")
    if loop.episode.HasField("skill"):
        raise InvalidArgument(
            f"{path}.episode.skill",
            "a joint loop's starting skill is joint.skill_optimization.initial_skill; leave it unset",
        )
    if loop.rounds > 1:
        raise InvalidArgument(f"{path}.rounds", "a joint loop runs one LoRA round per arm; leave it 0 or 1")
    if loop.HasField("canary"):
        raise InvalidArgument(
            f"{path}.canary",
            "a joint loop promotes at once: the gateway routes by model, so a canary cannot split a skill",
        )
    if loop.HasField("rl"):
        raise InvalidArgument(f"{path}.rl", "only for loops of kind RL")


class JointStages:
    """The stage table of joint loops, on the loop manager's machinery."""

    def __init__(self, loops: LoopManager) -> None:
        self.loops = loops
        self.handlers: dict[int, Handler] = {
            S.LOOP_STAGE_UNSPECIFIED: self._start,
            S.LOOP_STAGE_SKILL_OPTIMIZATION: self._after_child,
            S.LOOP_STAGE_ROUND: self._after_child,
            S.LOOP_STAGE_COMPARISON: self._after_comparison,
            S.LOOP_STAGE_PROMOTION: self._promotion,
        }
        self._waiting: set[str] = set()  # skill optimisations a task waits on

    @property
    def opts(self) -> SkillOptManager:
        if self.loops.skillopts is None:  # refused at create; a loop stored by such a service
            raise JobFailed(
                "this orchestrator runs no skill optimisations", grpc.StatusCode.FAILED_PRECONDITION
            )
        return self.loops.skillopts

    # ------------------------------------------------------------------------------ children

    async def _start(self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None) -> bool:
        await self._next(job)
        return False

    async def _next(self, job: LoopJob) -> None:
        """Start the first step not recorded yet, or the comparison after the last."""
        loop = job.resource
        plan = PLAN[loop.kind]
        k = len(loop.joint_steps)
        if k >= len(plan):
            await self._start_comparison(job)
            return
        what, role = plan[k]
        start_skill = loop.joint.skill_optimization.initial_skill.skill_id
        prev = loop.joint_steps[0] if k else None
        if what == "skill":
            # LORA_THEN_SKILL: step 2 targets the new adapter; step 3 (and SKILL_THEN_LORA's 1)
            # the incumbent.
            target = prev.result_model if prev is not None and role == "sequence" else loop.incumbent_model
            child_id = await self._start_skillopt(loop, k, target, start_skill)
            step = lpb.JointStep(
                what=what, role=role, child_id=child_id, start_model=target, start_skill_id=start_skill
            )
            stage, kind = S.LOOP_STAGE_SKILL_OPTIMIZATION, common_pb2.RESOURCE_KIND_SKILL_OPTIMIZATION
        else:
            # SKILL_THEN_LORA: step 2 plays with the optimised skill; every other LoRA round with S0.
            skill = prev.result_skill_id if prev is not None and role == "sequence" else start_skill
            child = await self._start_lora(loop, k, skill)
            step = lpb.JointStep(
                what=what, role=role, child_id=child, start_model=loop.incumbent_model, start_skill_id=skill
            )
            stage, kind = S.LOOP_STAGE_ROUND, common_pb2.RESOURCE_KIND_LOOP
        loop.joint_steps.append(step)
        await self.loops._begin(job, stage, self.loops._ref(kind, step.child_id))

    async def _start_skillopt(self, loop: lpb.Loop, k: int, target: str, skill_id: str) -> str:
        o = spb.SkillOptimization()
        o.CopyFrom(loop.joint.skill_optimization)
        o.suite, o.target_model = loop.suite, target
        o.episode.CopyFrom(loop.episode)
        o.episode.ClearField("skill")
        o.test_task_ids[:] = list(loop.test_task_ids)
        o.initial_skill.CopyFrom(run_pb2.SkillSource(skill_id=skill_id))
        o.labels.update({**loop.labels, "loop_id": loop.id, "joint_step": str(k + 1)})
        try:
            created = await self.opts.create(o, f"{loop.id}-joint-{k + 1}")
        except InvalidArgument as err:
            raise JobFailed(f"skill optimisation {k + 1}: {err}", grpc.StatusCode.INVALID_ARGUMENT) from None
        return created.id

    async def _start_lora(self, loop: lpb.Loop, k: int, skill_id: str) -> str:
        from flywheel_orchestrator.loops import OUTPUT_ONLY

        child = lpb.Loop()
        child.CopyFrom(loop)
        for name in (*OUTPUT_ONLY, "joint", "rounds", "stop_after_rejections", "round_start"):
            child.ClearField(name)
        child.kind = S.LOOP_KIND_IMITATION
        child.parent_loop_id, child.round = loop.id, k + 1
        child.labels.update({"parent_loop_id": loop.id, "joint_step": str(k + 1)})
        if skill_id:
            child.episode.skill.CopyFrom(run_pb2.SkillSource(skill_id=skill_id))
        made = await self.loops._create(child, f"{loop.id}-joint-{k + 1}")
        return made.id

    async def _after_child(self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None) -> bool:
        assert cur is not None
        loop = job.resource
        step = loop.joint_steps[-1]
        if step.what == "skill":
            o = self.opts.get(step.child_id)
            if o.state not in TERMINAL:
                self._wait_for(loop.id, o.id)
                return False
            if o.state != SUCCEEDED:
                raise JobFailed(
                    f"skill optimisation {o.id} ended {common_pb2.JobState.Name(o.state)}: {o.error.message}"
                )
            step.result_skill_id = o.current_skill_id
            step.spend.CopyFrom(self._skillopt_spend(o))
        else:
            child = self.loops.table.get(step.child_id)
            if child.state not in TERMINAL:
                return False
            if child.state != SUCCEEDED or not child.candidate_model:
                raise JobFailed(
                    f"LoRA round {child.id} ended {common_pb2.JobState.Name(child.state)}: {child.error.message}"
                )
            step.result_model = child.candidate_model
            step.spend.CopyFrom(await self._lora_spend(child))
        await self._next(job)  # saves the recorded step together with the next stage
        return False

    def _wait_for(self, loop_id: str, opt_id: str) -> None:
        """Advance the loop when the skill optimisation ends (it announces no event of its own)."""
        if opt_id in self._waiting:
            return
        self._waiting.add(opt_id)

        async def wait() -> None:
            try:
                await self.opts.table.jobs[opt_id].done.wait()
            finally:
                self._waiting.discard(opt_id)
            await self.loops.advance(loop_id)

        self.loops._spawn(wait())

    def _skillopt_spend(self, o: spb.SkillOptimization) -> lpb.JointSpend:
        spend = lpb.JointSpend()
        for u in o.usage:
            if u.stage == spb.SKILL_OPT_STAGE_TEST:
                continue
            spend.target_tokens.prompt_tokens += u.target.prompt_tokens
            spend.target_tokens.completion_tokens += u.target.completion_tokens
            spend.optimizer_tokens.prompt_tokens += u.optimizer.prompt_tokens
            spend.optimizer_tokens.completion_tokens += u.optimizer.completion_tokens
        for rj in self.loops.runs.table.jobs.values():
            run = rj.resource
            if run.labels.get("skill_optimization_id") == o.id and run.split != common_pb2.TASK_SPLIT_TEST:
                spend.rollouts += run.counters.episodes_finished
        before_test = [h for h in o.history if h.stage != spb.SKILL_OPT_STAGE_TEST]
        if before_test:
            spend.inference_seconds = seconds(o.start_time, before_test[-1].end_time)
        return spend

    async def _lora_spend(self, child: lpb.Loop) -> lpb.JointSpend:
        spend = lpb.JointSpend()
        for status in child.stages:
            for ref in status.artefacts:
                if status.stage == S.LOOP_STAGE_ROLLOUTS and ref.kind == common_pb2.RESOURCE_KIND_RUN:
                    run = self.loops.runs.get(ref.id)
                    spend.rollouts += run.counters.episodes_finished
                    spend.target_tokens.prompt_tokens += run.counters.usage.prompt_tokens
                    spend.target_tokens.completion_tokens += run.counters.usage.completion_tokens
                    spend.inference_seconds += seconds(run.start_time, run.end_time)
                if (
                    status.stage == S.LOOP_STAGE_FINE_TUNE
                    and ref.kind == common_pb2.RESOURCE_KIND_FINE_TUNE_JOB
                ):
                    ft = (
                        await self.loops.trainer.GetFineTuneJob(
                            trpb.GetFineTuneJobRequest(job_id=ref.id), timeout=30
                        )
                    ).job
                    spend.train_seconds += seconds(ft.start_time, ft.end_time)
                    spend.train_device = ft.device
        return spend

    # ------------------------------------------------------------------------------ comparison

    async def _start_comparison(self, job: LoopJob) -> None:
        loop = job.resource
        refs: list[common_pb2.ResourceRef] = []
        runs: dict[tuple[str, str], str] = {}
        del loop.joint_arms[:]
        for arm, model, skill in arm_plays(loop, loop.joint.skill_optimization.initial_skill.skill_id):
            key = (model, skill)
            if key not in runs:  # an arm that plays what another plays shares its run
                run = run_pb2.Run(
                    suite=loop.suite,
                    split=common_pb2.TASK_SPLIT_TEST,
                    task_ids=loop.test_task_ids,
                    teacher_kind=tpb.TEACHER_KIND_MODEL,
                    model=model,
                    rollouts_per_task=loop.eval_rollouts_per_task,
                    episode=loop.episode,
                    concurrency=loop.concurrency,
                    labels={**loop.labels, "loop_id": loop.id, "joint_arm": arm_name(arm)},
                )
                if skill:
                    run.episode.skill.CopyFrom(run_pb2.SkillSource(skill_id=skill))
                made = await self.loops.runs.create(
                    run, f"{loop.id}-compare-{arm_name(arm)}", loop_id=loop.id
                )
                runs[key] = made.id
                refs.append(common_pb2.ResourceRef(kind=common_pb2.RESOURCE_KIND_RUN, id=made.id))
            loop.joint_arms.add(kind=arm, model=model, skill_id=skill, run_id=runs[key])
        await self.loops._begin(job, S.LOOP_STAGE_COMPARISON, refs)

    async def _after_comparison(
        self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None
    ) -> bool:
        assert cur is not None
        loop = job.resource
        runs = {}
        for ref in cur.artefacts:
            run = self.loops.runs.get(ref.id)
            if run.state not in TERMINAL:
                return False
            if run.state != SUCCEEDED:
                raise JobFailed(
                    f"comparison: run {run.id} ended {common_pb2.JobState.Name(run.state)}: {run.error.message}"
                )
            runs[run.id] = await self.loops.runs.results(run.id)
        metrics = {}
        for arm in loop.joint_arms:
            results = runs[arm.run_id]
            arm.episodes = len(results)
            arm.resolved = sum(1 for r in results if r.resolved)
            arm.pass_rate = arm.resolved / arm.episodes if arm.episodes else 0.0
            metrics[arm.kind] = model_metrics(
                arm.model, results, rollouts_per_task=loop.eval_rollouts_per_task or 1, level=0.95
            )
            arm.parse_errors_per_episode = metrics[arm.kind].parse_errors_per_episode
            arm.write_rate = metrics[arm.kind].write_rate
            arm.ClearField("spend")
            for i in arm_steps(loop.kind, arm.kind):
                add_spend(arm.spend, loop.joint_steps[i].spend)
        start = loop.joint_arms[0]
        for arm in loop.joint_arms:
            arm.gain = arm.pass_rate - start.pass_rate
        best = max(loop.joint_arms[1:], key=lambda a: (a.pass_rate, -ARMS.index(a.kind)))
        loop.gate_result.CopyFrom(decide(loop.gate, metrics[start.kind], metrics[best.kind], ""))
        loop.gate_result.reason = f"best arm {arm_name(best.kind)}: {loop.gate_result.reason}"
        loop.candidate_model, loop.candidate_skill_id = best.model, best.skill_id
        if loop.gate_result.decision == S.GATE_DECISION_PROMOTE:
            await self.loops._begin(
                job, S.LOOP_STAGE_PROMOTION, self.loops._ref(common_pb2.RESOURCE_KIND_RUN, best.run_id)
            )
            return True
        await self.write_report(loop)
        await self.loops._end(job, SUCCEEDED)
        return False

    # ------------------------------------------------------------------------------ promotion

    async def _promotion(self, job: LoopJob, cur: lpb.LoopStageStatus | None, event: object | None) -> bool:
        """Set the alias to the best arm's model and skill (a pair, an adapter or a skill), once."""
        loop = job.resource
        promo, name = loop.promotion, loop.alias
        aliases = self.loops.aliases
        try:
            if not promo.revision:
                done = next(
                    (
                        r
                        for r in await aliases.history(name)
                        if r.loop_id == loop.id
                        and r.change == apb.ALIAS_CHANGE_SET
                        and r.target.model == loop.candidate_model
                        and r.target.skill_id == loop.candidate_skill_id
                    ),
                    None,
                )
                if done is None:
                    request = apb.SetAliasRequest(
                        name=name,
                        target=apb.AliasTarget(model=loop.candidate_model, skill_id=loop.candidate_skill_id),
                        actor=f"loop/{loop.id}",
                        reason=f"gate: {loop.gate_result.reason}",
                    )
                    done = (await aliases.set(request, loop_id=loop.id)).current
                promo.alias, promo.revision = name, done.revision
                promo.final_revision = done.revision
                promo.outcome = S.PROMOTION_OUTCOME_PROMOTED
                pair = f" with skill {loop.candidate_skill_id}" if loop.candidate_skill_id else ""
                promo.reason = (
                    f"alias {name} moved to {loop.candidate_model}{pair} (revision {done.revision})"
                )
        except Unavailable as err:
            log.warning("loop %s: promotion waits: %s", loop.id, err)
            self.loops.retry_later(job, self.loops.settings.loop_retry_s)
            return False
        except FlywheelError as err:
            raise JobFailed(f"promotion: alias {name}: {err}", err.code) from None
        await self.write_report(loop)
        await self.loops._end(job, SUCCEEDED)
        return False

    # ------------------------------------------------------------------------------ report

    async def write_report(self, loop: lpb.Loop) -> None:
        store = self.loops.store
        png = await asyncio.to_thread(report_png, loop)
        if png:
            await asyncio.to_thread(
                store.put, f"reports/{loop.id}/joint.png", png, content_type="image/png", overwrite=True
            )
        loop.report.key = f"reports/{loop.id}/loop.md"
        text = report_markdown(loop, with_plot=bool(png))
        await asyncio.to_thread(
            store.put, loop.report.key, text.encode(), content_type="text/markdown", overwrite=True
        )

    async def cancel_child(self, ref: common_pb2.ResourceRef) -> None:
        if ref.kind == common_pb2.RESOURCE_KIND_SKILL_OPTIMIZATION:
            with contextlib.suppress(Exception):
                await self.opts.cancel(ref.id)


def _tokens(t: common_pb2.TokenUsage) -> int:
    return t.prompt_tokens + t.completion_tokens


def arms_table(loop: lpb.Loop) -> str:
    """The comparison as a Markdown table (also printed by ``flywheel loop show``)."""
    lines = [
        "| arm | model | skill | TEST pass rate | gain | parse errors / ep | write rate | training episodes | "
        "target tokens | optimiser tokens | inference s | training s (device) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in loop.joint_arms:
        sp = a.spend
        train = (
            f"{sp.train_seconds:.1f} ({sp.train_device})" if sp.train_device else f"{sp.train_seconds:.1f}"
        )
        lines.append(
            f"| {arm_name(a.kind)} | `{a.model}` | {a.skill_id or '—'} | {a.resolved}/{a.episodes} = "
            f"{a.pass_rate:.3f} | {a.gain:+.3f} | {a.parse_errors_per_episode:.2f} | {a.write_rate:.2f} | {sp.rollouts} | {_tokens(sp.target_tokens)} | "
            f"{_tokens(sp.optimizer_tokens)} | {sp.inference_seconds:.1f} | {train} |"
        )
    return "\n".join(lines)


def report_markdown(loop: lpb.Loop, *, with_plot: bool = False) -> str:
    kind = lpb.LoopKind.Name(loop.kind).removeprefix("LOOP_KIND_").lower()
    out = [
        f"# Joint loop {loop.id} ({kind})",
        "",
        f"Suite `{loop.suite}`, incumbent `{loop.incumbent_model}`, adapter `{loop.adapter_name}`, "
        f"{loop.eval_rollouts_per_task or 1} TEST rollout(s) per task and arm.",
        "",
        "## Comparison on TEST",
        "",
        "Gains are against START (the incumbent with the starting skill). An arm's spend is what its "
        "children spent improving (their own TEST runs excluded); BOTH counts both of its children.",
        "",
        arms_table(loop),
        "",
    ]
    rollouts = {arm_name(a.kind): a.spend.rollouts for a in loop.joint_arms[1:3]}
    if rollouts and len(set(rollouts.values())) > 1:
        out += [
            f"The single-method arms did not spend the same rollout budget ({rollouts}): compare gains "
            "per episode, not as they stand.",
            "",
        ]
    if with_plot:
        out += ["![TEST pass rate per arm](joint.png)", ""]
    out += [
        "## Children",
        "",
        "| # | what | role | child | started from | skill played | result |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, s in enumerate(loop.joint_steps, 1):
        result = s.result_skill_id or s.result_model or "—"
        out.append(
            f"| {i} | {s.what} | {s.role} | {s.child_id} | `{s.start_model}` | {s.start_skill_id or '—'} | {result} |"
        )
    out.append("")
    if loop.HasField("gate_result"):
        g = loop.gate_result
        out += [
            "## Gate",
            "",
            f"{S.GateDecision.Name(g.decision).removeprefix('GATE_DECISION_')}: {g.reason}",
            "",
        ]
    if loop.promotion.alias:
        out += ["## Promotion", "", loop.promotion.reason, ""]
    return "\n".join(out)


def report_png(loop: lpb.Loop) -> bytes:
    """Per arm: TEST pass rate (labelled with its gain and training episodes) and write rate, and
    parse errors per episode beside them."""
    if not loop.joint_arms:
        return b""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [arm_name(a.kind) for a in loop.joint_arms]
    xs = range(len(names))
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 3.4), gridspec_kw={"width_ratios": [3, 2]})
    rates = left.bar([x - 0.2 for x in xs], [a.pass_rate for a in loop.joint_arms], 0.4, label="pass rate")
    left.bar(
        [x + 0.2 for x in xs], [a.write_rate for a in loop.joint_arms], 0.4, label="write rate", alpha=0.6
    )
    for bar, a in zip(rates, loop.joint_arms, strict=True):
        label = "start" if a.kind == S.JOINT_ARM_KIND_START else f"{a.gain:+.2f} · {a.spend.rollouts} ep"
        left.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), textcoords="offset points",
                      xytext=(0, 4), ha="center", fontsize=7)  # fmt: skip
    left.set_xticks(list(xs), names)
    left.set_ylim(0, 1.15)
    left.set_ylabel("TEST share of episodes")
    left.legend(fontsize=7, loc="upper left")
    right.bar(list(xs), [a.parse_errors_per_episode for a in loop.joint_arms], color="#c44e52")
    right.set_xticks(list(xs), names)
    right.set_ylabel("parse errors / episode")
    fig.suptitle(f"joint loop {loop.id}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
