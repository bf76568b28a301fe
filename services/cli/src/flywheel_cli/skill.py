"""``flywheel skill add|create|list|watch|show|diff``: skills and skill optimisations (orchestrator).

``add`` stores a skill document (Markdown; ``<!-- protected: NAME -->`` … ``<!-- /protected -->``
sections the optimiser may only append to) and prints its id. ``create`` starts a skill
optimisation and follows it with a progress bar over its steps and a line per step (budget, edits
applied, selection score before → candidate, verdict). ``show`` prints a skill's text or an
optimisation's steps, scores and tokens; ``diff`` compares two skills, or walks an optimisation
step by step: the edits kept with their rationale and the change they made.
"""

from __future__ import annotations

import difflib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.orchestrator.v1 import skill_pb2 as spb
from flywheel.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import console, out

SCHEDULES = {
    "constant": spb.EDIT_BUDGET_SCHEDULE_CONSTANT,
    "linear": spb.EDIT_BUDGET_SCHEDULE_LINEAR,
    "cosine": spb.EDIT_BUDGET_SCHEDULE_COSINE,
}


def stage_name(stage: int) -> str:
    return spb.SkillOptStage.Name(stage).removeprefix("SKILL_OPT_STAGE_").lower().replace("_", " ")


def state_name(state: int) -> str:
    return common_pb2.JobState.Name(state).removeprefix("JOB_STATE_").lower()


def verdict(step: spb.SkillOptStep) -> str:
    if step.decision == spb.SKILL_GATE_DECISION_UNSPECIFIED:
        return "in progress"
    return (
        spb.SkillGateDecision.Name(step.decision)
        .removeprefix("SKILL_GATE_DECISION_")
        .lower()
        .replace("_", " ")
    )


def op_name(edit: spb.SkillEdit) -> str:
    return spb.SkillEditOp.Name(edit.op).removeprefix("SKILL_EDIT_OP_").lower()


def step_line(s: spb.SkillOptStep) -> str:
    """One finished step on one line."""
    kind = "slow update" if s.slow_update else f"{len(s.train_task_ids)} tasks"
    applied = sum(1 for e in s.selected if e.applied)
    after = "…" if s.decision == spb.SKILL_GATE_DECISION_UNSPECIFIED else f"{s.candidate_score:.3f}"
    text = (
        f"step {s.index} (epoch {s.epoch}, {kind}) · budget {s.budget} · {len(s.proposed)} proposed, "
        f"{applied} applied · selection {s.score_before:.3f} → {after} · {verdict(s)}"
    )
    if s.malformed:
        text += f" · {len(s.malformed)} malformed optimiser answer(s)"
    return text


def print_outcome(o: spb.SkillOptimization) -> None:
    if o.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING):
        return
    if o.state != common_pb2.JOB_STATE_SUCCEEDED:
        console.print(f"[red]{state_name(o.state)}[/]: {escape(o.error.message)}", soft_wrap=True)
        return
    table = Table("skill", "id", "selection", "TEST")
    table.add_row("baseline", o.baseline_skill_id, f"{o.baseline_score:.3f}", f"{o.test.baseline:.3f}")
    table.add_row("best on selection", o.best_skill_id, f"{o.best_score:.3f}", f"{o.test.best:.3f}")
    table.add_row("final", o.current_skill_id, f"{o.current_score:.3f}", f"{o.test.final:.3f}")
    out.print(table)
    if o.report.markdown.key:
        console.print(f"report: {o.report.markdown.key} (chart {o.report.charts[0].key})", soft_wrap=True)


#: Times in a row a dropped Watch stream is opened again (a stage may stay quiet for many
#: minutes: a CPU model reflecting; a connection that went away in the meantime is not the end).
REOPEN = 5


def _updates(stub: OrchestratorServiceStub, opt_id: str) -> Iterator[opb.WatchSkillOptimizationResponse]:
    """The Watch stream, opened again (it starts with a snapshot) when the connection drops."""
    tries = 0
    request = opb.WatchSkillOptimizationRequest(optimization_id=opt_id)
    while True:
        try:
            for update in stub.WatchSkillOptimization(request):
                tries = 0
                yield update
            return
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE or tries >= REOPEN:
                raise
            tries += 1
            time.sleep(min(2.0**tries, 10.0))


