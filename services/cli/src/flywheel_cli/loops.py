"""``flywheel loop create|list|show|watch|cancel``: automated improvement loops on the orchestrator.

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
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
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
    """Start automated loops (imitation or RL) and look at them."""
    rpc.remember_connection(ctx, address, state_dir)


METHODS = {
    "sft": trpb.FINE_TUNE_METHOD_SFT,
    "dpo": trpb.FINE_TUNE_METHOD_DPO,
    "grpo": trpb.FINE_TUNE_METHOD_GRPO,
}
GATE_METRICS = {
    "pass_rate": lpb.GATE_METRIC_PASS_RATE,
    "parse_errors": lpb.GATE_METRIC_PARSE_ERRORS_PER_EPISODE,
    "write_rate": lpb.GATE_METRIC_WRITE_RATE,
    "loop_detections": lpb.GATE_METRIC_LOOP_DETECTIONS_PER_EPISODE,
}


def build_loop(spec: dict[str, Any], opts: dict[str, Any]) -> lpb.Loop:
    """A Loop from a JSON spec (proto field names) with the command line's options over it."""
    loop = lpb.Loop()
    if spec:
        try:
            json_format.ParseDict(spec, loop)
        except json_format.ParseError as err:
            raise click.BadParameter(str(err), param_hint="--from-json") from None
    plain = {"suite": "suite", "base_model": "base_model", "adapter_name": "adapter_name",
             "incumbent": "incumbent_model", "teacher_model": "teacher_model"}  # fmt: skip
    for opt, fld in plain.items():
        if opts.get(opt):
            setattr(loop, fld, opts[opt])
    if opts.get("kind"):
        loop.kind = lpb.LOOP_KIND_RL if opts["kind"] == "rl" else lpb.LOOP_KIND_IMITATION
    if opts.get("reference"):
        loop.teacher_kind = tpb.TEACHER_KIND_REFERENCE
    if opts.get("method"):
        loop.method = METHODS[opts["method"]]
    if opts.get("train_tasks"):
        loop.train_task_ids[:] = opts["train_tasks"]
    if opts.get("test_tasks"):
        loop.test_task_ids[:] = opts["test_tasks"]
    if opts.get("rollouts"):
        loop.rollouts_per_task = opts["rollouts"]
    if opts.get("eval_rollouts"):
        loop.eval_rollouts_per_task = opts["eval_rollouts"]
    if opts.get("gate_metric"):
        loop.gate.metric = GATE_METRICS[opts["gate_metric"]]
    if opts.get("gate_margin") is not None:
        loop.gate.margin = opts["gate_margin"]
    hp = loop.hyperparameters
    if opts.get("max_steps"):
        hp.max_steps = opts["max_steps"]
    if opts.get("learning_rate"):
        hp.learning_rate = opts["learning_rate"]
    if opts.get("lora_rank"):
        hp.lora.rank = opts["lora_rank"]
    if opts.get("kl_beta") is not None:
        hp.grpo.kl_beta = opts["kl_beta"]
    rl = loop.rl
    if opts.get("iterations"):
        rl.iterations = opts["iterations"]
    if opts.get("samples_per_task"):
        rl.samples_per_task = opts["samples_per_task"]
    if opts.get("eval_every"):
        rl.eval_every = opts["eval_every"]
    if opts.get("sft_warm_start"):
        rl.sft_warm_start = True
    if opts.get("init_adapter"):
        rl.init_adapter = opts["init_adapter"]
    if opts.get("rl_temperature") is not None:
        rl.temperature = opts["rl_temperature"]
    if loop.kind != lpb.LOOP_KIND_RL and loop.HasField("rl") and rl.ByteSize() == 0:
        loop.ClearField("rl")
    return loop


