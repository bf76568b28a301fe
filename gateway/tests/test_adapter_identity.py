"""Adapter identity through the real adapter-sync path: the real embedded model server (which reports
the digest of what it loaded), the real gateway for the probe, a real nats-server and the filesystem
object store; and the tiny upstream for a replica that reports no digest (vLLM's case), verified by
the log-prob fingerprint.

* a copy whose weights differ by one byte is refused with ``adapter.load_failed`` naming the digest
  mismatch and both digests — in the object store (nothing is loaded) or already served by the
  replica under the name (refused unless forced; ``--reload --force`` replaces it);
* a stale local copy is replaced by a fresh one; an adapter published without a digest gets one at
  its first sync, recorded in the object store;
* on a replica without digests the first verified load records the reference fingerprint, a
  same-name adapter with other weights is refused, a forced reload fixes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flywheel.events.v1 import events_pb2
from flywheel.events.v1.events_pb2 import AdapterLoaded, AdapterLoadFailed
from flywheel_common.adapter_digest import folder_digest
from flywheel_common.auth import http_headers
from flywheel_common.events import EventBus, NatsSettings
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_gateway import fingerprint as fp
from flywheel_gateway.adapter_sync import AdapterSync, identity_key

from .conftest import MASTER_KEY, Gateway, _stop
from .test_adapter_sync import chat, next_of, published, running, sync_settings, upstream_models, watch
from .test_model_server import _wait, model_server, tiny  # noqa: F401  (fixtures used by name)

LOADED, FAILED = "flywheel.adapter.loaded", "flywheel.adapter.load_failed"


@pytest.fixture(scope="module")
def ms_fast_gateway(model_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:  # noqa: F811
    """The gateway (fast path) in front of the real model server, for adapter sync's probe."""
    root = tmp_path_factory.mktemp("identity-gateway")
    ready, log = root / "ready", root / "log"
    env = {**os.environ, "FLYWHEEL_GATEWAY_MASTER_KEY": MASTER_KEY, "FLYWHEEL_GATEWAY_HOST": "127.0.0.1",
           "FLYWHEEL_GATEWAY_PORT": "0", "FLYWHEEL_GATEWAY_READY_FILE": str(ready),
           "FLYWHEEL_GATEWAY_MODEL_SERVER_URL": f"{model_server}/v1", "FLYWHEEL_GATEWAY_BASE_MODELS": '["tiny"]',
           "FLYWHEEL_GATEWAY_CONFIG_DIR": str(root), "FLYWHEEL_GATEWAY_LOG_FORMAT": "text"}  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flywheel_gateway", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield Gateway(f"http://127.0.0.1:{_wait(proc, ready, log)['port']}", proc, log)
    finally:
        _stop(proc)


def corrupted(source: Path, dest: Path) -> Path:
    """A copy of an adapter folder with one byte of its weights changed (still a loadable file)."""
    shutil.copytree(source, dest)
    weights = bytearray((dest / "adapter_model.safetensors").read_bytes())
    weights[-1] ^= 0x01  # the last byte belongs to a tensor value, not to the header
    (dest / "adapter_model.safetensors").write_bytes(bytes(weights))
    return dest


def put_adapter(store_settings: ObjectStoreSettings, folder: Path, prefix: str) -> None:
    store = open_object_store(store_settings)
    store.ensure_ready()
    for path in folder.rglob("*"):
        if path.is_file():
            store.put(prefix + path.relative_to(folder).as_posix(), path.read_bytes(), overwrite=True)


def models_of(url: str) -> dict[str, dict]:
    reply = httpx.get(f"{url}/v1/models", timeout=30)
    assert reply.status_code == 200, reply.text
    return {m["id"]: m for m in reply.json()["data"]}


def unload(url: str, name: str) -> None:
    httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=60, headers=http_headers())


def load(url: str, name: str, path: Path) -> int:
    """Load a folder on a replica directly (not through adapter sync); the status code."""
    body = {"lora_name": name, "lora_path": str(path)}
    return httpx.post(
        f"{url}/v1/load_lora_adapter", json=body, timeout=60, headers=http_headers()
    ).status_code


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def store_settings(tmp_path: Path) -> ObjectStoreSettings:
    return ObjectStoreSettings(backend="fs", root=tmp_path / "objects")


