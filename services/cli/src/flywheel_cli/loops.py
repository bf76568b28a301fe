"""``flywheel loop create|list|show|watch|cancel``: automated improvement loops on the orchestrator.

A loop runs in the services and moves on NATS events (rollouts, dataset, fine-tune, hot-load,
evaluation, gate); these commands only look at it. :class:`Follower` polls a loop and the job of
its current stage and renders the stage table; ``flywheel demo`` uses it to follow the loop it
started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import grpc
from google.protobuf import json_format
from rich.live import Live
from rich.markup import escape
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
from flywheel_cli import joint, rpc
from flywheel_cli.aliases import arms_table, canary_options, canary_policy
from flywheel_cli.render import console, enum_name, out
from flywheel_cli.stack import DEFAULT_STATE_DIR
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


STATE_COLOUR = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}


def is_multi_round(loop: lpb.Loop) -> bool:
    """A loop of several rounds: its stages are its rounds (child loops)."""
    if joint.is_joint(loop):  # its ROUND stages are LoRA rounds among other children
        return False
    return loop.rounds > 1 or any(s.stage == lpb.LOOP_STAGE_ROUND for s in loop.stages)


def decision_name(gate: lpb.GateResult) -> str:
    return enum_name(gate.decision, lpb.GateDecision, "GATE_DECISION_") if gate.decision else ""


def gate_text(gate: lpb.GateResult) -> str:
    """``promote: <reason>``: a multi-rule gate's reason starts with its decision already, the
    single-rule gate's does not."""
    decision = decision_name(gate)
    if not decision or gate.reason.startswith(f"{decision}:"):
        return gate.reason
    return f"{decision}: {gate.reason}"


def outcome_name(promotion: lpb.PromotionResult) -> str:
    """``promoted``, ``rolled back``, or ``canary running`` before a canary decided."""
    if promotion.outcome:
        return enum_name(promotion.outcome, lpb.PromotionOutcome, "PROMOTION_OUTCOME_").replace("_", " ")
    return "canary running" if promotion.alias else ""


def promotion_text(promotion: lpb.PromotionResult) -> str:
    """``agent/x rev 3 → 4: promoted (reason)``; empty before the stage wrote anything."""
    if not promotion.alias:
        return ""
    revs = f"rev {promotion.revision}"
    if promotion.final_revision and promotion.final_revision != promotion.revision:
        revs += f" → {promotion.final_revision}"
    text = f"{promotion.alias} {revs}: {outcome_name(promotion)}"
    return text + (f" ({promotion.reason})" if promotion.reason else "")


def round_summary(r: lpb.LoopRound) -> str:
    """One round on one line: what it had to beat, its candidate, the gate and the promotion."""
    parts = [f"{r.incumbent_model or '?'} vs {r.candidate_model or '…'}"]
    if r.init_adapter:
        parts.append(f"from {r.init_adapter}")
    if r.train_examples:
        parts.append(f"{r.train_examples} examples")
    if r.HasField("gate_result"):
        parts.append(decision_name(r.gate_result))
    if r.promotion.alias:
        parts.append(outcome_name(r.promotion))
    return " · ".join(parts)


def rounds_table(loop: lpb.Loop) -> Table:
    """A multi-round loop's rounds: child loop, incumbent, candidate, gate, promotion."""
    table = Table(
        "round", "loop", "state", "incumbent", "candidate", "gate", "promotion",
        title=f"rounds of {loop.id}", title_justify="left",
    )  # fmt: skip
    for r in loop.round_results:
        gate = ""
        if r.HasField("gate_result"):
            colour = "green" if r.gate_result.decision == lpb.GATE_DECISION_PROMOTE else "red"
            gate = f"[{colour}]{escape(gate_text(r.gate_result))}[/]"
        table.add_row(
            str(r.index),
            r.loop_id,
            f"[{STATE_COLOUR.get(state_name(r.state), 'cyan')}]{state_name(r.state)}[/]",
            escape(r.incumbent_model),
            escape(r.candidate_model + (f" (from {r.init_adapter})" if r.init_adapter else "")),
            gate,
            escape(promotion_text(r.promotion)),
        )
    return table


def gate_lines(gate: lpb.GateResult) -> list[str]:
    """The decision with its reason, then each rule's outcome when the gate had several."""
    lines = [f"gate: {escape(gate_text(gate))}"]
    if len(gate.rule_results) > 1:
        for rule in gate.rule_results:
            lines.append(f"  {'[green]✓[/]' if rule.passed else '[red]✗[/]'} {escape(rule.reason)}")
    return lines


