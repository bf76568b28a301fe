"""Joint loops on the command line: `flywheel loop create --kind skill-then-lora|lora-then-skill`.

The options that fill ``Loop.joint.skill_optimization`` (the rest of a skill optimisation's
settings come with ``--from-json``), the stage rows of a joint loop in ``flywheel loop show`` and
``watch``, and its comparison table (the TEST pass rate, gain and spend of every arm).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.table import Table

from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import run_pb2

KINDS = {"skill-then-lora": lpb.LOOP_KIND_SKILL_THEN_LORA, "lora-then-skill": lpb.LOOP_KIND_LORA_THEN_SKILL}
#: The stages of a joint loop, in order (the last only when the gate promotes).
STAGES = {
    lpb.LOOP_KIND_SKILL_THEN_LORA: ("1 skill optimisation", "2 LoRA round (with the skill)",
                                    "3 LoRA round (alone)", "comparison", "promotion"),
    lpb.LOOP_KIND_LORA_THEN_SKILL: ("1 LoRA round", "2 skill optimisation (of the adapter)",
                                    "3 skill optimisation (alone)", "comparison", "promotion"),
}  # fmt: skip
F = TypeVar("F", bound=Callable[..., Any])


def is_joint(loop: lpb.Loop) -> bool:
    return loop.kind in KINDS.values()


def joint_options(f: F) -> F:
    """The ``flywheel loop create`` options of joint loops."""
    options = [
        click.option("--optimizer-model", default=None,
                     help="Joint loops: the gateway model that proposes skill edits."),
        click.option("--initial-skill", default=None, metavar="FILE|SKILL_ID",
                     help="Joint loops: the starting skill (a Markdown file or a stored skill id)."),
        click.option("--selection-size", type=int, default=0,
                     help="Joint loops: TRAIN tasks held out for the skill gate."),
        click.option("--minibatch-size", type=int, default=0,
                     help="Joint loops: TRAIN tasks per skill optimisation step."),
        click.option("--skill-steps", type=int, default=0,
                     help="Joint loops: at most this many skill optimisation steps (0: no cap)."),
        click.option("--optimizer-max-tokens", type=int, default=0,
                     help="Joint loops: cap of each optimiser answer, in tokens."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def apply_options(loop: lpb.Loop, opts: dict[str, Any]) -> None:
    """Fill ``loop.joint`` from the command line (over what ``--from-json`` gave)."""
    o = loop.joint.skill_optimization
    if opts.get("optimizer_model"):
        o.optimizer_model = opts["optimizer_model"]
    if opts.get("initial_skill"):
        path = Path(opts["initial_skill"])
        source = run_pb2.SkillSource(text=path.read_text()) if path.is_file() else None
        o.initial_skill.CopyFrom(source or run_pb2.SkillSource(skill_id=opts["initial_skill"]))
    for opt, fld in (("selection_size", "selection_size"), ("minibatch_size", "minibatch_size"),
                     ("skill_steps", "max_steps"), ("optimizer_max_tokens", "optimizer_max_tokens")):  # fmt: skip
        if opts.get(opt):
            setattr(o, fld, opts[opt])
    if not is_joint(loop) and loop.HasField("joint"):
        if loop.joint.ByteSize():
            raise click.UsageError("--optimizer-model, --initial-skill …: only with a joint --kind")
        loop.ClearField("joint")


def stage_labels(loop: lpb.Loop) -> tuple[str, ...]:
    return STAGES.get(loop.kind, ())


def child_id(status: lpb.LoopStageStatus) -> str:
    return status.artefacts[0].id if status.artefacts else ""


def _tokens(t: Any) -> int:
    return int(t.prompt_tokens + t.completion_tokens)


def comparison_table(loop: lpb.Loop) -> Table:
    """Every arm's TEST pass rate, gain over START and what producing it cost."""
    table = Table(
        title="comparison on TEST (gain against start; spend excludes TEST runs)", title_justify="left"
    )
    for name in ("arm", "model", "skill", "pass rate", "gain", "parse err/ep", "write rate", "train episodes",
                 "target tok", "optimiser tok", "inference s", "training s"):  # fmt: skip
        table.add_column(name, justify="right" if name not in ("arm", "model", "skill") else "left")
    for a in loop.joint_arms:
        sp = a.spend
        train = (
            f"{sp.train_seconds:.0f} ({sp.train_device})" if sp.train_device else f"{sp.train_seconds:.0f}"
        )
        table.add_row(
            lpb.JointArmKind.Name(a.kind).removeprefix("JOINT_ARM_KIND_").lower(),
            a.model,
            a.skill_id or "—",
            f"{a.resolved}/{a.episodes} = {a.pass_rate:.2f}",
            f"{a.gain:+.2f}",
            f"{a.parse_errors_per_episode:.2f}",
            f"{a.write_rate:.2f}",
            str(sp.rollouts),
            str(_tokens(sp.target_tokens)),
            str(_tokens(sp.optimizer_tokens)),
            f"{sp.inference_seconds:.0f}",
            train,
        )
    return table
