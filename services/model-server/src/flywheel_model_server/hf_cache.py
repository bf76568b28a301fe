"""Put a registered base model into a Hugging Face cache, for vLLM to serve under its ``hf_id``.

``python -m flywheel_model_server.hf_cache --name NAME --hf-id ORG/MODEL --hf-home DIR`` (the
chart's init container with ``modelServer.model.source: registry``) downloads
``base-models/<name>/`` from the object store (``FLYWHEEL_OBJECT_STORE_*``) and lays it out as the
hub cache does: ``<hf-home>/hub/models--ORG--MODEL/snapshots/<revision>/…`` and ``refs/main``.
vLLM started with ``--model ORG/MODEL`` and ``HF_HUB_OFFLINE=1`` then loads exactly the weights
the trainer trains on, and its ``--model`` string is the ``hf_id`` that adapters record as
``base_model_name_or_path`` (what vLLM's filesystem LoRA resolver compares). A local path as
``--model`` would not match it.

The registry entry's ``hf_id`` must equal ``--hf-id`` (manifests older than ``hf_id`` count as
their name): otherwise the adapters would name another model and the command fails, saying which.
The revision is derived from the manifest, so a new registration of the name is a new snapshot
and a restart with the same one reuses the download.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
from pathlib import Path

from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore
from flywheel_model_server.basemodel import BASE_MODEL_MANIFEST, BASE_MODELS_PREFIX, ModelMissingError, locate

log = logging.getLogger("flywheel.model_server.hf_cache")


def repo_folder(hf_home: Path, hf_id: str) -> Path:
    """The hub cache folder of a model id (``models--org--name``, as huggingface_hub names it)."""
    return hf_home / "hub" / ("models--" + hf_id.replace("/", "--"))


def install(store: ObjectStore, name: str, hf_id: str, hf_home: Path) -> Path:
    """Download ``name`` from the registry into the cache as ``hf_id``; returns the snapshot folder."""
    prefix = f"{BASE_MODELS_PREFIX}{name}/"
    try:
        manifest_bytes = store.get_bytes(prefix + BASE_MODEL_MANIFEST)
    except ObjectNotFoundError:  # locate() below says what is missing and how to get it
        manifest_bytes = b""
    if manifest_bytes:
        manifest = json.loads(manifest_bytes)
        registered = manifest.get("hf_id") or manifest.get("name") or name
        if registered != hf_id:
            raise ModelMissingError(
                f"base model {name!r} is registered with hf_id {registered!r}, but vLLM is to serve "
                f"{hf_id!r} (modelServer.model.id): adapters trained on it record {registered!r}; set "
                "modelServer.model.id to the registered hf_id"
            )
    revision = hashlib.sha1(manifest_bytes, usedforsecurity=False).hexdigest()
    repo = repo_folder(hf_home, hf_id)
    snapshot = repo / "snapshots" / revision
    if not (snapshot / BASE_MODEL_MANIFEST).is_file():
        located = locate(store, name, None, hf_home / "flywheel-downloads")
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = snapshot.with_name(snapshot.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.move(located.path, tmp)  # same volume: a rename, not a second copy
        tmp.rename(snapshot)  # the manifest marks it complete; a half copy is never at this path
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    for old in (repo / "snapshots").iterdir():
        if old.name != revision:
            shutil.rmtree(old, ignore_errors=True)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    from flywheel_common.objectstore import ObjectStoreSettings, open_object_store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="registry name (base-models/<name>/)")
    parser.add_argument("--hf-id", required=True, help="Hugging Face id vLLM is started with (--model)")
    parser.add_argument("--hf-home", type=Path, required=True, help="HF_HOME of the vLLM container")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    store = open_object_store(ObjectStoreSettings())
    try:
        snapshot = install(store, args.name, args.hf_id, args.hf_home)
    except ModelMissingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"base model {args.name} is in the Hugging Face cache as {args.hf_id}: {snapshot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