def print_outcome(loop: lpb.Loop) -> None:
    """What a loop decided: its rounds, its gate, its promotion (with the canary's signals)."""
    if loop.round_results:
        out.print(rounds_table(loop))
    if loop.joint_arms and loop.joint_arms[-1].episodes:
        out.print(joint.comparison_table(loop))
        if loop.report.key:
            out.print(f"report: {loop.report.key} (plot reports/{loop.id}/joint.png)", highlight=False)
    if loop.HasField("gate_result"):
        for line in gate_lines(loop.gate_result):
            out.print(line, highlight=False, soft_wrap=True)
    if loop.promotion.alias:
        out.print(f"promotion: {escape(promotion_text(loop.promotion))}", highlight=False, soft_wrap=True)
        if loop.promotion.canary_stats:
            out.print(arms_table(loop.promotion.canary_stats, title="canary at its decision"))
    if loop.state == common_pb2.JOB_STATE_FAILED and loop.error.message:
        out.print(f"[red]failed:[/] {escape(loop.error.message)}", soft_wrap=True)


class Follower:
    """Polls the loop and its current stage's job once a second and renders one table."""

    def __init__(
        self, stack_addresses: dict[str, str], describe: Describe | None = None, state_dir: Path | None = None
    ) -> None:
        self.addr = stack_addresses
        self.describe = describe
        # Addresses left empty (``flywheel loop show`` knows only the orchestrator's) get no
        # channel; their stage details are then left out.
        self._channels = contextlib.ExitStack()
        channels = {
            name: self._channels.enter_context(rpc.channel(address, state_dir or DEFAULT_STATE_DIR))
            for name, address in stack_addresses.items()
            if address
        }
        self.orch = OrchestratorServiceStub(channels["orchestrator"])
        self.datasets = DatasetServiceStub(channels["dataset-svc"]) if "dataset-svc" in channels else None
        self.trainer = TrainerServiceStub(channels["trainer-svc"]) if "trainer-svc" in channels else None
        self.detail: dict[int, str] = {}
        self.announced: set[int] = set()
        self.settled: set[int] = set()  #: finished stages whose detail was read after their end
        #: A line under the table while the loop runs (the demo's time left), if set.
        self.caption: Callable[[lpb.Loop], str] | None = None

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
        # A terminal loop never reaches what is left (a rejected candidate is not promoted; rounds
        # stop after too many rejections).
        idle = "[dim]not reached[/]" if loop.state in TERMINAL else "[dim]waiting[/]"
        if is_multi_round(loop):
            rounds = {r.index: r for r in loop.round_results}
            played = (status for status in loop.stages if status.stage == lpb.LOOP_STAGE_ROUND)
            for index, status in enumerate(played, start=1):
                table.add_row(
                    f"round {index}",
                    f"[{STATE_COLOUR.get(state_name(status.state), 'cyan')}]{state_name(status.state)}[/]",
                    f"{stage_seconds(status.start_time, status.end_time):.0f} s",
                    round_summary(rounds[index]) if index in rounds else "",
                )
            for index in range(len(table.rows) + 1, max(loop.rounds, 1) + 1):
                table.add_row(f"round {index}", idle, "", "")
            return table
        if joint.is_joint(loop):  # one row per child, then the comparison and the promotion
            labels = joint.stage_labels(loop)
            for index, status in enumerate(loop.stages):
                colour = STATE_COLOUR.get(state_name(status.state), "cyan")
                table.add_row(
                    labels[index] if index < len(labels) else stage_name(status.stage),
                    f"[{colour}]{state_name(status.state)}[/]",
                    f"{stage_seconds(status.start_time, status.end_time):.0f} s",
                    joint.child_id(status),
                )
            for label in labels[len(loop.stages) :]:
                table.add_row(label, idle, "", "")
            return table
        if self.caption is not None and loop.state not in TERMINAL:
            with contextlib.suppress(Exception):  # a caption never breaks the live view
                table.caption = self.caption(loop)
        reached: dict[int, lpb.LoopStageStatus] = {s.stage: s for s in loop.stages}
        for stage in range(lpb.LOOP_STAGE_ROLLOUTS, lpb.LOOP_STAGE_PROMOTION + 1):
            s = reached.get(stage)
            if s is None:
                table.add_row(stage_name(stage), idle, "", "")
                continue
            if stage == lpb.LOOP_STAGE_PROMOTION:
                self.detail[stage] = promotion_text(loop.promotion)
            # Live stages are asked each redraw; a finished one once more, for its final figures
            # (a short stage can end between two redraws).
            if s.state not in TERMINAL or stage not in self.settled:
                self.detail[stage] = self.stage_detail(s) or self.detail.get(stage, "")
                if s.state in TERMINAL:
                    self.settled.add(stage)
            colour = STATE_COLOUR.get(state_name(s.state), "cyan")
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
GATE_KINDS = {
    "must_improve": lpb.GATE_RULE_KIND_MUST_IMPROVE,
    "must_not_worsen": lpb.GATE_RULE_KIND_MUST_NOT_WORSEN,
}
ROUND_STARTS = {"continue": lpb.ROUND_START_CONTINUE, "from-base": lpb.ROUND_START_FROM_BASE}
FEEDBACK = {
    "success": dpb.FEEDBACK_FILTER_SUCCESS,
    "failure": dpb.FEEDBACK_FILTER_FAILURE,
    "any": dpb.FEEDBACK_FILTER_ANY_FEEDBACK,
    "not_failed": dpb.FEEDBACK_FILTER_NOT_FAILED,
}
GATE_RULE_HELP = (
    "A promotion rule, METRIC:KIND[:MARGIN[:interval]] (repeatable; every rule must hold, and "
    "they replace --gate-metric/--gate-margin). METRIC: "
    + ", ".join(sorted(GATE_METRICS))
    + "; KIND: must_improve (beat the incumbent by more than MARGIN) or must_not_worsen (be worse "
    "by at most MARGIN); MARGIN in the metric's units, default 0; `interval` (pass_rate only) "
    "judges the candidate's 95% Wilson interval instead of its point value. "
    "E.g. pass_rate:must_not_worsen:0.0:interval and parse_errors:must_improve:0.1."
)


