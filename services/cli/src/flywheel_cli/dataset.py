"""``flywheel dataset recipes|build|show|preview``: the dataset builder from the command line.

Talks to ``flywheel.dataset.v1.DatasetService`` over gRPC only. The address comes from
``--address``, else ``FLYWHEEL_DATASET_ADDRESS``, else the running embedded stack's ``stack.json``
(``--state-dir``), else ``127.0.0.1:50054``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, cast

import click
from google.protobuf import json_format
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as pb
from flywheel.dataset.v1.dataset_pb2_grpc import DatasetServiceStub
from flywheel.trajectory.v1 import trajectory_pb2
from flywheel_cli import rpc
from flywheel_cli.loops import captured_traffic, captured_traffic_options
from flywheel_cli.render import console, out

# (The stubs type the enum wrapper's items() as plain ints; the values are the enum's numbers.)
FORMATS = cast(
    dict[str, pb.OutputFormat],
    {name.removeprefix("OUTPUT_FORMAT_").lower(): value for name, value in pb.OutputFormat.items() if value},
)
FILE_FORMATS = {"jsonl": pb.FILE_FORMAT_JSONL, "parquet": pb.FILE_FORMAT_PARQUET}
SPLITS = {
    "train": pb.DATASET_SPLIT_TRAIN,
    "validation": pb.DATASET_SPLIT_VALIDATION,
    "test": pb.DATASET_SPLIT_TEST,
}


@click.group()
@rpc.connection_options(rpc.DATASET_BUILDER)
@click.pass_context
def dataset(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Build SFT / DPO datasets from trajectories and look at them."""
    rpc.remember_connection(ctx, address, state_dir)


@dataset.command()
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """List the recipes and their parameters."""
    with rpc.stub(ctx, rpc.DATASET_BUILDER, DatasetServiceStub) as stub:
        reply = stub.ListRecipes(pb.ListRecipesRequest(page_size=100))
    for recipe in reply.recipes:
        table = Table(
            title=f"{recipe.name} ({pb.DatasetKind.Name(recipe.kind).removeprefix('DATASET_KIND_')})"
        )
        for column in ("parameter", "type", "default", "description"):
            table.add_column(column)
        for p in recipe.parameters:
            kind = pb.ParameterType.Name(p.type).removeprefix("PARAMETER_TYPE_").lower()
            table.add_row(p.name, kind, p.default_value, p.description)
        out.print(table)


def _parse_params(values: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE", param_hint="--param")
        name, value = item.split("=", 1)
        params[name.strip()] = value
    return params


def _parse_split(text: str | None) -> pb.SplitConfig:
    if not text:
        return pb.SplitConfig()
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not TRAIN,VALIDATION[,TEST] ratios", param_hint="--split"
        ) from None
    parts += [0.0] * (3 - len(parts))
    if len(parts) != 3:
        raise click.BadParameter("at most three ratios", param_hint="--split")
    return pb.SplitConfig(train_ratio=parts[0], validation_ratio=parts[1], test_ratio=parts[2])


def _watch(stub: DatasetServiceStub, build_id: str) -> pb.DatasetBuild:
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    ]
    last = None
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(build_id, total=1.0, detail="queued")
        for update in stub.WatchDatasetBuild(pb.WatchDatasetBuildRequest(build_id=build_id)):
            last = update.build
            p = last.progress
            state = common_pb2.JobState.Name(last.state).removeprefix("JOB_STATE_").lower()
            detail = f"{state}: {p.trajectories_read} trajectories read, {p.examples_written} examples"
            progress.update(task, completed=p.fraction, detail=detail)
    assert last is not None
    return last


