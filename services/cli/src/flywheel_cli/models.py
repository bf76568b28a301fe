"""``flywheel models register|list``: the trainer's base-model registry from the command line.

Talks to ``flywheel.trainer.v1.TrainerService`` (``RegisterBaseModel``, ``ListBaseModels``) over
gRPC only, with the same address rules as ``flywheel finetune``: ``--address``, else
``FLYWHEEL_TRAINER_ADDRESS``, else the running embedded stack (``--state-dir``).
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from google.protobuf import json_format
from rich.markup import escape
from rich.table import Table

from flywheel.trainer.v1 import trainer_pb2 as pb
from flywheel.trainer.v1.trainer_pb2_grpc import TrainerServiceStub
from flywheel_cli import rpc
from flywheel_cli.render import console, out

#: Deadline of RegisterBaseModel (seconds): the call copies the whole model (and converts a GGUF)
#: before it answers; a multi-GB model takes minutes.
REGISTER_TIMEOUT_S = 3600.0


@click.group()
@rpc.connection_options(rpc.TRAINER)
@click.pass_context
def models(ctx: click.Context, address: str | None, state_dir: Path) -> None:
    """Base models in the trainer's registry: register one, list them."""
    rpc.remember_connection(ctx, address, state_dir)


@models.command()
@click.option("--name", required=True, help="Registry name, e.g. gemma-3-270m ([a-z0-9][a-z0-9._-]*).")
@click.option(
    "--from-prefix", "prefix", default="", help="Object-store prefix of a Hugging Face model folder."
)
@click.option(
    "--from-folder", "folder", default="", help="Absolute path of a Hugging Face model folder on the trainer."
)
@click.option(
    "--from-gguf",
    "gguf",
    default="",
    help="A Gemma GGUF file: an absolute path on the trainer, else an object-store key.",
)
@click.option(
    "--hf-id",
    default="",
    help="Hugging Face id the serving engine (vLLM --model) uses, e.g. google/gemma-3-270m; default: the name.",
)
@click.option("--description", default="", help="Short description (origin, licence terms).")
@click.option("--json", "as_json", is_flag=True, help="Print the registry entry as JSON.")
@click.pass_context
def register(
    ctx: click.Context,
    name: str,
    prefix: str,
    folder: str,
    gguf: str,
    hf_id: str,
    description: str,
    as_json: bool,
) -> None:
    """Register a base model; waits until it is copied (re-running with the same content is a no-op).

    The paths are the trainer's, not this machine's: a folder must be on the trainer's filesystem
    (e.g. a mounted volume); upload local files to the object store and use --from-prefix otherwise.
    """
    given = [
        flag
        for flag, value in (("--from-prefix", prefix), ("--from-folder", folder), ("--from-gguf", gguf))
        if value
    ]
    if len(given) != 1:
        raise click.UsageError(
            "give exactly one of --from-prefix, --from-folder, --from-gguf"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    request = pb.RegisterBaseModelRequest(
        name=name, hf_id=hf_id, description=description, source_prefix=prefix, source_folder=folder
    )
    if gguf:
        if gguf.startswith("/"):
            request.source_gguf_path = gguf
        else:
            request.source_gguf_key = gguf
    console.print(f"registering {escape(name)} (the trainer copies the model first: this can take minutes)")
    with rpc.stub(ctx, rpc.TRAINER, TrainerServiceStub) as stub:
        reply = stub.RegisterBaseModel(request, timeout=REGISTER_TIMEOUT_S)
    model = reply.base_model
    if as_json:
        out.print_json(json_format.MessageToJson(reply))
        return
    verb = "registered" if reply.created else "already registered (same content)"
    console.print(
        f"{verb}: [bold]{escape(model.name)}[/] (hf_id {escape(model.hf_id)}), {escape(model.architecture)}, "
        f"{model.parameter_count:,} parameters, at {escape(model.source)}"
    )
    out.print(model.name)


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
@click.pass_context
def list_models(ctx: click.Context, as_json: bool) -> None:
    """List the registered base models with the Hugging Face id each is served under."""
    with rpc.stub(ctx, rpc.TRAINER, TrainerServiceStub) as stub:
        found: list[pb.BaseModel] = list(
            rpc.pages(stub.ListBaseModels, pb.ListBaseModelsRequest(), "base_models")
        )
    if as_json:
        for model in found:
            out.print(json.dumps(json_format.MessageToDict(model)), soft_wrap=True)
        return
    table = Table(title="base models")
    for column in ("name", "hf id", "architecture", "parameters", "chat template", "description"):
        table.add_column(column)
    for m in found:
        table.add_row(
            escape(m.name),
            escape(m.hf_id or m.name),
            escape(m.architecture),
            f"{m.parameter_count:,}",
            "flywheel default" if m.default_chat_template else "own",
            escape(m.description),
        )
    out.print(table)