# ------------------------------------------------------------------------------- the embedded server


async def test_digest_verified_and_computed_for_legacy_adapters(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, tiny: tuple[Path, Path],  # noqa: F811
    model_server: str, ms_fast_gateway: Gateway, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    digest = folder_digest(tiny[1]).digest
    put_adapter(store_settings, tiny[1], "adapters/ident/v1/")
    put_adapter(store_settings, tiny[1], "adapters/ident/v2/")
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(nats_settings, store_settings, model_server, ms_fast_gateway, tmp_path)
    try:
        async with running(settings):
            event = published("ident", 1, "adapters/ident/v1/")
            event.content_digest = digest
            await event_bus.publish("flywheel.adapter.published", event, msg_id="adapter-published:ident/1")
            loaded = (await next_of(events, LOADED, within_s=60)).parse(AdapterLoaded)
            assert loaded.content_digest == digest
            assert loaded.verification == events_pb2.ADAPTER_VERIFICATION_DIGEST
            assert models_of(model_server)["ident-v1"]["digest"] == digest
            # Published by a trainer from before digests: computed at the first sync and recorded.
            await event_bus.publish("flywheel.adapter.published", published("ident", 2, "adapters/ident/v2/"),
                                    msg_id="adapter-published:ident/2")  # fmt: skip
            loaded = (await next_of(events, LOADED, within_s=60)).parse(AdapterLoaded)
        assert (loaded.version, loaded.content_digest) == (2, digest)
        record = json.loads(open_object_store(store_settings).get_bytes(identity_key("ident", 2)))
        assert record["digest"] == digest and record["digest_source"] == "computed-at-first-sync"
        assert (await chat(ms_fast_gateway, "ft/ident-v2")).status_code == 200
    finally:
        unload(model_server, "ident-v1")
        unload(model_server, "ident-v2")


async def test_corrupted_copy_in_the_object_store_is_refused(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, tiny: tuple[Path, Path],  # noqa: F811
    model_server: str, ms_fast_gateway: Gateway, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    digest = folder_digest(tiny[1]).digest
    bad = corrupted(tiny[1], tmp_path / "bad")
    bad_digest = folder_digest(bad).digest
    put_adapter(store_settings, bad, "adapters/bitrot/v1/")  # one byte differs from what was published
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(nats_settings, store_settings, model_server, ms_fast_gateway, tmp_path)
    async with running(settings):
        event = published("bitrot", 1, "adapters/bitrot/v1/")
        event.content_digest = digest
        await event_bus.publish("flywheel.adapter.published", event, msg_id="adapter-published:bitrot/1")
        failed = (await next_of(events, FAILED, within_s=60)).parse(AdapterLoadFailed)
    assert failed.name == "bitrot" and failed.attempts == 1  # not retried: the stored bytes are what they are
    assert failed.error.details["step"] == "copy" and failed.error.code == 9  # FAILED_PRECONDITION
    assert "digest mismatch" in failed.error.message
    assert digest in failed.error.message and bad_digest in failed.error.message
    assert "bitrot-v1" not in models_of(model_server)  # never loaded
    assert not (tmp_path / "adapters" / "bitrot-v1").exists()  # and no copy left to reuse


async def test_replica_serving_a_corrupted_copy_is_refused_unless_forced(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, tiny: tuple[Path, Path],  # noqa: F811
    model_server: str, ms_fast_gateway: Gateway, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    digest = folder_digest(tiny[1]).digest
    bad = corrupted(tiny[1], tmp_path / "bad")
    bad_digest = folder_digest(bad).digest
    put_adapter(store_settings, tiny[1], "adapters/stale/v1/")
    # The replica already serves a copy with one byte changed under the version's name.
    assert load(model_server, "stale-v1", bad) == 200
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(nats_settings, store_settings, model_server, ms_fast_gateway, tmp_path)
    try:
        async with running(settings):
            event = published("stale", 1, "adapters/stale/v1/")
            event.content_digest = digest
            await event_bus.publish("flywheel.adapter.published", event, msg_id="adapter-published:stale/1")
            failed = (await next_of(events, FAILED, within_s=60)).parse(AdapterLoadFailed)
        assert failed.error.details["step"] == "digest" and failed.attempts == 1
        message = failed.error.message
        assert "digest mismatch" in message and bad_digest in message and digest in message
        assert "refused unless forced" in message
        assert models_of(model_server)["stale-v1"]["digest"] == bad_digest  # left as it was: not forced

        # The operator's reload: refused again without --force, done with it (real CLI, real processes).
        env = {**os.environ, "FLYWHEEL_NATS_URL": nats_settings.url, "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
               "FLYWHEEL_OBJECT_STORE_ROOT": str(store_settings.root), "FLYWHEEL_GATEWAY_MASTER_KEY": MASTER_KEY,
               "FLYWHEEL_ADAPTER_SYNC_REPLICAS": json.dumps([model_server]),
               "FLYWHEEL_ADAPTER_SYNC_ADAPTER_DIR": str(tmp_path / "adapters"),
               "FLYWHEEL_ADAPTER_SYNC_GATEWAY_URL": ms_fast_gateway.url, "FLYWHEEL_GATEWAY_LOG_FORMAT": "text"}  # fmt: skip
        command = [sys.executable, "-m", "flywheel_gateway", "adapter-sync", "--reload", "stale/v1"]
        refused = await asyncio.to_thread(run, command, env)
        assert refused.returncode == 1 and "refused unless forced" in refused.stdout, (
            refused.stdout + refused.stderr
        )
        failed = (await next_of(events, FAILED, within_s=30)).parse(AdapterLoadFailed)
        assert ":reload-" in failed.meta.event_id
        forced = await asyncio.to_thread(run, [*command, "--force"], env)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert "ADAPTER_VERIFICATION_DIGEST" in forced.stdout
        loaded = (await next_of(events, LOADED, within_s=30)).parse(AdapterLoaded)
        assert (
            loaded.content_digest == digest and loaded.verification == events_pb2.ADAPTER_VERIFICATION_DIGEST
        )
        assert models_of(model_server)["stale-v1"]["digest"] == digest  # the published weights now
        assert (await chat(ms_fast_gateway, "ft/stale-v1")).status_code == 200
    finally:
        unload(model_server, "stale-v1")


async def test_stale_local_copy_is_replaced(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, tiny: tuple[Path, Path],  # noqa: F811
    model_server: str, ms_fast_gateway: Gateway, tmp_path: Path,  # noqa: F811
) -> None:  # fmt: skip
    digest = folder_digest(tiny[1]).digest
    put_adapter(store_settings, tiny[1], "adapters/heal/v1/")
    # A complete-looking copy from an earlier sync, damaged since.
    local = corrupted(tiny[1], tmp_path / "adapters" / "heal-v1")
    (local / ".flywheel-complete").write_text("adapters/heal/v1/")
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(nats_settings, store_settings, model_server, ms_fast_gateway, tmp_path)
    try:
        async with running(settings):
            event = published("heal", 1, "adapters/heal/v1/")
            event.content_digest = digest
            await event_bus.publish("flywheel.adapter.published", event, msg_id="adapter-published:heal/1")
            loaded = (await next_of(events, LOADED, within_s=60)).parse(AdapterLoaded)
        assert loaded.content_digest == digest and folder_digest(local).digest == digest
        assert models_of(model_server)["heal-v1"]["digest"] == digest
    finally:
        unload(model_server, "heal-v1")


# ---------------------------------------------------------------------- a replica without digests (vLLM)


def _adapter_folder(root: Path, weights: bytes) -> Path:
    root.mkdir(parents=True)
    (root / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (root / "adapter_model.safetensors").write_bytes(weights)
    return root


async def test_fingerprint_on_a_replica_without_digest(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, upstream: str,
    gateways: dict[str, Gateway], tmp_path: Path,
) -> None:  # fmt: skip
    good = _adapter_folder(tmp_path / "good", b"\x01" * 2048)
    other = _adapter_folder(tmp_path / "other", b"\x01" * 2047 + b"\x02")  # one byte differs
    digest = folder_digest(good).digest
    put_adapter(store_settings, good, "adapters/fpr/v1/")
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(nats_settings, store_settings, upstream, gateways["fast"], tmp_path)
    try:
        async with running(settings):
            event = published("fpr", 1, "adapters/fpr/v1/")
            event.content_digest = digest
            await event_bus.publish("flywheel.adapter.published", event, msg_id="adapter-published:fpr/1")
            loaded = (await next_of(events, LOADED)).parse(AdapterLoaded)
        assert loaded.verification == events_pb2.ADAPTER_VERIFICATION_FINGERPRINT_RECORDED
        assert "digest" not in (await upstream_models(upstream))["fpr-v1"]  # vLLM's card: no digest
        record = json.loads(open_object_store(store_settings).get_bytes(identity_key("fpr", 1)))
        reference = record["fingerprints"]["vllm"]
        assert reference["digest"] == digest and len(reference["tokens"]) == fp.TOKENS

        # The replica restarts and someone loads other weights under the name.
        unload(upstream, "fpr-v1")
        assert load(upstream, "fpr-v1", other) == 200
        store = open_object_store(store_settings)
        async with AdapterSync(settings, event_bus, store) as sync:
            [outcome] = await sync.reload("fpr", 1, force=False)
            assert not outcome.ok and outcome.error is not None
            assert outcome.error.step == "fingerprint" and "refused unless forced" in str(outcome.error)
            assert "fingerprint mismatch" in str(outcome.error)
            [outcome] = await sync.reload("fpr", 1, force=True)  # unload, then load the verified folder
            assert outcome.ok and outcome.verification == events_pb2.ADAPTER_VERIFICATION_FINGERPRINT
        assert (await upstream_models(upstream))["fpr-v1"]["root"] == str(tmp_path / "adapters" / "fpr-v1")
    finally:
        unload(upstream, "fpr-v1")


def test_fingerprint_comparison() -> None:
    def fingerprint(tokens: list[str], top: list[dict[str, float]]) -> fp.Fingerprint:
        return fp.Fingerprint(tokens, [t[tok] for t, tok in zip(top, tokens, strict=True)], top)

    ref = fingerprint(
        ["a", "b", "c"], [{"a": -0.1, "x": -3.0}, {"b": -0.5, "y": -2.5}, {"c": -1.0, "z": -1.1}]
    )
    assert fp.compare(ref, ref, 0.1) is None
    close = fingerprint(
        ["a", "b", "c"], [{"a": -0.15, "x": -3.05}, {"b": -0.45, "y": -2.5}, {"c": -1.0, "z": -1.1}]
    )
    assert fp.compare(ref, close, 0.1) is None  # within the tolerance
    moved = fingerprint(
        ["a", "b", "c"], [{"a": -0.1, "x": -3.0}, {"b": -0.9, "y": -2.5}, {"c": -1.0, "z": -1.1}]
    )
    assert "token 1" in (fp.compare(ref, moved, 0.1) or "")
    # Position 2 is a near tie in the reference (margin 0.1 <= 2 x 0.1): another choice there is fine.
    tie = fingerprint(
        ["a", "b", "z"], [{"a": -0.1, "x": -3.0}, {"b": -0.5, "y": -2.5}, {"z": -1.02, "c": -1.04}]
    )
    assert fp.compare(ref, tie, 0.1) is None
    other = fingerprint(
        ["x", "b", "c"], [{"x": -0.1, "a": -3.0}, {"b": -0.5, "y": -2.5}, {"c": -1.0, "z": -1.1}]
    )
    assert "token 0" in (fp.compare(ref, other, 0.1) or "")
    short = fingerprint(["a"], [{"a": -0.1, "x": -3.0}])
    assert "stopped after 1" in (fp.compare(ref, short, 0.1) or "")
    assert fp.from_completion({"choices": [{"text": "x", "logprobs": None}]}) is None
