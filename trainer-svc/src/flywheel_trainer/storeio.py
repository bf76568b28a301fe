"""Copying folders between the object store and local disk.

The object store has no notion of folders; a "folder" here is every object under a key prefix.
Uploads write a ``_COMPLETE`` marker object last, so a reader that finds the marker knows every
file of the folder is there (a process killed half-way through an upload leaves no marker).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flywheel_common.objectstore import ObjectStore

COMPLETE_MARKER = "_COMPLETE"

_CONTENT_TYPES = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".png": "image/png",
    ".safetensors": "application/octet-stream",
    ".txt": "text/plain",
    ".jinja": "text/plain",
    ".md": "text/markdown",
}


def content_type(path: Path) -> str:
    return _CONTENT_TYPES.get(path.suffix, "application/octet-stream")


def upload_dir(store: ObjectStore, local: Path, prefix: str, *, overwrite: bool = False) -> list[str]:
    """Upload every file under ``local`` to ``prefix`` (ending in '/'), then the completion marker."""
    if not prefix.endswith("/"):
        prefix += "/"
    keys = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(local).as_posix()
        with path.open("rb") as stream:
            store.put(
                key,
                stream,
                length=path.stat().st_size,
                content_type=content_type(path),
                overwrite=overwrite,
            )
        keys.append(key)
    marker = json.dumps({"files": [k[len(prefix) :] for k in keys]}).encode()
    store.put(prefix + COMPLETE_MARKER, marker, content_type="application/json", overwrite=overwrite)
    return keys


def is_complete(store: ObjectStore, prefix: str) -> bool:
    return store.exists(prefix.rstrip("/") + "/" + COMPLETE_MARKER)


def download_dir(store: ObjectStore, prefix: str, local: Path) -> Path:
    """Download every object under ``prefix`` into ``local`` (replacing what was there)."""
    if not prefix.endswith("/"):
        prefix += "/"
    tmp = local.with_name(local.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for info in store.list(prefix):
        rel = info.key[len(prefix) :]
        if rel == COMPLETE_MARKER:
            continue
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.open(info.key) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
    shutil.rmtree(local, ignore_errors=True)
    tmp.rename(local)
    return local