@dataset.command()
@click.option("--recipe", required=True, help="Recipe name (see `flywheel dataset recipes`).")
@click.option("--run-id", "run_ids", multiple=True, help="Read every trajectory of this run (repeatable).")
@click.option(
    "--suite", default="", help="Read trajectories of this suite (a filter; exclusive with --run-id)."
)
@click.option("--task-id", "task_ids", multiple=True, help="Only these task ids (with --suite; repeatable).")
@click.option("--model", default="", help="Only trajectories of this gateway model.")
@click.option("--param", "params", multiple=True, help="Recipe parameter NAME=VALUE (repeatable).")
@click.option(
    "--split", "split_text", default=None, help="TRAIN,VALIDATION[,TEST] task ratios, e.g. 0.8,0.1,0.1."
)
@click.option("--seed", default="", help="Salt of the split hash.")
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(sorted(FORMATS)),
    help="Record layout (repeatable).",
)
@click.option(
    "--file-format",
    "file_formats",
    multiple=True,
    type=click.Choice(sorted(FILE_FORMATS)),
    help="jsonl / parquet (repeatable).",
)
@click.option(
    "--decontaminate",
    "suites",
    multiple=True,
    help="Evaluation suite whose test tasks must not leak (repeatable).",
)
@click.option(
    "--near-duplicate-threshold", type=float, default=None, help="Jaccard similarity; 1.0 = exact only."
)
@click.option("--base-model", default="", help="Base model whose tokenizer measures tokens.")
@click.option("--max-seq-length", type=int, default=0, help="Sequence length for the over-length count.")
@captured_traffic_options
@click.option("--request-id", default="", help="Idempotency key: the same key returns the same build.")
@click.option("--no-wait", is_flag=True, help="Print the build id and return without following it.")
@click.option("--json", "as_json", is_flag=True, help="Print the final build as JSON.")
@click.pass_context
def build(ctx: click.Context, **o: Any) -> None:
    """Start a dataset build and follow it to the end."""
    source = pb.DatasetSource(run_ids=list(o["run_ids"]))
    if o["suite"] or o["task_ids"] or o["model"]:
        source.filter.CopyFrom(
            trajectory_pb2.TrajectoryFilter(suite=o["suite"], task_ids=list(o["task_ids"]), model=o["model"])
        )
    source.captured_traffic.extend(captured_traffic(o))
    hygiene = pb.HygieneConfig(decontaminate_suites=list(o["suites"]))
    if o["near_duplicate_threshold"] is not None:
        hygiene.near_duplicate_threshold = float(o["near_duplicate_threshold"])
    split = _parse_split(o["split_text"])
    split.seed = str(o["seed"])
    request = pb.CreateDatasetBuildRequest(
        build=pb.DatasetBuild(
            recipe=str(o["recipe"]),
            source=source,
            parameters=_parse_params(o["params"]),
            split=split,
            hygiene=hygiene,
            formats=[FORMATS[f] for f in o["formats"]],
            file_formats=[FILE_FORMATS[f] for f in o["file_formats"]],
            target_base_model=str(o["base_model"]),
            max_seq_length=int(o["max_seq_length"]),
        ),
        request_id=str(o["request_id"]),
    )
    with rpc.stub(ctx, rpc.DATASET_BUILDER, DatasetServiceStub) as stub:
        created = stub.CreateDatasetBuild(request).build
        console.print(f"build [bold]{created.id}[/] queued ({created.recipe})")
        if o["no_wait"]:
            click.echo(created.id)
            return
        final = _watch(stub, created.id)
        if o["as_json"]:
            click.echo(json_format.MessageToJson(final))
        if final.state != common_pb2.JOB_STATE_SUCCEEDED:
            state = common_pb2.JobState.Name(final.state)
            console.print(f"[red]{state}[/]: {final.error.message}")
            sys.exit(1)
        dataset_msg = stub.GetDataset(pb.GetDatasetRequest(dataset_id=final.dataset_id)).dataset
    if not o["as_json"]:
        _print_dataset(dataset_msg)


