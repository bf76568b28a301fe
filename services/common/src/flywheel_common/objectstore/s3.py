"""S3 backend on the minio SDK; works with any S3 endpoint (MinIO, AWS, Garage, moto).

Reads, stat, list, delete and bucket creation use the SDK's public API. Writes use the SDK's
request layer (``Minio._execute``: signing, region lookup, error parsing) with our own upload
loop, because ``Minio.put_object`` cannot send an ``If-None-Match`` header (it turns unknown
headers into user metadata) and uploads up to three parts in parallel, buffering them all. Our
loop uploads one part at a time from one reused buffer, so an upload holds ``part_size`` bytes
whatever the object's size.

No-overwrite puts are S3 conditional writes: ``If-None-Match: *`` on PutObject, or on
CompleteMultipartUpload for multipart uploads, and the server's 412 PreconditionFailed becomes
:class:`ObjectExistsError`. AWS, MinIO and moto (5.2.5, checked by the contract tests) honour it.
Before uploading we also HEAD the key, so a doomed upload fails before any byte is sent; on a
server that ignores the header, that HEAD is the only check and two concurrent creators can both
succeed (the later one wins).
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import io
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, BinaryIO
from urllib.parse import quote, unquote

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, MinioException, S3Error, ServerError
from urllib3 import BaseHTTPResponse

from flywheel_common.objectstore.base import (
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    iter_parts,
    normalize_metadata,
    validate_content_type,
    validate_key,
    validate_prefix,
)
from flywheel_common.objectstore.settings import MAX_PART_SIZE, MIB, MIN_PART_SIZE, ObjectStoreSettings

_META_PREFIX = "x-amz-meta-"
_MAX_PARTS = 10_000
_READ_BUFFER = 256 * 1024
# Metadata values travel as HTTP header values: everything but printable ASCII is %-encoded (and
# '%' and ' ' themselves, so that decoding is exact and edge spaces survive header trimming).
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


def _encode_value(value: str) -> str:
    return quote(value, safe=_HEADER_SAFE)


def _http_client() -> urllib3.PoolManager:
    """Like the SDK's default client, but a dead endpoint fails in about a second, not ten."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=4,
            connect=3,
            read=2,
            status=2,
            backoff_factor=0.2,
            status_forcelist=[500, 502, 503, 504],
            raise_on_status=False,  # hand the last error response to the SDK, which parses it
        ),
    )


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _xml_text(body: bytes, tag: str) -> str | None:
    for element in ET.fromstring(body).iter():
        if element.tag.rsplit("}", 1)[-1] == tag:
            return element.text
    return None


