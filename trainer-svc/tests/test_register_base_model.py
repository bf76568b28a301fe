"""RegisterBaseModel: a real trainer service, the filesystem object store and the tiny model.

Registers from an object-store prefix and from a folder, re-registers (idempotent), checks every
error code of the contract, redoes an interrupted registration, and trains one short SFT job on
an entry with an ``hf_id``: the published adapter records that id as ``base_model_name_or_path``
(what vLLM's LoRA resolver compares with its ``--model``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.objectstore import ObjectStore
from flywheel_testing.services import boot_service
from flywheel_testing.trainer import sft_job, wait_for
from flywheel_trainer import catalog
from flywheel_trainer.service import build_app
from flywheel_trainer.settings import TrainerSettings
from flywheel_trainer.storeio import download_dir

S = trainer_pb2
HF_ID = "acme/tiny-llama"


def _put_folder(store: ObjectStore, folder: Path, prefix: str) -> None:
    for path in sorted(folder.iterdir()):
        store.put(prefix + path.name, path.read_bytes())


async def _register(stub: trainer_pb2_grpc.TrainerServiceStub, **fields: str) -> S.RegisterBaseModelResponse:
    return await stub.RegisterBaseModel(S.RegisterBaseModelRequest(**fields))


async def _error(stub: trainer_pb2_grpc.TrainerServiceStub, **fields: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await _register(stub, **fields)
    return info.value


async def test_register_from_a_prefix_and_a_folder_is_idempotent(
    trainer_env: dict[str, str],
    channel_to: Callable,
    store_of: Callable,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    store: ObjectStore = store_of(trainer_env)
    _put_folder(store, tiny_model_dir, "uploads/tiny/")
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))

        first = await _register(stub, name="tiny-hf", hf_id=HF_ID, source_prefix="uploads/tiny")
        assert first.created
        model = first.base_model
        assert (model.name, model.hf_id, model.source) == ("tiny-hf", HF_ID, "base-models/tiny-hf/")
        assert model.architecture == "LlamaForCausalLM" and model.parameter_count > 0
        assert model.default_chat_template  # the tiny model ships none: Flywheel's default is added
        assert model.content_digest.startswith("sha256:")
        assert store.exists("base-models/tiny-hf/_COMPLETE")
        manifest = json.loads(store.get_bytes("base-models/tiny-hf/flywheel-base-model.json"))
        assert manifest["hf_id"] == HF_ID
        assert manifest["source"] == {"kind": "prefix", "location": "uploads/tiny"}
        assert (
            store.get_bytes("base-models/tiny-hf/chat_template.jinja").decode()
            == catalog.DEFAULT_CHAT_TEMPLATE
        )
        local = download_dir(store, "base-models/tiny-hf/", tmp_path / "registered")
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            assert (local / name).read_bytes() == (tiny_model_dir / name).read_bytes()

        again = await _register(stub, name="tiny-hf", hf_id=HF_ID, source_prefix="uploads/tiny/")
        assert not again.created and again.base_model == model
        # The same files from a folder are the same content: still the existing entry.
        same = await _register(stub, name="tiny-hf", hf_id=HF_ID, source_folder=str(tiny_model_dir))
        assert not same.created and same.base_model.create_time == model.create_time

        plain = await _register(stub, name="tiny-folder", source_folder=str(tiny_model_dir))
        assert plain.created and plain.base_model.hf_id == "tiny-folder"  # hf_id defaults to the name
        assert plain.base_model.content_digest == model.content_digest

        listed = await stub.ListBaseModels(S.ListBaseModelsRequest())
        by_name = {m.name: m.hf_id for m in listed.base_models}
        assert by_name["tiny-hf"] == HF_ID and by_name["tiny-folder"] == "tiny-folder"
        assert by_name["tiny-llama"] == "tiny-llama"  # registered by catalog.register_base_model
        # The importer's path (catalog.register_base_model) records the same digest: registering
        # the same files through the RPC finds the existing entry.
        imported = await _register(stub, name="tiny-llama", source_folder=str(tiny_model_dir))
        assert not imported.created and imported.base_model.content_digest == model.content_digest


async def test_errors_name_the_problem(
    trainer_env: dict[str, str],
    channel_to: Callable,
    store_of: Callable,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    store: ObjectStore = store_of(trainer_env)
    _put_folder(store, tiny_model_dir, "uploads/tiny/")
    folder = str(tiny_model_dir)
    INVALID, MISSING = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    PRECONDITION, EXISTS = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))

        err = await _error(stub, name="Bad Name", source_folder=folder)
        assert err.code() == INVALID and "name" in err.details() and "Bad Name" in err.details()
        err = await _error(stub, name="", source_folder=folder)
        assert err.code() == INVALID and "name" in err.details()
        err = await _error(stub, name="ok", hf_id="has space", source_folder=folder)
        assert err.code() == INVALID and "hf_id" in err.details()
        err = await _error(stub, name="ok")
        assert err.code() == INVALID and "exactly one of" in err.details()
        err = await _error(stub, name="ok", source_folder=folder, source_prefix="uploads/tiny/")
        assert err.code() == INVALID and "source_prefix and source_folder are both set" in err.details()
        err = await _error(stub, name="ok", source_folder="relative/path")
        assert err.code() == INVALID and "absolute" in err.details()

        err = await _error(stub, name="ok", source_prefix="uploads/nothing/")
        assert err.code() == MISSING and "uploads/nothing/" in err.details()
        err = await _error(stub, name="ok", source_folder=str(tmp_path / "absent"))
        assert err.code() == MISSING and "absent" in err.details()
        err = await _error(stub, name="ok", source_gguf_key="uploads/absent.gguf")
        assert err.code() == MISSING and "uploads/absent.gguf" in err.details()
        err = await _error(stub, name="ok", source_gguf_path=str(tmp_path / "absent.gguf"))
        assert err.code() == MISSING and "absent.gguf" in err.details()

        for missing, words in (
            ("config.json", "no config.json"),
            ("model.safetensors", "no weights"),
            ("tokenizer.json", "no tokenizer"),
        ):
            broken = tmp_path / f"without-{missing}"
            shutil.copytree(tiny_model_dir, broken)
            (broken / missing).unlink()
            err = await _error(stub, name="ok", source_folder=str(broken))
            assert err.code() == PRECONDITION and words in err.details(), err.details()
        _put_folder(store, tiny_model_dir, "uploads/no-weights/")
        store.delete("uploads/no-weights/model.safetensors")
        err = await _error(stub, name="ok", source_prefix="uploads/no-weights/")
        assert err.code() == PRECONDITION and "no weights" in err.details()

        gguf = tmp_path / "llama.gguf"
        _write_gguf(gguf, "llama")
        err = await _error(stub, name="ok", source_gguf_path=str(gguf))
        assert err.code() == PRECONDITION and "'llama'" in err.details()
        store.put("uploads/llama.gguf", gguf.read_bytes())
        err = await _error(stub, name="ok", source_gguf_key="uploads/llama.gguf")
        assert err.code() == PRECONDITION and "'llama'" in err.details()

        await _register(stub, name="taken", hf_id=HF_ID, source_folder=folder)
        err = await _error(stub, name="taken", hf_id="acme/other", source_folder=folder)
        assert err.code() == EXISTS and "acme/other" in err.details()
        other = tmp_path / "other"
        shutil.copytree(tiny_model_dir, other)
        (other / "config.json").write_text((other / "config.json").read_text().replace("512", "256"))
        err = await _error(stub, name="taken", hf_id=HF_ID, source_folder=str(other))
        assert err.code() == EXISTS and "other content" in err.details()
        assert not store.exists("base-models/ok/_COMPLETE")


async def test_local_sources_stay_inside_the_model_roots(
    trainer_env: dict[str, str], channel_to: Callable, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With FLYWHEEL_TRAINER_MODEL_ROOTS (the chart sets its model volume), a folder or GGUF path
    outside the roots is PERMISSION_DENIED, also through a symlink; and whatever the roots, a file
    in a model folder that links outside the folder is refused instead of copied."""
    roots = tmp_path / "models"
    inside = roots / "tiny"
    shutil.copytree(tiny_model_dir, inside)
    secret = tmp_path / "service.token"
    secret.write_text("not for the object store")
    (roots / "escape").symlink_to(tiny_model_dir, target_is_directory=True)
    env = {**trainer_env, "FLYWHEEL_TRAINER_MODEL_ROOTS": json.dumps([str(roots)])}
    DENIED, PRECONDITION = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.FAILED_PRECONDITION
    async with boot_service(build_app, TrainerSettings, env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        for fields in (
            {"source_folder": str(tiny_model_dir)},
            {"source_folder": str(roots / "escape")},
            {"source_folder": str(roots / ".." / tiny_model_dir.name)},
            {"source_gguf_path": str(secret)},
        ):
            err = await _error(stub, name="outside", **fields)
            assert err.code() == DENIED and "FLYWHEEL_TRAINER_MODEL_ROOTS" in err.details(), fields
        (inside / "notes.txt").symlink_to(secret)
        err = await _error(stub, name="linked", source_folder=str(inside))
        assert (
            err.code() == PRECONDITION
            and "notes.txt" in err.details()
            and "outside the model folder" in err.details()
        )
        (inside / "notes.txt").unlink()
        assert (await _register(stub, name="inside", source_folder=str(inside))).created


async def test_an_interrupted_registration_is_redone(
    trainer_env: dict[str, str], channel_to: Callable, store_of: Callable, tiny_model_dir: Path
) -> None:
    store: ObjectStore = store_of(trainer_env)
    # What a registration killed half-way leaves: some files, a manifest of other content, no marker.
    store.put("base-models/half/config.json", b"{}")
    store.put("base-models/half/stray.bin", b"x")
    store.put(
        "base-models/half/flywheel-base-model.json", json.dumps({"name": "half", "hf_id": "x/y"}).encode()
    )
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        listed = await stub.ListBaseModels(S.ListBaseModelsRequest())
        assert "half" not in [m.name for m in listed.base_models]  # not registered until _COMPLETE
        reply = await _register(stub, name="half", hf_id=HF_ID, source_folder=str(tiny_model_dir))
        assert reply.created and reply.base_model.hf_id == HF_ID
    assert not store.exists("base-models/half/stray.bin")
    assert json.loads(store.get_bytes("base-models/half/config.json")) == json.loads(
        (tiny_model_dir / "config.json").read_text()
    )


def test_old_manifests_read_with_the_name_as_hf_id() -> None:
    old = {"name": "gemma-3-270m", "architecture": "Gemma3ForCausalLM", "parameter_count": 1}
    info = catalog.BaseModelInfo.from_json(old)
    assert info.hf_id == "gemma-3-270m" and info.content_digest == "" and info.source == {}


async def test_a_published_adapter_records_the_hf_id(
    trainer_env: dict[str, str],
    channel_to: Callable,
    store_of: Callable,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    async with boot_service(build_app, TrainerSettings, trainer_env) as address:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel_to(address))
        await _register(stub, name="tiny-hf", hf_id=HF_ID, source_folder=str(tiny_model_dir))
        job = sft_job(adapter="hf-memo", max_steps=2)
        job.base_model = "tiny-hf"
        created = (await stub.CreateFineTuneJob(S.CreateFineTuneJobRequest(job=job))).job
        final = await wait_for(stub, created.id, lambda j: j.state in (3, 4, 5))
        assert final.state == 3, final.error
        published = (await stub.GetAdapter(S.GetAdapterRequest(name="hf-memo"))).adapter
        assert published.base_model == "tiny-hf"  # Flywheel's records keep the registry name
    local = download_dir(store_of(trainer_env), published.object_prefix, tmp_path / "adapter")
    assert json.loads((local / "adapter_config.json").read_text())["base_model_name_or_path"] == HF_ID
    manifest = json.loads((local / "manifest.json").read_text())
    assert manifest["serving"]["base_model_name_or_path"] == HF_ID
    assert manifest["serving"]["base_model"] == "tiny-hf"
    assert manifest["lineage"]["base_model"]["hf_id"] == HF_ID


def _write_gguf(path: Path, architecture: str) -> None:
    """A minimal GGUF file: only its metadata matters here (the architecture is read first)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