def _print_dataset(d: pb.Dataset) -> None:
    table = Table(title=f"dataset {d.id} ({d.recipe})")
    table.add_column("split")
    table.add_column("examples", justify="right")
    table.add_column("tasks", justify="right")
    for s in d.splits:
        table.add_row(
            pb.DatasetSplit.Name(s.split).removeprefix("DATASET_SPLIT_").lower(),
            str(s.example_count),
            str(s.task_count),
        )
    out.print(table)
    t, c, h = d.token_stats, d.cost_estimate, d.hygiene_stats
    out.print(f"trajectories read: {d.trajectory_count}   build: {d.build_id}")
    out.print(
        f"tokens ({t.tokenizer}): mean {t.mean:.0f}, p95 {t.p95}, max {t.max}, over {t.max_seq_length}: {t.over_max_length}"
    )
    out.print(f"cost: {c.tokens_per_epoch} tokens/epoch ≈ ${c.usd_per_epoch:.4f} ({c.price_basis})")
    out.print(
        f"hygiene: {h.exact_duplicates_removed} exact + {h.near_duplicates_removed} near duplicates removed, "
        f"{h.decontaminated_by_task_id} trajectories + {h.decontaminated_by_content} examples decontaminated"
    )
    if d.filter_reasons:
        out.print("filtered: " + ", ".join(f"{k}={v}" for k, v in sorted(d.filter_reasons.items())))
    if d.HasField("rl_stats"):
        r = d.rl_stats
        policy = f"{r.policy.adapter_id} ({r.policy.digest})" if r.policy.adapter_id else "the base model"
        out.print(
            f"rl: {r.groups} groups, {r.episodes} episodes, {r.samples} samples; reward "
            f"{r.reward_mean:.3f} ± {r.reward_std:.3f}; masked {r.masked_episodes} "
            f"({r.masked_fraction:.1%}); zero-advantage groups {r.zero_advantage_groups}; policy {policy}"
        )
    if d.failure_categories:
        out.print("outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(d.failure_categories.items())))
    for f in d.files:
        out.print(f"  {f.object.key}  ({f.example_count} records, {f.object.size_bytes} bytes)")


@dataset.command()
@click.argument("resource_id")
@click.option("--json", "as_json", is_flag=True, help="Print the message as JSON.")
@click.pass_context
def show(ctx: click.Context, resource_id: str, as_json: bool) -> None:
    """Show a dataset (ds-…) or a build (dsb-…)."""
    with rpc.stub(ctx, rpc.DATASET_BUILDER, DatasetServiceStub) as stub:
        if resource_id.startswith("dsb-"):
            message = stub.GetDatasetBuild(pb.GetDatasetBuildRequest(build_id=resource_id)).build
        else:
            message = stub.GetDataset(pb.GetDatasetRequest(dataset_id=resource_id)).dataset
    if as_json or isinstance(message, pb.DatasetBuild):
        click.echo(json_format.MessageToJson(message))
    else:
        _print_dataset(message)


@dataset.command()
@click.argument("dataset_id")
@click.option("--split", type=click.Choice(sorted(SPLITS)), default="train", show_default=True)
@click.option(
    "-n", "--count", type=int, default=3, show_default=True, help="How many examples (at most 100)."
)
@click.option(
    "--format", "fmt", type=click.Choice(sorted(FORMATS)), default=None, help="Record layout to show."
)
@click.pass_context
def preview(ctx: click.Context, dataset_id: str, split: str, count: int, fmt: str | None) -> None:
    """Print the first examples of a split, as stored."""
    request = pb.PreviewDatasetRequest(
        dataset_id=dataset_id, split=SPLITS[split], count=count, format=FORMATS[fmt] if fmt else None
    )
    with rpc.stub(ctx, rpc.DATASET_BUILDER, DatasetServiceStub) as stub:
        reply = stub.PreviewDataset(request)
    console.print(f"{len(reply.examples)} of {reply.total_count} {split} examples")
    for example in reply.examples:
        out.print_json(json.dumps(json.loads(example)))
