"""``flywheel loop list|show|watch|cancel``: automated improvement loops on the orchestrator.

A loop runs in the services and moves on NATS events (rollouts, dataset, fine-tune, hot-load,
evaluation, gate); these commands only look at it. :class:`Follower` polls a loop and the job of
its current stage and renders the stage table; ``flywheel demo`` uses it to follow the loop it
started.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format
from rich.live import Live
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1.dataset_pb2_grpc import DatasetServiceStub
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1.orchestrator_pb2_grpc import OrchestratorServiceStub
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1.trainer_pb2_grpc import TrainerServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import console, enum_name, out
from flywheel_common.jobs import TERMINAL

#: What a stage's first appearance prints (``flywheel demo``: how to look at it, how to repeat it).
Describe = Callable[["Follower", lpb.LoopStageStatus], list[str]]


def stage_name(stage: int) -> str:
    return lpb.LoopStage.Name(stage).removeprefix("LOOP_STAGE_").lower().replace("_", "-")


def state_name(state: int) -> str:
    return enum_name(state, common_pb2.JobState, "JOB_STATE_")


def stage_seconds(start: Any, end: Any) -> float:
    """Seconds from ``start`` to ``end`` (to now while ``end`` is unset; 0 before ``start``)."""
    if not start.seconds:
        return 0.0
    stop: int = end.ToNanoseconds() if end.seconds else time.time_ns()
    return max(0.0, (stop - int(start.ToNanoseconds())) / 1e9)


class Follower:
    """Polls the loop and its current stage's job once a second and renders one table."""

    def __init__(self, stack_addresses: dict[str, str], describe: Describe | None = None) -> None:
        self.addr = stack_addresses
        self.describe = describe
        # Addresses left empty (``flywheel loop show`` knows only the orchestrator's) get no
        # channel; their stage details are then left out.
        self._channels = contextlib.ExitStack()
        channels = {
            name: self._channels.enter_context(rpc.channel(address))
            for name, address in stack_addresses.items()
            if address
        }
        self.orch = OrchestratorServiceStub(channels["orchestrator"])
        self.datasets = DatasetServiceStub(channels["dataset-svc"]) if "dataset-svc" in channels else None
        self.trainer = TrainerServiceStub(channels["trainer-svc"]) if "trainer-svc" in channels else None
        self.detail: dict[int, str] = {}
        self.announced: set[int] = set()
        self.settled: set[int] = set()  #: finished stages whose detail was read after their end

    def close(self) -> None:
        self._channels.close()

    def stage_detail(self, status: lpb.LoopStageStatus) -> str:
        ids = {a.kind: a.id for a in status.artefacts}
        with contextlib.suppress(grpc.RpcError, AttributeError, KeyError):
            if status.stage == lpb.LOOP_STAGE_ROLLOUTS:
                r = self.orch.GetRun(
                    opb.GetRunRequest(run_id=ids[common_pb2.RESOURCE_KIND_RUN]), timeout=5
                ).run
                c = r.counters
                return f"{c.episodes_finished}/{c.episodes_total} episodes, {c.episodes_resolved} resolved"
            if status.stage == lpb.LOOP_STAGE_DATASET and self.datasets is not None:
                b = self.datasets.GetDatasetBuild(
                    dpb.GetDatasetBuildRequest(build_id=ids[common_pb2.RESOURCE_KIND_DATASET_BUILD]),
                    timeout=5,
                ).build
                return f"{b.progress.trajectories_read} trajectories read, {b.progress.examples_written} examples"
            if status.stage == lpb.LOOP_STAGE_FINE_TUNE and self.trainer is not None:
                j = self.trainer.GetFineTuneJob(
                    trpb.GetFineTuneJobRequest(job_id=ids[common_pb2.RESOURCE_KIND_FINE_TUNE_JOB]), timeout=5
                ).job
                p, m = j.progress, j.latest_metrics
                text = f"step {p.step}/{p.total_steps}" if p.total_steps else state_name(j.state)
                if m.loss:
                    text += f", loss {m.loss:.3f}"
                if p.eta.seconds:
                    text += f", ETA {p.eta.seconds} s"
                return text
            if status.stage == lpb.LOOP_STAGE_EVALUATION:
                e = self.orch.GetEvaluation(
                    opb.GetEvaluationRequest(evaluation_id=ids[common_pb2.RESOURCE_KIND_EVALUATION]),
                    timeout=5,
                ).evaluation
                return f"{e.progress.episodes_finished}/{e.progress.episodes_total} episodes"
            if status.stage == lpb.LOOP_STAGE_HOT_LOAD:
                return f"waiting for adapter sync to load {ids.get(common_pb2.RESOURCE_KIND_ADAPTER, '?')}"
        return ""

    def table(self, loop: lpb.Loop) -> Table:
        table = Table(title=f"loop {loop.id} · {state_name(loop.state)}", title_justify="left")
        table.add_column("stage")
        table.add_column("state")
        table.add_column("time", justify="right")
        table.add_column("progress")
        reached: dict[int, lpb.LoopStageStatus] = {s.stage: s for s in loop.stages}
        for stage in range(1, len(lpb.LoopStage.values())):
            s = reached.get(stage)
            if s is None:
                table.add_row(stage_name(stage), "[dim]waiting[/]", "", "")
                continue
            # Live stages are asked each redraw; a finished one once more, for its final figures
            # (a short stage can end between two redraws).
            if s.state not in TERMINAL or stage not in self.settled:
                self.detail[stage] = self.stage_detail(s) or self.detail.get(stage, "")
                if s.state in TERMINAL:
                    self.settled.add(stage)
            colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(
                state_name(s.state), "cyan"
            )
            table.add_row(
                stage_name(stage),
                f"[{colour}]{state_name(s.state)}[/]",
                f"{stage_seconds(s.start_time, s.end_time):.0f} s",
                self.detail.get(stage, ""),
            )
        return table

    def follow(self, loop_id: str) -> lpb.Loop:
        """Redraw the table once a second until the loop ends; returns its final state."""
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            while True:
                loop: lpb.Loop = self.orch.GetLoop(opb.GetLoopRequest(loop_id=loop_id), timeout=10).loop
                for s in loop.stages:
                    if self.describe is not None and s.stage not in self.announced and s.artefacts:
                        self.announced.add(s.stage)
                        live.console.print(f"[bold]{stage_name(s.stage)}[/] started; to look at it by hand:")
                        for line in self.describe(self, s):
                            live.console.print(f"  [cyan]{line}[/]", soft_wrap=True, highlight=False)
                live.update(self.table(loop))
                if loop.state in TERMINAL:
                    return loop
                time.sleep(1.0)


