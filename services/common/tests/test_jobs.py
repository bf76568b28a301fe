"""The job core's outbox and store on their own (real nats-server, filesystem store).

The life of each resource type (idempotent create, watch, cancel, resume, exactly-once terminal
events with NATS down) is the contract suite in ``tests/test_job_contract.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel_common.events import EventBus
from flywheel_common.jobs import Announcement, JobStore, Outbox, fingerprint
from flywheel_common.objectstore.fs import FilesystemObjectStore


def _event(n: int, subject: str = "flywheel.run.completed") -> Announcement:
    msg = events_pb2.RunCompleted(meta=events_pb2.EventMeta(event_id=f"e-{n}"), run_id=f"run-{n}")
    return Announcement(subject, msg, f"e-{n}")


async def _stored(bus: EventBus) -> list[str]:
    info = await bus.js.stream_info(bus.settings.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(bus.settings.stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        out.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    return out


async def _until_empty(outbox: Outbox, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    while outbox.pending:
        assert time.monotonic() < end, f"{outbox.pending} event(s) still pending"
        await asyncio.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    s = FilesystemObjectStore(tmp_path / "objects")
    s.ensure_ready()
    return s


async def test_events_go_out_in_order_and_leave_the_store(
    store: FilesystemObjectStore, event_bus: EventBus
) -> None:
    outbox = Outbox(lambda: store, "svc/outbox/", lambda: event_bus)
    await outbox.start()
    await outbox.send([_event(1), _event(2)])
    await outbox.send([_event(3)])
    await _until_empty(outbox)
    assert await _stored(event_bus) == ["e-1", "e-2", "e-3"]
    assert list(store.list("svc/outbox/")) == []
    await outbox.stop()


async def test_a_malformed_event_is_dropped_and_does_not_block_the_rest(
    store: FilesystemObjectStore, event_bus: EventBus
) -> None:
    outbox = Outbox(lambda: store, "svc/outbox/", lambda: event_bus)
    await outbox.start()
    await outbox.send([_event(1, subject="flywheel.bad subject"), _event(2)])
    await _until_empty(outbox)
    assert await _stored(event_bus) == ["e-2"]
    await outbox.stop()


async def test_a_lost_stream_is_set_up_again(store: FilesystemObjectStore, event_bus: EventBus) -> None:
    """NATS came back without our stream (memory storage, an operator deleted it): the outbox
    re-creates it and the event goes out."""
    await event_bus.js.delete_stream(event_bus.settings.stream)
    outbox = Outbox(lambda: store, "svc/outbox/", lambda: event_bus, retry_initial_s=0.05)
    await outbox.start()
    await outbox.send([_event(1)])
    await _until_empty(outbox)
    assert await _stored(event_bus) == ["e-1"]
    await outbox.stop()


async def test_pending_events_survive_a_restart(store: FilesystemObjectStore, event_bus: EventBus) -> None:
    """What a process left in its outbox is sent by the next one, in order; an unreadable record
    is dropped with a log line instead of blocking the rest."""
    off = Outbox(lambda: store, "svc/outbox/", lambda: None)  # events turned off: nothing kept
    await off.send([_event(0)])
    assert off.pending == 0 and list(store.list("svc/outbox/")) == []
    # Write two events as a process that died before publishing would have left them.
    dying = Outbox(lambda: store, "svc/outbox/", lambda: event_bus)
    dying._write("svc/outbox/00000000000000000001-000001.json", _event(1))
    store.put("svc/outbox/00000000000000000002-000002.json", b"{not json")
    dying._write("svc/outbox/00000000000000000003-000003.json", _event(3))
    second = Outbox(lambda: store, "svc/outbox/", lambda: event_bus)
    await second.start()
    await _until_empty(second)
    assert await _stored(event_bus) == ["e-1", "e-3"]
    assert list(store.list("svc/outbox/")) == []
    await second.stop()


def test_the_request_ledger(store: FilesystemObjectStore) -> None:
    records = JobStore(lambda: store, "kind/", common_pb2.Error, "thing")
    first = common_pb2.Error(message="a")
    assert records.replay("r1", fingerprint(first)) is None
    records.remember("r1", "thing-1", fingerprint(first))
    assert records.replay("r1", fingerprint(first)) == "thing-1"
    assert records.replay("", fingerprint(first)) is None  # no request id: never replayed
    with pytest.raises(Exception, match="already used for thing thing-1"):
        records.replay("r1", fingerprint(common_pb2.Error(message="b")))
    # Ledgers written before the job core named the id after the kind.
    store.put(records._request_key("old"), b'{"run_id": "run-7", "fingerprint": "x"}')
    assert records.replay("old", "x") == "run-7"
