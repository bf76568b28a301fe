"""The content digest of a LoRA adapter: one definition for the trainer, adapter sync and the model server.

Definition (``flywheel-adapter-digest/v1``)
--------------------------------------------
1. The files covered are the adapter's weight and config files, at the top level of its folder
   (or object-store prefix), those of :data:`DIGEST_FILES` that exist: ``adapter_config.json``,
   ``adapter_model.bin``, ``adapter_model.safetensors`` (the PEFT files both vLLM and our model
   server load) and ``chat_template.jinja``, ``tokenizer_config.json`` (where our model server
   reads an adapter's chat template). ``adapter_config.json`` and at least one ``adapter_model.*``
   are required. Nothing else counts: ``manifest.json`` (it holds the digest), the loss curve, the
   training log, completion markers, and the tokenizer's vocabulary (``tokenizer.json``: both
   servers tokenise with the base model's tokenizer).
2. The files are taken in the byte order of their names; for each, the line
   ``<sha256 of its bytes, 64 lower-case hex>  <name>\\n`` (two spaces: the ``sha256sum`` format).
3. The digest is ``sha256:`` followed by the SHA-256 (hex) of those lines concatenated (UTF-8).

So anyone can recompute it with coreutils (``ls`` sorts the names, and omits the missing ones)::

    cd <adapter folder>
    sha256sum $(LC_ALL=C ls adapter_config.json adapter_model.bin adapter_model.safetensors \\
        chat_template.jinja tokenizer_config.json 2>/dev/null) | sha256sum

and prefix the printed hex with ``sha256:``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

#: Name and version of the definition above (recorded next to each digest in manifests).
ALGORITHM = "flywheel-adapter-digest/v1"
#: The files a digest covers, in byte order of their names (the order of the lines).
DIGEST_FILES = (
    "adapter_config.json",
    "adapter_model.bin",
    "adapter_model.safetensors",
    "chat_template.jinja",
    "tokenizer_config.json",
)
REQUIRED = "adapter_config.json"
WEIGHTS = ("adapter_model.bin", "adapter_model.safetensors")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


class DigestError(Exception):
    """The folder or prefix is not an adapter whose digest can be computed (a required file is missing)."""


@dataclass(frozen=True)
class FileDigest:
    name: str
    size: int
    sha256: str

    def line(self) -> str:
        return f"{self.sha256}  {self.name}\n"


@dataclass(frozen=True)
class AdapterDigest:
    """A digest and the per-file hashes it was made of (they say which file differs on a mismatch)."""

    digest: str
    files: tuple[FileDigest, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": ALGORITHM,
            "value": self.digest,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }

    def differing_files(self, other: AdapterDigest) -> list[str]:
        """Names whose hash (or presence) differs between the two, for error messages."""
        mine = {f.name: f.sha256 for f in self.files}
        theirs = {f.name: f.sha256 for f in other.files}
        return sorted(n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n))


def is_digest(value: str) -> bool:
    return bool(DIGEST_RE.match(value))


def combine(files: list[FileDigest]) -> AdapterDigest:
    """The digest of per-file hashes (step 2 and 3 of the definition); checks the required files."""
    ordered = tuple(sorted(files, key=lambda f: f.name.encode()))
    names = {f.name for f in ordered}
    if REQUIRED not in names:
        raise DigestError(f"no {REQUIRED}: not a PEFT adapter")
    if not names & set(WEIGHTS):
        raise DigestError(f"no adapter weights ({' or '.join(WEIGHTS)})")
    text = "".join(f.line() for f in ordered)
    return AdapterDigest("sha256:" + hashlib.sha256(text.encode()).hexdigest(), ordered)


def hash_stream(stream: IO[bytes]) -> tuple[int, str]:
    """(size, sha256 hex) of a binary stream, read in 1 MiB parts."""
    h = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def folder_digest(folder: Path) -> AdapterDigest:
    """The digest of an adapter folder on disk (blocking: reads every covered file)."""
    files = []
    for name in DIGEST_FILES:
        path = folder / name
        if path.is_file():
            with open(path, "rb") as stream:
                size, sha = hash_stream(stream)
            files.append(FileDigest(name, size, sha))
    try:
        return combine(files)
    except DigestError as err:
        raise DigestError(f"{folder}: {err}") from None


def objects_digest(
    prefix: str,
    keys: set[str],
    open_object: Callable[[str], AbstractContextManager[Any]],
) -> AdapterDigest:
    """The digest of an adapter stored under ``prefix`` (``keys``: the keys that exist there).

    ``open_object`` is the object store's ``open``; passed in so this module needs no store.
    """
    files = []
    for name in DIGEST_FILES:
        if prefix + name in keys:
            with open_object(prefix + name) as stream:
                size, sha = hash_stream(stream)
            files.append(FileDigest(name, size, sha))
    try:
        return combine(files)
    except DigestError as err:
        raise DigestError(f"{prefix}: {err}") from None
