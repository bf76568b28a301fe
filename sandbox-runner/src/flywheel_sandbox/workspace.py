"""Checks on what a request puts in the workspace: paths, sizes, counts, archives.

Every problem raises :class:`flywheel_common.errors.InvalidArgument` naming the request field.
"""

from __future__ import annotations

import io
import re
import tarfile
import zipfile
from dataclasses import dataclass

from flywheel_common.errors import InvalidArgument
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
        raise InvalidArgument(field, f"{path!r} contains a NUL or a backslash")
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


def extract_archive(field: str, key: str, blob: bytes, caps: FileCaps) -> list[FileSpec]:
    """Regular files of a .tar/.tar.gz/.tgz/.zip archive; links, devices and escaping paths are refused."""
    out: list[FileSpec] = []
    lowered = key.lower()
    try:
        if lowered.endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise InvalidArgument(field, f"archive member {info.filename!r} is a symlink")
                    name = check_path(f"{field} member", info.filename.removeprefix("./"))
                    if info.file_size > caps.max_file_bytes:
                        raise InvalidArgument(
                            field, f"archive member {name!r} is {info.file_size} bytes, over the limit"
                        )
                    out.append(FileSpec(name, zf.read(info), bool((info.external_attr >> 16) & 0o111)))
                    if len(out) > caps.max_files:
                        raise InvalidArgument(field, f"archive has more than {caps.max_files} files")
        elif lowered.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
                for member in tf:
                    if member.isdir():
                        continue
                    if not member.isreg():
                        raise InvalidArgument(
                            field, f"archive member {member.name!r} is a link or special file"
                        )
                    name = check_path(f"{field} member", member.name.removeprefix("./"))
                    if member.size > caps.max_file_bytes:
                        raise InvalidArgument(
                            field, f"archive member {name!r} is {member.size} bytes, over the limit"
                        )
                    fh = tf.extractfile(member)
                    out.append(FileSpec(name, fh.read() if fh else b"", bool(member.mode & 0o111)))
                    if len(out) > caps.max_files:
                        raise InvalidArgument(field, f"archive has more than {caps.max_files} files")
        else:
            raise InvalidArgument(field, f"{key!r} is not a .tar, .tar.gz, .tgz or .zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise InvalidArgument(field, f"{key!r} is not a readable archive: {err}") from err
    return out