def gate_decision(loop: lpb.Loop) -> str:
    if not loop.HasField("gate_result"):
        return ""
    return enum_name(loop.gate_result.decision, lpb.GateDecision, "GATE_DECISION_")


@click.group("loop")
@rpc.connection_options(rpc.ORCHESTRATOR)
@click.pass_context
def loop_cmd(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Look at automated loops (started by `flywheel demo` or CreateLoop)."""
    rpc.remember_connection(ctx, address, state_dir)


@loop_cmd.command("list")
@click.pass_context
def loop_list(ctx: click.Context) -> None:
    """List the newest 100 loops: state, stage, suite, candidate and gate decision."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        loops: list[lpb.Loop] = list(rpc.pages(stub.ListLoops, opb.ListLoopsRequest(), "loops", limit=100))
    table = Table("id", "state", "stage", "suite", "candidate", "gate")
    for lp in loops:
        table.add_row(
            lp.id, state_name(lp.state), stage_name(lp.stage), lp.suite, lp.candidate_model, gate_decision(lp)
        )
    out.print(table)


@loop_cmd.command("show")
@click.argument("loop_id")
@click.option("--json", "as_json", is_flag=True, help="Print the loop as JSON.")
@click.pass_context
def loop_show(ctx: click.Context, loop_id: str, as_json: bool) -> None:
    """Show one loop's stage table and gate decision."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        lp = stub.GetLoop(opb.GetLoopRequest(loop_id=loop_id)).loop
    if as_json:
        click.echo(json_format.MessageToJson(lp, preserving_proto_field_name=True))
        return
    follower = Follower(
        {"orchestrator": rpc.resolve(ctx, rpc.ORCHESTRATOR), "dataset-svc": "", "trainer-svc": ""}
    )
    try:
        out.print(follower.table(lp))
    finally:
        follower.close()
    if lp.HasField("gate_result"):
        out.print(f"gate: {lp.gate_result.reason}")


@loop_cmd.command("watch")
@click.argument("loop_id")
@click.pass_context
def loop_watch(ctx: click.Context, loop_id: str) -> None:
    """Print a line at each stage change until the loop ends."""
    lp: lpb.Loop | None = None
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        for update in stub.WatchLoop(opb.WatchLoopRequest(loop_id=loop_id)):
            lp = update.loop
            console.print(
                f"{time.strftime('%H:%M:%S')} stage {stage_name(lp.stage)} · {state_name(lp.state)}"
            )
    if lp is not None:
        out.print(f"gate: {lp.gate_result.reason}" if lp.HasField("gate_result") else lp.error.message)


@loop_cmd.command("cancel")
@click.argument("loop_id")
@click.pass_context
def loop_cancel(ctx: click.Context, loop_id: str) -> None:
    """Ask a loop to stop; the job of its current stage is cancelled too."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        lp = stub.CancelLoop(opb.CancelLoopRequest(loop_id=loop_id)).loop
    console.print(f"loop {lp.id}: {state_name(lp.state)}")