@loop_cmd.command("create")
@click.option("--from-json", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A Loop as JSON (proto field names); the options below override its fields.")  # fmt: skip
@click.option(
    "--kind", type=click.Choice(["imitation", "rl"]), default=None, help="What the loop learns from."
)
@click.option("--suite", default=None, help="Task suite (TRAIN for rollouts, TEST for evaluations).")
@click.option("--base-model", default=None, help="Trainer base model, e.g. gemma-3-270m.")
@click.option("--adapter-name", default=None, help="Name the adapters are published under.")
@click.option("--incumbent", default=None, help="Gateway model the candidate must beat (default: the base).")
@click.option("--teacher-model", default=None, help="Imitation: the gateway model that plays the rollouts.")
@click.option("--reference", is_flag=True, help="Imitation: the tasks' reference fixes play the rollouts.")
@click.option("--method", type=click.Choice(sorted(METHODS)), default=None, help="Training objective.")
@click.option("--train-task", "train_tasks", multiple=True, help="TRAIN task id (repeatable; default all).")
@click.option("--test-task", "test_tasks", multiple=True, help="TEST task id (repeatable; default all).")
@click.option("--rollouts", type=int, default=0, help="Imitation: rollouts per train task.")
@click.option("--eval-rollouts", type=int, default=0, help="Episodes per test task and model in evaluations.")
@click.option(
    "--gate-metric", type=click.Choice(sorted(GATE_METRICS)), default=None, help="What the gate compares."
)
@click.option("--gate-margin", type=float, default=None, help="Improvement the candidate needs (>= 0).")
@click.option(
    "--max-steps", type=int, default=0, help="Optimizer steps per fine-tune (0 = the trainer's rule)."
)
@click.option("--learning-rate", type=float, default=0.0, help="Peak learning rate of each fine-tune.")
@click.option("--lora-rank", type=int, default=0, help="LoRA rank.")
@click.option("--kl-beta", type=float, default=None, help="RL: KL penalty to the starting policy.")
@click.option("--iterations", type=int, default=0, help="RL: GRPO iterations.")
@click.option(
    "--samples-per-task", type=int, default=0, help="RL: episodes per train task per iteration (G)."
)
@click.option(
    "--eval-every", type=int, default=0, help="RL: evaluate every M iterations (and after the last)."
)
@click.option("--sft-warm-start", is_flag=True, help="RL: SFT on reference demonstrations first.")
@click.option("--init-adapter", default=None, help="RL: start from this adapter, NAME/vN.")
@click.option(
    "--rl-temperature", type=float, default=None, help="RL: sampling temperature of rollouts (1.0)."
)
@click.option("--request-id", default="", help="Idempotency key: a retry with it returns the same loop.")
@click.option("--watch/--no-watch", default=True, show_default=True, help="Follow it to the end.")
@click.pass_context
def loop_create(
    ctx: click.Context, /, spec_file: Path | None, request_id: str, watch: bool, **opts: Any
) -> None:
    """Start a loop: `flywheel loop create --kind rl --suite io-problems --base-model M --adapter-name A
    --iterations 10 --samples-per-task 8`, or `--from-json loop.json` for every field (episode
    settings, hyperparameters, recipe parameters…). Prints the loop id; follows it unless --no-watch."""
    import json

    spec = json.loads(spec_file.read_text()) if spec_file else {}
    loop = build_loop(spec, opts)
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        created = stub.CreateLoop(opb.CreateLoopRequest(loop=loop, request_id=request_id)).loop
        kind = "RL" if created.kind == lpb.LOOP_KIND_RL else "imitation"
        console.print(f"started {kind} loop [bold]{created.id}[/] on {created.suite} ({created.base_model})")
        out.print(created.id, soft_wrap=True)
        if watch:
            final = watch_loop(stub, created.id)
            if final is not None and final.state != common_pb2.JOB_STATE_SUCCEEDED:
                raise SystemExit(1)


def iteration_line(it: lpb.RlIteration) -> str:
    """One RL iteration on one line: its policy, rewards and, when evaluated, the TEST pass rates."""
    text = (
        f"iteration {it.index}{' (SFT warm start)' if it.index == 0 else ''} · {stage_name(it.stage)} · "
        f"{it.policy_model or 'reference'}"
    )
    if it.episodes:
        text += (
            f" · reward {it.reward_mean:+.3f} ± {it.reward_std:.3f} over {it.episodes - it.masked_episodes}"
        )
        if it.masked_episodes:
            text += f" ({it.masked_episodes} masked)"
    if it.adapter.name:
        text += f" → {it.adapter.name}/v{it.adapter.version}"
    if it.HasField("eval_pass_rate"):
        text += f" · TEST pass rate {it.eval_pass_rate:.2f} (start {it.eval_baseline_pass_rate:.2f})"
    return text


def watch_loop(stub: OrchestratorServiceStub, loop_id: str) -> lpb.Loop | None:
    """Print a line at each stage change (and each RL iteration's figures) until the loop ends."""
    lp: lpb.Loop | None = None
    shown: dict[int, str] = {}
    for update in stub.WatchLoop(opb.WatchLoopRequest(loop_id=loop_id)):
        lp = update.loop
        console.print(f"{time.strftime('%H:%M:%S')} stage {stage_name(lp.stage)} · {state_name(lp.state)}")
        for it in lp.iterations:
            line = iteration_line(it)
            if shown.get(it.index) != line:
                shown[it.index] = line
                console.print(f"  {line}", highlight=False)
    if lp is not None:
        out.print(f"gate: {lp.gate_result.reason}" if lp.HasField("gate_result") else lp.error.message)
    return lp


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
    """Print a line at each stage change (RL loops: each iteration's figures) until the loop ends."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        watch_loop(stub, loop_id)


@loop_cmd.command("cancel")
@click.argument("loop_id")
@click.pass_context
def loop_cancel(ctx: click.Context, loop_id: str) -> None:
    """Ask a loop to stop; the job of its current stage is cancelled too."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        lp = stub.CancelLoop(opb.CancelLoopRequest(loop_id=loop_id)).loop
    console.print(f"loop {lp.id}: {state_name(lp.state)}")
