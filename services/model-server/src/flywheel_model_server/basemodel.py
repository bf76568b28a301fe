"""Finding the base model: an explicit local folder, or the trainer's registry in the object store.

The registry convention is the trainer's (``trainer-svc/src/flywheel_trainer/catalog.py``):
``base-models/<name>/`` holds a Hugging Face folder (config.json, safetensors weights, tokenizer
files, chat template) plus ``flywheel-base-model.json`` (the manifest), and the uploader writes a
``_COMPLETE`` object last. A copy is downloaded once per upload into
``<cache_dir>/<name>-<first 16 hex of sha256(manifest)>``, so a new upload under the same name
is a new folder and a restart reuses the old download.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore, ObjectStoreError

BASE_MODELS_PREFIX = "base-models/"
BASE_MODEL_MANIFEST = "flywheel-base-model.json"
COMPLETE_MARKER = "_COMPLETE"


class ModelMissingError(Exception):
    """The base model cannot be found; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class LocatedModel:
    path: Path  #: local Hugging Face folder
    source: str  #: where it came from, for logs and /health/ready


def _how_to_get(name: str) -> str:
    command = "flywheel-trainer-import-gguf"  # trainer-svc's importer; Gemma 3 270M is its default
    if name != "gemma-3-270m":
        command += f" --gguf FILE --name {name}"
    return (
        f"import it into the registry with `{command}` (trainer-svc), or point "
        f"FLYWHEEL_MODEL_SERVER_MODEL_PATH at a local Hugging Face model folder"
    )


def check_local_folder(path: Path) -> None:
    """A folder transformers can load: it exists and has config.json and weights."""
    if not path.is_dir():
        raise ModelMissingError(
            f"FLYWHEEL_MODEL_SERVER_MODEL_PATH={path} is not a folder; set it to a Hugging Face model folder"
        )
    if not (path / "config.json").is_file():
        raise ModelMissingError(f"{path} has no config.json, so it is not a Hugging Face model folder")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelMissingError(f"{path} has config.json but no weights (*.safetensors)")


def locate(store: ObjectStore | None, name: str, model_path: Path | None, cache_dir: Path) -> LocatedModel:
    """The local folder to load, downloading it from the registry if needed; ModelMissingError if none."""
    if model_path is not None:
        check_local_folder(model_path)
        return LocatedModel(model_path, f"local folder {model_path}")
    if store is None:
        raise ModelMissingError(f"base model {name!r}: no object store configured; {_how_to_get(name)}")
    prefix = f"{BASE_MODELS_PREFIX}{name}/"
    try:
        manifest = store.get_bytes(prefix + BASE_MODEL_MANIFEST)
    except ObjectNotFoundError:
        raise ModelMissingError(
            f"base model {name!r} is not in the registry ({prefix}{BASE_MODEL_MANIFEST} does not exist "
            f"in the object store {store!r}); {_how_to_get(name)}"
        ) from None
    except ObjectStoreError as err:
        raise ModelMissingError(f"base model {name!r}: the object store cannot be read ({err})") from None
    local = cache_dir / f"{name}-{hashlib.sha256(manifest).hexdigest()[:16]}"
    if (local / BASE_MODEL_MANIFEST).is_file():
        return LocatedModel(local, f"registry {prefix} (cached in {local})")
    if not store.exists(prefix + COMPLETE_MARKER):
        raise ModelMissingError(
            f"base model {name!r} is still being uploaded ({prefix}{COMPLETE_MARKER} does not exist yet)"
        )
    download(store, prefix, local)
    check_local_folder(local)
    return LocatedModel(local, f"registry {prefix} (downloaded to {local})")


def download(store: ObjectStore, prefix: str, local: Path) -> None:
    """Copy every object under ``prefix`` into ``local``; the folder appears whole or not at all.

    The manifest is what marks a cached copy as complete, so it is written last into a private
    temporary folder that is then renamed into place.
    """
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir()
    try:
        for info in store.list(prefix):
            rel = info.key[len(prefix) :]
            if rel == COMPLETE_MARKER:
                continue
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with store.open(info.key) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1024 * 1024)
        try:
            tmp.rename(local)
        except OSError:
            if not (local / BASE_MODEL_MANIFEST).is_file():  # not another process that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
