"""The alias writer and the canary controller (``flywheel_orchestrator.aliases``) on a real
filesystem object store. The gateway's model list is a stand-in (``Listing``): these tests are
about the table's rules; ``tests/test_rounds_e2e.py`` runs the same code against the real gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration

from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel_common import aliases as table
from flywheel_common.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_orchestrator.aliases import AliasManager, judge_canary, validate_policy

DIGEST = "sha256:" + "ab" * 32


class Listing:
    """What the gateway's /v1/models says (a stand-in for the gateway)."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {
            "base": {"id": "base"},
            "ft/coder-v1": {"id": "ft/coder-v1", "parent": "base", "digest": DIGEST},
            "ft/coder-v2": {"id": "ft/coder-v2", "parent": "base", "digest": "sha256:" + "cd" * 32},
        }

    async def _entry(self, model: str) -> dict[str, Any] | None:
        return self.entries.get(model, {})


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    s = FilesystemObjectStore(tmp_path / "objects")
    s.ensure_ready()
    return s


def manager(store: FilesystemObjectStore) -> AliasManager:
    return AliasManager(lambda: store, lambda: None, Listing(), canary_check_s=0.05)  # type: ignore[arg-type]


def set_req(model: str, **kw: Any) -> apb.SetAliasRequest:
    return apb.SetAliasRequest(name="agent/coder", target=apb.AliasTarget(model=model), **kw)


async def test_set_keeps_history_and_the_adapter_identity(store: FilesystemObjectStore) -> None:
    m = manager(store)
    await m.set(set_req("base", actor="cli:ann", reason="first"))
    alias = await m.set(set_req("ft/coder-v1", evaluation_id="eval-1"))
    assert alias.current.revision == 2 and alias.current.target.model == "ft/coder-v1"
    assert (
        alias.current.target.adapter.adapter_id == "coder/v1"
        and alias.current.target.adapter.digest == DIGEST
    )
    assert [(r.revision, r.actor, r.reason) for r in alias.history] == [
        (2, "api", ""),
        (1, "cli:ann", "first"),
    ]
    assert alias.history[0].evaluation_id == "eval-1"
    listed = await m.listing()
    assert [(a.name, a.current.revision, len(a.history)) for a in listed] == [("agent/coder", 2, 0)]


async def test_bad_requests_name_what_is_wrong(store: FilesystemObjectStore) -> None:
    m = manager(store)
    with pytest.raises(InvalidArgument, match="ft/"):
        await m.set(apb.SetAliasRequest(name="ft/sneaky", target=apb.AliasTarget(model="base")))
    with pytest.raises(InvalidArgument, match="gateway serves"):
        await m.set(apb.SetAliasRequest(name="base", target=apb.AliasTarget(model="ft/coder-v1")))
    with pytest.raises(FailedPrecondition, match="does not serve"):
        await m.set(set_req("ft/never-v9"))
    with pytest.raises(InvalidArgument, match="required"):
        await m.set(set_req(""))
    with pytest.raises(FailedPrecondition, match="set it before"):
        await m.set(set_req("ft/coder-v1", canary=apb.CanaryPolicy(fraction=0.2)))
    with pytest.raises(NotFound):
        await m.get("agent/none")
    with pytest.raises(InvalidArgument, match="fraction"):
        validate_policy(apb.CanaryPolicy(fraction=1.5), "canary")
    assert table.history(store, "agent/coder") == []  # nothing was written by any of them


async def test_expected_revision_and_racing_writers(store: FilesystemObjectStore) -> None:
    await manager(store).set(set_req("base"))
    with pytest.raises(Aborted, match="expected 7"):
        await manager(store).set(set_req("ft/coder-v1", expected_revision=7))
    # Two writers (two orchestrators: separate managers, separate locks) at once: every change
    # lands as its own revision, none is lost and none is written twice.
    writers = [manager(store) for _ in range(4)]
    models = ["ft/coder-v1", "ft/coder-v2", "base", "ft/coder-v1"]
    await asyncio.gather(*(w.set(set_req(model)) for w, model in zip(writers, models, strict=True)))
    revs = table.history(store, "agent/coder")
    assert [r.revision for r in revs] == [5, 4, 3, 2, 1]
    assert sorted(r.target.model for r in revs[:4]) == sorted(models)


async def test_rollback_and_delete(store: FilesystemObjectStore) -> None:
    m = manager(store)
    with pytest.raises(NotFound):
        await m.rollback(apb.RollbackAliasRequest(name="agent/coder"))
    await m.set(set_req("base"))
    with pytest.raises(FailedPrecondition, match="nothing else"):
        await m.rollback(apb.RollbackAliasRequest(name="agent/coder"))
    await m.set(set_req("ft/coder-v1"))
    await m.set(set_req("ft/coder-v2"))
    back = await m.rollback(apb.RollbackAliasRequest(name="agent/coder", reason="v2 broke prod"))
    assert back.current.change == apb.ALIAS_CHANGE_ROLLBACK and back.current.target.model == "ft/coder-v1"
    assert back.current.reason == "v2 broke prod"
    to_first = await m.rollback(apb.RollbackAliasRequest(name="agent/coder", to_revision=1))
    assert to_first.current.target.model == "base"
    with pytest.raises(NotFound, match="no revision 99"):
        await m.rollback(apb.RollbackAliasRequest(name="agent/coder", to_revision=99))
    gone = await m.delete(apb.DeleteAliasRequest(name="agent/coder"))
    assert gone.current.change == apb.ALIAS_CHANGE_DELETED and gone.current.revision == 6
    assert (await m.delete(apb.DeleteAliasRequest(name="agent/coder"))).current.revision == 6  # once
    assert await m.listing() == [] and len(await m.listing(show_deleted=True)) == 1


