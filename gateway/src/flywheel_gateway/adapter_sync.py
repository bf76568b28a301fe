"""Adapter sync: make every published LoRA adapter answer on every model-server replica.

A durable JetStream consumer (``adapter-sync``) of ``flywheel.adapter.published``. For each
:class:`AdapterPublished` and each replica it

1. copies ``adapters/<name>/<version>/`` from the object store into the adapter folder the
   replicas read (a shared volume in a cluster, a local folder in the embedded stack), as
   ``<adapter_dir>/<name>-v<version>/`` — written in a temporary folder and renamed, so a replica
   never sees half an adapter; an existing complete copy is reused — and checks that the folder
   has the published content digest (``flywheel_common.adapter_digest``; a reused copy that does
   not is copied again, a fresh one that does not means the object store's files are not the
   published ones: ``load_failed``, nothing is loaded);
2. loads it with vLLM's runtime LoRA API, ``POST /v1/load_lora_adapter
   {"lora_name": "<name>-v<version>", "lora_path": …}`` (every request to a replica carries
   ``Authorization: Bearer $FLYWHEEL_SERVICE_TOKEN``, which the model server's admin routes need); a name the replica already serves is not
   loaded again (a redelivered event does no harm) but verified like a new one, and replaced
   only when forced (:meth:`AdapterSync.reload`);
3. checks that ``GET /v1/models`` lists it and verifies what the replica serves under the name:
   the digest the replica reports for it (our model server) must equal the published one; a
   replica that reports none (vLLM) must answer the fixed prompt with the reference log-prob
   fingerprint (``fingerprint.py``), which the first verified load of the version records;
4. sends a one-token chat completion for ``ft/<name>-v<version>`` through the gateway;
5. publishes ``flywheel.adapter.loaded`` (:class:`AdapterLoaded`) with the replica's load time,
   the time since the adapter was published, the digest and how it was verified.

A failing step is retried with exponential back-off (``FLYWHEEL_ADAPTER_SYNC_MAX_ATTEMPTS``);
after the last attempt it publishes ``flywheel.adapter.load_failed`` with the reason and acks the
event (a bad adapter must not block the ones after it).

Naming: adapter ``<name>`` version ``<n>`` (id ``<name>/v<n>``, e.g. ``coder/v3``) is served by the
model server as ``<name>-v<n>`` (``coder-v3``), and reached at the gateway as ``ft/<name>-v<n>``
(``ft/coder-v3``). A new version is a new name; old versions stay loaded until unloaded.

Reconciliation: at start-up (and every ``reconcile_interval_s``) it reads every
``adapter.published`` event still in the stream and loads, on each replica, those that replica's
``/v1/models`` lacks — so a replica that starts (or restarts) later gets every adapter — and
reports (``load_failed``, once) a name whose reported digest is not the published one.

Adapters published without a digest (trainers before digests existed) get one computed from their
object-store files at their first sync, recorded in ``adapter-identity/<name>/v<version>.json``
and used from then on (trust on first sync); the same record keeps the reference fingerprints.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
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
from flywheel.events.v1 import events_pb2
from flywheel.events.v1.events_pb2 import AdapterLoaded, AdapterLoadFailed, AdapterPublished, EventMeta
from flywheel_common import auth
from flywheel_common.adapter_digest import DigestError, folder_digest, is_digest, objects_digest
from flywheel_common.events import Event, EventBus, NatsSettings, raise_if_cancelling
from flywheel_common.objectstore import (
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreSettings,
    open_object_store,
)
from flywheel_gateway import fingerprint as fp

log = logging.getLogger("flywheel.adapter_sync")

PUBLISHED = "flywheel.adapter.published"
LOADED = "flywheel.adapter.loaded"
LOAD_FAILED = "flywheel.adapter.load_failed"
PRODUCER = "adapter-sync"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
COMPLETE_MARKER = ".flywheel-complete"
#: Object-store prefix of adapter sync's identity records (``<name>/v<version>.json``).
IDENTITY_PREFIX = "adapter-identity/"

DIGEST = events_pb2.ADAPTER_VERIFICATION_DIGEST
FINGERPRINT = events_pb2.ADAPTER_VERIFICATION_FINGERPRINT
FINGERPRINT_RECORDED = events_pb2.ADAPTER_VERIFICATION_FINGERPRINT_RECORDED

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
    fingerprint_tolerance: float = Field(
        0.1,
        gt=0,
        le=5,
        description="Largest difference (nats) between a replica's log-probs and the reference "
        "fingerprint's, for replicas that report no digest (vLLM).",
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
    verification: int = 0  #: events_pb2.AdapterVerification, when ok


def identity_key(name: str, version: int) -> str:
    return f"{IDENTITY_PREFIX}{name}/v{version}.json"


def read_identity(store: ObjectStore, name: str, version: int) -> dict[str, Any]:
    """Adapter sync's record of a version (digest computed at first sync, reference fingerprints)."""
    try:
        record = json.loads(store.get_bytes(identity_key(name, version)))
    except ObjectNotFoundError:
        return {}
    return record if isinstance(record, dict) else {}


