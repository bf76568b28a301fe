"""Contract tests of the object store: one suite, run on the filesystem backend and on S3 (moto).

The S3 half talks HTTP to a real moto server started as a subprocess by the ``s3_endpoint``
fixture (flywheel_testing.s3), through the minio SDK, exactly as in production.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from flywheel_common.objectstore import (
    InvalidKeyError,
    InvalidMetadataError,
    InvalidPageTokenError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreSettings,
    ObjectStoreUnavailableError,
    open_object_store,
)
from flywheel_common.objectstore.fs import INTERNAL_DIR, FilesystemObjectStore
from flywheel_common.objectstore.s3 import S3ObjectStore
from flywheel_testing.s3 import S3Endpoint

MIB = 1024 * 1024


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "fs":
        fs = FilesystemObjectStore(tmp_path / "objects")
        fs.ensure_ready()
        return fs
    return request.getfixturevalue("s3_store")


@pytest.fixture
def fs_store(tmp_path: Path) -> FilesystemObjectStore:
    fs = FilesystemObjectStore(tmp_path / "objects")
    fs.ensure_ready()
    return fs


class GeneratedStream(io.RawIOBase):
    """A file-like stream of ``size`` pseudo-random bytes made on the fly; hashes what it hands out."""

    def __init__(self, size: int, chunk: int = MIB, fail_after: int | None = None) -> None:
        self._left = size
        self._chunk = chunk
        self._pending = memoryview(b"")
        self._fail_after = fail_after
        self.served = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    # io hands readinto() a memoryview; the base class declares any writable buffer.
    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # narrower, as io calls it
        if self._fail_after is not None and self.served >= self._fail_after:
            raise OSError("simulated crash of the producer")
        if not self._pending and self._left:
            block = os.urandom(min(self._chunk, self._left))
            self._left -= len(block)
            self.sha256.update(block)
            self._pending = memoryview(block)
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.served += size
        return size


def _now_ok(moment: datetime) -> bool:
    return moment.tzinfo is not None and abs(datetime.now(UTC) - moment) < timedelta(minutes=5)


# ------------------------------------------------------------------------------------ round trip


def test_put_get_stat_round_trip(store: ObjectStore) -> None:
    key = "runs/r 1/trajectory+ü.jsonl"
    data = b'{"step": 1}\n{"step": 2}\n'
    metadata = {"Run-Id": "r1", "note": "héllo wörld %41 "}

    info = store.put(key, data, content_type="application/jsonl", metadata=metadata)

    assert info.key == key
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.content_type == "application/jsonl"
    assert info.metadata == {"run-id": "r1", "note": "héllo wörld %41 "}
    assert _now_ok(info.last_modified)

    assert store.get_bytes(key) == data
    with store.open(key) as stream:
        assert stream.read(5) == data[:5]
        assert stream.read() == data[5:]
    stat = store.stat(key)
    assert (stat.key, stat.size, stat.content_type) == (key, len(data), "application/jsonl")
    assert stat.metadata == {"run-id": "r1", "note": "héllo wörld %41 "}
    assert _now_ok(stat.last_modified) and stat.last_modified.utcoffset() == timedelta(0)
    assert store.exists(key)
    assert not store.exists("runs/r 1/other")


def test_missing_objects_are_not_found(store: ObjectStore) -> None:
    store.put("present/a", b"x")
    for key in ("absent", "present/b", "present/a/deeper", "present"):
        for call in (store.stat, store.get_bytes):
            with pytest.raises(ObjectNotFoundError, match="not found") as err:
                call(key)
            assert repr(key) in str(err.value) and err.value.key == key
        with pytest.raises(ObjectNotFoundError), store.open(key):
            pass
        assert store.exists(key) is False


def test_put_from_streams_and_empty_objects(store: ObjectStore) -> None:
    body = os.urandom(300_000)
    assert store.put("s/unknown-length", io.BytesIO(body)).size == len(body)
    assert store.get_bytes("s/unknown-length") == body
    # With length: exactly that many bytes are read, the rest of the stream is left alone.
    source = io.BytesIO(body)
    assert store.put("s/prefix", source, length=1000).size == 1000
    assert store.get_bytes("s/prefix") == body[:1000]
    assert source.tell() == 1000
    # A stream shorter than the announced length is an error and leaves nothing behind.
    with pytest.raises(ObjectStoreError, match="short of length"):
        store.put("s/short", io.BytesIO(b"abc"), length=10)
    assert not store.exists("s/short")

    for key, data in (("e/bytes", b""), ("e/stream", io.BytesIO(b"")), ("e/length0", io.BytesIO(b"zz"))):
        info = store.put(key, data, length=0 if key == "e/length0" else None)
        assert info.size == 0
        assert info.sha256 == hashlib.sha256(b"").hexdigest()
        assert store.get_bytes(key) == b""
        assert store.stat(key).size == 0

    with pytest.raises(TypeError, match="not str"):
        store.put("s/text", "text is not bytes")  # type: ignore[arg-type]  # the wrong type is the test


def test_bytes_larger_than_a_part(store: ObjectStore) -> None:
    data = os.urandom(11 * MIB + 123)  # three parts at the S3 test part size of 5 MiB
    info = store.put("big/bytes", data, metadata={"kind": "multipart"}, content_type="application/x-tar")
    assert info.size == len(data)
    assert store.get_bytes("big/bytes") == data
    stat = store.stat("big/bytes")
    assert (stat.size, stat.content_type, stat.metadata) == (
        len(data),
        "application/x-tar",
        {"kind": "multipart"},
    )


# ----------------------------------------------------------------------------------------- listing

LIST_KEYS = ["a-b", "a/b/c", "a/b0", "a.txt", "a0", "B", "b/x", "ü/1", "z"]


def _utf8_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


def _fill(store: ObjectStore, keys: list[str]) -> None:
    for index, key in enumerate(keys):
        store.put(key, b"x" * (index + 1))


def test_list_in_key_order_with_prefixes(store: ObjectStore) -> None:
    _fill(store, LIST_KEYS)
    expected = _utf8_sorted(LIST_KEYS)
    assert expected == ["B", "a-b", "a.txt", "a/b/c", "a/b0", "a0", "b/x", "z", "ü/1"]

    listed = list(store.list())
    assert [info.key for info in listed] == expected
    sizes = {info.key: info.size for info in listed}
    assert sizes == {key: index + 1 for index, key in enumerate(LIST_KEYS)}
    assert all(_now_ok(info.last_modified) for info in listed)

    def keys(prefix: str = "", *, start_after: str = "", limit: int | None = None) -> list[str]:
        return [info.key for info in store.list(prefix, start_after=start_after, limit=limit)]

    assert keys("a/") == ["a/b/c", "a/b0"]
    assert keys("a/b") == ["a/b/c", "a/b0"]
    assert keys("a/b/") == ["a/b/c"]
    assert keys("a") == ["a-b", "a.txt", "a/b/c", "a/b0", "a0"]
    assert keys("ü") == ["ü/1"]
    assert keys("nothing") == []
    assert keys(start_after="a.txt") == ["a/b/c", "a/b0", "a0", "b/x", "z", "ü/1"]
    assert keys(start_after="a/b") == ["a/b/c", "a/b0", "a0", "b/x", "z", "ü/1"]
    assert keys(start_after="a/c") == ["a0", "b/x", "z", "ü/1"]
    assert keys("a/", start_after="a/b/c") == ["a/b0"]
    assert keys(limit=3) == expected[:3]
    assert keys("a", start_after="a-b", limit=2) == ["a.txt", "a/b/c"]
    with pytest.raises(InvalidKeyError, match="prefix"):
        list(store.list("/abs"))


def test_list_page_pagination(store: ObjectStore) -> None:
    keys = [f"p/{index:02d}" for index in range(7)] + ["q/0"]
    _fill(store, keys)

    pages: list[list[str]] = []
    token = None
    while True:
        items, token = store.list_page("p/", 3, token)
        pages.append([info.key for info in items])
        if token is None:
            break
        assert isinstance(token, str) and token
    assert pages == [["p/00", "p/01", "p/02"], ["p/03", "p/04", "p/05"], ["p/06"]]

    # A page that ends exactly at the last key has no next token.
    items, token = store.list_page("p/", 4, None, start_after="p/02")
    assert [info.key for info in items] == ["p/03", "p/04", "p/05", "p/06"] and token is None
    items, token = store.list_page("", 7)
    assert [info.key for info in items] == keys[:7] and token is not None
    items, token = store.list_page("", 7, token)
    assert [info.key for info in items] == ["q/0"] and token is None
    assert store.list_page("none/", 5) == ([], None)

    with pytest.raises(InvalidPageTokenError, match="page token"):
        store.list_page("p/", 3, "not a token!")
    with pytest.raises(ValueError, match="page_size"):
        store.list_page("p/", 0)


# ------------------------------------------------------------------------------- delete, overwrite


def test_delete_then_not_found(store: ObjectStore) -> None:
    store.put("d/e/f", b"gone soon", metadata={"a": "1"})
    store.put("d/keep", b"stays")
    store.delete("d/e/f")
    assert not store.exists("d/e/f")
    with pytest.raises(ObjectNotFoundError, match="d/e/f"):
        store.stat("d/e/f")
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes("d/e/f")
    assert [info.key for info in store.list()] == ["d/keep"]
    store.delete("d/e/f")  # deleting a missing key is not an error
    # The key can be used again, without the old metadata.
    store.put("d/e/f", b"back")
    assert store.get_bytes("d/e/f") == b"back" and store.stat("d/e/f").metadata == {}


def test_overwrite_refused_unless_asked(store: ObjectStore) -> None:
    store.put("o/key", b"original", metadata={"v": "1"}, content_type="text/plain")
    with pytest.raises(ObjectExistsError, match="overwrite=True") as err:
        store.put("o/key", b"replacement", metadata={"v": "2"})
    assert "'o/key'" in str(err.value) and err.value.key == "o/key"
    big = GeneratedStream(7 * MIB)
    with pytest.raises(ObjectExistsError):
        store.put("o/key", big)
    assert big.served == 0  # refused before reading the data
    assert store.get_bytes("o/key") == b"original"
    stat = store.stat("o/key")
    assert (stat.size, stat.metadata, stat.content_type) == (8, {"v": "1"}, "text/plain")

    info = store.put("o/key", b"replacement", metadata={"v": "2"}, overwrite=True)
    assert info.size == 11
    assert store.get_bytes("o/key") == b"replacement"
    stat = store.stat("o/key")
    assert (stat.size, stat.metadata, stat.content_type) == (11, {"v": "2"}, "application/octet-stream")
    store.put("o/new", b"overwrite=True also creates", overwrite=True)
    assert store.get_bytes("o/new") == b"overwrite=True also creates"


# --------------------------------------------------------------------------------------- bad keys

BAD_KEYS = [
    ("", "the key is empty"),
    ("/etc/passwd", "starts with '/'"),
    ("C:/windows", "drive letter"),
    ("a/../b", "'..' segment"),
    ("..", "'..' segment"),
    ("./a", "'.' segment"),
    ("a/./b", "'.' segment"),
    ("a//b", "empty segment"),
    ("a/b/", "ends with '/'"),
    ("a\\b", "backslash"),
    ("a\x00b", "NUL character (U+0000) at position 1"),
    ("a\nb", "control character (U+000A)"),
    ("tab\there", "control character (U+0009)"),
    ("del\x7f", "control character (U+007F)"),
    ("x" * 1025, "1025 bytes long in UTF-8; the limit is 1024"),
    ("é" * 513, "1026 bytes long in UTF-8"),
    ("bad\ud800", "lone surrogate"),
]


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS, ids=[f"bad{i}" for i in range(len(BAD_KEYS))])
def test_bad_keys_rejected(store: ObjectStore, key: str, reason: str) -> None:
    calls = {
        "put": lambda: store.put(key, b"data"),
        "get_bytes": lambda: store.get_bytes(key),
        "stat": lambda: store.stat(key),
        "exists": lambda: store.exists(key),
        "delete": lambda: store.delete(key),
        "open": lambda: store.open(key).__enter__(),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidKeyError) as err:
            call()
        message = str(err.value)
        assert message.startswith("invalid object key "), (name, message)
        assert reason in message, (name, message)
        assert isinstance(err.value, ValueError)
        if len(key) < 80:
            assert repr(key) in message
    assert list(store.list()) == []


def test_longest_key_and_bad_metadata(store: ObjectStore) -> None:
    key = "/".join(["k" * 200] * 5) + "/" + "z" * 19
    assert len(key.encode()) == 1024
    store.put(key, b"max")
    assert store.get_bytes(key) == b"max"
    assert [info.key for info in store.list()] == [key]

    with pytest.raises(InvalidMetadataError, match="metadata key 'has space'"):
        store.put("m", b"", metadata={"has space": "x"})
    with pytest.raises(InvalidMetadataError, match="twice"):
        store.put("m", b"", metadata={"A": "1", "a": "2"})
    with pytest.raises(InvalidMetadataError, match="limit is 2048"):
        store.put("m", b"", metadata={"big": "v" * 3000})
    with pytest.raises(InvalidMetadataError, match="content type"):
        store.put("m", b"", content_type="text/\nplain")
    assert not store.exists("m")


# ------------------------------------------------------------------------------------ large object


@pytest.mark.slow
def test_large_object_streams_in_constant_memory(store: ObjectStore) -> None:
    size = 64 * MIB + 12_345
    source = GeneratedStream(size)
    limit = 24 * MIB

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        info = store.put("large/blob.bin", source, content_type="application/octet-stream")
        put_peak = tracemalloc.get_traced_memory()[1]

        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        total = 0
        with store.open("large/blob.bin") as stream:
            while chunk := stream.read(MIB):
                digest.update(chunk)
                total += len(chunk)
        read_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert source.served == size
    assert info.size == size and total == size
    assert info.sha256 == source.sha256.hexdigest()
    assert digest.hexdigest() == source.sha256.hexdigest()
    assert store.stat("large/blob.bin").size == size
    assert put_peak < limit, f"put held {put_peak / MIB:.1f} MiB"
    assert read_peak < limit, f"read held {read_peak / MIB:.1f} MiB"


# ------------------------------------------------------------------------------------- S3 specific


def test_s3_conditional_write_refuses_existing_key(
    s3_store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the HEAD pre-check, the server's answer to If-None-Match: * alone must refuse."""
    s3_store.put("c/single", b"first")
    s3_store.put("c/multi", os.urandom(6 * MIB))
    before = s3_store.get_bytes("c/multi")
    monkeypatch.setattr(s3_store, "_head", lambda key: None)
    with pytest.raises(ObjectExistsError, match="'c/single' already exists"):
        s3_store.put("c/single", b"second")
    with pytest.raises(ObjectExistsError, match="'c/multi' already exists"):
        s3_store.put("c/multi", GeneratedStream(11 * MIB))  # the 412 comes at CompleteMultipartUpload
    monkeypatch.undo()
    assert s3_store.get_bytes("c/single") == b"first"
    assert s3_store.get_bytes("c/multi") == before


