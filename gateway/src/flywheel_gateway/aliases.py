"""Served aliases at the gateway: resolution, canary and shadow routing, live signals, feedback.

The orchestrator writes the alias table (``flywheel_common.aliases``: one immutable revision object
per change under ``aliases/<name>/``); every gateway replica only reads it and writes the live
signals of the canaries it serves.

* **Resolution.** Each replica keeps an :class:`~flywheel_common.aliases.AliasCache`, re-read in a
  thread every ``FLYWHEEL_GATEWAY_ALIAS_REFRESH_S`` seconds and at once when a
  ``flywheel.alias.changed`` event arrives (a plain NATS subscription: the poll is the source of
  truth, the event only makes it sooner). A failed refresh is logged and the last table read stays
  in use. Aliases are on when the object store is configured (``FLYWHEEL_OBJECT_STORE_BACKEND`` or
  ``…_ROOT`` set); the event only when ``FLYWHEEL_NATS_URL`` is.
* **Routing.** A request naming a served alias is answered by the alias's target (or, during a
  canary, by the candidate with probability ``policy.fraction``) exactly as if the caller had named
  that model. Real routes win over an alias of the same name (warned once).
* **Shadow.** The caller gets the target's answer; a non-streaming copy goes to the candidate in
  the background, at most ``FLYWHEEL_GATEWAY_ALIAS_SHADOW_MAX_IN_FLIGHT`` at a time (more are
  dropped and counted in the log); its answer is discarded and never captured.
* **Live signals.** While a canary (or shadow) runs, every alias request counts into this
  replica's :class:`~flywheel_common.aliases.ArmCounters` of the arm that answered, keyed by
  (alias, the revision that started the canary); written every
  ``FLYWHEEL_GATEWAY_ALIAS_STATS_FLUSH_S`` seconds and at shutdown. An *error* is a 5xx, a 404 (the
  arm's model is not served) or 429 from the arm, a transport failure or a timeout; any other 4xx
  is the caller's fault: it counts as a request but neither as an error nor in the latency.
* **Feedback.** ``POST /v1/feedback`` stores a caller's verdict on one answer and, when this
  replica served that answer for an alias during a canary, counts it into that arm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from flywheel.events.v1.events_pb2 import AliasChanged
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel_common import aliases as table
from flywheel_common.objectstore import ObjectStore, ObjectStoreSettings, open_object_store
from flywheel_gateway.asgi import Message, Receive, Send, openai_error, read_body, respond
from flywheel_gateway.settings import GatewaySettings

log = logging.getLogger("flywheel.gateway.aliases")

ALIAS_CHANGED = "flywheel.alias.changed"
HEADER_ALIAS = b"x-flywheel-alias"
HEADER_REVISION = b"x-flywheel-alias-revision"
HEADER_SERVED = b"x-flywheel-served-model"
#: Statuses of an arm's answer that count as the arm's error (besides 5xx): its model is not
#: served (404), or it is overloaded (429).
ARM_ERROR_STATUSES = frozenset({404, 429})
MAX_FEEDBACK_BYTES = 64 * 1024
MAX_COMMENT = 2000
FEEDBACK_FIELDS = ("id", "success", "score", "comment")
#: The longest answer body read back to find its id (and rewrite its ``model``); longer answers
#: pass through untouched.
MAX_INSPECTED_BYTES = 8 * 1024 * 1024


def object_store_configured(env: os._Environ[str] | dict[str, str] | None = None) -> bool:
    """Whether this process was given an object store (aliases are off without one)."""
    env = os.environ if env is None else env
    return any(env.get(f"FLYWHEEL_OBJECT_STORE_{name}") for name in ("BACKEND", "ROOT", "ENDPOINT"))


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Resolution:
    """How one request to an alias is served."""

    alias: str
    #: the alias's current revision
    revision: int
    #: gateway model name of the arm that answers
    model: str
    #: ``target`` or ``canary``
    arm: str
    #: the revision the running canary started at (the key of its live signals); None without one
    stats_revision: int | None = None
    #: the candidate that gets a copy of the request (shadow mode)
    shadow: str | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [(HEADER_ALIAS, self.alias.encode()), (HEADER_REVISION, str(self.revision).encode())]

    def metadata(self, arm: str | None = None) -> dict[str, Any]:
        """What capture reads from a call's metadata (both paths carry it)."""
        return {
            "flywheel_alias": self.alias,
            "flywheel_alias_revision": self.revision,
            "flywheel_alias_arm": arm or self.arm,
            "flywheel_served_model": self.shadow if arm == "shadow" else self.model,
        }


