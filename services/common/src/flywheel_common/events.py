"""Flywheel's event bus: a thin layer over NATS JetStream (nats-py).

Conventions
-----------
* One stream (``NatsSettings.stream``, default ``FLYWHEEL``) captures every subject ``flywheel.>``.
* Subjects are ``flywheel.<area>.<event>``, e.g. ``flywheel.trajectory.stored``.
* A payload is one serialized protobuf message. Two headers travel with it:

  - ``Nats-Msg-Id``: the publisher's idempotency key. JetStream stores a message once per id
    within the stream's duplicate window (``duplicate_window_s``), so a publisher that retries
    after a timeout never creates a second event. Use an id derived from the thing the event is
    about (``"trajectory-stored:<trajectory id>"``), not a random one.
  - ``Flywheel-Event-Type``: the protobuf full name (``flywheel.v1.TrajectoryStored``), checked
    by :meth:`Event.parse`.

Delivery guarantees
-------------------
Consumers are *durable pull* consumers with explicit acks: at-least-once delivery. A message is
acked only after the handler returned; a handler that raises gets the message back later (nak
with an exponential back-off delay); a consumer that dies without acking gets it back from
JetStream after ``ack_wait_s``. Handlers must therefore be idempotent (``event.msg_id`` is a good
deduplication key). Several processes subscribing with the same durable name share the work.

Usage::

    bus = await EventBus.connect(NatsSettings(), name="trajectory-store")
    await bus.ensure_stream()
    await bus.publish("flywheel.trajectory.stored", msg, msg_id=f"trajectory-stored:{msg.id}")

    async def on_stored(event: Event) -> None:
        stored = event.parse(TrajectoryStored)
        ...

    handle = await bus.subscribe("dataset-svc", "flywheel.trajectory.stored", on_stored)
    ...
    await bus.close()  # stops the consumers (in-flight handlers finish and are acked), drains
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "EVENT_TYPE_HEADER",
    "MSG_ID_HEADER",
    "Event",
    "EventBus",
    "EventBusError",
    "EventTypeError",
    "Handler",
    "NatsSettings",
    "Subscription",
]

logger = logging.getLogger("flywheel.events")

MSG_ID_HEADER = "Nats-Msg-Id"  # JetStream's deduplication header
EVENT_TYPE_HEADER = "Flywheel-Event-Type"  # protobuf full name of the payload
SUBJECT_ROOT = "flywheel"

# JetStream API error code for "stream name already in use with a different configuration".
_ERR_STREAM_NAME_IN_USE = 10058

M = TypeVar("M", bound=Message)


class NatsSettings(BaseSettings):
    """Connection and stream settings; every field can be set from ``FLYWHEEL_NATS_<FIELD>``.

    List fields take JSON in the environment: ``FLYWHEEL_NATS_SUBJECTS='["flywheel.>"]'``.
    """

    model_config = SettingsConfigDict(env_prefix="FLYWHEEL_NATS_", extra="ignore")

    url: str = Field(
        "nats://127.0.0.1:4222",
        description="NATS server URL; several servers of one cluster may be given comma-separated.",
    )
    stream: str = Field(
        "FLYWHEEL",
        pattern=r"^[^\s.*>/\\]+$",
        description="Name of the JetStream stream that stores every Flywheel event.",
    )
    subjects: list[str] = Field(
        default_factory=lambda: ["flywheel.>"],
        min_length=1,
        description="Subjects the stream captures. Two streams of one server may not overlap.",
    )
    duplicate_window_s: float = Field(
        120.0,
        gt=0,
        description="JetStream deduplication window: a Nats-Msg-Id seen within this many seconds is "
        "stored only once (the PubAck then says duplicate=True).",
    )
    ack_wait_s: float = Field(
        30.0,
        gt=0,
        description="Default time a consumer has to ack a delivered message before JetStream "
        "redelivers it (a crashed consumer's messages come back after this). Handlers that run "
        "longer are kept alive with in-progress acks.",
    )
    max_deliver: int = Field(
        10,
        ge=1,
        description="Default maximum number of deliveries of one message to a consumer; after the "
        "last failed attempt the message is terminated (logged as an error, not redelivered).",
    )
    storage: Literal["file", "memory"] = Field(
        "file",
        description="Stream storage: 'file' survives a server restart, 'memory' does not.",
    )
    connect_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long EventBus.connect keeps trying to reach the server before it fails "
        "(it retries, so services may start before NATS is up).",
    )
    retry_delay_s: float = Field(
        1.0,
        ge=0,
        description="Back-off before redelivering a message whose handler raised; doubles with "
        "each delivery (1, 2, 4, ... s) up to retry_delay_max_s.",
    )
    retry_delay_max_s: float = Field(
        60.0,
        ge=0,
        description="Upper bound of the redelivery back-off.",
    )
    fetch_timeout_s: float = Field(
        5.0,
        gt=0,
        description="How long one pull request waits for messages before it is renewed.",
    )

    @property
    def servers(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]


class EventBusError(RuntimeError):
    """The event bus cannot do what was asked (no stream for a subject, incompatible stream, ...)."""


class EventTypeError(ValueError):
    """An event's payload is not of the protobuf type the handler expects."""


