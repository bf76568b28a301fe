"""Registering a base model (``RegisterBaseModel``): validation, idempotency, crash-safe upload.

A source is exactly one of an object-store prefix or a local folder holding a Hugging Face model
folder, or a GGUF file (an object-store key or a local path; converted by
:func:`flywheel_trainer.gguf_import.convert`). The files go to ``base-models/<name>/`` in this
order: every model file, then the manifest (``flywheel-base-model.json``, with ``hf_id``, the
content digest and the source), then the ``_COMPLETE`` marker. A registration that died half-way
left no marker: the next one removes what it left and starts again. Registering the same content
under the same name and ``hf_id`` again returns the existing entry; other content or another
``hf_id`` under a taken name is refused (ALREADY_EXISTS).

Everything here is blocking (the service runs it in a thread) and raises the
:mod:`flywheel_common.errors` types the service maps to gRPC codes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from flywheel_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from flywheel_common.objectstore import ObjectNotFoundError, ObjectStore
from flywheel_trainer import catalog
from flywheel_trainer.storeio import COMPLETE_MARKER, content_type, is_complete

log = logging.getLogger("flywheel.trainer.registry")

#: A Hugging Face id as vLLM takes it for ``--model``: ``org/name`` or ``name``, no spaces.
HF_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
HF_ID_MAX = 200
#: Files that make a folder a loadable Hugging Face tokenizer (one is enough).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
#: GGUF architectures the converter is known to turn into a working model (its tokenizer
#: rebuild, :func:`flywheel_trainer.gguf_import.gemma_tokenizer`, is Gemma's).
GGUF_ARCHITECTURES = ("gemma", "gemma2", "gemma3")
#: Skipped when copying a source folder or prefix: the registry's own files and VCS/cache clutter.
_SKIPPED = {catalog.BASE_MODEL_MANIFEST, COMPLETE_MARKER}
_SKIPPED_DIRS = {".git", ".cache", ".huggingface"}
DIGEST_ALGORITHM = "sha256"


@dataclass(frozen=True)
class Source:
    """Where the files come from: ``kind`` is prefix, folder, gguf_key or gguf_path."""

    kind: str
    location: str

    FIELDS = {
        "prefix": "source_prefix",
        "folder": "source_folder",
        "gguf_key": "source_gguf_key",
        "gguf_path": "source_gguf_path",
    }

    @property
    def field(self) -> str:
        return self.FIELDS[self.kind]


def pick_source(**given: str) -> Source:
    """The one source of a request (keyword per kind, empty = unset); INVALID_ARGUMENT otherwise."""
    chosen = [Source(kind, value) for kind, value in given.items() if value]
    fields = ", ".join(Source.FIELDS.values())
    if not chosen:
        raise InvalidArgument("source", f"required: set exactly one of {fields}")
    if len(chosen) > 1:
        both = " and ".join(s.field for s in chosen)
        raise InvalidArgument("source", f"{both} are both set; set exactly one of {fields}")
    source = chosen[0]
    if source.kind in ("folder", "gguf_path") and not Path(source.location).is_absolute():
        raise InvalidArgument(
            source.field, f"must be an absolute path on the trainer, got {source.location!r}"
        )
    if source.kind == "gguf_key" and source.location.endswith("/"):
        raise InvalidArgument(source.field, f"must be an object key, not a prefix: {source.location!r}")
    return source


def check_local(source: Source, roots: list[Path]) -> None:
    """PERMISSION_DENIED unless a local source lies under one of ``roots`` once symlinks are
    resolved (no roots: any path). Symlinks inside a folder are checked when it is copied."""
    if source.kind not in ("folder", "gguf_path") or not roots:
        return
    real = Path(os.path.realpath(source.location))
    if not any(real == r or r in real.parents for r in _real(roots)):
        raise PermissionDenied(
            f"{source.field}: {source.location} is outside the folders this trainer registers models "
            f"from ({', '.join(str(r) for r in roots)}; FLYWHEEL_TRAINER_MODEL_ROOTS)"
        )


def _real(roots: list[Path]) -> list[Path]:
    return [Path(os.path.realpath(r)) for r in roots]


def check_names(name: str, hf_id: str) -> str:
    """Validate ``name`` and ``hf_id``; returns the effective hf_id (``name`` when empty)."""
    if not name:
        raise InvalidArgument("name", f"required: the registry name, matching {catalog.NAME_RE.pattern}")
    if not catalog.NAME_RE.match(name):
        raise InvalidArgument("name", f"{name!r} does not match {catalog.NAME_RE.pattern}")
    hf_id = hf_id or name
    if len(hf_id) > HF_ID_MAX or not HF_ID_RE.match(hf_id):
        raise InvalidArgument(
            "hf_id",
            f"{hf_id!r} is not a Hugging Face id (`org/name` or `name`: letters, digits, '.', '_', "
            f"'-', at most {HF_ID_MAX} characters)",
        )
    return hf_id


# ------------------------------------------------------------------------------ digests


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def files_digest(files: dict[str, Path]) -> str:
    """``sha256:<hex>`` over ``<sha256>  <relative path>`` lines, paths in byte order."""
    lines = [f"{file_sha256(files[rel])}  {rel}\n" for rel in sorted(files, key=lambda r: r.encode())]
    return "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()


# ------------------------------------------------------------------------------ sources


def folder_files(folder: Path) -> dict[str, Path]:
    """The files of a model folder by relative path (the manifest, the marker and VCS/cache folders
    left out). A symlink whose target lies outside the folder is refused (FAILED_PRECONDITION):
    copying it would put some other file of the trainer's machine into the object store."""
    files = {}
    inside = Path(os.path.realpath(folder))
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not path.is_file() or rel.parts[0] in _SKIPPED_DIRS or rel.as_posix() in _SKIPPED:
            continue
        target = Path(os.path.realpath(path))
        if inside not in target.parents:
            raise FailedPrecondition(
                f"{rel.as_posix()} in {folder} is a link to {target}, outside the model folder; "
                "copy the file into the folder instead"
            )
        files[rel.as_posix()] = path
    return files


