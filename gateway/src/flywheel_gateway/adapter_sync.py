"""Adapter sync: make every published LoRA adapter answer on every model-server replica.

A durable JetStream consumer (``adapter-sync``) of ``flywheel.adapter.published``. For each
:class:`AdapterPublished` and each replica it

1. copies ``adapters/<name>/<version>/`` from the object store into the adapter folder the
   replicas read (a shared volume in a cluster, a local folder in the embedded stack), as
   ``<adapter_dir>/<name>-v<version>/`` — written in a temporary folder and renamed, so a replica
   never sees half an adapter; an existing complete copy is reused;
2. loads it with vLLM's runtime LoRA API, ``POST /v1/load_lora_adapter
   {"lora_name": "<name>-v<version>", "lora_path": …}`` — an answer saying it is already loaded
   counts as success (idempotent, so a redelivered event does no harm);
3. checks that ``GET /v1/models`` lists it;
4. sends a one-token chat completion for ``ft/<name>-v<version>`` through the gateway;
5. publishes ``flywheel.adapter.loaded`` (:class:`AdapterLoaded`) with the replica's load time and
   the time since the adapter was published.

A failing step is retried with exponential back-off (``FLYWHEEL_ADAPTER_SYNC_MAX_ATTEMPTS``);
after the last attempt it publishes ``flywheel.adapter.load_failed`` with the reason and acks the
event (a bad adapter must not block the ones after it).

Naming: adapter ``<name>`` version ``<n>`` (id ``<name>/v<n>``, e.g. ``coder/v3``) is served by the
model server as ``<name>-v<n>`` (``coder-v3``), and reached at the gateway as ``ft/<name>-v<n>``
(``ft/coder-v3``). A new version is a new name; old versions stay loaded until unloaded.

Reconciliation: at start-up (and every ``reconcile_interval_s``) it reads every
``adapter.published`` event still in the stream and loads, on each replica, those that replica's
``/v1/models`` lacks — so a replica that starts (or restarts) later gets every adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js import api
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flywheel.common.v1.common_pb2 import Error
from flywheel.events.v1.events_pb2 import AdapterLoaded, AdapterLoadFailed, AdapterPublished, EventMeta
from flywheel_common.events import Event, EventBus, NatsSettings
from flywheel_common.objectstore import ObjectStore, ObjectStoreSettings, open_object_store

log = logging.getLogger("flywheel.adapter_sync")

PUBLISHED = "flywheel.adapter.published"
LOADED = "flywheel.adapter.loaded"
LOAD_FAILED = "flywheel.adapter.load_failed"
PRODUCER = "adapter-sync"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
COMPLETE_MARKER = ".flywheel-complete"

# google.rpc.Code values for AdapterLoadFailed.error.code
INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE = 3, 5, 9, 14


def _default_replicas() -> list[str]:
    address = os.environ.get("FLYWHEEL_MODEL_SERVER_ADDRESS")  # set by `flywheel up`
    if address:
        return [f"http://{address}"]
    url = os.environ.get("FLYWHEEL_GATEWAY_MODEL_SERVER_URL", "http://127.0.0.1:8000/v1")
    return [url.removesuffix("/").removesuffix("/v1")]


def _default_gateway() -> str:
    address = os.environ.get("FLYWHEEL_GATEWAY_ADDRESS")  # set by `flywheel up`
    return f"http://{address}" if address else "http://127.0.0.1:4000"


class AdapterSyncSettings(BaseSettings):
    """``FLYWHEEL_ADAPTER_SYNC_*``, plus the gateway key and prefix it shares with the gateway."""

    model_config = SettingsConfigDict(
        env_prefix="FLYWHEEL_ADAPTER_SYNC_", extra="ignore", populate_by_name=True
    )

    replicas: list[str] = Field(
        default_factory=_default_replicas,
        min_length=1,
        description="Base URLs of the model-server replicas (without /v1), JSON list. Default: "
        "FLYWHEEL_MODEL_SERVER_ADDRESS, else FLYWHEEL_GATEWAY_MODEL_SERVER_URL without /v1.",
    )
    adapter_dir: Path = Field(
        Path("adapters"),
        description="Folder the replicas load adapters from (a shared volume in a cluster); the same "
        "path must be valid on the replicas. Relative paths are resolved from the working directory.",
    )
    gateway_url: str = Field(default_factory=_default_gateway, description="Gateway base URL, for the probe.")
    gateway_key: SecretStr | None = Field(
        None,
        validation_alias="FLYWHEEL_GATEWAY_MASTER_KEY",
        description="Key for the probe through the gateway.",
    )
    adapter_prefix: str = Field(
        "ft/",
        validation_alias="FLYWHEEL_GATEWAY_ADAPTER_PREFIX",
        description="Gateway prefix of adapter routes.",
    )
    probe: bool = Field(
        True, description="Send the one-token probe through the gateway before reporting loaded."
    )
    durable: str = Field("adapter-sync", description="Name of the durable JetStream consumer.")
    max_attempts: int = Field(
        5, ge=1, le=100, description="Attempts per adapter and replica before load_failed."
    )
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles with each attempt.")
    backoff_max_s: float = Field(30.0, ge=0, description="Upper bound of the retry delay.")
    request_timeout_s: float = Field(300.0, gt=0, description="Timeout of one load / probe HTTP call.")
    reconcile_interval_s: float = Field(
        30.0,
        ge=0,
        description="How often to check that every replica has every adapter; 0 = at start-up only.",
    )
    nats: NatsSettings = Field(default_factory=NatsSettings, description="Shared: FLYWHEEL_NATS_* variables.")
    object_store: ObjectStoreSettings = Field(
        default_factory=ObjectStoreSettings, description="Shared: FLYWHEEL_OBJECT_STORE_* variables."
    )

    @field_validator("replicas")
    @classmethod
    def _check_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"replica URL {url!r} must start with http:// or https://")
        return [u.rstrip("/") for u in value]


def served_name(name: str, version: int) -> str:
    """The model server's name for an adapter version: ``coder`` v3 → ``coder-v3``."""
    return f"{name}-v{version}"


