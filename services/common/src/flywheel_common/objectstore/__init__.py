"""One bucket for trajectories, datasets and adapters: a filesystem folder or any S3 endpoint.

    store = open_object_store(ObjectStoreSettings())   # FLYWHEEL_OBJECT_STORE_* variables
    store.ensure_ready()
    store.put("runs/r1/trajectory.jsonl", stream, content_type="application/jsonl")
    with store.open("runs/r1/trajectory.jsonl") as f:
        for line in f: ...

The API is synchronous; async code calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

from flywheel_common.objectstore.base import (
    MAX_KEY_BYTES,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidPageTokenError,
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailableError,
    validate_key,
)
from flywheel_common.objectstore.settings import ObjectStoreSettings

__all__ = [
    "MAX_KEY_BYTES",
    "FilesystemObjectStore",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidPageTokenError",
    "ObjectExistsError",
    "ObjectInfo",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreSettings",
    "ObjectStoreUnavailableError",
    "S3ObjectStore",
    "open_object_store",
    "validate_key",
]


def open_object_store(settings: ObjectStoreSettings | None = None) -> ObjectStore:
    """The store the settings describe (read from the environment if not given); not yet ensure_ready()."""
    settings = settings if settings is not None else ObjectStoreSettings()
    if settings.backend == "s3":
        from flywheel_common.objectstore.s3 import S3ObjectStore

        return S3ObjectStore.from_settings(settings)
    from flywheel_common.objectstore.fs import FilesystemObjectStore

    return FilesystemObjectStore(settings.root)


def __getattr__(name: str) -> object:
    # The backends load on first use, so a process on the fs backend never imports the S3 SDK.
    if name == "S3ObjectStore":
        from flywheel_common.objectstore.s3 import S3ObjectStore

        return S3ObjectStore
    if name == "FilesystemObjectStore":
        from flywheel_common.objectstore.fs import FilesystemObjectStore

        return FilesystemObjectStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