def parse_gate_rule(text: str, param_hint: str = "--gate-rule") -> lpb.GateRule:
    """``METRIC:KIND[:MARGIN[:interval]]`` as a GateRule; anything else is a usage error saying
    which part is wrong (the orchestrator checks the values themselves: margins, interval use)."""
    parts = [p.strip() for p in text.split(":")]
    if not 2 <= len(parts) <= 4:
        raise click.BadParameter(f"{text!r} is not METRIC:KIND[:MARGIN[:interval]]", param_hint=param_hint)
    metric, kind = parts[0].lower().replace("-", "_"), parts[1].lower().replace("-", "_")
    if metric not in GATE_METRICS:
        raise click.BadParameter(
            f"{text!r}: unknown metric {parts[0]!r} (known: {', '.join(sorted(GATE_METRICS))})",
            param_hint=param_hint,
        )
    if kind not in GATE_KINDS:
        raise click.BadParameter(
            f"{text!r}: unknown kind {parts[1]!r} (known: {', '.join(GATE_KINDS)})", param_hint=param_hint
        )
    rule = lpb.GateRule(metric=GATE_METRICS[metric], kind=GATE_KINDS[kind])
    if len(parts) >= 3 and parts[2]:
        try:
            rule.margin = float(parts[2])
        except ValueError:
            raise click.BadParameter(
                f"{text!r}: margin {parts[2]!r} is not a number", param_hint=param_hint
            ) from None
    if len(parts) == 4:
        if parts[3].lower() != "interval":
            raise click.BadParameter(
                f"{text!r}: the fourth part can only be `interval`, not {parts[3]!r}", param_hint=param_hint
            )
        rule.use_interval = True
    return rule


