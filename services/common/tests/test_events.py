"""The event bus against a real nats-server (the session's, from flywheel_testing.nats).

No mocks: every test talks to JetStream; the cross-process tests start child Python processes.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import pytest
from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import StringValue

import flywheel_common
from flywheel_common.events import (
    EVENT_TYPE_HEADER,
    MSG_ID_HEADER,
    Event,
    EventBus,
    EventBusError,
    EventTypeError,
    NatsSettings,
)
from flywheel_common.natsserver import NatsServerError, NatsServerProcess, find_nats_server_binary

SRC_DIR = Path(flywheel_common.__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def child_env(settings: NatsSettings) -> dict[str, str]:
    """Environment for a child process: our sources importable, the test's NATS settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_NATS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC_DIR), env.get("PYTHONPATH")) if p)
    env["FLYWHEEL_NATS_URL"] = settings.url
    env["FLYWHEEL_NATS_STREAM"] = settings.stream
    return env


async def run_child(code: str, settings: NatsSettings, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, *args,
        env=child_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip


class Collector:
    """A handler that records events; ``behaviour`` may raise or block to simulate failures."""

    def __init__(self, behaviour: Callable[[Event], Awaitable[None]] | None = None) -> None:
        self.events: list[Event] = []
        self.behaviour = behaviour
        self._changed = asyncio.Condition()

    async def __call__(self, event: Event) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        if self.behaviour is not None:
            await self.behaviour(event)

    async def wait_for(self, count: int, within_s: float = 10) -> list[Event]:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.events) >= count), within_s)
        return self.events


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 5) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def consumer_settled(bus: EventBus, durable: str, acked_up_to: int) -> bool:
    info = await bus.js.consumer_info(bus.settings.stream, durable)
    return info.num_ack_pending == 0 and info.ack_floor.stream_seq >= acked_up_to


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# --------------------------------------------------------------------------- across processes

PUBLISHER = """
import asyncio, sys
from google.protobuf.wrappers_pb2 import StringValue
from flywheel_common.events import EventBus, NatsSettings

async def main(count):
    bus = await EventBus.connect(NatsSettings(), name="child-publisher")
    try:
        await bus.ensure_stream()
        for i in range(count):
            await bus.publish("flywheel.test.ping", StringValue(value=f"ping {i}"), msg_id=f"ping-{i}")
    finally:
        await bus.close()

asyncio.run(main(int(sys.argv[1])))
"""


async def test_round_trip_from_another_process(event_bus: EventBus, nats_settings: NatsSettings) -> None:
    received = Collector()
    await event_bus.subscribe("rt", "flywheel.test.>", received)

    child = await run_child(PUBLISHER, nats_settings, "3")
    output, _ = await asyncio.wait_for(child.communicate(), 20)
    assert child.returncode == 0, output.decode()

    events = await received.wait_for(3)
    assert [e.parse(StringValue).value for e in events] == ["ping 0", "ping 1", "ping 2"]
    first = events[0]
    assert first.subject == "flywheel.test.ping"
    assert first.msg_id == "ping-0" and first.headers[MSG_ID_HEADER] == "ping-0"
    assert first.event_type == "google.protobuf.StringValue" == first.headers[EVENT_TYPE_HEADER]
    assert first.num_delivered == 1
    assert first.data == StringValue(value="ping 0").SerializeToString()
    await eventually(lambda: consumer_settled(event_bus, "rt", 3))