def test_s3_unreachable_endpoint_names_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = S3ObjectStore(f"127.0.0.1:{port}", "k", "s", "flywheel", region="us-east-1")
    started = time.monotonic()
    for call in (lambda: store.stat("k"), lambda: store.put("k", b"x", overwrite=True)):
        with pytest.raises(ObjectStoreUnavailableError, match=f"http://127.0.0.1:{port} cannot be reached"):
            call()
    assert time.monotonic() - started < 20


def test_s3_missing_bucket_and_factory(s3_endpoint: S3Endpoint) -> None:
    store = open_object_store(s3_endpoint.settings("no-such-bucket-here"))
    assert isinstance(store, S3ObjectStore)
    with pytest.raises(ObjectStoreError, match="ensure_ready"):
        store.put("k", b"x", overwrite=True)
    store.ensure_ready()
    store.ensure_ready()  # idempotent
    store.put("k", b"x")
    assert store.get_bytes("k") == b"x"
    store.delete("k")


# ------------------------------------------------------------------------------------- fs specific


def test_fs_concurrent_reader_sees_whole_objects(fs_store: FilesystemObjectStore) -> None:
    old, new = b"A" * (3 * MIB), b"B" * (5 * MIB)
    versions = {len(old): (old, "a"), len(new): (new, "b")}
    fs_store.put("hot", old, metadata={"v": "a"})
    seen: set[str] = set()
    problems: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            data = fs_store.get_bytes("hot")
            if data not in (old, new):
                problems.append(f"partial read: {len(data)} bytes")
            info = fs_store.stat("hot")
            expected = versions.get(info.size)
            if expected is None or info.metadata != {"v": expected[1]}:
                problems.append(f"stat mixes generations: size {info.size}, metadata {info.metadata}")
            seen.add(data[:1].decode())

    thread = threading.Thread(target=reader)
    thread.start()
    writes = 0
    deadline = time.monotonic() + 10
    try:
        while (writes < 20 or len(seen) < 2) and time.monotonic() < deadline:
            data, tag = (new, "b") if writes % 2 == 0 else (old, "a")
            fs_store.put("hot", data, metadata={"v": tag}, overwrite=True)
            writes += 1
    finally:
        stop.set()
        thread.join()
    assert problems == []
    assert seen == {"A", "B"}


