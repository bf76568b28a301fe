"""The object-store contract shared by every backend: errors, key rules, ObjectInfo, ObjectStore.

The API is synchronous on purpose: the backends do blocking file or HTTP I/O, and async services
call them through ``asyncio.to_thread``. Every backend passes the same contract test suite
(``services/common/tests/test_objectstore.py``).
"""

from __future__ import annotations

import abc
import base64
import binascii
import builtins
import contextlib
import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

import grpc

from flywheel_common.errors import register_error

#: Longest key, in UTF-8 bytes (the S3 limit).
MAX_KEY_BYTES = 1024
#: Largest total of user metadata (keys plus values, UTF-8 bytes): the S3 limit for user metadata.
MAX_METADATA_BYTES = 2048
#: Largest page ``list_page`` serves.
MAX_PAGE_SIZE = 10_000

_METADATA_KEY_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_DRIVE_RE = re.compile(r"[A-Za-z]:")


# --------------------------------------------------------------------------------------------- errors


class ObjectStoreError(Exception):
    """Base of every object-store error. ``key`` is the object key concerned, if any."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.key = key


class InvalidKeyError(ObjectStoreError, ValueError):
    """The key breaks the key rules (see :func:`validate_key`); the message says which one."""


class InvalidMetadataError(ObjectStoreError, ValueError):
    """A metadata key or value, or the content type, cannot be stored."""


class InvalidPageTokenError(ObjectStoreError, ValueError):
    """A ``list_page`` token that this store did not hand out."""


class ObjectNotFoundError(ObjectStoreError, LookupError):
    """No object has this key."""


class ObjectExistsError(ObjectStoreError):
    """``put`` without ``overwrite=True`` onto a key that already holds an object."""


class ObjectStoreUnavailableError(ObjectStoreError):
    """The store cannot be reached (connection refused, timeout, DNS); the message names the endpoint."""


register_error(ObjectStoreUnavailableError, grpc.StatusCode.UNAVAILABLE)
register_error(ObjectExistsError, grpc.StatusCode.ALREADY_EXISTS)
register_error(ObjectNotFoundError, grpc.StatusCode.NOT_FOUND)
register_error(InvalidPageTokenError, grpc.StatusCode.INVALID_ARGUMENT)
register_error(InvalidMetadataError, grpc.StatusCode.INVALID_ARGUMENT)
register_error(InvalidKeyError, grpc.StatusCode.INVALID_ARGUMENT)


# ------------------------------------------------------------------------------------------ key rules


def _shown(key: str) -> str:
    """The key for an error message: repr'd, and cut short if it is very long."""
    if len(key) > 80:
        return repr(key[:60]) + f"… ({len(key)} characters)"
    return repr(key)


def _bad_key(key: str, reason: str) -> InvalidKeyError:
    return InvalidKeyError(f"invalid object key {_shown(key)}: {reason}", key=key)


def validate_key(key: str) -> str:
    """Return ``key`` if every backend can store it; else raise :class:`InvalidKeyError`.

    A key is a relative, '/'-separated path such as ``runs/r1/trajectory.jsonl``: no leading or
    trailing '/', no empty, '.' or '..' segments, no backslashes, no control characters, at most
    1024 bytes of UTF-8.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"invalid object key {key!r}: must be a str, not {type(key).__name__}")
    if not key:
        raise _bad_key(key, "the key is empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise _bad_key(key, "the key is not valid Unicode (it contains a lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise _bad_key(key, f"the key is {size} bytes long in UTF-8; the limit is {MAX_KEY_BYTES} bytes")
    for pos, char in enumerate(key):
        code = ord(char)
        if code < 0x20 or 0x7F <= code <= 0x9F:
            what = "a NUL character" if code == 0 else "a control character"
            raise _bad_key(key, f"the key contains {what} (U+{code:04X}) at position {pos}")
    if "\\" in key:
        raise _bad_key(key, "the key contains a backslash; separate segments with '/'")
    if key.startswith("/"):
        raise _bad_key(key, "the key starts with '/'; keys are relative paths such as 'runs/r1/data.bin'")
    segments = key.split("/")
    if _DRIVE_RE.fullmatch(segments[0]):
        raise _bad_key(key, "the key starts with a drive letter; keys are relative paths, not absolute ones")
    if key.endswith("/"):
        raise _bad_key(key, "the key ends with '/'; a key names an object, not a folder")
    if "" in segments:
        raise _bad_key(key, "the key contains an empty segment ('//')")
    if ".." in segments:
        raise _bad_key(key, "the key contains a '..' segment")
    if "." in segments:
        raise _bad_key(key, "the key contains a '.' segment")
    return key


def validate_prefix(prefix: str) -> str:
    """A list prefix: any start of a valid key (it may end with '/'), or ''."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"invalid list prefix {prefix!r}: must be a str, not {type(prefix).__name__}")
    if prefix:
        # A prefix is checked as the key it would be with a final segment appended.
        probe = prefix + "x" if prefix.endswith("/") else prefix
        try:
            validate_key(probe)
        except InvalidKeyError as exc:
            reason = exc.message.split(": ", 1)[1].replace("the key", "the prefix")
            raise InvalidKeyError(f"invalid list prefix {_shown(prefix)}: {reason}", key=prefix) from None
    return prefix