HANGING_CONSUMER = """
import asyncio
from flywheel_common.events import EventBus, NatsSettings

async def main():
    bus = await EventBus.connect(NatsSettings(), name="child-consumer")

    async def handler(event):
        print(f"handling {event.msg_id} delivery {event.num_delivered}", flush=True)
        await asyncio.sleep(3600)  # killed here, before any ack

    await bus.subscribe("crashy", "flywheel.test.>", handler, ack_wait_s=1)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_message_comes_back_when_the_consumer_dies_before_acking(
    event_bus: EventBus, nats_settings: NatsSettings
) -> None:
    await event_bus.publish("flywheel.test.job", StringValue(value="work"), msg_id="job-1")

    child = await run_child(HANGING_CONSUMER, nats_settings)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        assert line.decode().strip() == "handling job-1 delivery 1"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await child.wait()

    received = Collector()
    await event_bus.subscribe("crashy", "flywheel.test.>", received, ack_wait_s=1)
    (event,) = await received.wait_for(1)
    assert event.msg_id == "job-1" and event.parse(StringValue).value == "work"
    assert event.num_delivered == 2
    await eventually(lambda: consumer_settled(event_bus, "crashy", 1))


# --------------------------------------------------------------------------- acks and retries


async def test_failing_handler_gets_the_message_again_and_it_is_acked_once_it_succeeds(
    event_bus: EventBus,
) -> None:
    async def fail_twice(event: Event) -> None:
        if event.num_delivered < 3:
            raise RuntimeError(f"transient failure {event.num_delivered}")

    received = Collector(fail_twice)
    await event_bus.subscribe("retry", "flywheel.test.>", received)
    await event_bus.publish("flywheel.test.flaky", StringValue(value="x"), msg_id="flaky-1")

    events = await received.wait_for(3)
    assert [e.num_delivered for e in events] == [1, 2, 3]
    assert {e.msg_id for e in events} == {"flaky-1"}
    await eventually(lambda: consumer_settled(event_bus, "retry", 1))
    await asyncio.sleep(0.3)
    assert len(received.events) == 3  # acked: no fourth delivery


async def test_handler_failing_on_every_delivery_is_given_up_after_max_deliver(event_bus: EventBus) -> None:
    async def always_fail(event: Event) -> None:
        raise RuntimeError("permanent failure")

    received = Collector(always_fail)
    await event_bus.subscribe("poison", "flywheel.test.>", received, max_deliver=2)
    await event_bus.publish("flywheel.test.poison", StringValue(value="x"), msg_id="poison-1")

    await received.wait_for(2)
    await eventually(lambda: consumer_settled(event_bus, "poison", 1))
    await asyncio.sleep(0.3)
    assert len(received.events) == 2


async def test_slow_handler_is_kept_alive_past_ack_wait(event_bus: EventBus) -> None:
    async def slow(event: Event) -> None:
        await asyncio.sleep(1.6)

    received = Collector(slow)
    await event_bus.subscribe("slow", "flywheel.test.>", received, ack_wait_s=1)
    await event_bus.publish("flywheel.test.slow", StringValue(value="x"), msg_id="slow-1")

    await received.wait_for(1)
    await eventually(lambda: consumer_settled(event_bus, "slow", 1))
    info = await event_bus.js.consumer_info(event_bus.settings.stream, "slow")
    assert info.num_redelivered == 0
    assert len(received.events) == 1


async def test_close_lets_the_running_handler_finish_and_acks_it(
    event_bus: EventBus, nats_settings: NatsSettings
) -> None:
    for i in range(3):
        await event_bus.publish("flywheel.test.drain", StringValue(value=str(i)), msg_id=f"drain-{i}")
    started = asyncio.Event()
    finished: list[str | None] = []

    async def slow(event: Event) -> None:
        started.set()
        await asyncio.sleep(0.5)
        finished.append(event.msg_id)

    await event_bus.subscribe("draining", "flywheel.test.>", slow, batch=10)
    await asyncio.wait_for(started.wait(), 10)
    await event_bus.close()  # while the first handler sleeps, with two more messages fetched
    assert finished == ["drain-0"]
    assert event_bus.nc.is_closed

    async with await EventBus.connect(nats_settings, name="checker") as checker:
        # The handled message was acked, not lost and not redelivered ...
        info = await checker.js.consumer_info(nats_settings.stream, "draining")
        assert info.ack_floor.stream_seq == 1
        # ... and the two fetched-but-unhandled ones were handed back for immediate redelivery.
        received = Collector()
        await checker.subscribe("draining", "flywheel.test.>", received)
        events = await received.wait_for(2, within_s=3)
        assert [e.msg_id for e in events] == ["drain-1", "drain-2"]
        assert all(e.num_delivered == 2 for e in events)
        await eventually(lambda: consumer_settled(checker, "draining", 3))


async def test_stopped_subscription_does_not_swallow_later_messages(event_bus: EventBus) -> None:
    first = Collector()
    sub = await event_bus.subscribe("handover", "flywheel.test.>", first)
    await asyncio.sleep(0.2)  # let it park a pull request on the server
    await sub.stop()
    assert not sub.running

    await event_bus.publish("flywheel.test.after", StringValue(value="x"), msg_id="after-1")
    second = Collector()
    await event_bus.subscribe("handover", "flywheel.test.>", second)
    (event,) = await second.wait_for(1, within_s=3)  # well before ack_wait (30 s)
    assert event.num_delivered == 1 and first.events == []


# --------------------------------------------------------------------------- publish


async def test_duplicate_msg_id_is_stored_once(event_bus: EventBus) -> None:
    payload = Struct()
    payload.update({"trajectory": "t-1", "steps": 3})
    first = await event_bus.publish("flywheel.trajectory.stored", payload, msg_id="stored:t-1")
    again = await event_bus.publish("flywheel.trajectory.stored", payload, msg_id="stored:t-1")
    other = await event_bus.publish("flywheel.trajectory.stored", payload, msg_id="stored:t-2")

    assert first.duplicate is False and other.duplicate is False
    assert again.duplicate is True and again.seq == first.seq
    assert (await event_bus.stream_info()).state.messages == 2


@pytest.mark.parametrize(
    ("subject", "problem"),
    [
        ("trajectory.stored", "must start with 'flywheel.'"),
        ("flywheelx.stored", "must start with 'flywheel.'"),
        ("flywheel.*.stored", "wildcards"),
        ("flywheel.trajectory.>", "wildcards"),
        ("flywheel.", "empty token"),
        ("flywheel..stored", "empty token"),
        ("flywheel.trajectory stored", "whitespace"),
    ],
)
async def test_publish_rejects_bad_subjects(event_bus: EventBus, subject: str, problem: str) -> None:
    with pytest.raises(ValueError, match="subject") as caught:
        await event_bus.publish(subject, StringValue(value="x"), msg_id="m-1")
    assert problem in str(caught.value) and repr(subject) in str(caught.value)


@pytest.mark.parametrize("msg_id", ["", "   ", None, "two\nlines"])
async def test_publish_rejects_bad_msg_id(event_bus: EventBus, msg_id: str) -> None:
    with pytest.raises(ValueError, match="msg_id"):
        await event_bus.publish("flywheel.test.x", StringValue(value="x"), msg_id=msg_id)


async def test_publish_requires_a_protobuf_message(event_bus: EventBus) -> None:
    with pytest.raises(TypeError, match="protobuf Message"):
        await event_bus.publish("flywheel.test.x", b"raw", msg_id="m-1")  # type: ignore[arg-type]  # the wrong type is the test


async def test_subscribe_rejects_bad_filter_and_durable(event_bus: EventBus) -> None:
    async def handler(event: Event) -> None: ...

    with pytest.raises(ValueError, match=r"must start with 'flywheel\.'"):
        await event_bus.subscribe("ok", "other.>", handler)
    with pytest.raises(ValueError, match="whole tokens"):
        await event_bus.subscribe("ok", "flywheel.tra*", handler)
    with pytest.raises(ValueError, match="durable consumer name"):
        await event_bus.subscribe("has.dot", "flywheel.>", handler)


async def test_parse_checks_the_event_type(event_bus: EventBus) -> None:
    received = Collector()
    await event_bus.subscribe("types", "flywheel.test.>", received)
    await event_bus.publish("flywheel.test.typed", StringValue(value="hello"), msg_id="typed-1")
    (event,) = await received.wait_for(1)

    assert event.parse(StringValue) == StringValue(value="hello")
    with pytest.raises(EventTypeError, match=r"google\.protobuf\.StringValue.*google\.protobuf\.Struct"):
        event.parse(Struct)


# --------------------------------------------------------------------------- ensure_stream


async def test_ensure_stream_twice_is_a_no_op(event_bus: EventBus) -> None:
    before = await event_bus.ensure_stream()
    await event_bus.publish("flywheel.test.keep", StringValue(value="x"), msg_id="keep-1")
    after = await event_bus.ensure_stream()

    assert after.created == before.created
    assert after.config.subjects == ["flywheel.>"] and after.config.duplicate_window == 120
    assert after.state.messages == 1  # not recreated


async def test_ensure_stream_updates_a_differing_config(
    event_bus: EventBus, nats_settings: NatsSettings
) -> None:
    await event_bus.publish("flywheel.test.keep", StringValue(value="x"), msg_id="keep-1")
    changed = nats_settings.model_copy(update={"duplicate_window_s": 30.0})
    async with await EventBus.connect(changed, name="updater") as other:
        info = await other.ensure_stream()
    assert info.config.duplicate_window == 30
    assert info.state.messages == 1


async def test_concurrent_ensure_stream_calls_agree(nats_settings: NatsSettings) -> None:
    buses = [await EventBus.connect(nats_settings, name=f"racer-{i}") for i in range(3)]
    try:
        infos = await asyncio.gather(*(bus.ensure_stream() for bus in buses))
        assert len({info.created for info in infos}) == 1
        assert [s.config.name for s in await buses[0].js.streams_info()] == [nats_settings.stream]
    finally:
        for bus in buses:
            await bus.close()


async def test_subscribe_and_publish_without_a_stream_say_so(nats_settings: NatsSettings) -> None:
    async with await EventBus.connect(nats_settings, name="early") as bus:
        with pytest.raises(EventBusError, match="ensure_stream"):
            await bus.subscribe("early", "flywheel.>", Collector())
        with pytest.raises(EventBusError, match="ensure_stream"):
            await bus.publish("flywheel.test.x", StringValue(value="x"), msg_id="m-1")


async def test_connect_to_nothing_fails_clearly() -> None:
    settings = NatsSettings(url="nats://127.0.0.1:1", connect_timeout_s=1)
    with pytest.raises(EventBusError, match=r"cannot connect to NATS at nats://127\.0\.0\.1:1"):
        await EventBus.connect(settings)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_NATS_URL", "nats://nats-a:4222, nats://nats-b:4222")
    monkeypatch.setenv("FLYWHEEL_NATS_STREAM", "EVENTS")
    monkeypatch.setenv("FLYWHEEL_NATS_SUBJECTS", '["flywheel.trajectory.>", "flywheel.adapter.>"]')
    monkeypatch.setenv("FLYWHEEL_NATS_ACK_WAIT_S", "5")
    settings = NatsSettings()
    assert settings.servers == ["nats://nats-a:4222", "nats://nats-b:4222"]
    assert settings.stream == "EVENTS" and settings.ack_wait_s == 5
    assert settings.subjects == ["flywheel.trajectory.>", "flywheel.adapter.>"]
    assert (settings.duplicate_window_s, settings.max_deliver, settings.storage) == (120, 10, "file")


# --------------------------------------------------------------------------- the server process


def test_server_start_and_stop_leave_no_process() -> None:
    with NatsServerProcess() as server:
        pid = server.pid
        assert pid is not None and not pid_gone(pid)
        assert server.url.startswith("nats://127.0.0.1:") and server.port > 0

        async def jetstream_ready() -> None:
            nc = await nats.connect(server.url)
            try:
                await nc.jetstream().account_info()
            finally:
                await nc.close()

        asyncio.run(jetstream_ready())
    assert pid_gone(pid)
    assert not server.is_running()
    server.stop()  # idempotent


def test_server_stop_escalates_to_sigkill() -> None:
    server = NatsServerProcess(stop_grace_s=0).start()
    pid = server.pid
    assert pid is not None
    server.stop()
    assert pid_gone(pid)


def test_server_on_a_taken_port_fails_clearly(nats_server: NatsServerProcess) -> None:
    with pytest.raises(NatsServerError, match=rf"port {nats_server.port} on 127\.0\.0\.1 is already in use"):
        NatsServerProcess(port=nats_server.port).start()


def test_server_that_exits_reports_its_log(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    server = NatsServerProcess(log_file=tmp_path / "nats.log", extra_args=["-c", str(missing)])
    with pytest.raises(NatsServerError, match="exited with code 1") as caught:
        server.start()
    assert f"open {missing}: no such file" in str(caught.value)  # the log tail is in the message
    assert not server.is_running()


def test_binary_is_found_in_the_environment() -> None:
    binary = find_nats_server_binary()
    assert binary.name == "nats-server" and os.access(binary, os.X_OK)


async def test_raise_if_cancelling_stops_a_task_whose_cancel_was_lost() -> None:
    """Python 3.11's wait_for can return a result instead of raising a cancel that arrived at the
    same moment; the task still knows it was asked to stop, and must not carry on."""
    from flywheel_common.events import raise_if_cancelling

    async def body() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # from the outside, a lost cancel looks like this: the await just returned
        raise_if_cancelling()
        await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