class SyncError(Exception):
    """One step failed; ``code`` is a google.rpc.Code, ``retry`` whether another attempt may help."""

    def __init__(self, message: str, code: int = UNAVAILABLE, *, retry: bool = True, step: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.retry = retry
        self.step = step


@dataclass
class Outcome:
    replica: str
    ok: bool
    attempts: int
    seconds: float
    error: SyncError | None = None


def copy_adapter(store: ObjectStore, prefix: str, dest: Path) -> bool:
    """Copy every object under ``prefix`` into ``dest`` atomically; False when a complete copy exists."""
    if (dest / COMPLETE_MARKER).is_file():
        return False
    objects = list(store.list(prefix))
    if not objects:
        raise SyncError(f"no objects under {prefix!r} in the object store", NOT_FOUND, step="copy")
    if not any(o.key.endswith("/adapter_config.json") for o in objects):
        raise SyncError(
            f"{prefix!r} has no adapter_config.json: not a PEFT adapter",
            FAILED_PRECONDITION,
            retry=False,
            step="copy",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        for info in objects:
            relative = info.key[len(prefix) :]
            target = tmp / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with store.open(info.key) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1024 * 1024)
        (tmp / COMPLETE_MARKER).write_text(prefix)
        if dest.exists():  # a copy left incomplete by a crash
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return True


class AdapterSync:
    """The consumer's logic; :meth:`handle` is the event handler, :meth:`reconcile` the catch-up."""

    def __init__(self, settings: AdapterSyncSettings, bus: EventBus, store: ObjectStore) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.adapter_dir = settings.adapter_dir.expanduser().resolve()
        self.published: dict[tuple[str, int], AdapterPublished] = {}
        self.failed: set[tuple[str, int, str]] = set()  # (name, version, replica) given up on
        self.loaded: set[tuple[str, int, str]] = set()  # (name, version, replica) loaded by this process
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s)
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ events

    async def handle(self, event: Event) -> None:
        published = event.parse(AdapterPublished)
        problem = self.invalid(published)
        if problem:
            log.error("ignoring adapter.published %s: %s", event.msg_id, problem)
            for replica in self.settings.replicas:
                await self.emit_failed(
                    published, replica, 0, SyncError(problem, INVALID_ARGUMENT, retry=False)
                )
            return
        self.published[(published.name, published.version)] = published
        async with self._lock:
            # Replicas that reconciliation already served for this version need nothing more.
            todo = [
                r for r in self.settings.replicas if (published.name, published.version, r) not in self.loaded
            ]
            await self.sync(published, todo)

    @staticmethod
    def invalid(p: AdapterPublished) -> str | None:
        if not NAME_RE.match(p.name):
            return f"adapter name {p.name!r} must be 1-63 characters of [a-z0-9._-], starting with a letter or digit"
        if p.version < 1:
            return f"adapter version must be >= 1, got {p.version}"
        if not p.object_prefix or not p.object_prefix.endswith("/") or ".." in p.object_prefix:
            return f"object_prefix {p.object_prefix!r} must be a folder key ending in '/'"
        return None

    async def sync(self, published: AdapterPublished, replicas: list[str], repeat: str = "") -> list[Outcome]:
        """Load on each replica and report; ``repeat`` distinguishes a reload's event id from the first."""
        outcomes = []
        for replica in replicas:
            outcome = await self.sync_replica(published, replica)
            outcomes.append(outcome)
            if outcome.ok:
                self.loaded.add((published.name, published.version, replica))
                ready = sum(
                    (published.name, published.version, r) in self.loaded for r in self.settings.replicas
                )
                await self.emit_loaded(published, replica, outcome.seconds, ready, repeat)
            else:
                assert outcome.error is not None
                self.failed.add((published.name, published.version, replica))
                await self.emit_failed(published, replica, outcome.attempts, outcome.error)
        return outcomes

    async def sync_replica(self, published: AdapterPublished, replica: str) -> Outcome:
        started = time.monotonic()
        delay = self.settings.backoff_s
        error: SyncError | None = None
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                await self.load_on(published, replica)
                return Outcome(replica, True, attempt, time.monotonic() - started)
            except SyncError as err:
                error = err
            except (aiohttp.ClientError, TimeoutError, OSError) as err:
                error = SyncError(f"{type(err).__name__}: {err}", UNAVAILABLE)
            log.warning(
                "adapter %s/v%d on %s: attempt %d/%d failed at %s: %s",
                published.name,
                published.version,
                replica,
                attempt,
                self.settings.max_attempts,
                error.step or "?",
                error,
            )
            if not error.retry or attempt == self.settings.max_attempts:
                return Outcome(replica, False, attempt, time.monotonic() - started, error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.backoff_max_s)
        raise AssertionError("unreachable")

    async def load_on(self, published: AdapterPublished, replica: str) -> None:
        name = served_name(published.name, published.version)
        dest = self.adapter_dir / name
        try:
            copied = await asyncio.to_thread(copy_adapter, self.store, published.object_prefix, dest)
        except SyncError:
            raise
        except Exception as err:  # the store's own errors name the key
            raise SyncError(f"copy from the object store failed: {err}", UNAVAILABLE, step="copy") from err
        if copied:
            log.info("copied %s to %s", published.object_prefix, dest)
        http = await self.http()
        async with http.post(
            f"{replica}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(dest)}
        ) as r:
            text = await r.text()
            already = r.status == 400 and "already" in text.lower()
            if r.status != 200 and not already:
                retry = r.status >= 500 or r.status in (404, 408, 429)
                raise SyncError(
                    f"load_lora_adapter answered {r.status}: {text[:500]}",
                    UNAVAILABLE if retry else FAILED_PRECONDITION,
                    retry=retry,
                    step="load",
                )
        async with http.get(f"{replica}/v1/models") as r:
            models = await r.json(content_type=None) if r.status == 200 else {}
            ids = {m.get("id") for m in models.get("data", [])} if isinstance(models, dict) else set()
            if name not in ids:
                raise SyncError(
                    f"{name} is not in {replica}/v1/models after loading (status {r.status})",
                    UNAVAILABLE,
                    step="models",
                )
        if self.settings.probe:
            await self.probe(name)

    async def probe(self, name: str) -> None:
        model = f"{self.settings.adapter_prefix}{name}"
        key = self.settings.gateway_key.get_secret_value() if self.settings.gateway_key else ""
        http = await self.http()
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        async with http.post(
            f"{self.settings.gateway_url.rstrip('/')}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as r:
            if r.status != 200:
                raise SyncError(
                    f"probe of {model} through the gateway answered {r.status}: {(await r.text())[:500]}",
                    UNAVAILABLE,
                    step="probe",
                )

    # ------------------------------------------------------------------ emitted events

    @staticmethod
    def meta(event_id: str) -> EventMeta:
        now = Timestamp()
        now.GetCurrentTime()
        return EventMeta(event_id=event_id, occurred_at=now, producer=PRODUCER)

    async def emit_loaded(
        self, p: AdapterPublished, replica: str, seconds: float, ready: int, repeat: str = ""
    ) -> None:
        name = served_name(p.name, p.version)
        since = Duration()
        if p.meta.HasField("occurred_at"):
            since.FromNanoseconds(max(0, time.time_ns() - p.meta.occurred_at.ToNanoseconds()))
        took = Duration()
        took.FromNanoseconds(int(seconds * 1e9))
        event_id = f"adapter-loaded:{p.name}/{p.version}:{replica}{repeat}"
        msg = AdapterLoaded(
            meta=self.meta(event_id),
            name=p.name,
            version=p.version,
            served_model_name=f"{self.settings.adapter_prefix}{name}",
            replica=replica,
            ready_replicas=ready,
            total_replicas=len(self.settings.replicas),
            load_duration=took,
            since_published=since,
            loop_id=p.loop_id,
        )
        await self.bus.publish(LOADED, msg, msg_id=event_id)
        log.info("adapter %s loaded on %s in %.2f s", name, replica, seconds)

    async def emit_failed(self, p: AdapterPublished, replica: str, attempts: int, error: SyncError) -> None:
        event_id = f"adapter-load-failed:{p.name}/{p.version}:{replica}"
        details = {"step": error.step} if error.step else {}
        msg = AdapterLoadFailed(
            meta=self.meta(event_id),
            name=p.name,
            version=p.version,
            replica=replica,
            attempts=attempts,
            error=Error(code=error.code, message=str(error), details=details),
            loop_id=p.loop_id,
        )
        await self.bus.publish(LOAD_FAILED, msg, msg_id=event_id)
        log.error(
            "adapter %s/v%d failed on %s after %d attempts: %s", p.name, p.version, replica, attempts, error
        )

    # ------------------------------------------------------------------ reconciliation

    async def read_published(self) -> None:
        """Every adapter.published event still in the stream (an ephemeral consumer, no acks)."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=PUBLISHED,
            inactive_threshold=60.0,
        )
        psub = await self.bus.js.pull_subscribe(PUBLISHED, stream=self.bus.settings.stream, config=config)
        try:
            while True:
                try:
                    msgs = await psub.fetch(100, timeout=1.0)
                except TimeoutError:
                    break
                for msg in msgs:
                    try:
                        p = Event.from_msg(msg).parse(AdapterPublished)
                    except Exception as err:  # a malformed event must not stop reconciliation
                        log.warning("skipping unreadable adapter.published event: %s", err)
                        continue
                    if self.invalid(p) is None:
                        self.published[(p.name, p.version)] = p
                if len(msgs) < 100:
                    break
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def replica_models(self, replica: str) -> set[str] | None:
        try:
            http = await self.http()
            async with http.get(f"{replica}/v1/models") as r:
                data: Any = await r.json(content_type=None)
            return {m.get("id") for m in data.get("data", [])}
        except Exception as err:
            log.warning("cannot list models of %s: %s", replica, err)
            return None

    async def reconcile(self) -> int:
        """Load on each replica every published adapter it lacks; returns how many loads it ran."""
        await self.read_published()
        loads = 0
        async with self._lock:
            for replica in self.settings.replicas:
                have = await self.replica_models(replica)
                if have is None:
                    continue
                for (name, version), p in sorted(self.published.items()):
                    if served_name(name, version) in have or (name, version, replica) in self.failed:
                        continue
                    log.info("reconcile: %s lacks %s", replica, served_name(name, version))
                    loads += 1
                    # A reload (the replica restarted) is a new fact: its event id must not be
                    # deduplicated against the first load's.
                    await self.sync(p, [replica], repeat=f":reconcile-{time.time_ns() // 1_000_000}")
        return loads


async def run_adapter_sync(
    settings: AdapterSyncSettings | None = None, stop: asyncio.Future[Any] | None = None
) -> None:
    """Run until cancelled (or ``stop`` completes): reconcile, consume, reconcile periodically."""
    settings = settings or AdapterSyncSettings()
    store = open_object_store(settings.object_store)
    await asyncio.to_thread(store.ensure_ready)
    bus = await EventBus.connect(settings.nats, name=PRODUCER)
    sync = AdapterSync(settings, bus, store)
    try:
        await bus.ensure_stream()
        await sync.reconcile()
        # Loading on the CPU can take a while: give the handler room before JetStream redelivers.
        await bus.subscribe(
            settings.durable,
            PUBLISHED,
            sync.handle,
            batch=1,
            ack_wait_s=max(60.0, settings.request_timeout_s),
        )
        log.info("adapter sync consuming %s for %s", PUBLISHED, ", ".join(settings.replicas))
        while stop is None or not stop.done():
            wait = settings.reconcile_interval_s or 3600.0
            if stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stop), wait)
            else:
                await asyncio.sleep(wait)
            if settings.reconcile_interval_s and (stop is None or not stop.done()):
                try:
                    await sync.reconcile()
                except Exception:
                    log.exception("reconciliation failed; retrying later")
    finally:
        await bus.close()
        await sync.close()
        store.close()


def main() -> int:
    from flywheel_common.logs import configure_logging
    from flywheel_common.settings import SettingsError, load_settings

    try:
        settings = load_settings(AdapterSyncSettings)
    except SettingsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_logging(
        PRODUCER,
        os.environ.get("FLYWHEEL_GATEWAY_LOG_LEVEL", "info"),
        os.environ.get("FLYWHEEL_GATEWAY_LOG_FORMAT", "json"),
    )
    import signal

    async def runner() -> None:
        task = asyncio.create_task(run_adapter_sync(settings))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())
    return 0
