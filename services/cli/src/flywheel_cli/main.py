"""The ``flywheel`` command: one click group per module, registered here.

| module | commands |
|---|---|
| stack_cmds.py | ``up``, ``down``, ``status``: the embedded stack (stack.py, supervisor.py) |
| trajectories.py | ``trajectories list|show|export|import`` (trajectory store) |
| dataset.py | ``dataset recipes|build|show|preview`` (dataset builder) |
| finetune.py | ``finetune create|watch|cancel|list`` (trainer) |
| models.py | ``models register|list``: the trainer's base-model registry |
| suites.py, runs.py, evals.py | ``suites``, ``run …``, ``eval …`` (orchestrator) |
| loops.py, demo.py | ``loop create|list|show|watch|cancel``, ``demo`` |
| aliases.py | ``alias list|show|set|rollback|delete`` (served aliases, on the orchestrator) |
| mle.py | ``mle show|export``: ML-engineering episodes' search trees and journals (trajectory store) |
| skill.py | ``skill add|create|list|watch|show|diff``: skills and skill optimisations (orchestrator) |

Every command that talks to a service does it through :mod:`flywheel_cli.rpc`.
"""

from __future__ import annotations

import click

from flywheel_cli.aliases import alias_cmd
from flywheel_cli.dataset import dataset
from flywheel_cli.demo import demo
from flywheel_cli.evals import eval_cmd
from flywheel_cli.finetune import finetune
from flywheel_cli.loops import loop_cmd
from flywheel_cli.mle import mle_cmd
from flywheel_cli.models import models
from flywheel_cli.runs import run_cmd
from flywheel_cli.skill import skill_cmd
from flywheel_cli.stack_cmds import down, status, up
from flywheel_cli.suites import suites
from flywheel_cli.trajectories import trajectories


@click.group()
def cli() -> None:
    """Flywheel: improve coding agents in a closed loop."""


for command in (
    up,
    down,
    status,
    trajectories,
    dataset,
    finetune,
    models,
    suites,
    run_cmd,
    eval_cmd,
    loop_cmd,
    alias_cmd,
    mle_cmd,
    skill_cmd,
    demo,
):
    cli.add_command(command)