def check_hf_files(names: list[str], where: str, field: str) -> None:
    """FAILED_PRECONDITION unless the top-level names make a Hugging Face model with a tokenizer."""
    top = {n for n in names if "/" not in n}
    if "config.json" not in top:
        raise FailedPrecondition(f"{field}: {where} is not a Hugging Face model folder (no config.json)")
    if not any(n.endswith(".safetensors") for n in top):
        raise FailedPrecondition(
            f"{field}: {where} has config.json but no weights (*.safetensors; convert .bin weights first)"
        )
    if not any(n in top for n in TOKENIZER_FILES):
        raise FailedPrecondition(
            f"{field}: {where} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer "
            "into the folder too (tokenizer.save_pretrained)"
        )


def _download_prefix(store: ObjectStore, prefix: str, local: Path) -> dict[str, Path]:
    if not prefix.endswith("/"):
        prefix += "/"
    objects = [o for o in store.list(prefix) if o.key[len(prefix) :] not in _SKIPPED]
    if not objects:
        raise NotFound(f"source_prefix: nothing is stored under {prefix!r}")
    check_hf_files(
        [o.key[len(prefix) :] for o in objects], f"object-store prefix {prefix!r}", "source_prefix"
    )
    total = sum(o.size for o in objects)
    log.info("register: downloading %d files (%.1f MB) from %s", len(objects), total / 1e6, prefix)
    files = {}
    for o in objects:
        rel = o.key[len(prefix) :]
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with store.open(o.key) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
        files[rel] = target
    return files


def _local_folder(folder: Path) -> dict[str, Path]:
    if not folder.exists():
        raise NotFound(f"source_folder: {folder} does not exist on the trainer")
    if not folder.is_dir():
        raise FailedPrecondition(f"source_folder: {folder} is not a folder")
    files = folder_files(folder)
    check_hf_files(list(files), f"folder {folder}", "source_folder")
    return files


