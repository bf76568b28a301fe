"""The registry → Hugging Face cache copy that lets vLLM serve the trainer's weights under the hf_id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel_common.objectstore import ObjectStore, ObjectStoreSettings, open_object_store
from flywheel_model_server.basemodel import ModelMissingError
from flywheel_model_server.hf_cache import install, main, repo_folder

from .conftest import TinyModels

HF_ID = "acme/tiny-base"


def _register(store: ObjectStore, folder: Path, name: str, manifest: dict[str, str]) -> None:
    """What the trainer's registry writes: the files, the manifest, then _COMPLETE."""
    for path in sorted(folder.iterdir()):
        store.put(f"base-models/{name}/{path.name}", path.read_bytes())
    store.put(f"base-models/{name}/flywheel-base-model.json", json.dumps({"name": name, **manifest}).encode())
    store.put(f"base-models/{name}/_COMPLETE", b"{}")


def test_the_registered_model_loads_offline_under_its_hf_id(tiny: TinyModels, tmp_path: Path) -> None:
    from huggingface_hub import snapshot_download
    from transformers import AutoConfig, AutoTokenizer

    store = open_object_store(ObjectStoreSettings(backend="fs", root=tmp_path / "objects"))
    store.ensure_ready()
    _register(store, tiny.base, "tiny", {"hf_id": HF_ID})
    hf_home = tmp_path / "hf"
    snapshot = install(store, "tiny", HF_ID, hf_home)
    assert (
        snapshot.parent.parent == repo_folder(hf_home, HF_ID) == hf_home / "hub" / "models--acme--tiny-base"
    )
    assert (snapshot / "config.json").read_bytes() == (tiny.base / "config.json").read_bytes()
    # What vLLM does with `--model acme/tiny-base` and HF_HUB_OFFLINE=1: resolve it in the cache.
    cache = str(hf_home / "hub")
    assert Path(snapshot_download(HF_ID, cache_dir=cache, local_files_only=True)) == snapshot
    config = AutoConfig.from_pretrained(HF_ID, cache_dir=cache, local_files_only=True)
    assert config.hidden_size == json.loads((tiny.base / "config.json").read_text())["hidden_size"]
    assert AutoTokenizer.from_pretrained(HF_ID, cache_dir=cache, local_files_only=True).vocab_size > 0
    assert install(store, "tiny", HF_ID, hf_home) == snapshot  # a restart reuses the copy

    # A new registration under the name is a new snapshot; the old one is removed.
    newer_manifest = json.dumps({"name": "tiny", "hf_id": HF_ID, "v": 2}).encode()
    store.put("base-models/tiny/flywheel-base-model.json", newer_manifest, overwrite=True)
    newer = install(store, "tiny", HF_ID, hf_home)
    assert newer != snapshot and not snapshot.exists()
    assert Path(snapshot_download(HF_ID, cache_dir=cache, local_files_only=True)) == newer


def test_a_mismatched_or_missing_entry_fails_clearly(
    tiny: TinyModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_object_store(ObjectStoreSettings(backend="fs", root=tmp_path / "objects"))
    store.ensure_ready()
    _register(store, tiny.base, "old", {})  # a manifest older than hf_id: its name is its id
    with pytest.raises(ModelMissingError, match=r"registered with hf_id 'old'.*modelServer\.model\.id"):
        install(store, "old", HF_ID, tmp_path / "hf")
    assert install(store, "old", "old", tmp_path / "hf").is_dir()
    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_BACKEND", "fs")
    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_ROOT", str(tmp_path / "objects"))
    assert main(["--name", "absent", "--hf-id", HF_ID, "--hf-home", str(tmp_path / "hf")]) == 1
    assert "'absent' is not in the registry" in capsys.readouterr().err