def resolve_revision(name: str, rev: apb.AliasRevision, draw: Callable[[], float]) -> Resolution:
    """Which arm answers this request to ``name`` at revision ``rev`` (``draw`` gives [0, 1))."""
    target = rev.target.model
    if not rev.HasField("canary") or not rev.canary.candidate.model:
        return Resolution(name, rev.revision, target, "target")
    candidate = rev.canary.candidate.model
    policy = rev.canary.policy
    if policy.shadow:
        return Resolution(name, rev.revision, target, "target", rev.revision, shadow=candidate)
    fraction = policy.fraction if 0 < policy.fraction < 1 else 0.1
    if draw() < fraction:
        return Resolution(name, rev.revision, candidate, "canary", rev.revision)
    return Resolution(name, rev.revision, target, "target", rev.revision)


def is_arm_error(status: int | None) -> bool:
    return status is None or status >= 500 or status in ARM_ERROR_STATUSES


# ------------------------------------------------------------------------------------------ feedback


class FeedbackError(ValueError):
    """A bad feedback body; ``param`` names the field."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def parse_feedback(raw: bytes) -> dict[str, Any]:
    """The checked feedback body (``id``, ``success``, optional ``score`` and ``comment``)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise FeedbackError(f"request body is not valid JSON: {err}", None) from err
    if not isinstance(body, dict):
        raise FeedbackError("request body must be a JSON object", None)
    for name in body:
        if name not in FEEDBACK_FIELDS:
            raise FeedbackError(
                f"unknown field {str(name)[:64]!r}; feedback has {', '.join(FEEDBACK_FIELDS)}", str(name)[:64]
            )
    completion_id = body.get("id")
    if not isinstance(completion_id, str) or not completion_id:
        raise FeedbackError("'id' is required: the id of the answer (e.g. chatcmpl-…)", "id")
    try:
        table.feedback_key(completion_id)
    except ValueError as err:
        raise FeedbackError(f"'id': {err}", "id") from err
    success = body.get("success")
    if not isinstance(success, bool):
        raise FeedbackError("'success' is required and must be true or false", "success")
    out: dict[str, Any] = {"id": completion_id, "success": success}
    score = body.get("score")
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise FeedbackError("'score' must be a number in [0, 1]", "score")
        if not 0 <= score <= 1:
            raise FeedbackError(f"'score' is {score}; it must be in [0, 1]", "score")
        out["score"] = float(score)
    comment = body.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise FeedbackError("'comment' must be a string", "comment")
        if len(comment) > MAX_COMMENT:
            raise FeedbackError(f"'comment' is {len(comment)} characters; at most {MAX_COMMENT}", "comment")
        out["comment"] = comment
    return out


@dataclass
class _Served:
    """What this replica remembers of one alias answer, for feedback on it."""

    resolution: Resolution
    #: the arm model the answer came from
    arm_model: str
    #: the verdict already counted for it (a second report replaces the first)
    counted: bool | None = None


# ---------------------------------------------------------------------------------------- the service


@dataclass
class _Signals:
    arms: dict[str, table.ArmCounters] = field(default_factory=dict)
    dirty: bool = False