def watch(stub: OrchestratorServiceStub, opt_id: str) -> spb.SkillOptimization | None:
    """A progress bar over the steps, a line per finished step, the outcome at the end."""
    last: spb.SkillOptimization | None = None
    printed: set[int] = set()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("starting", total=None)
        for update in _updates(stub, opt_id):
            o = update.optimization
            last = o
            finished = [s for s in o.steps if s.decision != spb.SKILL_GATE_DECISION_UNSPECIFIED]
            for s in finished:
                if s.index not in printed:
                    printed.add(s.index)
                    progress.console.print(f"  {escape(step_line(s))}", highlight=False, soft_wrap=True)
            minibatch_done = sum(1 for s in finished if not s.slow_update)
            where = f"epoch {o.epoch} · {stage_name(o.stage)}" if o.stage else state_name(o.state)
            progress.update(bar, description=where, total=o.steps_total or None, completed=minibatch_done)
    if last is not None:
        print_outcome(last)
    return last


@click.group("skill")
@rpc.connection_options(rpc.ORCHESTRATOR)
@click.pass_context
def skill_cmd(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Skills (the agent's playbook) and skill optimisations."""
    rpc.remember_connection(ctx, address, state_dir)


@skill_cmd.command("add")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", default="", help="A human name for the skill.")
@click.option("--parent", default="", help="Id of the skill this one derives from.")
@click.pass_context
def skill_add(ctx: click.Context, path: Path, name: str, parent: str) -> None:
    """Store a skill document (Markdown) by its content hash; prints its id."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        reply = stub.CreateSkill(
            opb.CreateSkillRequest(skill=spb.Skill(text=path.read_text(), name=name, parent_id=parent))
        )
    note = "stored" if reply.created else "already stored"
    console.print(
        f"{note}: {reply.skill.id} (protected: {', '.join(reply.skill.protected_sections) or 'none'})"
    )
    out.print(reply.skill.id, soft_wrap=True)


def _source(skill: str) -> run_pb2.SkillSource:
    """A file's text, else a skill id."""
    path = Path(skill)
    if path.is_file():
        return run_pb2.SkillSource(text=path.read_text())
    return run_pb2.SkillSource(skill_id=skill)


@skill_cmd.command("create")
@click.option(
    "--from-json",
    "spec_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A SkillOptimization as JSON (every field); options given as well override it.",
)
@click.option(
    "--suite", default=None, help="Task suite: TRAIN for minibatches and selection, TEST at the end."
)
@click.option("--target-model", default=None, help="Gateway model whose skill is trained.")
@click.option("--optimizer-model", default=None, help="Gateway model that reflects and proposes edits.")
@click.option("--skill", "skill", default=None, help="Initial skill: a Markdown file or a skill id.")
@click.option("--epochs", type=int, default=None, help="Passes over the TRAIN minibatches (default 1).")
@click.option("--minibatch-size", type=int, default=None, help="TRAIN tasks per minibatch (default 4).")
@click.option("--accumulation", type=int, default=None, help="Minibatches pooled per update (default 1).")
@click.option("--selection-size", type=int, default=None, help="TRAIN tasks held out for the gate.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many minibatch steps.")
@click.option("--budget", type=int, default=None, help="Edits at the first step (default 3).")
@click.option("--budget-min", type=int, default=None, help="Edits at the last step (default 1).")
@click.option("--schedule", type=click.Choice(sorted(SCHEDULES)), default=None, help="Edit budget schedule.")
@click.option("--min-improvement", type=float, default=None, help="Gate margin in pass-rate points.")
@click.option("--accept-ties", is_flag=True, default=None, help="A tie accepts the candidate.")
@click.option("--slow-update/--no-slow-update", default=None, help="End-of-epoch slow update.")
@click.option("--meta-skill/--no-meta-skill", default=None, help="The optimiser's memory across epochs.")
@click.option("--rollouts", type=int, default=None, help="Episodes per TRAIN task in rollouts.")
@click.option("--selection-rollouts", type=int, default=None, help="Episodes per selection/TEST task.")
@click.option("--seed", type=int, default=None, help="Seed of the minibatch order and selection.")
@click.option(
    "--selection-task",
    "selection_tasks",
    multiple=True,
    help="TRAIN task held out for the gate (repeatable).",
)
@click.option(
    "--test-task",
    "test_tasks",
    multiple=True,
    help="TEST task of the final scores (repeatable; default all).",
)
@click.option("--max-iterations", type=int, default=None, help="Agent turns per episode.")
@click.option("--max-tokens", type=int, default=None, help="Completion tokens per model call of the target.")
@click.option(
    "--optimizer-max-tokens", type=int, default=None, help="Completion tokens per optimiser call (2048)."
)
@click.option(
    "--request-id", default="", help="Idempotency key: a retry with it returns the same optimisation."
)
@click.option("--watch/--no-watch", "follow", default=True, show_default=True, help="Follow it to the end.")
@click.pass_context
def skill_create(
    ctx: click.Context, /, spec_file: Path | None, request_id: str, follow: bool, **opts: Any
) -> None:
    """Start a skill optimisation: `flywheel skill create --suite io-problems --target-model
    gemma-3-270m --optimizer-model gpt-4o --skill playbook.md`. Prints its id; follows it."""
    o = spb.SkillOptimization()
    if spec_file:
        json_format.Parse(spec_file.read_text(), o)
    simple = {
        "suite": "suite",
        "target_model": "target_model",
        "optimizer_model": "optimizer_model",
        "epochs": "epochs",
        "minibatch_size": "minibatch_size",
        "accumulation": "accumulation",
        "selection_size": "selection_size",
        "max_steps": "max_steps",
        "min_improvement": "min_improvement",
        "accept_ties": "accept_ties",
        "slow_update": "slow_update",
        "meta_skill": "meta_skill",
        "rollouts": "rollouts_per_task",
        "selection_rollouts": "selection_rollouts",
        "seed": "seed",
        "optimizer_max_tokens": "optimizer_max_tokens",
    }
    for option, field in simple.items():
        if opts.get(option) is not None:
            setattr(o, field, opts[option])
    if opts.get("skill"):
        o.initial_skill.CopyFrom(_source(opts["skill"]))
    if opts.get("selection_tasks"):
        o.selection_task_ids[:] = list(opts["selection_tasks"])
    if opts.get("test_tasks"):
        o.test_task_ids[:] = list(opts["test_tasks"])
    if opts.get("max_iterations") is not None:
        o.episode.limits.max_iterations = opts["max_iterations"]
    if opts.get("max_tokens") is not None:
        o.episode.sampling.max_tokens = opts["max_tokens"]
    if opts.get("budget") is not None:
        o.budget.initial = opts["budget"]
    if opts.get("budget_min") is not None:
        o.budget.minimum = opts["budget_min"]
    if opts.get("schedule"):
        o.budget.schedule = SCHEDULES[opts["schedule"]]
    for field in ("suite", "target_model", "optimizer_model"):
        if not getattr(o, field):
            raise click.UsageError(f"--{field.replace('_', '-')} is required (or give it in --from-json)")
    if not o.initial_skill.WhichOneof("source"):
        raise click.UsageError("--skill is required: a Markdown file or a skill id")
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        created = stub.CreateSkillOptimization(
            opb.CreateSkillOptimizationRequest(optimization=o, request_id=request_id)
        ).optimization
        console.print(
            f"started skill optimisation [bold]{created.id}[/] on {created.suite}: {created.steps_total} step(s), "
            f"selection {', '.join(created.resolved_selection_task_ids)}",
            soft_wrap=True,
        )
        out.print(created.id, soft_wrap=True)
        if follow:
            final = watch(stub, created.id)
            if final is None or final.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise SystemExit(1)


@skill_cmd.command("list")
@click.pass_context
def skill_list(ctx: click.Context) -> None:
    """The newest 100 skill optimisations."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        found = list(
            rpc.pages(
                stub.ListSkillOptimizations, opb.ListSkillOptimizationsRequest(), "optimizations", limit=100
            )
        )
    table = Table("id", "state", "stage", "suite", "target", "baseline→final (selection)", "TEST final")
    for o in found:
        table.add_row(
            o.id,
            state_name(o.state),
            stage_name(o.stage),
            o.suite,
            o.target_model,
            f"{o.baseline_score:.2f} → {o.current_score:.2f}",
            f"{o.test.final:.2f}" if o.stage == spb.SKILL_OPT_STAGE_DONE else "",
        )
    out.print(table)


@skill_cmd.command("watch")
@click.argument("optimization_id")
@click.pass_context
def skill_watch(ctx: click.Context, optimization_id: str) -> None:
    """Follow a skill optimisation to its end (progress over steps, a line per step)."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        final = watch(stub, optimization_id)
    if final is None or final.state != common_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(1)


@skill_cmd.command("show")
@click.argument("ident")
@click.option("--json", "as_json", is_flag=True, help="Print it as JSON.")
@click.pass_context
def skill_show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """A skill's text (`skill-…`), or an optimisation's steps, scores and tokens (`skopt-…`)."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        if ident.startswith("skopt-"):
            o = stub.GetSkillOptimization(opb.GetSkillOptimizationRequest(optimization_id=ident)).optimization
            if as_json:
                click.echo(json_format.MessageToJson(o, preserving_proto_field_name=True))
                return
            out.print(
                f"{o.id} · {state_name(o.state)} · {stage_name(o.stage)} · {o.suite} · target {o.target_model} "
                f"· optimiser {o.optimizer_model}",
                soft_wrap=True,
                highlight=False,
            )
            for s in o.steps:
                out.print(f"  {escape(step_line(s))}", soft_wrap=True, highlight=False)
                for m in s.malformed:
                    out.print(f"    malformed: {escape(m)}", soft_wrap=True, highlight=False)
            tokens = Table("stage", "target tokens", "optimiser tokens", "optimiser calls")
            for u in o.usage:
                tokens.add_row(
                    stage_name(u.stage),
                    str(u.target.prompt_tokens + u.target.completion_tokens),
                    str(u.optimizer.prompt_tokens + u.optimizer.completion_tokens),
                    str(u.optimizer_calls),
                )
            out.print(tokens)
            if o.meta_skill_text:
                out.print(f"meta skill:\n{escape(o.meta_skill_text)}", soft_wrap=True)
            print_outcome(o)
            return
        skill = stub.GetSkill(opb.GetSkillRequest(skill_id=ident)).skill
    if as_json:
        click.echo(json_format.MessageToJson(skill, preserving_proto_field_name=True))
        return
    console.print(
        f"{skill.id} · sha256 {skill.sha256[:12]}… · parent {skill.parent_id or '-'} · "
        f"optimisation {skill.optimization_id or '-'}",
        soft_wrap=True,
    )
    sys.stdout.write(skill.text)


def _diff(a: spb.Skill, b: spb.Skill) -> list[str]:
    return list(
        difflib.unified_diff(
            a.text.splitlines(), b.text.splitlines(), fromfile=a.id, tofile=b.id, lineterm="", n=1
        )
    )


@skill_cmd.command("diff")
@click.argument("first")
@click.argument("second", required=False)
@click.pass_context
def skill_diff(ctx: click.Context, first: str, second: str | None) -> None:
    """Two skills (`diff skill-A skill-B`), or an optimisation step by step (`diff skopt-…`): each
    step's kept edits with their rationale and support, the verdict, and the change it made."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:

        def get(ident: str) -> spb.Skill:
            return stub.GetSkill(opb.GetSkillRequest(skill_id=ident)).skill

        if second:
            for line in _diff(get(first), get(second)):
                out.print(escape(line), soft_wrap=True, highlight=False)
            return
        if not first.startswith("skopt-"):
            raise click.UsageError("give two skill ids, or one skill optimisation id")
        o = stub.GetSkillOptimization(opb.GetSkillOptimizationRequest(optimization_id=first)).optimization
        for s in o.steps:
            out.print(f"[bold]{escape(step_line(s))}[/]", soft_wrap=True, highlight=False)
            out.print(f"  {escape(s.reason)}", soft_wrap=True, highlight=False)
            for e in s.selected:
                where = (
                    f" in {e.section}" if e.section else (f" at {json.dumps(e.anchor)}" if e.anchor else "")
                )
                state = "applied" if e.applied else f"skipped: {e.skipped_reason}"
                out.print(
                    f"  - {op_name(e)}{escape(where)} {escape(json.dumps(e.content))} "
                    f"(support {e.support}, {e.source}; {escape(state)}) — {escape(e.rationale)}",
                    soft_wrap=True,
                    highlight=False,
                )
            if s.candidate_skill_id:
                for line in _diff(get(s.skill_before_id), get(s.candidate_skill_id)):
                    out.print(f"    {escape(line)}", soft_wrap=True, highlight=False)