# --------------------------------------------------------------------------- validation

_BAD_TOKEN_CHARS = re.compile(r"[\s*>]")


def raise_if_cancelling() -> None:
    """Raise CancelledError when the current task has been asked to stop.

    Python 3.11's ``asyncio.wait_for`` loses a cancel that arrives just as the awaited future
    completes (it returns the result; fixed in 3.12, python/cpython#86296), and nats-py's requests
    go through it. A task cancelled at that moment would carry on — into an hour's sleep, say —
    although ``task.cancelling()`` says it should stop; call this after such awaits."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _check_subject(subject: object, *, allow_wildcards: bool, what: str = "subject") -> str:
    """Validate a ``flywheel.<area>.<event>`` subject and return it; ValueError says what is wrong."""
    if not isinstance(subject, str):
        raise ValueError(f"event {what} must be a str, got {type(subject).__name__}")
    if not subject.startswith(SUBJECT_ROOT + "."):
        raise ValueError(f"event {what} {subject!r} must start with '{SUBJECT_ROOT}.'")
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if token == "":
            raise ValueError(f"event {what} {subject!r} has an empty token (leading, trailing or '..')")
        if allow_wildcards and (token == "*" or (token == ">" and i == len(tokens) - 1)):
            continue
        if "*" in token or ">" in token:
            if allow_wildcards:
                raise ValueError(
                    f"event {what} {subject!r}: wildcards must be whole tokens ('*', or '>' at the end)"
                )
            raise ValueError(f"event {what} {subject!r} must not contain wildcards ('*' or '>')")
        if _BAD_TOKEN_CHARS.search(token):
            raise ValueError(f"event {what} {subject!r} must not contain whitespace")
    return subject


def _check_msg_id(msg_id: object) -> str:
    if not isinstance(msg_id, str) or not msg_id.strip():
        raise ValueError(f"msg_id must be a non-empty string (the deduplication key), got {msg_id!r}")
    if "\r" in msg_id or "\n" in msg_id:
        raise ValueError(f"msg_id {msg_id!r} must not contain line breaks (it travels in a header)")
    return msg_id


def _check_durable(durable: object) -> str:
    if not isinstance(durable, str) or not durable or re.search(r"[\s.*>/\\]", durable):
        raise ValueError(
            f"durable consumer name {durable!r} must be a non-empty string without whitespace, "
            "'.', '*', '>', '/' or '\\'"
        )
    return durable


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    """One delivered message, as handlers see it."""

    subject: str
    data: bytes
    headers: dict[str, str]
    msg_id: str | None
    event_type: str | None
    num_delivered: int  # 1 on first delivery; >1 means a redelivery
    stream_sequence: int = 0
    timestamp: datetime.datetime | None = None
    _msg: Msg | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_msg(cls, msg: Msg) -> Event:
        headers = dict(msg.headers or {})
        meta = msg.metadata
        return cls(
            subject=msg.subject,
            data=msg.data,
            headers=headers,
            msg_id=headers.get(MSG_ID_HEADER),
            event_type=headers.get(EVENT_TYPE_HEADER),
            num_delivered=meta.num_delivered,
            stream_sequence=meta.sequence.stream,
            timestamp=meta.timestamp,
            _msg=msg,
        )

    def parse(self, message_class: type[M]) -> M:
        """Decode the payload as ``message_class``; EventTypeError when the type header differs."""
        expected = message_class.DESCRIPTOR.full_name
        if self.event_type != expected:
            raise EventTypeError(
                f"event on {self.subject!r} (msg_id {self.msg_id!r}) has type {self.event_type!r}, "
                f"expected {expected!r}"
            )
        try:
            return message_class.FromString(self.data)
        except DecodeError as exc:
            raise EventTypeError(
                f"event on {self.subject!r} (msg_id {self.msg_id!r}) is not a valid {expected}: {exc}"
            ) from exc

    async def in_progress(self) -> None:
        """Tell JetStream the handler is still working (resets ack_wait). The bus already does this
        periodically while a handler runs; call it only for finer control."""
        if self._msg is not None:
            await self._msg.in_progress()


Handler = Callable[[Event], Awaitable[None]]


# --------------------------------------------------------------------------- subscriptions


class Subscription:
    """A running durable pull consumer; returned by :meth:`EventBus.subscribe`.

    A background task fetches up to ``batch`` messages at a time and hands them to the handler one
    by one, in order.
    """

    def __init__(
        self,
        bus: EventBus,
        psub: JetStreamContext.PullSubscription,
        *,
        durable: str,
        subject_filter: str,
        handler: Handler,
        batch: int,
        ack_wait_s: float,
        max_deliver: int,
    ) -> None:
        self.durable = durable
        self.subject_filter = subject_filter
        self._bus = bus
        self._psub = psub
        self._handler = handler
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self._max_deliver = max_deliver
        self._settings = bus.settings
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"flywheel-events[{durable}]")

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop fetching; wait for the handler in progress to finish and its ack to be sent.

        Messages fetched but not yet handled are nak'ed so that JetStream redelivers them at once.
        With ``grace_s``, a handler still running after that many seconds is cancelled (its message
        is then redelivered after ack_wait).
        """
        self._stopping.set()
        if asyncio.current_task() is self._task:
            return  # called from inside the handler: the loop ends once the handler returns
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_s)
        except TimeoutError:
            logger.warning("consumer %s: handler still running after %s s; cancelling", self.durable, grace_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        finally:
            self._bus._subscriptions.discard(self)

    async def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await self._fetch()
                    if msgs:
                        await self._process(msgs)
                except Exception:
                    # A bug here must not silently end the consumer: log, pause, go on. Unacked
                    # messages are redelivered by JetStream.
                    logger.exception("consumer %s: unexpected error; continuing", self.durable)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), 1.0)
        finally:
            # Remove the delivery inbox now rather than leave it to nc.drain(): nats-py's drain
            # waits until the subscription's queue is empty, and a pull subscription keeps the
            # late "408 request timeout" status of each expired fetch there, so drain would hang
            # until drain_timeout (30 s by default).
            with contextlib.suppress(Exception):
                await self._psub.unsubscribe()

    async def _fetch(self) -> list[Msg]:
        """One pull request; returns [] on timeout or when stop() interrupts it."""
        fetch = asyncio.ensure_future(self._psub.fetch(self._batch, timeout=self._settings.fetch_timeout_s))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not fetch.done():
                # Interrupted by stop(): abandon the pull request. A message the server was already
                # sending us is not lost: unacked, it is redelivered after ack_wait.
                fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fetch
        if fetch.cancelled():
            return []
        try:
            return fetch.result()
        except nats.errors.TimeoutError:  # no message within fetch_timeout_s (FetchTimeoutError too)
            return []
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            logger.info("consumer %s: connection closed, stopping", self.durable)
            self._stopping.set()
            return []
        except Exception as exc:  # e.g. consumer deleted, or a reconnect in progress
            logger.warning("consumer %s: fetch failed (%s); retrying", self.durable, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 1.0)
            return []

    async def _process(self, msgs: list[Msg]) -> None:
        pending = list(msgs)  # fetched, not yet handled: kept alive by _keep_alive
        keep_alive = asyncio.create_task(self._keep_alive(pending))
        try:
            for msg in msgs:
                if self._stopping.is_set():
                    # Give back what we will not handle, for immediate redelivery.
                    await self._settle(msg, "nak")
                else:
                    await self._handle(msg)
                pending.remove(msg)
        finally:
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive

    async def _keep_alive(self, pending: list[Msg]) -> None:
        """Send in-progress acks so slow handlers (and the rest of their batch) are not redelivered."""
        interval = max(self._ack_wait_s / 2, 0.1)
        while True:
            await asyncio.sleep(interval)
            for msg in list(pending):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _handle(self, msg: Msg) -> None:
        event = Event.from_msg(msg)
        try:
            await self._handler(event)
        except Exception:
            if event.num_delivered >= self._max_deliver:
                logger.exception(
                    "consumer %s: handler failed on %s (msg_id %s, delivery %d of %d); giving up",
                    self.durable, event.subject, event.msg_id, event.num_delivered, self._max_deliver,
                )  # fmt: skip
                await self._settle(msg, "term")
            else:
                delay = min(
                    self._settings.retry_delay_s * 2 ** (event.num_delivered - 1),
                    self._settings.retry_delay_max_s,
                )
                logger.warning(
                    "consumer %s: handler failed on %s (msg_id %s, delivery %d of %d); retry in %.1f s",
                    self.durable, event.subject, event.msg_id, event.num_delivered, self._max_deliver, delay,
                    exc_info=True,
                )  # fmt: skip
                await self._settle(msg, "nak", delay)
        else:
            await self._settle(msg, "ack")

    async def _settle(self, msg: Msg, how: Literal["ack", "nak", "term"], delay: float | None = None) -> None:
        try:
            if how == "ack":
                await msg.ack()
            elif how == "nak":
                await msg.nak(delay=delay)
            else:
                await msg.term()
        except Exception as exc:  # connection lost: JetStream redelivers after ack_wait
            logger.warning("consumer %s: could not %s message %s: %s", self.durable, how, msg.subject, exc)


