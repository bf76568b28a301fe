"""``flywheel finetune create|watch|cancel|list``: the trainer from the command line.

Talks to ``flywheel.trainer.v1.TrainerService`` over gRPC only. The address comes from
``--address``, else ``FLYWHEEL_TRAINER_ADDRESS``, else the running embedded stack's ``stack.json``
(``--state-dir``), else ``127.0.0.1:50055``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from google.protobuf import json_format
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.trainer.v1 import trainer_pb2 as pb
from flywheel.trainer.v1.trainer_pb2_grpc import TrainerServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import STATES, console, out

METHODS = {"sft": pb.FINE_TUNE_METHOD_SFT, "dpo": pb.FINE_TUNE_METHOD_DPO, "grpo": pb.FINE_TUNE_METHOD_GRPO}
LOSS_TYPES = {
    "dapo": pb.GRPO_LOSS_TYPE_DAPO,
    "grpo": pb.GRPO_LOSS_TYPE_GRPO,
    "bnpo": pb.GRPO_LOSS_TYPE_BNPO,
    "dr_grpo": pb.GRPO_LOSS_TYPE_DR_GRPO,
}
SCHEDULERS = {
    "cosine": pb.LR_SCHEDULER_COSINE,
    "linear": pb.LR_SCHEDULER_LINEAR,
    "constant": pb.LR_SCHEDULER_CONSTANT,
}


def _state(job: pb.FineTuneJob) -> str:
    return common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")


@click.group()
@rpc.connection_options(rpc.TRAINER)
@click.pass_context
def finetune(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Fine-tune LoRA adapters (SFT, DPO or GRPO) with the trainer."""
    rpc.remember_connection(ctx, address, state_dir)


