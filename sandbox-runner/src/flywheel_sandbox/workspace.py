"""Checks on what a request puts in the workspace: paths, sizes, counts, archives.

Every problem raises :class:`flywheel_common.errors.InvalidArgument` naming the request field.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import struct
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO

from flywheel_common.errors import InvalidArgument, shown
from flywheel_sandbox.runner import FileSpec

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FileCaps:
    max_files: int
    max_file_bytes: int
    max_request_bytes: int


def check_path(field: str, path: str) -> str:
    """A workspace-relative path: no absolute path, no ``..``/``.``/empty segment, no NUL or backslash."""
    if not path:
        raise InvalidArgument(field, "is empty")
    if len(path) > 1024:
        raise InvalidArgument(field, f"is {len(path)} characters long (at most 1024)")
    if "\x00" in path or "\\" in path:
        raise InvalidArgument(field, f"{shown(path)} contains a NUL or a backslash")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # an archive member name that is not UTF-8 (kept as surrogates)
        raise InvalidArgument(field, f"{shown(path)} is not valid UTF-8") from None
    if path.startswith("/"):
        raise InvalidArgument(field, f"{path!r} is absolute; paths are relative to the workspace")
    for seg in path.split("/"):
        if seg in ("", ".", ".."):
            raise InvalidArgument(
                field, f"{path!r} has an empty, '.' or '..' segment (escapes or is ambiguous)"
            )
        if len(seg.encode()) > 255:
            raise InvalidArgument(field, f"{path!r} has a segment over 255 bytes")
    return path


def check_files(field: str, files: list[FileSpec], caps: FileCaps, *, already: int = 0) -> None:
    if len(files) > caps.max_files:
        raise InvalidArgument(field, f"has {len(files)} files, at most {caps.max_files} are allowed")
    seen: set[str] = set()
    dirs: set[str] = set()
    total = already
    for i, f in enumerate(files):
        check_path(f"{field}[{i}].path", f.path)
        if f.path in seen:
            raise InvalidArgument(f"{field}[{i}].path", f"{f.path!r} appears twice")
        seen.add(f.path)
        parts = f.path.split("/")
        dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
        if len(f.data) > caps.max_file_bytes:
            raise InvalidArgument(
                f"{field}[{i}]", f"{f.path!r} is {len(f.data)} bytes, the limit is {caps.max_file_bytes}"
            )
        total += len(f.data)
    if total > caps.max_request_bytes:
        raise InvalidArgument(field, f"files total {total} bytes, the limit is {caps.max_request_bytes}")
    clash = seen & dirs
    if clash:
        raise InvalidArgument(field, f"{sorted(clash)[0]!r} is both a file and a directory")


def check_env(field: str, env: dict[str, str]) -> None:
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise InvalidArgument(f"{field}[{name!r}]", "is not a valid environment variable name")
        if "\x00" in value:
            raise InvalidArgument(f"{field}[{name!r}]", "value contains a NUL byte")


# --- archives ------------------------------------------------------------------------------------
#
# An archive is read as a stream and every limit is checked before the bytes it covers are read:
# a member's declared size against ``max_file_bytes`` and the running total against
# ``max_request_bytes`` before its data, the real bytes while reading them (a zip member may lie
# about its size), the number of entries (folders included) as they come, and the bytes the
# decompressor has produced against a total budget and a ratio. So a small archive of zeros that
# claims (or holds) gigabytes costs a few MiB of memory and well under a second of CPU before the
# INVALID_ARGUMENT.

ENTRIES_PER_FILE = 2  # entries of any kind (folders too) an archive may hold, per allowed file
TAR_OVERHEAD_PER_ENTRY = 4096  # header, long-name and padding blocks of one tar entry, at most
ZIP_CENTRAL_ENTRY_BYTES = 46  # the fixed part of a zip central-directory record
MAX_COMPRESSION_RATIO = 200  # decompressed : compressed bytes …
RATIO_FREE_BYTES = 16 * 1024 * 1024  # … checked once this much has come out
READ_CHUNK = 64 * 1024


def max_archive_entries(caps: FileCaps) -> int:
    return ENTRIES_PER_FILE * caps.max_files


def max_archive_bytes(caps: FileCaps) -> int:
    """Largest archive object worth reading: all the files a request may hold plus tar's overhead."""
    return caps.max_request_bytes + max_archive_entries(caps) * TAR_OVERHEAD_PER_ENTRY + 64 * 1024


