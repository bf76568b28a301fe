"""``flywheel loop create --kind skill-then-lora|lora-then-skill`` and ``flywheel loop show`` of a
joint loop, against a scripted orchestrator (a real gRPC server, see conftest.py); the loop itself
runs in services/orchestrator/tests/test_joint.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel_cli.main import cli

BASE = ("--suite", "mini", "--base-model", "tiny", "--adapter-name", "fixer", "--reference", "--no-watch")
SUCCEEDED = common_pb2.JOB_STATE_SUCCEEDED


def flywheel(address: str, *args: str) -> Result:
    runner = CliRunner(env={"COLUMNS": "300"})
    return runner.invoke(cli, ["loop", "--address", address, *args], catch_exceptions=False)


def test_create_fills_the_joint_settings(scripted_orchestrator: Any, tmp_path: Path) -> None:
    orch = scripted_orchestrator
    orch.answers["CreateLoop"] = opb.CreateLoopResponse(
        loop=lpb.Loop(id="loop-J", suite="mini", kind=lpb.LOOP_KIND_LORA_THEN_SKILL)
    )
    playbook = tmp_path / "playbook.md"
    playbook.write_text("# Playbook\n")
    result = flywheel(
        orch.address, "create", *BASE, "--kind", "lora-then-skill", "--optimizer-model", "big",
        "--initial-skill", str(playbook), "--minibatch-size", "2", "--skill-steps", "3",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "started lora-then-skill loop loop-J" in result.output
    sent = orch.asked("CreateLoop")[-1].loop
    o = sent.joint.skill_optimization
    assert sent.kind == lpb.LOOP_KIND_LORA_THEN_SKILL
    assert (o.optimizer_model, o.initial_skill.text, o.minibatch_size, o.max_steps) == (
        "big",
        "# Playbook\n",
        2,
        3,
    )
    # A stored skill by id; and joint options on another kind are refused before any call.
    by_id = flywheel(
        orch.address, "create", *BASE, "--kind", "skill-then-lora", "--initial-skill", "skill-0123"
    )
    assert (
        by_id.exit_code == 0
        and orch.asked("CreateLoop")[-1].loop.joint.skill_optimization.initial_skill.skill_id == "skill-0123"
    )
    calls = len(orch.asked("CreateLoop"))
    refused = CliRunner().invoke(
        cli, ["loop", "--address", orch.address, "create", *BASE, "--optimizer-model", "big"]
    )
    assert refused.exit_code == 2 and "only with a joint --kind" in refused.output
    assert len(orch.asked("CreateLoop")) == calls


def joint_loop() -> lpb.Loop:
    loop = lpb.Loop(id="loop-J", suite="mini", state=SUCCEEDED, kind=lpb.LOOP_KIND_SKILL_THEN_LORA)
    for stage, child in (
        (lpb.LOOP_STAGE_SKILL_OPTIMIZATION, "skopt-1"),
        (lpb.LOOP_STAGE_ROUND, "loop-c1"),
        (lpb.LOOP_STAGE_ROUND, "loop-c2"),
        (lpb.LOOP_STAGE_COMPARISON, "run-x"),
    ):
        status = loop.stages.add(stage=stage, state=SUCCEEDED)
        status.artefacts.add(kind=common_pb2.RESOURCE_KIND_LOOP, id=child)
    spend = lpb.JointSpend(rollouts=3, inference_seconds=12.0, train_seconds=80.0, train_device="cpu")
    loop.joint_arms.add(kind=lpb.JOINT_ARM_KIND_START, model="base", skill_id="skill-a", episodes=2)
    loop.joint_arms.add(kind=lpb.JOINT_ARM_KIND_SKILL, model="base", skill_id="skill-b", episodes=2, resolved=1,
                        pass_rate=0.5, gain=0.5)  # fmt: skip
    loop.joint_arms.add(kind=lpb.JOINT_ARM_KIND_LORA, model="ft/fixer-v2", skill_id="skill-a", episodes=2,
                        spend=spend)  # fmt: skip
    loop.joint_arms.add(kind=lpb.JOINT_ARM_KIND_BOTH, model="ft/fixer-v1", skill_id="skill-b", episodes=2,
                        resolved=2, pass_rate=1.0, gain=1.0)  # fmt: skip
    return loop


def test_show_prints_the_children_and_the_comparison(scripted_orchestrator: Any) -> None:
    orch = scripted_orchestrator
    orch.answers["GetLoop"] = opb.GetLoopResponse(loop=joint_loop())
    result = flywheel(orch.address, "show", "loop-J")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any("1 skill optimisation" in line and "skopt-1" in line for line in lines), result.output
    assert any("3 LoRA round (alone)" in line and "loop-c2" in line for line in lines)
    assert any("promotion" in line and "not reached" in line for line in lines)
    assert not any(line.strip().startswith("│ round ") for line in lines)
    (lora,) = [line for line in lines if "│ lora " in line]
    assert "ft/fixer-v2" in lora and "0/2 = 0.00" in lora and "+0.00" in lora and "80 (cpu)" in lora
    (both,) = [line for line in lines if "│ both " in line]
    assert "2/2 = 1.00" in both and "+1.00" in both