def gguf_architecture(gguf: Path) -> str:
    """``general.architecture`` of a GGUF file ("" when absent)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("general.architecture")
    return str(field.contents()) if field is not None else ""


def _gguf_file(store: ObjectStore, source: Source, work: Path) -> Path:
    if source.kind == "gguf_path":
        path = Path(source.location)
        if not path.is_file():
            raise NotFound(f"source_gguf_path: {path} does not exist on the trainer (or is not a file)")
        return path
    path = work / "model.gguf"
    try:
        with store.open(source.location) as src, path.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1024 * 1024)
    except ObjectNotFoundError:
        raise NotFound(f"source_gguf_key: no object {source.location!r} in the object store") from None
    return path


# ------------------------------------------------------------------------------ registering


def register(
    store: ObjectStore,
    source: Source,
    name: str,
    hf_id: str,
    description: str,
    work_dir: Path,
) -> tuple[catalog.BaseModelInfo, bool]:
    """Register ``source`` as ``name``; returns (the entry, whether this call created it)."""
    hf_id = check_names(name, hf_id)
    started = time.monotonic()
    work = work_dir / f"register-{name}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        existing = _complete_entry(store, name)
        source_meta = {"kind": source.kind, "location": source.location}
        if source.kind in ("prefix", "folder"):
            if source.kind == "prefix":
                files = _download_prefix(store, source.location, work / "model")
            else:
                files = _local_folder(Path(source.location))
            folder = work / "model" if source.kind == "prefix" else Path(source.location)
        else:
            gguf = _gguf_file(store, source, work)
            arch = gguf_architecture(gguf)
            if arch not in GGUF_ARCHITECTURES:
                raise FailedPrecondition(
                    f"{source.field}: the GGUF architecture is {arch or 'not named'!r}; the converter "
                    f"handles {', '.join(GGUF_ARCHITECTURES)} only (convert other models to a Hugging "
                    "Face folder and register that with source_prefix or source_folder)"
                )
            source_meta["sha256"] = file_sha256(gguf)
            if existing is not None and existing.source.get("sha256") == source_meta["sha256"]:
                return _same_or_conflict(existing, hf_id, existing.content_digest, name)
            log.info("register %s: converting the GGUF %s (minutes for a large file)", name, gguf)
            from flywheel_trainer.gguf_import import convert

            folder = convert(gguf, work / "model")
            files = folder_files(folder)
        # The default chat template is added in a side folder: a source folder may be read-only.
        extra = work / "extra"
        extra.mkdir()
        info = catalog.describe_local_model(folder, name, description, template_dir=extra)
        for path in extra.iterdir():
            files[path.name] = path
        digest = files_digest(files)
        if existing is not None:
            return _same_or_conflict(existing, hf_id, digest, name)
        info.hf_id = hf_id
        info.content_digest = digest
        info.source = source_meta
        info.description = description or f"registered from {source.kind} {source.location}"
        _upload(store, info, files, extra)
        log.info(
            "register %s: done (%s, %d files, hf_id %s) in %.0f s",
            name,
            info.architecture,
            len(files),
            hf_id,
            time.monotonic() - started,
        )
        return info, True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _complete_entry(store: ObjectStore, name: str) -> catalog.BaseModelInfo | None:
    """The registered entry ``name``; None if there is none. What an interrupted registration left
    under the prefix (no ``_COMPLETE``) is removed here, so the upload starts clean."""
    prefix = f"{catalog.BASE_MODELS_PREFIX}{name}/"
    if is_complete(store, prefix):
        info = catalog.base_model_info(store, name)
        if info is not None:
            return info
    leftovers = list(store.list(prefix))
    if leftovers:
        log.warning("register %s: removing %d objects of an interrupted registration", name, len(leftovers))
        for o in leftovers:
            store.delete(o.key)
    return None


def _same_or_conflict(
    existing: catalog.BaseModelInfo, hf_id: str, digest: str, name: str
) -> tuple[catalog.BaseModelInfo, bool]:
    if existing.hf_id == hf_id and existing.content_digest and existing.content_digest == digest:
        log.info("register %s: already registered with the same content and hf_id", name)
        return existing, False
    if existing.hf_id != hf_id:
        raise AlreadyExists(
            f"base model {name!r} is already registered with hf_id {existing.hf_id!r}, not {hf_id!r}; "
            "choose another name"
        )
    what = f"content digest {existing.content_digest}" if existing.content_digest else "no content digest"
    raise AlreadyExists(
        f"base model {name!r} is already registered with other content ({what}, this source: {digest}); "
        "choose another name"
    )


def _upload(store: ObjectStore, info: catalog.BaseModelInfo, files: dict[str, Path], extra: Path) -> None:
    """Model files, then the manifest, then ``_COMPLETE`` (what :func:`catalog.fetch_base_model` waits for)."""
    total = sum(p.stat().st_size for p in files.values())
    done = 0
    last_log = time.monotonic()
    for rel, path in sorted(files.items()):
        size = path.stat().st_size
        with path.open("rb") as stream:
            store.put(info.prefix + rel, stream, length=size, content_type=content_type(path), overwrite=True)
        done += size
        if time.monotonic() - last_log > 10 or done == total:
            log.info("register %s: uploaded %.1f of %.1f MB", info.name, done / 1e6, total / 1e6)
            last_log = time.monotonic()
    manifest = json.dumps(info.to_json(), indent=2).encode()
    store.put(
        info.prefix + catalog.BASE_MODEL_MANIFEST, manifest, content_type="application/json", overwrite=True
    )
    marker = json.dumps({"files": [*sorted(files), catalog.BASE_MODEL_MANIFEST]}).encode()
    store.put(info.prefix + COMPLETE_MARKER, marker, content_type="application/json", overwrite=True)