class _Meter:
    """A decompressed stream that counts what it hands out and refuses to go past the budget."""

    def __init__(self, raw: io.BufferedIOBase, field: str, compressed: int, budget: int) -> None:
        self.raw = raw
        self.field = field
        self.compressed = compressed
        self.budget = budget
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        room = self.budget - self.count + 1  # one byte more than allowed tells "too much" apart
        data = self.raw.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self.budget:
            raise InvalidArgument(
                self.field,
                f"the archive expands to more than {self.budget} bytes, more than a request's files "
                "may hold (max_request_bytes plus tar headers)",
            )
        if self.count > RATIO_FREE_BYTES and self.count > MAX_COMPRESSION_RATIO * self.compressed:
            raise InvalidArgument(
                self.field,
                f"the archive ({self.compressed} bytes) expands more than {MAX_COMPRESSION_RATIO}-fold "
                f"(already {self.count} bytes): refused as a compression bomb",
            )
        return data


def _decompressed(blob: bytes) -> io.BufferedIOBase:
    """The archive's bytes, decompressed as a stream when they start with a gzip, bzip2 or xz header."""
    raw = io.BytesIO(blob)
    if blob.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if blob.startswith(b"BZh"):
        return bz2.BZ2File(raw, mode="rb")
    if blob.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


class _Totals:
    """Running counts of one extraction, checked against the caps as they grow."""

    def __init__(self, field: str, caps: FileCaps) -> None:
        self.field = field
        self.caps = caps
        self.entries = 0
        self.files = 0
        self.bytes = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > max_archive_entries(self.caps):
            raise InvalidArgument(
                self.field,
                f"the archive has more than {max_archive_entries(self.caps)} entries (files and folders); "
                f"at most {self.caps.max_files} files are allowed",
            )

    def file(self, name: str, declared: int) -> None:
        """Before a member's data is read: its declared size and the totals it would reach."""
        self.files += 1
        if self.files > self.caps.max_files:
            raise InvalidArgument(
                self.field, f"the archive has more than {self.caps.max_files} files (max_files)"
            )
        if declared > self.caps.max_file_bytes:
            raise InvalidArgument(
                self.field,
                f"archive member {shown(name)} is {declared} bytes, over the limit of "
                f"{self.caps.max_file_bytes} bytes per file (max_file_bytes)",
            )
        self._total(name, self.bytes + declared)

    def _total(self, name: str, total: int) -> None:
        if total > self.caps.max_request_bytes:
            raise InvalidArgument(
                self.field,
                f"the archive's files pass the limit of {self.caps.max_request_bytes} bytes in all "
                f"(max_request_bytes) at member {shown(name)}",
            )

    def read(self, name: str, stream: IO[bytes], declared: int) -> bytes:
        """A member's data in chunks, counting the real bytes against its declared size and the caps."""
        parts: list[bytes] = []
        size = 0
        while chunk := stream.read(READ_CHUNK):
            size += len(chunk)
            if size > declared:
                raise InvalidArgument(
                    self.field, f"archive member {shown(name)} holds more than its declared {declared} bytes"
                )
            self._total(name, self.bytes + size)
            parts.append(chunk)
        self.bytes += size
        return b"".join(parts)


def _member_path(field: str, name: str) -> str:
    return check_path(f"{field} member", name.removeprefix("./"))


def _tar_files(field: str, blob: bytes, caps: FileCaps) -> list[FileSpec]:
    out: list[FileSpec] = []
    totals = _Totals(field, caps)
    budget = max_archive_bytes(caps)
    meter = _Meter(_decompressed(blob), field, len(blob), budget)
    # Stream mode ("r|"): members are read in order, nothing is seeked or read ahead.
    with tarfile.open(fileobj=meter, mode="r|") as tf:  # type: ignore[call-overload]
        for member in tf:
            totals.entry()
            if member.isdir():
                continue
            if not member.isreg():
                raise InvalidArgument(
                    field, f"archive member {shown(member.name)} is a link, device or other special file"
                )
            name = _member_path(field, member.name)
            totals.file(name, member.size)
            fh = tf.extractfile(member)
            data = totals.read(name, fh, member.size) if fh is not None else b""
            out.append(FileSpec(name, data, bool(member.mode & 0o111)))
    return out


