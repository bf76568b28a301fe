"""Adapter sync end to end: a real nats-server, the filesystem object store, the real gateway process
and the tiny upstream (standing in for a model-server replica; it has vLLM's LoRA endpoints).

publish AdapterPublished → the adapter is copied and loaded on the upstream → it answers through
the gateway with no restart → AdapterLoaded is emitted; failures end in AdapterLoadFailed; a
restarted adapter sync reconciles a replica that lost its adapters.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import httpx
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.events.v1.events_pb2 import AdapterLoaded, AdapterLoadFailed, AdapterPublished, EventMeta
from flywheel_common.events import Event, EventBus, NatsSettings
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_gateway.adapter_sync import AdapterSyncSettings, copy_adapter, run_adapter_sync, served_name

from .conftest import MASTER_KEY, Gateway


@pytest.fixture
def store_settings(tmp_path: Path) -> ObjectStoreSettings:
    return ObjectStoreSettings(backend="fs", root=tmp_path / "objects")


def publish_files(store_settings: ObjectStoreSettings, name: str, version: int) -> str:
    prefix = f"adapters/{name}/{version}/"
    store = open_object_store(store_settings)
    store.ensure_ready()
    store.put(prefix + "adapter_config.json", b'{"r": 8, "base_model_name_or_path": "gemma-3-270m"}')
    store.put(prefix + "adapter_model.safetensors", b"\0" * 1024)
    store.put(prefix + "tokenizer/tokenizer.json", b"{}")
    return prefix


def published(name: str, version: int, prefix: str) -> AdapterPublished:
    now = Timestamp()
    now.GetCurrentTime()
    meta = EventMeta(event_id=f"adapter-published:{name}/{version}", occurred_at=now, producer="trainer")
    return AdapterPublished(meta=meta, name=name, version=version, base_model="gemma-3-270m", object_prefix=prefix,
                            lora_rank=8, loop_id="loop-test")  # fmt: skip


def sync_settings(nats: NatsSettings, store: ObjectStoreSettings, upstream: str, gateway: Gateway,
                  tmp_path: Path, **extra: object) -> AdapterSyncSettings:  # fmt: skip
    return AdapterSyncSettings(replicas=[upstream], adapter_dir=tmp_path / "adapters", gateway_url=gateway.url,
                               gateway_key=MASTER_KEY, nats=nats, object_store=store, backoff_s=0.05,
                               reconcile_interval_s=0, **extra)  # fmt: skip


async def watch(bus: EventBus, durable: str) -> asyncio.Queue[Event]:
    events: asyncio.Queue[Event] = asyncio.Queue()

    async def on_event(event: Event) -> None:
        await events.put(event)

    await bus.subscribe(durable, "flywheel.adapter.>", on_event)
    return events


async def next_of(events: asyncio.Queue[Event], subject: str, within_s: float = 20) -> Event:
    deadline = time.monotonic() + within_s
    while True:
        event = await asyncio.wait_for(events.get(), max(0.1, deadline - time.monotonic()))
        if event.subject == subject:
            return event


async def chat(gateway: Gateway, model: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(gateway.url + "/v1/chat/completions",
                                 headers={"Authorization": f"Bearer {MASTER_KEY}"},
                                 json={"model": model, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip


async def upstream_models(upstream: str) -> dict[str, dict]:
    async with httpx.AsyncClient(timeout=30) as client:
        reply = await client.get(upstream + "/v1/models")
    return {m["id"]: m for m in reply.json()["data"]}


@contextlib.asynccontextmanager
async def running(settings: AdapterSyncSettings):
    task = asyncio.create_task(run_adapter_sync(settings))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_served_name_convention() -> None:
    assert served_name("coder", 3) == "coder-v3"


def test_copy_is_atomic_and_reused(store_settings: ObjectStoreSettings, tmp_path: Path) -> None:
    prefix = publish_files(store_settings, "copy", 1)
    store = open_object_store(store_settings)
    dest = tmp_path / "out" / "copy-v1"
    assert copy_adapter(store, prefix, dest) is True
    assert (dest / "tokenizer" / "tokenizer.json").read_bytes() == b"{}"
    assert copy_adapter(store, prefix, dest) is False  # complete copy reused
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["copy-v1"]  # no temporary folder left


async def test_published_adapter_answers_through_gateway(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, upstream: str,
    gateways: dict[str, Gateway], tmp_path: Path,
) -> None:  # fmt: skip
    gateway = gateways["fast"]
    events = await watch(event_bus, "test-watch")
    prefix = publish_files(store_settings, "coder", 3)
    assert (await chat(gateway, "ft/coder-v3")).status_code == 404  # not there yet
    async with running(sync_settings(nats_settings, store_settings, upstream, gateway, tmp_path)):
        started = time.monotonic()
        await event_bus.publish("flywheel.adapter.published", published("coder", 3, prefix),
                                msg_id="adapter-published:coder/3")  # fmt: skip
        loaded = (await next_of(events, "flywheel.adapter.loaded")).parse(AdapterLoaded)
        hot_load_s = time.monotonic() - started
    assert loaded.served_model_name == "ft/coder-v3"
    assert loaded.name == "coder" and loaded.version == 3 and loaded.loop_id == "loop-test"
    assert loaded.replica == upstream and loaded.ready_replicas == 1 and loaded.total_replicas == 1
    assert loaded.load_duration.ToNanoseconds() > 0 and loaded.since_published.ToNanoseconds() > 0
    # The upstream got the load call with the copied folder, and lists it as vLLM does.
    model = (await upstream_models(upstream))["coder-v3"]
    assert model["root"] == str(tmp_path / "adapters" / "coder-v3") and model["parent"] == "gemma-3-270m"
    assert (Path(model["root"]) / "adapter_model.safetensors").stat().st_size == 1024
    reply = await chat(gateway, "ft/coder-v3")  # the same gateway process, never restarted
    assert (
        reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "hello from coder-v3"
    )
    assert hot_load_s < 10, f"hot-load took {hot_load_s:.1f} s"


async def test_redelivery_and_restart_reconcile(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, upstream: str,
    gateways: dict[str, Gateway], tmp_path: Path,
) -> None:  # fmt: skip
    gateway = gateways["fast"]
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(nats_settings, store_settings, upstream, gateway, tmp_path)
    prefix = publish_files(store_settings, "recon", 1)
    async with running(settings):
        await event_bus.publish("flywheel.adapter.published", published("recon", 1, prefix),
                                msg_id="adapter-published:recon/1")  # fmt: skip
        await next_of(events, "flywheel.adapter.loaded")
    # The replica restarts and loses the adapter; adapter sync restarts too (the event is acked).
    async with httpx.AsyncClient(timeout=30) as client:
        assert (
            await client.post(upstream + "/v1/unload_lora_adapter", json={"lora_name": "recon-v1"})
        ).status_code == 200
    assert "recon-v1" not in await upstream_models(upstream)
    async with running(settings):
        loaded = (await next_of(events, "flywheel.adapter.loaded")).parse(AdapterLoaded)
    assert loaded.served_model_name == "ft/recon-v1" and "reconcile" in loaded.meta.event_id
    assert "recon-v1" in await upstream_models(upstream)
    assert (await chat(gateway, "ft/recon-v1")).status_code == 200


async def test_failure_ends_in_load_failed(
    event_bus: EventBus, nats_settings: NatsSettings, store_settings: ObjectStoreSettings, upstream: str,
    gateways: dict[str, Gateway], tmp_path: Path,
) -> None:  # fmt: skip
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(
        nats_settings, store_settings, upstream, gateways["fast"], tmp_path, max_attempts=3
    )
    open_object_store(store_settings).ensure_ready()
    async with running(settings):
        # Nothing in the store under this prefix: retried, then reported.
        await event_bus.publish("flywheel.adapter.published", published("ghost", 2, "adapters/ghost/2/"),
                                msg_id="adapter-published:ghost/2")  # fmt: skip
        failed = (await next_of(events, "flywheel.adapter.load_failed")).parse(AdapterLoadFailed)
        assert failed.name == "ghost" and failed.version == 2 and failed.attempts == 3
        assert "adapters/ghost/2/" in failed.error.message and failed.error.details["step"] == "copy"
        # An invalid event is reported at once, without retries.
        await event_bus.publish("flywheel.adapter.published", published("Bad Name", 1, "adapters/x/1/"),
                                msg_id="adapter-published:bad/1")  # fmt: skip
        failed = (await next_of(events, "flywheel.adapter.load_failed")).parse(AdapterLoadFailed)
        assert failed.attempts == 0 and "adapter name" in failed.error.message and failed.error.code == 3