def parse_time(text: str, param_hint: str) -> dt.datetime:
    """An ISO 8601 date or time (``2026-12-01``, ``2026-12-01T09:30``, ``…+01:00``); UTC unless it
    names an offset."""
    try:
        stamp = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time like 2026-12-01T09:30:00Z", param_hint=param_hint
        ) from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def captured_traffic_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The ``--captured-*`` options (of ``loop create`` and ``dataset build``); read them with
    :func:`captured_traffic`."""
    for option in reversed(
        [
            click.option("--captured-alias", "captured_aliases", multiple=True, metavar="ALIAS",
                         help="Add the gateway traffic captured for this alias to the dataset (repeatable)."),
            click.option("--captured-since", default=None, metavar="ISO",
                         help="Captured traffic from this time (UTC unless it says)."),
            click.option("--captured-until", default=None, metavar="ISO", help="Captured traffic before this time."),
            click.option("--captured-feedback", type=click.Choice(sorted(FEEDBACK)), default=None,
                         help="Captured traffic with this caller feedback only (default: any call)."),
        ]
    ):  # fmt: skip
        command = option(command)
    return command


def captured_traffic(opts: dict[str, Any]) -> list[dpb.CapturedTraffic]:
    """One CapturedTraffic per ``--captured-alias``, each with the same time range and feedback."""
    aliases = opts.get("captured_aliases") or ()
    rest = [o for o in ("captured_since", "captured_until", "captured_feedback") if opts.get(o)]
    if rest and not aliases:
        flags = ", ".join("--" + o.replace("_", "-") for o in rest)
        raise click.UsageError(f"{flags}: only with --captured-alias")
    since = parse_time(opts["captured_since"], "--captured-since") if opts.get("captured_since") else None
    until = parse_time(opts["captured_until"], "--captured-until") if opts.get("captured_until") else None
    if since and until and until <= since:
        raise click.BadParameter("must be after --captured-since", param_hint="--captured-until")
    sources = []
    for alias in aliases:
        source = dpb.CapturedTraffic(alias=alias)
        if since:
            source.time_range.start_time.FromDatetime(since)
        if until:
            source.time_range.end_time.FromDatetime(until)
        if opts.get("captured_feedback"):
            source.feedback = FEEDBACK[opts["captured_feedback"]]
        sources.append(source)
    return sources


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
        kinds = {"rl": lpb.LOOP_KIND_RL, "imitation": lpb.LOOP_KIND_IMITATION, **joint.KINDS}
        loop.kind = kinds[opts["kind"]]
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
    if opts.get("gate_rules"):
        if opts.get("gate_metric") or opts.get("gate_margin") is not None:
            raise click.UsageError("--gate-rule replaces --gate-metric/--gate-margin: give one or the other")
        loop.gate.rules.extend(parse_gate_rule(text) for text in opts["gate_rules"])
    if opts.get("min_episodes") is not None:
        loop.gate.min_episodes = opts["min_episodes"]
    if opts.get("alias"):
        loop.alias = opts["alias"]
    policy = canary_policy(opts)
    if policy is not None:
        loop.canary.CopyFrom(policy)
    if opts.get("rounds") is not None:
        loop.rounds = opts["rounds"]
    if opts.get("stop_after_rejections") is not None:
        loop.stop_after_rejections = opts["stop_after_rejections"]
    if opts.get("round_start"):
        loop.round_start = ROUND_STARTS[opts["round_start"]]
    if opts.get("incumbent_rollouts"):
        loop.incumbent_rollouts = True
    loop.captured_traffic.extend(captured_traffic(opts))
    hp = loop.hyperparameters
    if opts.get("max_steps"):
        hp.max_steps = opts["max_steps"]
    if opts.get("learning_rate"):
        hp.learning_rate = opts["learning_rate"]
    if opts.get("lora_rank"):
        hp.lora.rank = opts["lora_rank"]
    if opts.get("kl_beta") is not None:
        hp.grpo.kl_beta = opts["kl_beta"]
    if opts.get("train_gpus"):
        loop.train_gpus = opts["train_gpus"]
    rl = loop.rl
    if opts.get("iterations"):
        rl.iterations = opts["iterations"]
    if opts.get("samples_per_task"):
        rl.samples_per_task = opts["samples_per_task"]
    if opts.get("eval_every"):
        rl.eval_every = opts["eval_every"]
    if opts.get("sft_warm_start"):
        rl.sft_warm_start = True
    if opts.get("sft_tasks"):
        rl.sft_task_ids[:] = opts["sft_tasks"]
    if opts.get("init_adapter"):
        # RL loops start their policy from it; imitation loops their fine-tune.
        if loop.kind == lpb.LOOP_KIND_RL:
            rl.init_adapter = opts["init_adapter"]
        else:
            loop.init_adapter = opts["init_adapter"]
    if opts.get("rl_temperature") is not None:
        rl.temperature = opts["rl_temperature"]
    if loop.kind != lpb.LOOP_KIND_RL and loop.HasField("rl") and rl.ByteSize() == 0:
        loop.ClearField("rl")
    joint.apply_options(loop, opts)
    return loop


@loop_cmd.command("create")
@click.option("--from-json", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A Loop as JSON (proto field names); the options below override its fields.")  # fmt: skip
@click.option(
    "--kind",
    type=click.Choice(["imitation", "rl", *joint.KINDS]),
    default=None,
    help="What the loop learns from (skill-then-lora, lora-then-skill: both, compared).",
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
@click.option(
    "--gpus",
    "train_gpus",
    type=int,
    default=0,
    help="GPUs each fine-tune job trains on in data parallel (0 = 1); the step's rows must divide.",
)
@click.option("--kl-beta", type=float, default=None, help="RL: KL penalty to the starting policy.")
@click.option("--iterations", type=int, default=0, help="RL: GRPO iterations.")
@click.option(
    "--samples-per-task", type=int, default=0, help="RL: episodes per train task per iteration (G)."
)
@click.option(
    "--eval-every", type=int, default=0, help="RL: evaluate every M iterations (and after the last)."
)
@click.option("--sft-warm-start", is_flag=True, help="RL: SFT on reference demonstrations first.")
@click.option(
    "--sft-task",
    "sft_tasks",
    multiple=True,
    help="RL: TRAIN task of the warm start's demonstrations (repeatable; default the --train-task ones).",
)
@click.option(
    "--init-adapter",
    default=None,
    help="Start from this published adapter, NAME/vN: the fine-tune's initial weights (RL: the starting policy).",
)
@click.option(
    "--rl-temperature", type=float, default=None, help="RL: sampling temperature of rollouts (1.0)."
)
@click.option("--gate-rule", "gate_rules", multiple=True, metavar="METRIC:KIND[:MARGIN[:interval]]",
              help=GATE_RULE_HELP)  # fmt: skip
@click.option(
    "--min-episodes",
    type=int,
    default=None,
    help="Gate: episodes each model needs in the evaluation (0 = 1).",
)
@click.option("--alias", default=None, help="Alias a promoted candidate moves (default agent/ADAPTER_NAME).")
@canary_options
@click.option(
    "--rounds", type=int, default=None, help="Rounds, each a child loop building on the last (0 = 1)."
)
@click.option(
    "--stop-after-rejections",
    type=int,
    default=None,
    help="Stop after this many rejected rounds in a row (0 = never).",
)
@click.option(
    "--round-start",
    type=click.Choice(sorted(ROUND_STARTS)),
    default=None,
    help="Round 2 onwards: continue training the incumbent adapter on old + new data (default), "
    "or train from the base model on the union of every round's data.",
)
@click.option(
    "--incumbent-rollouts", is_flag=True, help="Rounds 2 onwards also roll out the incumbent on TRAIN."
)
@captured_traffic_options
@joint.joint_options
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
        kind = lpb.LoopKind.Name(created.kind or lpb.LOOP_KIND_IMITATION).removeprefix("LOOP_KIND_")
        kind = "RL" if kind == "RL" else kind.lower().replace("_", "-")
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
    shown: dict[str, str] = {}

    def once(key: str, line: str) -> None:
        if line and shown.get(key) != line:
            shown[key] = line
            console.print(f"  {line}", highlight=False, soft_wrap=True)

    for update in stub.WatchLoop(opb.WatchLoopRequest(loop_id=loop_id)):
        lp = update.loop
        where = f"round {len(lp.round_results)}" if is_multi_round(lp) else f"stage {stage_name(lp.stage)}"
        console.print(f"{time.strftime('%H:%M:%S')} {where} · {state_name(lp.state)}")
        for it in lp.iterations:
            once(f"iteration {it.index}", iteration_line(it))
        for r in lp.round_results:
            once(
                f"round {r.index}",
                f"round {r.index} ({r.loop_id}) · {state_name(r.state)} · {round_summary(r)}",
            )
        once("promotion", f"promotion: {promotion_text(lp.promotion)}" if lp.promotion.alias else "")
    if lp is not None:
        print_outcome(lp)
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
    """Show one loop's stage table (or its rounds), gate decision and promotion."""
    with rpc.stub(ctx, rpc.ORCHESTRATOR, OrchestratorServiceStub) as stub:
        lp = stub.GetLoop(opb.GetLoopRequest(loop_id=loop_id)).loop
    if as_json:
        click.echo(json_format.MessageToJson(lp, preserving_proto_field_name=True))
        return
    follower = Follower(
        {"orchestrator": rpc.resolve(ctx, rpc.ORCHESTRATOR), "dataset-svc": "", "trainer-svc": ""},
        state_dir=ctx.obj["state_dir"],
    )
    try:
        out.print(follower.table(lp))
    finally:
        follower.close()
    print_outcome(lp)


@loop_cmd.command("watch")
@click.argument("loop_id")
@click.pass_context
def loop_watch(ctx: click.Context, loop_id: str) -> None:
    """Print a line at each stage change (RL loops: each iteration's figures; multi-round loops:
    each round's) until the loop ends, then its rounds, gate decision and promotion."""
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