def write_identity(store: ObjectStore, name: str, version: int, record: dict[str, Any]) -> None:
    body = json.dumps(record, indent=1, sort_keys=True).encode()
    store.put(identity_key(name, version), body, content_type="application/json", overwrite=True)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _digest_mismatch(what: str, found: str, expected: str) -> str:
    return f"digest mismatch: {what} has digest {found}, the published digest is {expected}"


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
        self.digests: dict[tuple[str, int], str] = {}  # the published digest of each version, once known
        self.failed: set[tuple[str, int, str]] = set()  # (name, version, replica) given up on
        self.loaded: set[tuple[str, int, str]] = set()  # (name, version, replica) loaded by this process
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # The replicas' load/unload routes need the service token (flywheel_common.auth);
            # the probe through the gateway sends the gateway key instead (its own header wins).
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout_s),
                headers=auth.http_headers(),
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> AdapterSync:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

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
            # Replicas that reconciliation already synced for this version (it may read the event
            # before the consumer gets it) need nothing more, loaded or failed: no second report.
            done = self.loaded | self.failed
            todo = [r for r in self.settings.replicas if (published.name, published.version, r) not in done]
            await self.sync(published, todo)

    @staticmethod
    def invalid(p: AdapterPublished) -> str | None:
        if not NAME_RE.match(p.name):
            return f"adapter name {p.name!r} must be 1-63 characters of [a-z0-9._-], starting with a letter or digit"
        if p.version < 1:
            return f"adapter version must be >= 1, got {p.version}"
        if not p.object_prefix or not p.object_prefix.endswith("/") or ".." in p.object_prefix:
            return f"object_prefix {p.object_prefix!r} must be a folder key ending in '/'"
        if p.content_digest and not is_digest(p.content_digest):
            return f"content_digest {p.content_digest[:100]!r} must be 'sha256:' and 64 lower-case hex digits"
        return None

    async def sync(
        self, published: AdapterPublished, replicas: list[str], repeat: str = "", *, force: bool = False
    ) -> list[Outcome]:
        """Load on each replica and report; ``repeat`` distinguishes a reload's event ids from the first."""
        outcomes = []
        for replica in replicas:
            outcome = await self.sync_replica(published, replica, force=force)
            outcomes.append(outcome)
            key = (published.name, published.version, replica)
            if outcome.ok:
                self.loaded.add(key)
                self.failed.discard(key)
                ready = sum(
                    (published.name, published.version, r) in self.loaded for r in self.settings.replicas
                )
                await self.emit_loaded(published, replica, outcome, ready, repeat)
            else:
                assert outcome.error is not None
                self.failed.add(key)
                self.loaded.discard(key)
                await self.emit_failed(published, replica, outcome.attempts, outcome.error, repeat)
        return outcomes

    async def sync_replica(
        self, published: AdapterPublished, replica: str, *, force: bool = False
    ) -> Outcome:
        started = time.monotonic()
        delay = self.settings.backoff_s
        error: SyncError | None = None
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                verification = await self.load_on(published, replica, force=force)
                return Outcome(replica, True, attempt, time.monotonic() - started, verification=verification)
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

    async def load_on(self, published: AdapterPublished, replica: str, *, force: bool = False) -> int:
        """One attempt on one replica; returns how it was verified (events_pb2.AdapterVerification)."""
        name = served_name(published.name, published.version)
        dest = self.adapter_dir / name
        expected = await self.prepare_copy(published, dest)
        cards = await self.cards(replica)
        fresh = False  # whether this attempt loaded the name (else the replica already served it)
        if name in cards and force:
            await self.replace(replica, name, dest, ours="digest" in cards[name])
            fresh = True
        elif name not in cards:
            fresh = await self.load(replica, name, dest)
        if fresh or name not in cards:
            cards = await self.cards(replica)
            if name not in cards:
                raise SyncError(
                    f"{name} is not in {replica}/v1/models after loading", UNAVAILABLE, step="models"
                )
        try:
            verification = await self.verify(published, replica, cards[name], expected, fresh)
        except SyncError:
            if fresh:  # weights this attempt loaded and could not verify must not answer
                await self.unload(replica, name, quiet=True)
            raise
        if self.settings.probe:
            await self.probe(name)
        return verification

    async def prepare_copy(self, published: AdapterPublished, dest: Path) -> str:
        """Copy (or reuse) the adapter folder and check it has the published digest; returns that digest."""
        prefix = published.object_prefix
        copied = await self._copy(prefix, dest)
        expected = await self.expected_digest(published)
        local = await self._local_digest(dest)
        if local != expected and not copied:
            log.warning(
                "%s has digest %s, not the published %s (a stale or damaged copy): copying it again",
                dest,
                local,
                expected,
            )
            await asyncio.to_thread(shutil.rmtree, dest, True)
            await self._copy(prefix, dest)
            local = await self._local_digest(dest)
        if local != expected:
            await asyncio.to_thread(shutil.rmtree, dest, True)
            raise SyncError(
                _digest_mismatch(f"the copy of {prefix} from the object store", local, expected)
                + " (the stored files are not the published ones); nothing was loaded",
                FAILED_PRECONDITION,
                retry=False,
                step="copy",
            )
        return expected

    async def _copy(self, prefix: str, dest: Path) -> bool:
        try:
            copied = await asyncio.to_thread(copy_adapter, self.store, prefix, dest)
        except SyncError:
            raise
        except Exception as err:  # the store's own errors name the key
            raise SyncError(f"copy from the object store failed: {err}", UNAVAILABLE, step="copy") from err
        if copied:
            log.info("copied %s to %s", prefix, dest)
        return copied

    @staticmethod
    async def _local_digest(dest: Path) -> str:
        try:
            return (await asyncio.to_thread(folder_digest, dest)).digest
        except DigestError as err:
            raise SyncError(str(err), FAILED_PRECONDITION, retry=False, step="copy") from err

    async def expected_digest(self, published: AdapterPublished) -> str:
        """The version's published digest: the event's, else its manifest's, else adapter sync's record,
        else computed now from the object store and recorded (an adapter published before digests)."""
        key = (published.name, published.version)
        if key not in self.digests:
            self.digests[key] = published.content_digest or await asyncio.to_thread(
                self._stored_digest, published
            )
        return self.digests[key]

    def _stored_digest(self, p: AdapterPublished) -> str:
        with contextlib.suppress(ObjectNotFoundError, ValueError, AttributeError):
            manifest = json.loads(self.store.get_bytes(p.object_prefix + "manifest.json"))
            value = (manifest.get("digest") or {}).get("value", "")
            if is_digest(value):
                return str(value)
        record = read_identity(self.store, p.name, p.version)
        if is_digest(record.get("digest", "")):
            return str(record["digest"])
        keys = {info.key for info in self.store.list(p.object_prefix)}
        try:
            computed = objects_digest(p.object_prefix, keys, self.store.open)
        except DigestError as err:
            raise SyncError(str(err), FAILED_PRECONDITION, retry=False, step="copy") from err
        record.update(
            adapter_id=f"{p.name}/v{p.version}",
            digest=computed.digest,
            digest_source="computed-at-first-sync",
            digest_files=computed.to_json()["files"],
            digest_recorded_at=_utc_now(),
        )
        write_identity(self.store, p.name, p.version, record)
        log.warning(
            "adapter %s/v%d was published without a content digest: computed %s from %s at its first "
            "sync and recorded it in %s",
            p.name,
            p.version,
            computed.digest,
            p.object_prefix,
            identity_key(p.name, p.version),
        )
        return computed.digest

    # ------------------------------------------------------------------ replica calls

    async def cards(self, replica: str) -> dict[str, dict[str, Any]]:
        """The replica's ``/v1/models`` entries by id."""
        http = await self.http()
        async with http.get(f"{replica}/v1/models") as r:
            models = await r.json(content_type=None) if r.status == 200 else None
        if not isinstance(models, dict) or not isinstance(models.get("data"), list):
            raise SyncError(f"{replica}/v1/models answered {r.status}", UNAVAILABLE, step="models")
        return {m["id"]: m for m in models["data"] if isinstance(m, dict) and isinstance(m.get("id"), str)}

    async def load(self, replica: str, name: str, dest: Path, *, inplace: bool = False) -> bool:
        """Load ``dest`` as ``name``; False when the replica says it already has the name (a race)."""
        body: dict[str, Any] = {"lora_name": name, "lora_path": str(dest)}
        if inplace:
            body["load_inplace"] = True
        http = await self.http()
        async with http.post(f"{replica}/v1/load_lora_adapter", json=body) as r:
            text = await r.text()
            if r.status == 400 and "already" in text.lower() and not inplace:
                return False
            if r.status != 200:
                retry = r.status >= 500 or r.status in (404, 408, 429)
                raise SyncError(
                    f"load_lora_adapter answered {r.status}: {text[:500]}",
                    UNAVAILABLE if retry else FAILED_PRECONDITION,
                    retry=retry,
                    step="load",
                )
        return True

    async def unload(self, replica: str, name: str, *, quiet: bool = False) -> None:
        try:
            http = await self.http()
            async with http.post(f"{replica}/v1/unload_lora_adapter", json={"lora_name": name}) as r:
                if r.status not in (200, 404):
                    raise SyncError(
                        f"unload_lora_adapter of {name} answered {r.status}: {(await r.text())[:500]}",
                        UNAVAILABLE,
                        step="unload",
                    )
        except (SyncError, aiohttp.ClientError, TimeoutError, OSError) as err:
            if not quiet:
                raise
            log.error("could not unload %s from %s: %s", name, replica, err)

    async def replace(self, replica: str, name: str, dest: Path, *, ours: bool) -> None:
        """A forced reload: the name's old weights and every state cached for them go. On our model
        server (it reports digests) in one call, ``load_inplace``; on vLLM unload, then load, so the
        name gets a new LoRA id and no prefix-cache block of the old weights can be reused."""
        log.warning("forced reload of %s on %s from %s", name, replica, dest)
        if ours:
            await self.load(replica, name, dest, inplace=True)
            return
        await self.unload(replica, name)
        await self.load(replica, name, dest)

    async def verify(
        self, p: AdapterPublished, replica: str, card: dict[str, Any], expected: str, fresh: bool
    ) -> int:
        """Check that what ``replica`` serves under the name is the published content."""
        name = card["id"]
        again = (
            f"; a same-name reload is refused unless forced (python -m flywheel_gateway adapter-sync "
            f"--reload {p.name}/v{p.version} --force)"
        )
        reported = card.get("digest")
        if reported:
            if reported == expected:
                return DIGEST
            what = f"{name} as {'loaded now' if fresh else 'already served'} by {replica}"
            raise SyncError(
                _digest_mismatch(what, str(reported), expected) + ("" if fresh else again),
                FAILED_PRECONDITION,
                retry=fresh,  # loaded now from a checked folder: it may have changed under the load
                step="digest",
            )
        served = await self.fingerprint(replica, name)
        engine = str(card.get("owned_by") or "unknown")
        record = await asyncio.to_thread(read_identity, self.store, p.name, p.version)
        reference = (record.get("fingerprints") or {}).get(engine)
        if reference is None:
            if not fresh:
                raise SyncError(
                    f"cannot verify {name} on {replica}: it reports no digest, it served the name before "
                    f"this load, and there is no reference fingerprint for {engine!r} yet" + again,
                    FAILED_PRECONDITION,
                    retry=False,
                    step="fingerprint",
                )
            # The first load of this version on this kind of server, from a folder with the
            # published digest: its answer becomes the reference.
            record.setdefault("adapter_id", f"{p.name}/v{p.version}")
            record.setdefault("digest", expected)
            record.setdefault("fingerprints", {})[engine] = {
                **served.to_json(),
                "tolerance_hint": self.settings.fingerprint_tolerance,
                "recorded_by": replica,
                "recorded_at": _utc_now(),
                "digest": expected,
            }
            await asyncio.to_thread(write_identity, self.store, p.name, p.version, record)
            log.info("recorded the %s log-prob fingerprint of %s from %s", engine, name, replica)
            return FINGERPRINT_RECORDED
        problem = fp.compare(fp.Fingerprint.from_json(reference), served, self.settings.fingerprint_tolerance)
        if problem:
            raise SyncError(
                f"log-prob fingerprint mismatch: {name} on {replica} does not answer like the reference "
                f"recorded for digest {expected} by {reference.get('recorded_by')}: {problem}"
                + ("" if fresh else again),
                FAILED_PRECONDITION,
                retry=fresh,
                step="fingerprint",
            )
        return FINGERPRINT

    async def fingerprint(self, replica: str, name: str) -> fp.Fingerprint:
        http = await self.http()
        async with http.post(f"{replica}/v1/completions", json=fp.request_body(name)) as r:
            text = await r.text()
            if r.status != 200:
                raise SyncError(
                    f"the fingerprint request to {replica} answered {r.status}: {text[:500]}",
                    UNAVAILABLE if r.status >= 500 else FAILED_PRECONDITION,
                    retry=r.status >= 500,
                    step="fingerprint",
                )
        with contextlib.suppress(ValueError):
            served = fp.from_completion(json.loads(text))
            if served is not None:
                return served
        raise SyncError(
            f"{replica} reports no digest for {name} and its /v1/completions answer has no log-probs: "
            "nothing proves which weights it serves",
            FAILED_PRECONDITION,
            retry=False,
            step="fingerprint",
        )

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
        self, p: AdapterPublished, replica: str, outcome: Outcome, ready: int, repeat: str = ""
    ) -> None:
        seconds = outcome.seconds
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
            content_digest=self.digests.get((p.name, p.version), p.content_digest),
            verification=outcome.verification,  # type: ignore[arg-type]  # an AdapterVerification value
        )
        await self.bus.publish(LOADED, msg, msg_id=event_id)
        log.info(
            "adapter %s loaded on %s in %.2f s, verified by %s",
            name,
            replica,
            seconds,
            events_pb2.AdapterVerification.Name(outcome.verification),
        )

    async def emit_failed(
        self, p: AdapterPublished, replica: str, attempts: int, error: SyncError, repeat: str = ""
    ) -> None:
        event_id = f"adapter-load-failed:{p.name}/{p.version}:{replica}{repeat}"
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

    async def replica_models(self, replica: str) -> dict[str, dict[str, Any]] | None:
        try:
            return await self.cards(replica)
        except Exception as err:
            log.warning("cannot list models of %s: %s", replica, err)
            return None

    async def reconcile(self) -> int:
        """Load on each replica every published adapter it lacks, and check the digest of those it
        has (when both are known; the check refuses and reports a mismatch once); returns how many
        versions it synced."""
        await self.read_published()
        loads = 0
        async with self._lock:
            for replica in self.settings.replicas:
                have = await self.replica_models(replica)
                if have is None:
                    continue
                for (name, version), p in sorted(self.published.items()):
                    if (name, version, replica) in self.failed:
                        continue
                    card = have.get(served_name(name, version))
                    if card is not None:
                        known = self.digests.get((name, version)) or p.content_digest
                        if not card.get("digest") or not known or card["digest"] == known:
                            continue
                        log.warning("reconcile: %s serves %s with digest %s, not %s",
                                    replica, card["id"], card["digest"], known)  # fmt: skip
                    else:
                        log.info("reconcile: %s lacks %s", replica, served_name(name, version))
                    loads += 1
                    # A reload (the replica restarted) is a new fact: its event id must not be
                    # deduplicated against the first load's.
                    await self.sync(p, [replica], repeat=f":reconcile-{time.time_ns() // 1_000_000}")
        return loads

    async def reload(self, name: str, version: int, *, force: bool) -> list[Outcome]:
        """Sync one published version again on every replica (the operator's reload). Without
        ``force`` a replica that already serves the name keeps it and is only verified (a mismatch
        is refused); with it, each replica drops the name's weights and cached state and loads the
        published folder again (:meth:`replace`)."""
        await self.read_published()
        p = self.published.get((name, version))
        if p is None:
            raise SyncError(
                f"no adapter.published event for {name}/v{version} in the stream", NOT_FOUND, retry=False
            )
        async with self._lock:
            return await self.sync(
                p, self.settings.replicas, repeat=f":reload-{time.time_ns() // 1_000_000}", force=force
            )


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
            raise_if_cancelling()  # a cancel lost in a NATS request must not start a long sleep
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


