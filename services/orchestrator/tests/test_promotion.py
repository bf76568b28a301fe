"""The PROMOTION stage with a canary, on the real loop manager, alias writer and canary controller,
a real nats-server and the filesystem object store.

Stand-ins, and why: the gateway's model list (``Listing``; alias routing and the live signals the
gateway writes have their own tests in gateway/tests/test_aliases.py, and tests/test_rounds_e2e.py
runs everything together), and the evaluation the gate reads (only its metrics matter here). The
live signals are written exactly as a gateway replica writes them (``flywheel_common.aliases``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import evaluation_pb2 as epb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel_common import aliases as table
from flywheel_common.events import EventBus
from flywheel_common.jobs import RUNNING, SUCCEEDED
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_orchestrator.aliases import AliasManager
from flywheel_orchestrator.loops import LoopManager
from flywheel_orchestrator.settings import OrchestratorSettings

INCUMBENT, CANDIDATE, ALIAS = "tiny-base", "ft/agent-v1", "agent/agent"


class Listing:
    """What the gateway's /v1/models says (a stand-in for the gateway)."""

    async def _entry(self, model: str) -> dict[str, Any]:
        served = {INCUMBENT: {"id": INCUMBENT}, CANDIDATE: {"id": CANDIDATE, "parent": INCUMBENT}}
        return served.get(model, {})


class Evaluations:
    """The evaluation the gate reads (a stand-in: only its metrics matter)."""

    evaluation = epb.Evaluation(
        id="eval-1",
        state=SUCCEEDED,
        models=[INCUMBENT, CANDIDATE],
        baseline_model=INCUMBENT,
        model_metrics=[
            epb.ModelMetrics(model=INCUMBENT, baseline=True, pass_rate=0.2, episodes=10),
            epb.ModelMetrics(model=CANDIDATE, pass_rate=0.6, episodes=10),
        ],
    )

    def get(self, eval_id: str) -> epb.Evaluation:
        assert eval_id == self.evaluation.id
        return self.evaluation


def make(store: FilesystemObjectStore, bus: EventBus) -> tuple[LoopManager, AliasManager]:
    aliases = AliasManager(lambda: store, lambda: bus, Listing(), canary_check_s=0.2)  # type: ignore[arg-type]
    manager = LoopManager(
        OrchestratorSettings(
            dataset_address="127.0.0.1:1", trainer_address="127.0.0.1:1", loop_promotion_poll_s=0.2
        ),
        lambda: store,
        lambda: bus,
        runs=None,  # type: ignore[arg-type]  # the gate and the promotion read no run
        evaluations=Evaluations(),  # type: ignore[arg-type]  # see Evaluations
        models=None,  # type: ignore[arg-type]  # they call no model
        aliases=aliases,
    )
    return manager, aliases