@finetune.command()
@click.option("--base-model", required=True, help="Base model name (see the trainer's ListBaseModels).")
@click.option(
    "--dataset", "dataset_id", required=True, help="Dataset id (ds-…) built by the dataset builder."
)
@click.option(
    "--adapter", "adapter_name", required=True, help="Adapter name; each job publishes its next version."
)
@click.option("--method", type=click.Choice(sorted(METHODS)), default="sft", show_default=True)
@click.option("--rank", type=int, default=0, help="LoRA rank (0 = 16).")
@click.option("--alpha", type=float, default=0.0, help="LoRA alpha (0 = 32).")
@click.option("--dropout", type=float, default=None, help="LoRA dropout (default 0.05).")
@click.option(
    "--target-module", "targets", multiple=True, help="Module to adapt (repeatable; default all projections)."
)
@click.option("--qlora", is_flag=True, help="Quantize the base model to 4-bit NF4 (needs a GPU trainer).")
@click.option("--epochs", type=float, default=0.0, help="Epochs (0 = 1).")
@click.option("--max-steps", type=int, default=0, help="Stop after this many optimizer steps (0 = no limit).")
@click.option(
    "--lr",
    "learning_rate",
    type=float,
    default=0.0,
    help="Peak learning rate (0 = 2e-4 SFT, 5e-6 DPO, 1e-5 GRPO).",
)
@click.option("--scheduler", type=click.Choice(sorted(SCHEDULERS)), default="cosine", show_default=True)
@click.option("--warmup", type=float, default=None, help="Warm-up ratio (default 0.03).")
@click.option(
    "--batch-size",
    type=int,
    default=0,
    help="Micro-batch size (0 = service default); split into smaller passes if it does not fit the GPU.",
)
@click.option("--grad-accum", type=int, default=0, help="Gradient accumulation steps (0 = service default).")
@click.option("--max-seq-length", type=int, default=0, help="Tokens per sequence (0 = 2048).")
@click.option("--packing", is_flag=True, help="Pack several examples per sequence (SFT).")
@click.option(
    "--fp8",
    is_flag=True,
    help="Frozen base weights' matmuls in FP8 on a Hopper GPU (LoRA stays bf16); SFT with plain LoRA only.",
)
@click.option("--seed", type=int, default=None, help="Seed (default 42).")
@click.option(
    "--checkpoint-every", type=int, default=0, help="Checkpoint every N steps (0 = service default)."
)
@click.option("--beta", type=float, default=0.0, help="DPO beta (0 = 0.1).")
@click.option(
    "--init-adapter",
    default="",
    help="Continue this published adapter, NAME/vN (its weights and LoRA settings); default a fresh one.",
)
@click.option(
    "--kl-beta", type=float, default=None, help="GRPO: KL weight to the starting policy (default 0)."
)
@click.option(
    "--epsilon", type=float, default=None, help="GRPO: lower clip range of the ratio (default 0.2)."
)
@click.option("--epsilon-high", type=float, default=None, help="GRPO: upper clip range (default --epsilon).")
@click.option(
    "--loss-type",
    type=click.Choice(sorted(LOSS_TYPES)),
    default=None,
    help="GRPO: loss aggregation (default dapo).",
)
@click.option("--iterations", type=int, default=0, help="GRPO: passes over each batch of rollouts (0 = 1).")
@click.option(
    "--request-id", default="", help="Idempotency key: a retry with the same key returns the same job."
)
@click.option(
    "--gpus",
    type=int,
    default=0,
    help="Data-parallel processes, one per GPU (0 = 1); --batch-size must be a multiple of it.",
)
@click.option("--validate-only", is_flag=True, help="Check and resolve the request; queue nothing.")
@click.option(
    "--watch/--no-watch", default=True, show_default=True, help="Follow the job with a progress bar."
)
@click.pass_context
def create(ctx: click.Context, **opts: Any) -> None:
    """Queue a fine-tune job and (by default) watch it to the end."""
    job = pb.FineTuneJob(
        base_model=str(opts["base_model"]),
        dataset_id=str(opts["dataset_id"]),
        adapter_name=str(opts["adapter_name"]),
        method=METHODS[str(opts["method"])],
        init_adapter=str(opts["init_adapter"]),
        gpus=int(opts["gpus"]),
    )
    hp = job.hyperparameters
    hp.lora.rank = int(opts["rank"])
    hp.lora.alpha = float(opts["alpha"])
    if opts["dropout"] is not None:
        hp.lora.dropout = float(opts["dropout"])
    hp.lora.target_modules.extend(opts["targets"])
    if opts["qlora"]:
        hp.quantization.quantization = pb.QUANTIZATION_NF4
    hp.epochs = float(opts["epochs"])
    hp.max_steps = int(opts["max_steps"])
    hp.learning_rate = float(opts["learning_rate"])
    hp.scheduler = SCHEDULERS[str(opts["scheduler"])]
    if opts["warmup"] is not None:
        hp.warmup_ratio = float(opts["warmup"])
    hp.batch_size = int(opts["batch_size"])
    hp.gradient_accumulation_steps = int(opts["grad_accum"])
    hp.max_seq_length = int(opts["max_seq_length"])
    hp.packing = bool(opts["packing"])
    hp.fp8_base_matmuls = bool(opts["fp8"])
    if opts["seed"] is not None:
        hp.seed = int(opts["seed"])
    hp.checkpoint_every_steps = int(opts["checkpoint_every"])
    hp.dpo_beta = float(opts["beta"])
    grpo_opts = (opts["kl_beta"], opts["epsilon"], opts["epsilon_high"], opts["loss_type"])
    if any(v is not None for v in grpo_opts) or opts["iterations"]:
        if job.method != pb.FINE_TUNE_METHOD_GRPO:
            raise click.UsageError(
                "--kl-beta, --epsilon, --epsilon-high, --loss-type and --iterations need --method grpo"
            )
        if opts["kl_beta"] is not None:
            hp.grpo.kl_beta = float(opts["kl_beta"])
        if opts["epsilon"] is not None:
            hp.grpo.epsilon = float(opts["epsilon"])
        if opts["epsilon_high"] is not None:
            hp.grpo.epsilon_high = float(opts["epsilon_high"])
        if opts["loss_type"] is not None:
            hp.grpo.loss_type = LOSS_TYPES[str(opts["loss_type"])]
        hp.grpo.iterations = int(opts["iterations"])
    request = pb.CreateFineTuneJobRequest(
        job=job, request_id=str(opts["request_id"]), validate_only=bool(opts["validate_only"])
    )
    with rpc.stub(ctx, rpc.TRAINER, TrainerServiceStub) as stub:
        created = stub.CreateFineTuneJob(request).job
        if opts["validate_only"]:
            out.print_json(json_format.MessageToJson(created))
            return
        console.print(f"queued [bold]{created.id}[/] → adapter {created.adapter_name}")
        out.print(created.id)
        if opts["watch"]:
            sys.exit(_follow(stub, created.id))


@finetune.command()
@click.argument("job_id")
@click.pass_context
def watch(ctx: click.Context, job_id: str) -> None:
    """Follow a job: live progress bar with loss, learning rate and throughput; exits 1 unless it succeeds."""
    with rpc.stub(ctx, rpc.TRAINER, TrainerServiceStub) as stub:
        sys.exit(_follow(stub, job_id))