class _ResponseReader(io.RawIOBase):
    """A raw stream over an HTTP response body that reports network failures as ObjectStoreError."""

    def __init__(self, response: Any, store: S3ObjectStore, key: str) -> None:
        self._response = response
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._response.read(len(buffer), decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._store._translate(exc, self._key, "read") from exc
        size = len(data)
        buffer[:size] = data
        return size


class S3ObjectStore(ObjectStore):
    """Objects in one bucket of an S3 endpoint."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = False,
        region: str | None = None,
        part_size: int = 16 * MIB,
        http_client: urllib3.PoolManager | None = None,
    ) -> None:
        if not MIN_PART_SIZE <= part_size <= MAX_PART_SIZE:
            raise ValueError(
                f"part_size must be between {MIN_PART_SIZE} and {MAX_PART_SIZE} bytes, got {part_size}"
            )
        self.endpoint = endpoint
        self.bucket = bucket
        self.part_size = part_size
        self._url = ("https://" if secure else "http://") + endpoint
        self._region = region
        self._http = http_client or _http_client()
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )

    @classmethod
    def from_settings(cls, settings: ObjectStoreSettings) -> S3ObjectStore:
        assert settings.endpoint and settings.access_key and settings.secret_key  # checked by the settings
        return cls(
            settings.endpoint,
            settings.access_key,
            settings.secret_key.get_secret_value(),
            settings.bucket,
            secure=settings.secure,
            region=settings.region,
            part_size=settings.part_size_bytes,
        )

    def __repr__(self) -> str:
        return f"S3ObjectStore(url={self._url!r}, bucket={self.bucket!r})"

    def close(self) -> None:
        self._http.clear()

    # ---------------------------------------------------------------------------------- errors

    def _translate(self, exc: BaseException, key: str | None, action: str) -> ObjectStoreError:
        where = f"bucket {self.bucket!r} at {self._url}"
        what = f"{action} {key!r}" if key else action
        if isinstance(exc, S3Error):
            code = exc.code or ""
            if code in ("NoSuchKey", "NotFound") and key:
                return ObjectNotFoundError(f"object {key!r} not found in {where}", key=key)
            if code == "NoSuchBucket":
                return ObjectStoreError(
                    f"cannot {what}: {where} does not exist; ensure_ready() creates it", key=key
                )
            if code in ("PreconditionFailed", "ConditionalRequestConflict") and key:
                return ObjectExistsError(
                    f"object {key!r} already exists in {where}; pass overwrite=True to replace it", key=key
                )
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return ObjectStoreError(
                    f"cannot {what}: {where} refused the credentials ({code}); check "
                    "FLYWHEEL_OBJECT_STORE_ACCESS_KEY and FLYWHEEL_OBJECT_STORE_SECRET_KEY",
                    key=key,
                )
            return ObjectStoreError(f"cannot {what} in {where}: {code}: {exc.message}", key=key)
        if isinstance(exc, InvalidResponseError | ServerError):
            status = getattr(exc, "_code", None) or getattr(exc, "status_code", None)
            if status == 412 and key:
                return ObjectExistsError(
                    f"object {key!r} already exists in {where}; pass overwrite=True to replace it", key=key
                )
            if status in (502, 503, 504):
                return ObjectStoreUnavailableError(f"cannot {what}: {where} is unavailable: {exc}", key=key)
            return ObjectStoreError(f"cannot {what} in {where}: {exc}", key=key)
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
            return ObjectStoreUnavailableError(
                f"cannot {what}: the S3 endpoint {self._url} cannot be reached: {exc}", key=key
            )
        return ObjectStoreError(f"cannot {what} in {where}: {exc}", key=key)

    @contextlib.contextmanager
    def _errors(self, key: str | None, action: str) -> Iterator[None]:
        try:
            yield
        except (MinioException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._translate(exc, key, action) from exc

    # ------------------------------------------------------------------------ raw S3 requests

    def _request(
        self,
        method: str,
        key: str,
        *,
        body: bytes | memoryview | None = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> BaseHTTPResponse:
        # The SDK signs the body and sends it as is; a memoryview part is never copied.
        return self._client._execute(
            method,
            self.bucket,
            key,
            # _execute (private) is annotated `bytes`, but it only hashes and sends the body.
            body=body,  # type: ignore[arg-type]  # a memoryview part must not be copied into bytes
            headers=dict(headers or {}),
            query_params=dict(query) if query is not None else None,
        )

    def _upload_part(self, key: str, upload_id: str, number: int, part: memoryview) -> str:
        response = self._request(
            "PUT", key, body=part, query={"partNumber": str(number), "uploadId": upload_id}
        )
        return response.headers.get("etag", "").strip('"')

    def _complete(
        self, key: str, upload_id: str, etags: list[str], headers: dict[str, str]
    ) -> BaseHTTPResponse:
        root = ET.Element("CompleteMultipartUpload")
        for number, etag in enumerate(etags, 1):
            part = ET.SubElement(root, "Part")
            ET.SubElement(part, "PartNumber").text = str(number)
            ET.SubElement(part, "ETag").text = f'"{etag}"'
        body = ET.tostring(root)
        headers = {
            **headers,
            "Content-Type": "application/xml",
            "Content-MD5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
        }
        response = self._request("POST", key, body=body, headers=headers, query={"uploadId": upload_id})
        # S3 may answer 200 and still report an error in the body.
        if response.data and ET.fromstring(response.data).tag.rsplit("}", 1)[-1] == "Error":
            raise S3Error(
                response,
                _xml_text(response.data, "Code"),
                _xml_text(response.data, "Message"),
                key,
                response.headers.get("x-amz-request-id"),
                response.headers.get("x-amz-id-2"),
                self.bucket,
                key,
            )
        return response

    # -------------------------------------------------------------------------------------- API

    def ensure_ready(self) -> None:
        with self._errors(None, "create the bucket"):
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket, location=self._region)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

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
        validate_key(key)
        metadata = normalize_metadata(key, metadata)
        content_type = validate_content_type(key, content_type)
        if not overwrite and self._head(key) is not None:
            raise ObjectExistsError(
                f"object {key!r} already exists in bucket {self.bucket!r} at {self._url}; "
                "pass overwrite=True to replace it",
                key=key,
            )
        headers = {"Content-Type": content_type}
        headers.update({_META_PREFIX + name: _encode_value(value) for name, value in metadata.items()})
        condition = {} if overwrite else {"If-None-Match": "*"}

        known = length
        if known is None and isinstance(data, bytes | bytearray | memoryview):
            known = memoryview(data).nbytes
        part_size = self.part_size
        if known is not None and known > part_size * _MAX_PARTS:
            part_size = math.ceil(known / _MAX_PARTS / MIB) * MIB

        digest = hashlib.sha256()
        size = 0
        upload_id: str | None = None
        etags: list[str] = []
        # Only the requests are translated by _errors: a failure reading ``data`` propagates as is.
        try:
            for number, part in enumerate(iter_parts(key, data, length, part_size), 1):
                digest.update(part)
                size += len(part)
                if number == 1 and (len(part) < part_size or (known is not None and known <= part_size)):
                    with self._errors(key, "write"):
                        response = self._request(
                            "PUT", key, body=part if len(part) else b"", headers={**headers, **condition}
                        )
                    break
                if number > _MAX_PARTS:
                    raise ObjectStoreError(
                        f"object {key!r} is larger than {_MAX_PARTS} parts of {part_size} bytes; "
                        "raise FLYWHEEL_OBJECT_STORE_PART_SIZE_BYTES or pass length",
                        key=key,
                    )
                with self._errors(key, "write"):
                    if upload_id is None:
                        created = self._request("POST", key, headers=headers, query={"uploads": ""})
                        upload_id = _xml_text(created.data, "UploadId")
                        if not upload_id:
                            raise ObjectStoreError(f"{self._url} returned no UploadId for {key!r}", key=key)
                    etags.append(self._upload_part(key, upload_id, number, part))
            else:
                with self._errors(key, "write"):
                    response = self._complete(key, upload_id or "", etags, condition)
                upload_id = None
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    self._request("DELETE", key, query={"uploadId": upload_id})
            raise
        etag = response.headers.get("etag") or (response.data and _xml_text(response.data, "ETag")) or None
        date = response.headers.get("date")
        return ObjectInfo(
            key=key,
            size=size,
            last_modified=_utc(email.utils.parsedate_to_datetime(date) if date else None),
            etag=etag.strip('"') if etag else None,
            sha256=digest.hexdigest(),
            content_type=content_type,
            metadata=metadata,
        )

    def _head(self, key: str) -> Any:
        try:
            with self._errors(key, "stat"):
                return self._client.stat_object(self.bucket, key)
        except ObjectNotFoundError:
            return None

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        obj = self._head(key)
        if obj is None:
            raise ObjectNotFoundError(
                f"object {key!r} not found in bucket {self.bucket!r} at {self._url}", key=key
            )
        metadata = {
            name.lower()[len(_META_PREFIX) :]: unquote(value)
            for name, value in (obj.metadata or {}).items()
            if name.lower().startswith(_META_PREFIX)
        }
        return ObjectInfo(
            key=key,
            size=obj.size or 0,
            last_modified=_utc(obj.last_modified),
            etag=obj.etag or None,
            content_type=obj.content_type,
            metadata=metadata,
        )

    def exists(self, key: str) -> bool:
        validate_key(key)
        return self._head(key) is not None

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[io.BufferedIOBase]:
        validate_key(key)
        with self._errors(key, "read"):
            response = self._client.get_object(self.bucket, key)
        try:
            yield io.BufferedReader(_ResponseReader(response, self, key), buffer_size=_READ_BUFFER)
        finally:
            response.close()
            response.release_conn()

    def get_bytes(self, key: str) -> bytes:
        validate_key(key)
        with self._errors(key, "read"):
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read(decode_content=False)
            finally:
                response.close()
                response.release_conn()

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._errors(key, "delete"):
            self._client.remove_object(self.bucket, key)

    def list(
        self, prefix: str = "", *, start_after: str = "", limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        if limit is not None and limit <= 0:
            return
        served = 0
        with self._errors(None, f"list {prefix!r}" if prefix else "list"):
            objects = self._client.list_objects(
                self.bucket, prefix=prefix or None, recursive=True, start_after=start_after or None
            )
            for obj in objects:
                yield ObjectInfo(
                    key=obj.object_name or "",
                    size=obj.size or 0,
                    last_modified=_utc(obj.last_modified),
                    etag=(obj.etag or "").strip('"') or None,
                )
                served += 1
                if limit is not None and served >= limit:
                    return
