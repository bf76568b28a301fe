"""The adapter content digest: its definition, its stability, and the same value from a folder, the
object store and coreutils."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from flywheel_common.adapter_digest import (
    DIGEST_FILES,
    DigestError,
    folder_digest,
    is_digest,
    objects_digest,
)
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store


def make_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    # Not covered: bookkeeping and the vocabulary.
    (folder / "manifest.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "_COMPLETE").write_text("")
    return folder


def test_definition_by_hand(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a")
    lines = "".join(
        f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}\n"
        for name in ("adapter_config.json", "adapter_model.safetensors", "chat_template.jinja")
    )
    digest = folder_digest(folder)
    assert digest.digest == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    assert is_digest(digest.digest)
    assert [f.name for f in digest.files] == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
    ]
    assert list(DIGEST_FILES) == sorted(DIGEST_FILES, key=str.encode)  # the documented order is byte order


def test_the_readme_shell_command_gives_the_same_digest(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a")
    names = " ".join(DIGEST_FILES)
    shell = f"sha256sum $(LC_ALL=C ls {names} 2>/dev/null) | sha256sum"
    out = subprocess.run(["bash", "-c", shell], cwd=folder, capture_output=True, text=True, check=True).stdout
    assert folder_digest(folder).digest == "sha256:" + out.split()[0]


def test_stable_and_sensitive_to_one_byte(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a")
    first = folder_digest(folder)
    copy = tmp_path / "b"
    shutil.copytree(folder, copy)
    assert folder_digest(folder) == first == folder_digest(copy)  # recomputation and copies agree
    (copy / "manifest.json").write_text('{"other": 1}')  # bookkeeping files do not count
    (copy / "tokenizer.json").write_text('{"other": 1}')
    assert folder_digest(copy).digest == first.digest
    weights = bytearray((copy / "adapter_model.safetensors").read_bytes())
    weights[1000] ^= 0x01  # one bit of one byte
    (copy / "adapter_model.safetensors").write_bytes(bytes(weights))
    changed = folder_digest(copy)
    assert changed.digest != first.digest
    assert changed.differing_files(first) == ["adapter_model.safetensors"]


def test_object_store_digest_equals_folder_digest(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a")
    store = open_object_store(ObjectStoreSettings(backend="fs", root=tmp_path / "objects"))
    store.ensure_ready()
    for path in folder.iterdir():
        store.put("adapters/x/v1/" + path.name, path.read_bytes())
    keys = {info.key for info in store.list("adapters/x/v1/")}
    assert objects_digest("adapters/x/v1/", keys, store.open) == folder_digest(folder)


def test_not_an_adapter(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "a")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(DigestError, match="no adapter weights"):
        folder_digest(folder)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(DigestError, match=r"no adapter_config\.json"):
        folder_digest(folder)