ADAPTER_ID_RE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9._-]{0,62})/v(?P<version>[1-9][0-9]{0,8})$")


async def reload_adapter(settings: AdapterSyncSettings, adapter_id: str, *, force: bool) -> list[Outcome]:
    """Sync one published version again on every replica (``adapter-sync --reload <name>/v<n>``);
    the events go out as in the consumer, with ``:reload-<ms>`` event ids."""
    match = ADAPTER_ID_RE.match(adapter_id)
    if match is None:
        raise SyncError(
            f"adapter id {adapter_id[:100]!r} must look like <name>/v<version>, e.g. coder/v3",
            INVALID_ARGUMENT,
            retry=False,
        )
    store = open_object_store(settings.object_store)
    bus = await EventBus.connect(settings.nats, name=f"{PRODUCER}-reload")
    sync = AdapterSync(settings, bus, store)
    try:
        await bus.ensure_stream()
        return await sync.reload(match["name"], int(match["version"]), force=force)
    finally:
        await bus.close()
        await sync.close()
        store.close()


def main(reload: str | None = None, force: bool = False) -> int:
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
    if reload is not None:
        try:
            outcomes = asyncio.run(reload_adapter(settings, reload, force=force))
        except SyncError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for o in outcomes:
            how = events_pb2.AdapterVerification.Name(o.verification)
            print(f"{o.replica}: loaded, {how}" if o.ok else f"{o.replica}: FAILED: {o.error}")
        return 0 if all(o.ok for o in outcomes) else 1
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