def test_fs_open_stream_keeps_its_generation(fs_store: FilesystemObjectStore) -> None:
    fs_store.put("gen", b"1" * 100_000)
    with fs_store.open("gen") as stream:
        head = stream.read(10)
        fs_store.put("gen", b"2" * 50_000, overwrite=True)
        rest = stream.read()
    assert head + rest == b"1" * 100_000
    assert fs_store.get_bytes("gen") == b"2" * 50_000


def test_fs_concurrent_creators_exactly_one_wins(fs_store: FilesystemObjectStore) -> None:
    contenders = 8
    barrier = threading.Barrier(contenders)
    outcomes: dict[int, str] = {}

    def create(index: int) -> None:
        barrier.wait()
        try:
            fs_store.put("race", f"writer {index}".encode() * 1000, metadata={"writer": str(index)})
            outcomes[index] = "won"
        except ObjectExistsError:
            outcomes[index] = "exists"

    threads = [threading.Thread(target=create, args=(index,)) for index in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [index for index, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == contenders and len(winners) == 1
    assert fs_store.get_bytes("race") == f"writer {winners[0]}".encode() * 1000
    assert fs_store.stat("race").metadata == {"writer": str(winners[0])}


def test_fs_crashed_writers_leave_nothing_visible(fs_store: FilesystemObjectStore) -> None:
    fs_store.put("visible", b"ok")
    staging = fs_store.root / INTERNAL_DIR / "staging"
    # A writer whose producer fails mid-stream: the error propagates, nothing is published.
    with pytest.raises(OSError, match="simulated crash"):
        fs_store.put("broken", GeneratedStream(8 * MIB, fail_after=3 * MIB))
    assert not fs_store.exists("broken")
    assert list(staging.iterdir()) == []
    # A writer killed mid-write leaves its temp files behind: they are never listed.
    (staging / "put-killed").write_bytes(b"half an object")
    (staging / "meta-killed").write_bytes(b'{"format": 1, "entries"')
    old = time.time() - 2 * 86400
    os.utime(staging / "meta-killed", (old, old))
    assert [info.key for info in fs_store.list()] == ["visible"]
    assert [info.key for info in fs_store.list(".flywheel")] == []
    assert fs_store.list_page("", 10) == (list(fs_store.list()), None)
    # ensure_ready() sweeps staging files a crashed writer left long ago, and only those.
    fs_store.ensure_ready()
    assert sorted(p.name for p in staging.iterdir()) == ["put-killed"]
    with pytest.raises(InvalidKeyError, match="reserved"):
        fs_store.put(f"{INTERNAL_DIR}/meta/x", b"x")


def test_fs_layout_edges(fs_store: FilesystemObjectStore) -> None:
    fs_store.put("a", b"file")
    with pytest.raises(ObjectStoreError, match="both an object and a folder named 'a'"):
        fs_store.put("a/b", b"x")
    fs_store.put("d/e", b"x")
    with pytest.raises(ObjectStoreError, match="both an object and a folder named 'd'"):
        fs_store.put("d", b"x", overwrite=True)
    with pytest.raises(InvalidKeyError, match="255 bytes"):
        fs_store.put("s" * 256, b"x")
    # A file copied in by hand is an object with the default content type and no metadata.
    (fs_store.root / "by-hand.txt").write_bytes(b"hand")
    info = fs_store.stat("by-hand.txt")
    assert (info.size, info.content_type, info.metadata, info.sha256) == (
        4,
        "application/octet-stream",
        {},
        None,
    )
    assert fs_store.stat("a").sha256 == hashlib.sha256(b"file").hexdigest()
    # Deleting the last object of a folder removes the folder, so the name is free again.
    fs_store.delete("d/e")
    assert not (fs_store.root / "d").exists()
    fs_store.put("d", b"now a file")
    assert fs_store.get_bytes("d") == b"now a file"


# ----------------------------------------------------------------------------------------- settings


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("FLYWHEEL_OBJECT_STORE_"):
            monkeypatch.delenv(name)
    settings = ObjectStoreSettings()
    assert settings.backend == "fs" and settings.bucket == "flywheel" and settings.secure is False
    assert settings.root == Path.home() / ".flywheel" / "objects"
    assert settings.part_size_bytes == 16 * MIB
    assert all(field.description for field in ObjectStoreSettings.model_fields.values())

    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_ROOT", str(tmp_path / "store"))
    store = open_object_store()
    assert isinstance(store, FilesystemObjectStore) and store.root == tmp_path / "store"

    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_BACKEND", "s3")
    with pytest.raises(ValidationError) as err:
        ObjectStoreSettings()
    message = str(err.value)
    for name in ("ENDPOINT", "ACCESS_KEY", "SECRET_KEY"):
        assert f"FLYWHEEL_OBJECT_STORE_{name}" in message
    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_ENDPOINT", "minio:9000")
    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_ACCESS_KEY", "ak")
    with pytest.raises(ValidationError, match="needs FLYWHEEL_OBJECT_STORE_SECRET_KEY to be set"):
        ObjectStoreSettings()
    monkeypatch.setenv("FLYWHEEL_OBJECT_STORE_SECRET_KEY", "s3cr3t-value")
    settings = ObjectStoreSettings()
    assert settings.endpoint == "minio:9000" and settings.secret_key is not None
    assert "s3cr3t-value" not in repr(settings)

    with pytest.raises(ValidationError, match="FLYWHEEL_OBJECT_STORE_ENDPOINT='http://minio:9000'"):
        ObjectStoreSettings(endpoint="http://minio:9000")
    with pytest.raises(ValidationError, match="FLYWHEEL_OBJECT_STORE_BUCKET='Bad_Bucket'"):
        ObjectStoreSettings(bucket="Bad_Bucket")
    with pytest.raises(ValidationError, match="greater than or equal to 5242880"):
        ObjectStoreSettings(part_size_bytes=MIB)