# --------------------------------------------------------------------------- the bus


class EventBus:
    """A NATS connection with Flywheel's publish/subscribe conventions. Create with :meth:`connect`."""

    def __init__(self, nc: NatsClient, settings: NatsSettings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self._subscriptions: set[Subscription] = set()

    @classmethod
    async def connect(cls, settings: NatsSettings | None = None, *, name: str | None = None) -> EventBus:
        """Connect to NATS; keeps retrying for ``settings.connect_timeout_s``, then raises EventBusError.

        Once connected, the client reconnects forever after a connection loss.
        """
        settings = settings or NatsSettings()
        last_error: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            last_error[:] = [exc]
            logger.warning("nats: %s", exc)

        async def on_disconnected() -> None:
            if not nc.is_closed:  # (a close() of ours also reports a disconnection)
                logger.warning("nats: disconnected from %s", settings.url)

        async def on_reconnected() -> None:
            logger.info("nats: reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

        nc = NatsClient()
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=settings.servers,
                    name=name,
                    connect_timeout=max(1, int(min(settings.connect_timeout_s, 5))),
                    reconnect_time_wait=1,
                    max_reconnect_attempts=-1,  # -1: forever (bounded here by wait_for)
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                ),
                settings.connect_timeout_s,
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = last_error[0] if last_error else exc
            raise EventBusError(
                f"cannot connect to NATS at {settings.url} within {settings.connect_timeout_s:g} s: {cause!r}"
            ) from cause
        logger.info("connected to NATS at %s as %r", settings.url, name)
        return cls(nc, settings)

    async def __aenter__(self) -> EventBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ stream

    def _stream_config(self) -> api.StreamConfig:
        return api.StreamConfig(
            name=self.settings.stream,
            subjects=list(self.settings.subjects),
            storage=api.StorageType(self.settings.storage),
            retention=api.RetentionPolicy.LIMITS,
            duplicate_window=self.settings.duplicate_window_s,
        )

    async def ensure_stream(self) -> api.StreamInfo:
        """Create the stream, or update it when its subjects or duplicate window differ.

        Idempotent, and safe when several services do it at once. Settings this layer does not
        manage (limits an operator set on the stream) are kept.
        """
        wanted = self._stream_config()
        for _ in range(5):
            try:
                info = await self.js.stream_info(self.settings.stream)
            except nats.js.errors.NotFoundError:
                try:
                    info = await self.js.add_stream(wanted)
                    logger.info("created stream %s for %s", wanted.name, wanted.subjects)
                    return info
                except nats.js.errors.BadRequestError as exc:
                    if exc.err_code == _ERR_STREAM_NAME_IN_USE:
                        continue  # another service created it in between: compare and update
                    raise EventBusError(f"cannot create stream {wanted.name}: {exc.description}") from exc

            have = info.config
            have_storage = api.StorageType(have.storage or "file")
            if have_storage != wanted.storage:
                raise EventBusError(
                    f"stream {wanted.name} uses {have_storage.value} storage but settings ask for "
                    f"{self.settings.storage}; storage cannot be changed in place (delete the stream first)"
                )
            same_subjects = sorted(have.subjects or []) == sorted(wanted.subjects or [])
            same_window = abs((have.duplicate_window or 0) - wanted.duplicate_window) < 1e-3
            if same_subjects and same_window:
                return info
            updated = have.evolve(subjects=wanted.subjects, duplicate_window=wanted.duplicate_window)
            try:
                info = await self.js.update_stream(updated)
            except nats.js.errors.APIError as exc:
                raise EventBusError(f"cannot update stream {wanted.name}: {exc.description}") from exc
            logger.info(
                "updated stream %s: subjects %s -> %s, duplicate window %s -> %s s",
                wanted.name, have.subjects, wanted.subjects, have.duplicate_window, wanted.duplicate_window,
            )  # fmt: skip
            return info
        raise EventBusError(f"could not create or update stream {wanted.name}: it keeps changing")

    async def stream_info(self) -> api.StreamInfo:
        """State of the stream (``.state.messages`` is the number of stored events)."""
        return await self.js.stream_info(self.settings.stream)

    # ------------------------------------------------------------------ publish

    async def publish(self, subject: str, message: Message, *, msg_id: str) -> api.PubAck:
        """Store ``message`` in the stream under ``subject``; returns JetStream's PubAck.

        ``ack.duplicate`` is True when a message with this ``msg_id`` was already stored within the
        duplicate window (nothing new was stored, ``ack.seq`` is the original's sequence), else False.
        """
        _check_subject(subject, allow_wildcards=False)
        _check_msg_id(msg_id)
        if not isinstance(message, Message):
            raise TypeError(f"message must be a protobuf Message, got {type(message).__name__}")
        headers = {MSG_ID_HEADER: msg_id, EVENT_TYPE_HEADER: message.DESCRIPTOR.full_name}
        try:
            # stream= adds Nats-Expected-Stream: the server rejects the message if the subject is
            # captured by some other stream than ours.
            ack = await self.js.publish(
                subject, message.SerializeToString(), headers=headers, stream=self.settings.stream
            )
        except nats.js.errors.NoStreamResponseError as exc:
            raise EventBusError(
                f"no JetStream stream captures {subject!r} (is stream {self.settings.stream} created? "
                "call ensure_stream())"
            ) from exc
        ack.duplicate = bool(ack.duplicate)  # the server omits it (None) for a new message
        logger.debug("published %s msg_id=%s seq=%s duplicate=%s", subject, msg_id, ack.seq, ack.duplicate)
        return ack

    # ------------------------------------------------------------------ subscribe

    async def subscribe(
        self,
        durable: str,
        subject_filter: str,
        handler: Handler,
        *,
        batch: int = 10,
        ack_wait_s: float | None = None,
        max_deliver: int | None = None,
    ) -> Subscription:
        """Consume ``subject_filter`` (wildcards allowed) through the durable consumer ``durable``.

        The consumer is created, or updated to these options if it exists. A new durable starts at
        the beginning of the stream. ``await handler(event)`` runs for each message; the message is
        acked when it returns and redelivered later when it raises. Returns a running
        :class:`Subscription`; stop it with ``await sub.stop()`` (``close()`` stops them all).
        """
        _check_durable(durable)
        _check_subject(subject_filter, allow_wildcards=True, what="subject filter")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        ack_wait = ack_wait_s if ack_wait_s is not None else self.settings.ack_wait_s
        deliveries = max_deliver if max_deliver is not None else self.settings.max_deliver
        if ack_wait <= 0 or deliveries < 1:
            raise ValueError(f"ack_wait_s must be > 0 and max_deliver >= 1, got {ack_wait}, {deliveries}")

        stream = self.settings.stream
        config = api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=subject_filter,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_deliver=deliveries,
        )
        try:
            # Create, or update the existing durable's editable fields (same call, server >= 2.10).
            await self.js.add_consumer(stream, config)
        except nats.js.errors.NotFoundError as exc:
            raise EventBusError(f"stream {stream} does not exist; call ensure_stream() first") from exc
        except nats.js.errors.APIError as exc:
            raise EventBusError(f"cannot create consumer {durable} on {stream}: {exc.description}") from exc
        psub = await self.js.pull_subscribe_bind(durable=durable, stream=stream)
        sub = Subscription(
            self,
            psub,
            durable=durable,
            subject_filter=subject_filter,
            handler=handler,
            batch=batch,
            ack_wait_s=ack_wait,
            max_deliver=deliveries,
        )
        self._subscriptions.add(sub)
        logger.info("consumer %s subscribed to %s on stream %s", durable, subject_filter, stream)
        raise_if_cancelling()  # a cancel lost in the requests above (see its docstring)
        return sub

    # ------------------------------------------------------------------ close

    async def close(self) -> None:
        """Stop every subscription (in-flight handlers finish and are acked), then drain the
        connection: pending publishes and acks are flushed before it closes. Idempotent.

        A handler still running after its consumer's ack wait is cancelled, so a stuck handler
        can never hang shutdown; JetStream redelivers its message to the next consumer."""
        for sub in list(self._subscriptions):
            await sub.stop(grace_s=sub._ack_wait_s)
        if not (self.nc.is_closed or self.nc.is_draining):
            try:
                await self.nc.drain()
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError):
                await self.nc.close()
