"""Filesystem backend: one file per object under a root folder (single machine, POSIX).

Layout under ``root``::

    <key>                               the object's bytes, a plain file
    .flywheel-store/staging/            writes in flight; never listed
    .flywheel-store/meta/<h2>/<h>.json  sidecar of a key (h = sha256 of the key): content type,
                                        metadata and sha256, per file generation (see below)
    .flywheel-store/locks/<h2>          256 lock files that serialise writers of the same key

A write goes to a temp file in the staging folder (same filesystem), is fsynced, and is then
published under its key in one step: ``os.link`` when overwriting is not allowed (it fails if the
key exists, so the check and the publish are one atomic operation) or ``os.replace`` otherwise.
Readers therefore see the old file or the new one, never a partial one.

The sidecar is written before the file is published. It maps the inode number of a file
generation to that generation's details and keeps the entry of the live file next to the new one,
so a reader that stats the data file always finds the entry of exactly the bytes it sees, even
while a writer is between writing the sidecar and publishing the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import stat as stat_mod
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flywheel_common.objectstore.base import (
    InvalidKeyError,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    iter_parts,
    normalize_metadata,
    validate_content_type,
    validate_key,
    validate_prefix,
)

#: The hidden folder that holds the store's own files; keys may not start with it.
INTERNAL_DIR = ".flywheel-store"
_CHUNK = 1024 * 1024
_MAX_SEGMENT_BYTES = 255
_SIDECAR_FORMAT = 1
#: Staging files untouched for this long belong to a writer that crashed; ensure_ready() removes them.
STALE_STAGING_S = 24 * 3600


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utc(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


class FilesystemObjectStore(ObjectStore):
    """Objects as files under ``root``. Safe for many threads and processes on one machine."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().absolute()
        self._internal = self.root / INTERNAL_DIR
        self._staging = self._internal / "staging"
        self._meta = self._internal / "meta"
        self._locks = self._internal / "locks"
        self._dirs_ready = False

    def __repr__(self) -> str:
        return f"FilesystemObjectStore(root={str(self.root)!r})"

    # ----------------------------------------------------------------------------------- helpers

    def _path(self, key: str) -> Path:
        validate_key(key)
        segments = key.split("/")
        if segments[0] == INTERNAL_DIR:
            raise InvalidKeyError(
                f"invalid object key {key!r}: {INTERNAL_DIR!r} is reserved by the filesystem backend", key=key
            )
        for segment in segments:
            if len(segment.encode("utf-8")) > _MAX_SEGMENT_BYTES:
                raise InvalidKeyError(
                    f"invalid object key {key!r}: the segment {segment[:40]!r}… is longer than the "
                    f"{_MAX_SEGMENT_BYTES} bytes a file name may have",
                    key=key,
                )
        return self.root.joinpath(*segments)

    def _key_hash(self, key: str) -> str:
        return hashlib.sha256(key.encode("utf-8")).hexdigest()

    def _sidecar_path(self, key: str) -> Path:
        digest = self._key_hash(key)
        return self._meta / digest[:2] / f"{digest}.json"

    def _ensure_dirs(self) -> None:
        if not self._dirs_ready:
            for folder in (self.root, self._staging, self._meta, self._locks):
                folder.mkdir(parents=True, exist_ok=True)
            self._dirs_ready = True

    @contextlib.contextmanager
    def _key_lock(self, key: str) -> Iterator[None]:
        # flock locks belong to the open file description, so a fresh open per call excludes
        # other threads of this process as well as other processes.
        fd = os.open(self._locks / self._key_hash(key)[:2], os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read_sidecar(self, key: str) -> dict[str, Any]:
        try:
            with open(self._sidecar_path(key), "rb") as f:
                doc = json.load(f)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        except (OSError, ValueError):
            return {}  # unreadable or torn by hand: treat as absent, the object itself is intact
        entries = doc.get("entries") if isinstance(doc, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _write_sidecar(self, key: str, entries: dict[str, Any]) -> None:
        path = self._sidecar_path(key)
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._staging, prefix="meta-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps({"format": _SIDECAR_FORMAT, "key": key, "entries": entries}).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    def _make_parents(self, key: str, path: Path) -> list[Path]:
        """Create the key's folders; return those created (their parents need an fsync)."""
        created: list[Path] = []
        current = self.root
        for segment in path.relative_to(self.root).parts[:-1]:
            current = current / segment
            try:
                current.mkdir()
                created.append(current)
            except FileExistsError:
                if not current.is_dir():
                    raise self._conflict(key, current) from None
            except NotADirectoryError:
                raise self._conflict(key, current) from None
        return created

    def _conflict(self, key: str, where: Path) -> ObjectStoreError:
        other = where.relative_to(self.root).as_posix()
        return ObjectStoreError(
            f"cannot store {key!r}: the filesystem backend cannot hold both an object and a folder named "
            f"{other!r}",
            key=key,
        )

    def _prune_parents(self, path: Path) -> None:
        """Remove folders left empty by a delete, up to the root (a concurrent put re-creates them)."""
        current = path.parent
        while current != self.root and self.root in current.parents:
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

    # -------------------------------------------------------------------------------------- API

    def ensure_ready(self) -> None:
        self._dirs_ready = False
        self._ensure_dirs()
        cutoff = time.time() - STALE_STAGING_S
        with os.scandir(self._staging) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        length: int | None = None,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
        overwrite: bool = False,
    ) -> ObjectInfo:
        path = self._path(key)
        metadata = normalize_metadata(key, metadata)
        content_type = validate_content_type(key, content_type)
        # Cheap early refusal, before any byte is copied; the real check is the atomic os.link below.
        if not overwrite and os.path.isfile(path):
            raise self._exists(key)
        self._ensure_dirs()

        fd, tmp = tempfile.mkstemp(dir=self._staging, prefix="put-")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as f:
                for part in iter_parts(key, data, length, _CHUNK):
                    digest.update(part)
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
                st = os.fstat(f.fileno())
            sha256 = digest.hexdigest()
            entry = {"content_type": content_type, "metadata": metadata, "sha256": sha256}
            with self._key_lock(key):
                created = self._publish(key, path, tmp, st.st_ino, entry, overwrite)
            for folder in {path.parent, *(c.parent for c in created)}:
                _fsync_dir(folder)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return ObjectInfo(
            key=key,
            size=st.st_size,
            last_modified=_utc(st.st_mtime_ns),
            sha256=sha256,
            content_type=content_type,
            metadata=metadata,
        )

    def _publish(
        self, key: str, path: Path, tmp: str, ino: int, entry: dict[str, Any], overwrite: bool
    ) -> list[Path]:
        """Sidecar first, then the file; called with the key's lock held."""
        created = self._make_parents(key, path)
        try:
            live = os.lstat(path)
        except FileNotFoundError:
            live = None
        if live is not None and stat_mod.S_ISDIR(live.st_mode):
            raise self._conflict(key, path)
        if live is not None and not overwrite:
            raise self._exists(key)
        entries = {}
        if live is not None:
            live_entry = self._read_sidecar(key).get(str(live.st_ino))
            if live_entry is not None:
                entries[str(live.st_ino)] = live_entry
        entries[str(ino)] = entry
        self._write_sidecar(key, entries)
        for attempt in range(5):
            try:
                if overwrite:
                    os.replace(tmp, path)
                else:
                    os.link(tmp, path)  # fails with EEXIST if anyone published first: no race
                return created
            except FileExistsError:
                if os.path.isdir(path):
                    raise self._conflict(key, path) from None
                raise self._exists(key) from None
            except IsADirectoryError:
                raise self._conflict(key, path) from None
            except FileNotFoundError:
                # A concurrent delete pruned a folder that just became empty; create it again.
                if attempt == 4:
                    raise
                created += self._make_parents(key, path)
        raise AssertionError("unreachable")

    def _exists(self, key: str) -> ObjectExistsError:
        return ObjectExistsError(f"object {key!r} already exists; pass overwrite=True to replace it", key=key)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[io.BufferedIOBase]:
        path = self._path(key)
        try:
            f = open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(f"object {key!r} not found", key=key) from None
        with f:
            if not stat_mod.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ObjectNotFoundError(f"object {key!r} not found", key=key)
            yield f

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        for _ in range(10):
            try:
                before = os.stat(path)
                if not stat_mod.S_ISREG(before.st_mode):
                    raise FileNotFoundError(path)
                entries = self._read_sidecar(key)
                after = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                raise ObjectNotFoundError(f"object {key!r} not found", key=key) from None
            if after.st_ino == before.st_ino:
                break
            # A writer replaced the file while we read the sidecar; read both again.
        entry = entries.get(str(after.st_ino)) or {}
        return ObjectInfo(
            key=key,
            size=after.st_size,
            last_modified=_utc(after.st_mtime_ns),
            sha256=entry.get("sha256"),
            # A file put there by hand has no sidecar: report the put() defaults.
            content_type=entry.get("content_type", "application/octet-stream"),
            metadata=dict(entry.get("metadata", {})),
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._key_lock(key) if self._locks.is_dir() else contextlib.nullcontext():
            try:
                if stat_mod.S_ISDIR(os.lstat(path).st_mode):
                    return
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._sidecar_path(key))
            with contextlib.suppress(OSError):
                _fsync_dir(path.parent)
        self._prune_parents(path)

    def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        if limit is not None and limit <= 0:
            return
        served = 0
        for info in self._walk(self.root, "", prefix, start_after):
            yield info
            served += 1
            if limit is not None and served >= limit:
                return

    def _walk(self, folder: Path, base: str, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        """Depth-first walk in key order; only one folder's entries are held at a time per level.

        ``base`` is the key prefix of ``folder`` ('' or ending in '/'). A folder sorts as its name
        plus '/', which makes the walk order the byte order of the full keys (str comparison of
        Python strings is code-point order, the same as UTF-8 byte order).
        """
        try:
            with os.scandir(folder) as it:
                entries = []
                for entry in it:
                    if not base and entry.name == INTERNAL_DIR:
                        continue
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    entries.append((base + entry.name + ("/" if is_dir else ""), is_dir, entry))
        except (FileNotFoundError, NotADirectoryError):
            return
        entries.sort(key=lambda item: item[0])
        for name, is_dir, entry in entries:
            # Skip anything outside the prefix: neither may extend the other.
            if not (name.startswith(prefix) or (is_dir and prefix.startswith(name))):
                continue
            if is_dir:
                if start_after.startswith(name) or name > start_after:
                    yield from self._walk(Path(entry.path), name, prefix, start_after)
                continue
            if name <= start_after:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted since the scan
            if not stat_mod.S_ISREG(st.st_mode):
                continue
            try:
                validate_key(name)
            except InvalidKeyError:
                continue  # a file put there by hand under a name no key can have
            yield ObjectInfo(key=name, size=st.st_size, last_modified=_utc(st.st_mtime_ns))