def normalize_metadata(key: str, metadata: dict[str, str] | None) -> dict[str, str]:
    """User metadata as stored: keys lower-cased (S3 metadata keys are case-insensitive).

    Keys are letters, digits, '-' and '_' (starting with a letter or digit); values are any text.
    Keys plus values may take at most 2 KiB of UTF-8, the S3 limit.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidMetadataError(
            f"metadata for {_shown(key)} must be a dict of str to str, not {type(metadata).__name__}", key=key
        )
    result: dict[str, str] = {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidMetadataError(
                f"metadata for {_shown(key)}: keys and values must be str, got {name!r}: {value!r}", key=key
            )
        lowered = name.lower()
        if not _METADATA_KEY_RE.fullmatch(lowered):
            raise InvalidMetadataError(
                f"metadata key {name!r} for {_shown(key)} is not allowed: use letters, digits, '-' and '_', "
                "starting with a letter or digit",
                key=key,
            )
        if lowered in result:
            raise InvalidMetadataError(
                f"metadata for {_shown(key)} has {name!r} twice (metadata keys are case-insensitive)", key=key
            )
        try:
            total += len(lowered) + len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidMetadataError(
                f"metadata value of {name!r} for {_shown(key)} is not valid Unicode", key=key
            ) from None
        result[lowered] = value
    if total > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"metadata for {_shown(key)} takes {total} bytes; the limit is {MAX_METADATA_BYTES}", key=key
        )
    return result


def validate_content_type(key: str, content_type: str) -> str:
    """A content type must be non-empty printable ASCII (it travels as an HTTP header)."""
    if (
        not isinstance(content_type, str)
        or not content_type
        or not content_type.isascii()
        or not content_type.isprintable()
    ):
        raise InvalidMetadataError(
            f"content type {content_type!r} for {_shown(key)} is not allowed: it must be non-empty printable "
            "ASCII, e.g. 'application/json'",
            key=key,
        )
    return content_type


# ------------------------------------------------------------------------------------------- ObjectInfo


@dataclass(frozen=True)
class ObjectInfo:
    """What the store knows about one object.

    ``list()`` fills key, size, last_modified and (S3) etag only; ``stat()`` and ``put()`` also fill
    content_type and metadata. ``sha256`` (hex) is set where it costs nothing: by ``put`` on every
    backend, by ``stat`` on the filesystem backend. ``last_modified`` is timezone-aware UTC.
    """

    key: str
    size: int
    last_modified: datetime
    etag: str | None = None
    sha256: str | None = None
    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ page tokens


def encode_page_token(last_key: str) -> str:
    """An opaque page token: the last key served, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(last_key.encode("utf-8")).decode("ascii").rstrip("=")