async def until(check: Callable[[], bool], what: str, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def stored(bus: EventBus, subject: str) -> list[str]:
    """The Nats-Msg-Ids of every message the stream holds on ``subject``."""
    info = await bus.js.stream_info(bus.settings.stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await bus.js.get_msg(bus.settings.stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        if msg.subject == subject:
            out.append((msg.headers or {}).get("Nats-Msg-Id", ""))
    return out


def arm(requests: int, feedback: int, success: int) -> table.ArmCounters:
    c = table.ArmCounters()
    for _ in range(requests):
        c.record(40, error=False)
    c.feedback, c.feedback_success = feedback, success
    return c


@pytest.mark.parametrize("holds", [True, False], ids=["canary-holds", "canary-regresses"])
async def test_a_canary_promotion_waits_for_its_decision_across_a_restart(
    holds: bool, tmp_path: Path, event_bus: EventBus
) -> None:
    store = FilesystemObjectStore(tmp_path / "objects")
    store.ensure_ready()
    manager, aliases = make(store, event_bus)
    await manager.start()
    ref = common_pb2.ResourceRef
    loop = lpb.Loop(
        suite="s",
        base_model=INCUMBENT,
        incumbent_model=INCUMBENT,
        candidate_model=CANDIDATE,
        adapter_name="agent",
        alias=ALIAS,
        canary=apb.CanaryPolicy(fraction=0.5, min_requests=4, min_feedback=2),
        stage=lpb.LOOP_STAGE_GATE,
        stages=[
            lpb.LoopStageStatus(
                stage=lpb.LOOP_STAGE_HOT_LOAD,
                state=SUCCEEDED,
                artefacts=[ref(kind=common_pb2.RESOURCE_KIND_ADAPTER, id="agent/1")],
            ),
            lpb.LoopStageStatus(
                stage=lpb.LOOP_STAGE_GATE,
                state=RUNNING,
                artefacts=[ref(kind=common_pb2.RESOURCE_KIND_EVALUATION, id="eval-1")],
            ),
        ],
    )
    job, _ = await manager.table.create(loop)
    await manager.table.set_running(job)
    await manager.advance(job.id)

    # The gate promoted; the alias did not exist, so it first serves the incumbent, then the canary.
    waiting = manager.get(job.id)
    assert waiting.stage == lpb.LOOP_STAGE_PROMOTION and waiting.state == RUNNING
    assert (
        waiting.promotion.alias == ALIAS and waiting.promotion.revision == 2 and not waiting.promotion.outcome
    )
    history = table.history(store, ALIAS)
    assert [(r.change, r.target.model) for r in history] == [
        (apb.ALIAS_CHANGE_CANARY_STARTED, INCUMBENT),
        (apb.ALIAS_CHANGE_SET, INCUMBENT),
    ]
    assert history[0].canary.candidate.model == CANDIDATE and history[0].loop_id == job.id

    # The orchestrator goes away mid-canary; a new one resumes the loop without a second canary.
    await manager.stop()
    manager, aliases = make(store, event_bus)
    await manager.start()
    await aliases.start()
    try:
        await asyncio.sleep(0.5)  # several promotion polls and controller sweeps without signals
        assert len(table.history(store, ALIAS)) == 2 and manager.get(job.id).state == RUNNING
        # Two gateway replicas report; the candidate's callers are (un)happy.
        table.write_stats(
            store, ALIAS, 2, "gw-1", {INCUMBENT: arm(3, 2, 2), CANDIDATE: arm(2, 1, int(holds))}
        )
        table.write_stats(
            store, ALIAS, 2, "gw-2", {INCUMBENT: arm(3, 1, 1), CANDIDATE: arm(2, 2, 2 * int(holds))}
        )
        await until(lambda: manager.get(job.id).state == SUCCEEDED, "the loop to see the canary's decision")
    finally:
        await aliases.stop()
    final = manager.get(job.id)
    history = table.history(store, ALIAS)
    assert [r.revision for r in history] == [3, 2, 1]
    decision = history[0]
    p = final.promotion
    assert (p.revision, p.final_revision) == (2, 3)
    assert [s.model for s in p.canary_stats] == [INCUMBENT, CANDIDATE] and p.canary_stats[1].requests == 4
    if holds:
        assert decision.change == apb.ALIAS_CHANGE_CANARY_PROMOTED and decision.target.model == CANDIDATE
        assert p.outcome == lpb.PROMOTION_OUTCOME_PROMOTED
    else:
        assert decision.change == apb.ALIAS_CHANGE_CANARY_ROLLED_BACK and decision.target.model == INCUMBENT
        assert p.outcome == lpb.PROMOTION_OUTCOME_ROLLED_BACK and "success rate" in p.reason
    report = store.get_bytes(final.report.key).decode()
    assert "## Promotion" in report and f"### Alias `{ALIAS}`" in report
    # The loop reads SUCCEEDED before its end is saved and announced (finish() sets the state, then
    # saves and sends in worker threads): wait until the announcement is out, not only until the
    # outbox is empty, which it also is just before the events enter it.
    deadline = time.monotonic() + 30
    while True:
        promoted = await stored(event_bus, "flywheel.loop.promoted")
        rejected = await stored(event_bus, "flywheel.loop.rejected")
        if promoted or rejected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    await until(lambda: manager.table.outbox.pending == 0, "the loop's events")
    assert (promoted, rejected) == (
        ([f"loop-promoted:{job.id}"], []) if holds else ([], [f"loop-rejected:{job.id}"])
    )
    assert len(await stored(event_bus, "flywheel.alias.changed")) == 3
    await manager.stop()