def counters(
    requests: int, errors: int = 0, ms: float = 50, feedback: int = 0, success: int = 0
) -> table.ArmCounters:
    c = table.ArmCounters()
    for i in range(requests):
        c.record(ms, error=i < errors)
    c.feedback, c.feedback_success = feedback, success
    return c


@pytest.mark.parametrize(
    ("inc", "cand", "elapsed", "want", "words"),
    [
        (counters(50), counters(5), 10, None, ""),
        (counters(50), counters(5), 700, False, "not enough evidence"),
        (counters(50), counters(20), 10, True, "held up"),
        (counters(50, errors=1), counters(20, errors=5), 10, False, "error rate"),
        (counters(50, ms=40), counters(20, ms=900), 10, False, "median latency"),
        (
            counters(50, feedback=12, success=11),
            counters(20, feedback=12, success=3),
            10,
            False,
            "success rate",
        ),
        (counters(50, feedback=12, success=11), counters(20, feedback=4, success=0), 10, None, ""),
        (
            counters(50, feedback=12, success=11),
            counters(20, feedback=4, success=0),
            700,
            True,
            "not compared",
        ),
        (
            counters(50, feedback=12, success=9),
            counters(20, feedback=12, success=9),
            10,
            True,
            "success rate",
        ),
    ],
)
def test_judge_canary(
    inc: table.ArmCounters, cand: table.ArmCounters, elapsed: float, want: bool | None, words: str
) -> None:
    verdict = judge_canary(apb.CanaryPolicy(), elapsed, inc, cand)
    if want is None:
        assert verdict is None
        return
    assert verdict is not None and verdict[0] is want and words in verdict[1], verdict


async def test_the_controller_decides_once_from_every_replicas_signals(store: FilesystemObjectStore) -> None:
    m = manager(store)
    await m.set(set_req("ft/coder-v1"))
    policy = apb.CanaryPolicy(
        fraction=0.5, min_requests=4, min_feedback=2, max_duration=Duration(seconds=300)
    )
    started = (await m.set(set_req("ft/coder-v2", canary=policy, reason="try v2"))).current
    assert started.change == apb.ALIAS_CHANGE_CANARY_STARTED and started.target.model == "ft/coder-v1"
    assert started.canary.candidate.model == "ft/coder-v2"
    await m.sweep()
    assert (await m.get("agent/coder")).current.revision == 2  # no signals yet: still running
    # Two gateway replicas; the candidate does badly by its callers' feedback.
    table.write_stats(store, "agent/coder", 2, "gw-a", {"ft/coder-v1": counters(3, feedback=2, success=2),
                                                        "ft/coder-v2": counters(2, feedback=1, success=0)})  # fmt: skip
    table.write_stats(store, "agent/coder", 2, "gw-b", {"ft/coder-v1": counters(3, feedback=1, success=1),
                                                        "ft/coder-v2": counters(2, feedback=2, success=0)})  # fmt: skip
    live = await m.get("agent/coder")
    assert [s.requests for s in live.canary_stats] == [6, 4] and live.canary_stats[1].feedback == 3
    await asyncio.gather(m.sweep(), manager(store).sweep())  # two controllers: one decision
    revs = table.history(store, "agent/coder")
    assert [r.revision for r in revs] == [3, 2, 1]
    assert revs[0].change == apb.ALIAS_CHANGE_CANARY_ROLLED_BACK and revs[0].target.model == "ft/coder-v1"
    assert "success rate" in revs[0].reason and revs[0].actor == "canary"
    assert [s.model for s in revs[0].canary_stats] == ["ft/coder-v1", "ft/coder-v2"]
    # A second canary that holds up is promoted.
    again = (await m.set(set_req("ft/coder-v2", canary=policy))).current
    table.write_stats(store, "agent/coder", again.revision, "gw-a",
                      {"ft/coder-v1": counters(4), "ft/coder-v2": counters(4)})  # fmt: skip
    await m.start()
    try:
        for _ in range(200):
            if (await m.get("agent/coder")).current.change == apb.ALIAS_CHANGE_CANARY_PROMOTED:
                break
            await asyncio.sleep(0.05)
    finally:
        await m.stop()
    final = (await m.get("agent/coder")).current
    assert final.change == apb.ALIAS_CHANGE_CANARY_PROMOTED and final.target.model == "ft/coder-v2"


async def test_a_user_rollback_during_a_canary_wins_over_the_controller(store: FilesystemObjectStore) -> None:
    m = manager(store)
    await m.set(set_req("base"))
    await m.set(set_req("ft/coder-v1"))
    started = (await m.set(set_req("ft/coder-v2", canary=apb.CanaryPolicy(min_requests=1)))).current
    await m.rollback(apb.RollbackAliasRequest(name="agent/coder"))  # drops the canary, back to base
    table.write_stats(store, "agent/coder", started.revision, "gw", {"ft/coder-v2": counters(5)})
    assert await m.judge("agent/coder", started) is None  # the canary it judged is gone
    cur = (await m.get("agent/coder")).current
    assert (
        cur.change == apb.ALIAS_CHANGE_ROLLBACK and cur.target.model == "base" and not cur.HasField("canary")
    )