def decode_page_token(token: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return validate_key(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        raise InvalidPageTokenError(f"page token {token!r} was not issued by this object store") from None


# ------------------------------------------------------------------------------------- reading input


def _read_into(stream: BinaryIO, view: memoryview) -> int:
    """Fill ``view`` from ``stream`` until it is full or the stream ends; return the bytes read."""
    readinto = getattr(stream, "readinto", None)
    filled = 0
    while filled < len(view):
        if readinto is not None:
            got = readinto(view[filled:])
        else:
            chunk = stream.read(len(view) - filled)
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"data.read() must return bytes, not {type(chunk).__name__}")
            got = len(chunk)
            view[filled : filled + got] = chunk
        if got is None:
            raise ObjectStoreError("data is a non-blocking stream with no data ready; pass a blocking stream")
        if got == 0:
            break
        filled += got
    return filled


def iter_parts(key: str, data: bytes | BinaryIO, length: int | None, part_size: int) -> Iterator[memoryview]:
    """Split the input of ``put`` into parts of ``part_size`` bytes (the last one may be shorter).

    Bytes-like input is sliced without copying. A stream is read into ONE reused buffer, so memory
    stays at ``part_size`` whatever the object's size; each part must be consumed before the next
    is requested. With ``length`` given, exactly that many bytes are read and a shorter stream is
    an error. Always yields at least one (possibly empty) part.
    """
    if isinstance(data, str):
        raise TypeError("data must be bytes or a binary file-like object, not str")
    if length is not None and length < 0:
        raise ValueError(f"length must be >= 0 or None, got {length}")
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data).cast("B")
        if length is not None and length != len(view):
            raise ValueError(f"length={length} but data has {len(view)} bytes (key {_shown(key)})")
        if not view:
            yield view
        for start in range(0, len(view), part_size):
            yield view[start : start + part_size]
        return
    if not callable(getattr(data, "read", None)):
        raise TypeError(f"data must be bytes or a binary file-like object, not {type(data).__name__}")
    buffer = memoryview(bytearray(part_size if length is None else min(part_size, length)))
    remaining = length
    first = True
    while True:
        want = len(buffer) if remaining is None else min(len(buffer), remaining)
        got = _read_into(data, buffer[:want]) if want else 0
        if remaining is not None and got < want:
            # Checked before the part is handed out, so no backend publishes a short object.
            raise ObjectStoreError(
                f"the data stream for {_shown(key)} ended {remaining - got} bytes short of length={length}",
                key=key,
            )
        if got or first:
            yield buffer[:got]
        first = False
        if remaining is not None:
            remaining -= got
            if remaining == 0:
                return
        elif got < want:
            return


# --------------------------------------------------------------------------------------------- store


class ObjectStore(abc.ABC):
    """A flat namespace of immutable-unless-overwritten objects addressed by '/'-separated keys."""

    @abc.abstractmethod
    def ensure_ready(self) -> None:
        """Create the bucket (S3) or the root folder (filesystem) if missing. Safe to call again."""

    @abc.abstractmethod
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
        """Store ``data`` under ``key`` and return its info; readers see the old or the new object whole.

        ``data`` is bytes or a binary stream; a stream is read in parts and never held in memory
        whole. ``length``, if given, is the exact number of bytes to read. Without
        ``overwrite=True`` an existing key raises :class:`ObjectExistsError` and is left intact.
        """

    @abc.abstractmethod
    def open(self, key: str) -> contextlib.AbstractContextManager[io.BufferedIOBase]:
        """A context manager yielding a readable binary stream of the object (constant memory)."""

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """The object's info; :class:`ObjectNotFoundError` if there is none."""

    @abc.abstractmethod
    def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix`` and sorts after ``start_after``, recursively.

        Keys come in lexicographic order of their UTF-8 bytes (the S3 order). Entries carry key,
        size, last_modified (and etag on S3); call :meth:`stat` for content type and metadata.
        """

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object. Deleting a missing key is not an error (as in S3)."""

    def get_bytes(self, key: str) -> bytes:
        """The whole object in memory; use :meth:`open` for large ones."""
        with self.open(key) as stream:
            return stream.read()

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFoundError:
            return False
        return True

    def list_page(
        self, prefix: str = "", page_size: int = 1000, page_token: str | None = None, *, start_after: str = ""
    ) -> tuple[builtins.list[ObjectInfo], str | None]:
        """One page of :meth:`list` and the token of the next page (None after the last page).

        ``page_token`` comes from the previous call; when given it overrides ``start_after``.
        """
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
        after = decode_page_token(page_token) if page_token else start_after
        # One extra entry tells whether another page follows, so the last page has no token.
        items = list(
            itertools.islice(self.list(prefix, start_after=after, limit=page_size + 1), page_size + 1)
        )
        if len(items) > page_size:
            return items[:page_size], encode_page_token(items[page_size - 1].key)
        return items, None

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections or other resources; the store must not be used afterwards."""

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