def _follow(stub: TrainerServiceStub, job_id: str) -> int:
    columns = (
        TextColumn("[bold]{task.fields[state]:<9}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("step {task.fields[steps]}"),
        TextColumn("loss [cyan]{task.fields[loss]}[/] lr {task.fields[lr]} {task.fields[tps]} tok/s"),
        TextColumn("eta {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    job = None
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(job_id, total=None, state="…", steps="-", loss="-", lr="-", tps="-", eta="-")
        for update in stub.WatchFineTuneJob(pb.WatchFineTuneJobRequest(job_id=job_id)):
            if update.HasField("job"):
                if update.job.status_message and update.job.status_message != (
                    job.status_message if job else ""
                ):
                    progress.console.print(f"[yellow]waiting:[/] {escape(update.job.status_message)}")
                if update.job.rows_per_pass_note and update.job.rows_per_pass_note != (
                    job.rows_per_pass_note if job else ""
                ):
                    progress.console.print(f"[yellow]split:[/] {escape(update.job.rows_per_pass_note)}")
                job = update.job
                total = job.progress.total_steps or None
                progress.update(
                    task,
                    state=_state(job),
                    total=total,
                    completed=job.progress.step,
                    steps=f"{job.progress.step}/{job.progress.total_steps or '?'}",
                )
            else:
                entry = update.log
                metrics = entry.metrics
                progress.update(
                    task,
                    total=entry.progress.total_steps or None,
                    completed=entry.progress.step,
                    steps=f"{entry.progress.step}/{entry.progress.total_steps or '?'}",
                    loss=f"{metrics.loss:.4f}",
                    lr=f"{metrics.learning_rate:.2e}",
                    tps=f"{metrics.tokens_per_second:,.0f}",
                    eta=f"{entry.progress.eta.seconds}s" if entry.progress.HasField("eta") else "-",
                )
    if job is None:
        return 1
    job = stub.GetFineTuneJob(pb.GetFineTuneJobRequest(job_id=job_id)).job
    if job.state == common_pb2.JOB_STATE_SUCCEEDED:
        console.print(
            f"[green]succeeded[/]: adapter {job.adapter.name}/v{job.adapter.version} at {job.adapter.object_prefix}"
        )
        return 0
    reason = f": {job.error.message}" if job.HasField("error") else ""
    console.print(f"[red]{_state(job).lower()}[/]{reason}")
    return 1


@finetune.command()
@click.argument("job_id")
@click.pass_context
def cancel(ctx: click.Context, job_id: str) -> None:
    """Ask a job to stop; its last checkpoint is kept and nothing is published."""
    with rpc.stub(ctx, rpc.TRAINER, TrainerServiceStub) as stub:
        job = stub.CancelFineTuneJob(pb.CancelFineTuneJobRequest(job_id=job_id)).job
    console.print(f"{job.id}: {_state(job)} (cancellation requested)")


@finetune.command("list")
@click.option("--state", type=click.Choice(sorted(STATES)), default=None, help="Only jobs in this state.")
@click.option("--adapter", "adapter_name", default="", help="Only jobs publishing this adapter name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_context
def list_jobs(ctx: click.Context, state: str | None, adapter_name: str, as_json: bool) -> None:
    """List fine-tune jobs, newest first."""
    request = pb.ListFineTuneJobsRequest(state=STATES[state] if state else None, adapter_name=adapter_name)
    with rpc.stub(ctx, rpc.TRAINER, TrainerServiceStub) as stub:
        jobs: list[pb.FineTuneJob] = list(rpc.pages(stub.ListFineTuneJobs, request, "jobs"))
    if as_json:
        for job in jobs:
            out.print(json.dumps(json_format.MessageToDict(job)), soft_wrap=True)
        return
    table = Table(title="fine-tune jobs")
    for col in ("id", "state", "method", "base model", "dataset", "adapter", "step", "loss"):
        table.add_column(col)
    for job in jobs:
        adapter = (
            f"{job.adapter.name}/v{job.adapter.version}" if job.HasField("adapter") else job.adapter_name
        )
        table.add_row(
            job.id,
            _state(job),
            pb.FineTuneMethod.Name(job.method).removeprefix("FINE_TUNE_METHOD_"),
            job.base_model,
            job.dataset_id,
            adapter,
            f"{job.progress.step}/{job.progress.total_steps}",
            f"{job.latest_metrics.loss:.4f}" if job.HasField("latest_metrics") else "-",
        )
    out.print(table)