_ZIP_EOCD = struct.Struct("<4s4H2LH")  # end of central directory: …, entries, cd size, cd offset, …
_S_IFMT, _S_IFREG, _S_IFDIR, _S_IFLNK = 0o170000, 0o100000, 0o040000, 0o120000


def _zip_directory_entries(blob: bytes) -> int:
    """An upper bound on the central-directory records ``zipfile`` would parse, read before it does.

    ``zipfile.ZipFile`` builds an object for every record of the central directory up front; an
    archive of a few MB can hold hundreds of thousands. The records sit just before the end record,
    each starting with ``PK\\1\\2``; counting those signatures there (C speed) bounds the count.
    """
    end = blob.rfind(b"PK\x05\x06", max(0, len(blob) - _ZIP_EOCD.size - 65535))
    if end < 0 or end + _ZIP_EOCD.size > len(blob):
        return 0  # not a zip: zipfile says so
    cd_size = _ZIP_EOCD.unpack_from(blob, end)[6]
    # Zip64 (cd size 0xFFFFFFFF) keeps the real size elsewhere: count over everything before the end.
    start = 0 if cd_size == 0xFFFFFFFF else max(0, end - cd_size - 76)
    return blob.count(b"PK\x01\x02", start, end)


def _zip_files(field: str, blob: bytes, caps: FileCaps) -> list[FileSpec]:
    records = _zip_directory_entries(blob)
    if records > max_archive_entries(caps):
        raise InvalidArgument(
            field,
            f"the archive has more than {max_archive_entries(caps)} entries (files and folders); "
            f"at most {caps.max_files} files are allowed",
        )
    out: list[FileSpec] = []
    totals = _Totals(field, caps)
    produced = 0
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        for info in zf.infolist():
            totals.entry()
            if info.is_dir():
                continue
            kind = (info.external_attr >> 16) & _S_IFMT
            if kind == _S_IFLNK:
                raise InvalidArgument(field, f"archive member {shown(info.filename)} is a symlink")
            if kind not in (0, _S_IFREG, _S_IFDIR):
                raise InvalidArgument(
                    field, f"archive member {shown(info.filename)} is a device, fifo or other special file"
                )
            name = _member_path(field, info.filename)
            totals.file(name, info.file_size)
            with zf.open(info) as fh:
                data = totals.read(name, fh, info.file_size)
            produced += len(data)
            if produced > RATIO_FREE_BYTES and produced > MAX_COMPRESSION_RATIO * len(blob):
                raise InvalidArgument(
                    field,
                    f"the archive ({len(blob)} bytes) expands more than {MAX_COMPRESSION_RATIO}-fold "
                    f"(already {produced} bytes at member {shown(name)}): refused as a compression bomb",
                )
            out.append(FileSpec(name, data, bool((info.external_attr >> 16) & 0o111)))
    return out


# What the archive libraries raise on a malformed or unsupported archive (RuntimeError: an
# encrypted zip member; NotImplementedError: an unknown zip compression method).
_UNREADABLE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    struct.error,
)


def extract_archive(field: str, key: str, blob: bytes, caps: FileCaps) -> list[FileSpec]:
    """Regular files of a .tar/.tar.gz/.tgz/.zip archive; links, devices and escaping paths are refused.

    CPU-bound (decompression): the service calls it in a worker thread.
    """
    if len(blob) > max_archive_bytes(caps):
        raise InvalidArgument(
            field,
            f"{shown(key)} is {len(blob)} bytes, larger than any archive a request may use "
            f"({max_archive_bytes(caps)} bytes)",
        )
    lowered = key.lower()
    try:
        if lowered.endswith(".zip"):
            return _zip_files(field, blob, caps)
        if lowered.endswith((".tar", ".tar.gz", ".tgz")):
            return _tar_files(field, blob, caps)
    except _UNREADABLE as err:
        raise InvalidArgument(field, f"{shown(key)} is not a readable archive: {err}") from err
    raise InvalidArgument(field, f"{shown(key)} is not a .tar, .tar.gz, .tgz or .zip archive")