class AliasService:
    """The alias table of one gateway replica, and everything it records about alias traffic."""

    def __init__(
        self,
        settings: GatewaySettings,
        store: ObjectStore,
        *,
        nats_url: str | None = None,
        draw: Callable[[], float] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.nats_url = nats_url
        self.replica = settings.replica_id or default_replica_id()
        self.cache = table.AliasCache()
        self.served: dict[str, apb.AliasRevision] = {}
        self._draw = draw or random.random
        self._refresh_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._nc: Any = None
        self._signals: dict[tuple[str, int], _Signals] = {}
        self._flush_lock = asyncio.Lock()
        self._memory: OrderedDict[str, _Served] = OrderedDict()
        self._warned: set[str] = set()
        self._shadows: set[asyncio.Task[None]] = set()
        self.shadow_dropped = 0
        self._last_drop_log = 0.0

    @classmethod
    def from_environment(cls, settings: GatewaySettings) -> AliasService | None:
        """The service when an object store is configured, else None (aliases off)."""
        if not settings.aliases or not object_store_configured():
            log.info("served aliases are off: no object store configured (FLYWHEEL_OBJECT_STORE_*)")
            return None
        store = open_object_store(ObjectStoreSettings())
        return cls(settings, store, nats_url=os.environ.get("FLYWHEEL_NATS_URL") or None)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Read the table once (errors only logged), then keep it fresh and flush signals."""
        try:
            await asyncio.to_thread(self.store.ensure_ready)
        except Exception:
            log.exception("alias table: the object store is not ready; retried at each refresh")
        await self.refresh()
        self._tasks.append(asyncio.create_task(self._poll(), name="alias refresh"))
        self._tasks.append(asyncio.create_task(self._flush_loop(), name="alias stats flush"))
        if self.nats_url:
            self._tasks.append(asyncio.create_task(self._listen(), name="alias events"))

    async def close(self) -> None:
        """Stop refreshing, let shadow copies finish (briefly), write the signals a last time."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._shadows:
            await asyncio.wait(set(self._shadows), timeout=5)
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        await self.flush()
        with contextlib.suppress(Exception):
            self.store.close()

    async def refresh(self) -> bool:
        """Re-read the table in a thread; True when it changed. Errors are logged, the last table kept."""
        async with self._refresh_lock:
            try:
                changed = await asyncio.to_thread(self.cache.refresh, self.store)
            except Exception as err:
                log.warning("alias table: refresh failed, serving the last table read: %s", err)
                return False
            if changed:
                self.served = self.cache.served()
                shown = {n: f"{r.revision}:{r.target.model}" for n, r in sorted(self.served.items())}
                log.info("alias table changed: %s", shown or "no aliases")
            return changed

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.alias_refresh_s)
            self._wake.clear()
            await self.refresh()

    async def _listen(self) -> None:
        """Wake the refresh on ``flywheel.alias.changed`` (core NATS: nothing to ack, nothing kept)."""
        import nats

        async def on_change(msg: Any) -> None:
            try:
                event = AliasChanged.FromString(msg.data)
                log.info("alias %s changed (revision %d): refreshing", event.name, event.revision.revision)
            except Exception:
                log.info("alias changed (unreadable event): refreshing")
            self._wake.set()

        assert self.nats_url is not None
        try:
            self._nc = await nats.connect(
                self.nats_url, name=f"gateway-aliases-{self.replica}", max_reconnect_attempts=-1
            )
            await self._nc.subscribe(ALIAS_CHANGED, cb=on_change)
            log.info("alias table: listening to %s", ALIAS_CHANGED)
        except Exception as err:  # the poll still sees every change
            log.warning("alias table: no %s events (%s); polling only", ALIAS_CHANGED, err)

    # ------------------------------------------------------------------ resolution

    def resolve(self, model: str) -> Resolution | None:
        """How a request naming ``model`` is served when it is a served alias; None otherwise."""
        rev = self.served.get(model)
        if rev is None or not rev.target.model:
            return None
        return resolve_revision(model, rev, self._draw)

    def note_route(self, model: str) -> None:
        """``model`` is a real route: an alias of the same name is not served (warned once)."""
        if model in self.served and model not in self._warned:
            self._warned.add(model)
            log.warning("alias %s is not served: a route of the same name answers it", model)

    # ------------------------------------------------------------------ live signals

    def record(self, res: Resolution, arm_model: str, latency_ms: float, status: int | None) -> None:
        """Count one answer of ``arm_model`` (the caller's or a shadow copy's) while a canary runs."""
        if res.stats_revision is None:
            return
        signals = self._signals.setdefault((res.alias, res.stats_revision), _Signals())
        counters = signals.arms.setdefault(arm_model, table.ArmCounters())
        if status is not None and 400 <= status < 500 and status not in ARM_ERROR_STATUSES:
            counters.requests += 1  # the caller's mistake: neither an error nor a latency sample
        else:
            counters.record(latency_ms, is_arm_error(status))
        signals.dirty = True

    def signals(self, alias: str, revision: int) -> dict[str, table.ArmCounters]:
        found = self._signals.get((alias, revision))
        return dict(found.arms) if found else {}

    async def flush(self) -> None:
        """Write every changed counter set (this replica's file per canary)."""
        async with self._flush_lock:
            for (name, revision), signals in list(self._signals.items()):
                if not signals.dirty:
                    continue
                signals.dirty = False
                snapshot = {m: table.ArmCounters.from_json(c.to_json()) for m, c in signals.arms.items()}
                try:
                    await asyncio.to_thread(
                        table.write_stats, self.store, name, revision, self.replica, snapshot
                    )
                except Exception as err:
                    signals.dirty = True
                    log.warning("alias %s: live signals not written (retried): %s", name, err)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alias_stats_flush_s)
            await self.flush()

    # ------------------------------------------------------------------ feedback

    def remember(self, completion_id: str, res: Resolution, arm_model: str) -> None:
        self._memory[completion_id] = _Served(res, arm_model)
        self._memory.move_to_end(completion_id)
        while len(self._memory) > self.settings.alias_feedback_memory:
            self._memory.popitem(last=False)

    def recall(self, completion_id: str) -> Resolution | None:
        known = self._memory.get(completion_id)
        return known.resolution if known else None

    async def feedback(self, raw: bytes) -> dict[str, Any]:
        """Store one feedback report (``FeedbackError`` for a bad body); the answer's body."""
        body = parse_feedback(raw)
        known = self._memory.get(body["id"])
        record: dict[str, Any] = {
            **body,
            "alias": None,
            "alias_revision": None,
            "model": None,
            "replica": self.replica,
            "time": datetime.now(UTC).isoformat(),
        }
        if known is not None:
            res = known.resolution
            record.update(alias=res.alias, alias_revision=res.revision, model=known.arm_model)
            if res.stats_revision is not None:
                signals = self._signals.setdefault((res.alias, res.stats_revision), _Signals())
                counters = signals.arms.setdefault(known.arm_model, table.ArmCounters())
                if known.counted is None:
                    counters.feedback += 1
                    counters.feedback_success += int(body["success"])
                elif known.counted != body["success"]:  # a changed verdict replaces the first
                    counters.feedback_success += 1 if body["success"] else -1
                known.counted = body["success"]
                signals.dirty = True
        await asyncio.to_thread(table.write_feedback, self.store, body["id"], record)
        return {"object": "feedback", "id": body["id"], "recorded": True, "alias": record["alias"]}

    async def handle_feedback(self, receive: Receive, send: Send) -> None:
        """``POST /v1/feedback``."""
        raw = await read_body(receive, send, MAX_FEEDBACK_BYTES, "feedback body")
        if raw is None:
            return
        try:
            answer = await self.feedback(raw)
        except FeedbackError as err:
            await respond(
                send, 400, openai_error(400, str(err), "invalid_request_error", "invalid_value", err.param)
            )
            return
        except Exception as err:
            log.exception("feedback not stored")
            await respond(send, 503, openai_error(503, f"feedback could not be stored: {err}", "api_error"))
            return
        await respond(send, 200, orjson.dumps(answer))

    # ------------------------------------------------------------------ shadow copies

    def shadow(self, call: Callable[[], Awaitable[None]]) -> bool:
        """Run ``call`` in the background when fewer than the limit are in flight; False if dropped."""
        if len(self._shadows) >= self.settings.alias_shadow_max_in_flight:
            self.shadow_dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log >= 10:
                self._last_drop_log = now
                log.warning(
                    "shadow copies dropped: %d so far (at most %d in flight)",
                    self.shadow_dropped,
                    self.settings.alias_shadow_max_in_flight,
                )
            return False
        task = asyncio.ensure_future(call())
        self._shadows.add(task)
        task.add_done_callback(self._shadow_done)
        return True

    def _shadow_done(self, task: asyncio.Task[None]) -> None:
        self._shadows.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("shadow copy failed: %s", task.exception())

    # ------------------------------------------------------------------ /v1/models

    def model_entries(self, upstream: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """``GET /v1/models`` entries of the served aliases; ``upstream`` maps the gateway names of
        the model server's entries to those entries (for the target's parent)."""
        entries = []
        for name, rev in sorted(self.served.items()):
            target = rev.target.model
            parent = (upstream.get(target) or {}).get("parent")
            adapter = None
            if rev.target.HasField("adapter"):
                a = rev.target.adapter
                adapter = {"name": a.name, "version": a.version, "digest": a.digest or None}
            canary = None
            if rev.HasField("canary") and rev.canary.candidate.model:
                policy = rev.canary.policy
                canary = {
                    "model": rev.canary.candidate.model,
                    "fraction": policy.fraction if 0 < policy.fraction < 1 else 0.1,
                    "shadow": policy.shadow,
                }
            entries.append(
                {
                    "id": name,
                    "object": "model",
                    "created": rev.create_time.seconds,
                    "owned_by": "flywheel",
                    "root": target,
                    "parent": parent if isinstance(parent, str) else None,
                    "flywheel_alias": {
                        "target": target,
                        "revision": rev.revision,
                        "adapter": adapter,
                        "canary": canary,
                    },
                }
            )
        return entries


# ------------------------------------------------------------------------------ the answer's observer


class AliasResponse:
    """Wraps ``send`` for one alias request: adds the alias headers, shows the alias as ``model``
    (when ``rewrite_model``; the fast path does it itself), and learns the status, the answer's
    id and its latency for the live signals and feedback."""

    def __init__(self, send: Send, res: Resolution, service: AliasService, *, rewrite_model: bool) -> None:
        self.send = send
        self.res = res
        self.service = service
        self.rewrite_model = rewrite_model
        self.status: int | None = None
        self.completion_id: str | None = None
        self.done = False
        self.t0 = time.perf_counter()
        self._start: Message | None = None
        self._parts: list[bytes] = []
        self._mode = "pass"  # pass | json (buffered) | sse (line by line)
        self._pending = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._on_start(message)
        elif message["type"] == "http.response.body":
            await self._on_body(message)
        else:
            await self.send(message)

    async def _on_start(self, message: Message) -> None:
        self.status = int(message["status"])
        headers = [
            (k, v)
            for k, v in message.get("headers") or []
            if k.lower() not in (HEADER_ALIAS, HEADER_REVISION)
        ]
        headers += self.res.headers()
        if not any(k.lower() == HEADER_SERVED for k, _ in headers):
            headers.append((HEADER_SERVED, self.res.model.encode()))
        content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        if self.status == 200 and content_type.startswith(b"application/json"):
            self._mode = "json"
            self._start = {**message, "headers": headers}
            return
        if self.status == 200 and content_type.startswith(b"text/event-stream"):
            self._mode = "sse"
        await self.send({**message, "headers": headers})

    async def _on_body(self, message: Message) -> None:
        more = bool(message.get("more_body"))
        body = message.get("body", b"")
        if self._mode == "json":
            self._parts.append(body)
            if more and sum(map(len, self._parts)) <= MAX_INSPECTED_BYTES:
                return
            await self._flush_json(more)
            return
        if self._mode == "sse":
            body = self._sse(body, final=not more)
        await self.send({**message, "body": body})
        if not more:
            self._finish()

    async def _flush_json(self, more: bool) -> None:
        assert self._start is not None
        raw = b"".join(self._parts)
        self._parts = []
        self._mode = "pass"
        data = None
        if not more:
            with contextlib.suppress(orjson.JSONDecodeError):
                data = orjson.loads(raw)
        if isinstance(data, dict):
            if isinstance(data.get("id"), str):
                self.completion_id = data["id"]
            if self.rewrite_model and "model" in data:
                data["model"] = self.res.alias
                raw = orjson.dumps(data)
        headers = [(k, v) for k, v in self._start["headers"] if k.lower() != b"content-length"]
        if not more:
            headers.append((b"content-length", str(len(raw)).encode()))
        await self.send({**self._start, "headers": headers})
        await self.send({"type": "http.response.body", "body": raw, "more_body": more})
        if not more:
            self._finish()

    def _sse(self, body: bytes, final: bool) -> bytes:
        """Learn the id from the stream's chunks; rewrite their ``model`` when asked. Whole lines only."""
        text = self._pending + body
        if not self.rewrite_model and self.completion_id is not None:
            self._pending = b""
            return text
        if final:
            lines, self._pending = text.split(b"\n"), b""
        else:
            *lines, self._pending = text.split(b"\n")
        out = []
        for line in lines:
            if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
                try:
                    chunk = orjson.loads(line[5:])
                except orjson.JSONDecodeError:
                    out.append(line)
                    continue
                if isinstance(chunk, dict):
                    if self.completion_id is None and isinstance(chunk.get("id"), str):
                        self.completion_id = chunk["id"]
                    if self.rewrite_model and "model" in chunk:
                        chunk["model"] = self.res.alias
                        line = b"data: " + orjson.dumps(chunk)
            out.append(line)
        joined = b"\n".join(out)
        return joined if final else joined + b"\n" if lines else b""

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.service.record(self.res, self.res.model, (time.perf_counter() - self.t0) * 1000, self.status)
        if self.status == 200 and self.completion_id:
            self.service.remember(self.completion_id, self.res, self.res.model)

    def abandon(self) -> None:
        """The request ended without a whole answer: a failure before the answer started counts as
        the arm's error; a caller who went away mid-answer is not counted."""
        if not self.done and self.status is None:
            self.done = True
            self.service.record(self.res, self.res.model, 0.0, None)


class ShadowSink:
    """``send`` for a shadow copy: keeps the status, discards the answer."""

    def __init__(self) -> None:
        self.status: int | None = None

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
