"""The flywheel turning, end to end through every real service: aliases, two rounds, captured
traffic as data, and a canary that rolls itself back across an orchestrator crash.

`flywheel_cli.stack.Stack` (what `flywheel up` runs) starts the real nats-server, sandbox, stores,
dataset builder, trainer, orchestrator, model server and gateway (adapter sync and traffic
capture on) on one filesystem object store, with a tiny random Llama as the base model.

1. An alias `agent/e2e` is set to the base model; two calls to it are captured at the gateway and
   their callers report success through `POST /v1/feedback`.
2. A loop of two rounds (a gate that promotes whatever does not lose more than the whole pass
   rate, so both rounds promote) on the `mini` suite, whose data include that captured traffic.
   Round 2 must start from round 1's adapter (continued training), build its dataset from round
   1's rollouts as well as its own and the captured calls, and each promotion must move the alias:
   a request to it is then answered by the new adapter's digest. Round 2's initial weights are
   checked to be exactly round 1's adapter, with the trainer's own set-up run in this process.
3. A canary of round 1's adapter on the alias; the orchestrator is SIGKILLed while it runs; callers
   report the candidate's answers as failures and the incumbent's as successes; the restarted
   controller rolls the candidate back by itself, once, and the alias still serves round 2's
   adapter.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf.duration_pb2 import Duration

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel.orchestrator.v1 import loop_pb2 as lpb
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_cli.stack import Stack
from flywheel_common import auth
from flywheel_common.events import NatsSettings
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_testing.stack import address, agent_base_model, running_stack
from flywheel_testing.trainer import assert_starts_from

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "services" / "orchestrator" / "tests" / "fixtures" / "mini"
BASE = "tiny-rounds"

ALIAS = "agent/e2e"
pytestmark = pytest.mark.timeout(1200)  # two whole rounds and a canary on two CPU cores


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_settings: NatsSettings) -> Iterator[Stack]:
    with running_stack(
        tmp_path / "state",
        monkeypatch,
        nats_settings.url,
        base=BASE,
        base_folder=agent_base_model(tmp_path / "base", MINI),
        suite_dirs=[MINI],
        extra_env={
            "FLYWHEEL_GATEWAY_CAPTURE": "true",
            "FLYWHEEL_GATEWAY_ALIAS_REFRESH_S": "1",
            "FLYWHEEL_GATEWAY_ALIAS_STATS_FLUSH_S": "1",
            "FLYWHEEL_ORCHESTRATOR_ALIAS_CANARY_CHECK_S": "1",
            "FLYWHEEL_ORCHESTRATOR_LOOP_PROMOTION_POLL_S": "1",
        },
    ) as s:
        yield s


async def until(check: Any, what: str, limit_s: float = 120) -> Any:
    deadline = time.monotonic() + limit_s
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.5)


class Gateway:
    def __init__(self, stack: Stack) -> None:
        self.url = f"http://{address(stack, 'gateway')}"
        self.headers = {"Authorization": f"Bearer {stack.gateway_key()}"}
        self.http = httpx.AsyncClient(timeout=120)

    async def ask(self, model: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "fix calc.py"}], "max_tokens": 4}
        reply = await self.http.post(f"{self.url}/v1/chat/completions", json=body, headers=self.headers)
        assert reply.status_code == 200, reply.text
        return reply

    async def feedback(self, completion_id: str, success: bool) -> None:
        reply = await self.http.post(
            f"{self.url}/v1/feedback", json={"id": completion_id, "success": success}, headers=self.headers
        )
        assert reply.status_code == 200, reply.text

    async def served_model(self, model: str) -> str:
        return (await self.ask(model)).headers["x-flywheel-served-model"]

    async def alias_entry(self) -> dict[str, Any] | None:
        listing = (await self.http.get(f"{self.url}/v1/models", headers=self.headers)).json()["data"]
        return next((m for m in listing if m["id"] == ALIAS), None)


def two_rounds() -> lpb.Loop:
    return lpb.Loop(
        suite="mini",
        base_model=BASE,
        teacher_kind=tpb.TEACHER_KIND_REFERENCE,
        adapter_name="e2e",
        alias=ALIAS,
        rounds=2,
        round_start=lpb.ROUND_START_CONTINUE,
        episode=run_pb2.EpisodeSettings(
            limits=run_pb2.EpisodeLimits(max_iterations=2, max_consecutive_parse_errors=2),
            sampling=common_pb2.SamplingParams(temperature=0, max_tokens=8),
        ),
        dataset_split=dpb.SplitConfig(train_ratio=1.0),
        hyperparameters=trpb.Hyperparameters(
            max_steps=2,
            batch_size=1,
            gradient_accumulation_steps=1,
            learning_rate=1e-3,
            max_seq_length=1024,
            lora=trpb.LoraConfig(rank=4, alpha=8),
        ),
        # Whatever a tiny random model scores, the candidate cannot lose more than the whole pass
        # rate: both rounds promote, which is what this test is about.
        gate=lpb.PromotionGate(
            rules=[
                lpb.GateRule(
                    metric=lpb.GATE_METRIC_PASS_RATE, kind=lpb.GATE_RULE_KIND_MUST_NOT_WORSEN, margin=1.0
                )
            ]
        ),
        captured_traffic=[dpb.CapturedTraffic(alias=ALIAS, feedback=dpb.FEEDBACK_FILTER_SUCCESS)],
    )


async def test_two_rounds_move_the_alias_and_a_canary_rolls_back_by_itself(
    stack: Stack, tmp_path: Path
) -> None:
    gw = Gateway(stack)
    orch = address(stack, "orchestrator")
    try:
        async with auth.channel(orch) as ch:
            o = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            first = (
                await o.SetAlias(
                    apb.SetAliasRequest(
                        name=ALIAS, target=apb.AliasTarget(model=BASE), actor="e2e", reason="start"
                    )
                )
            ).alias
            assert first.current.revision == 1
            entry = await until(gw.alias_entry, "the gateway to list the alias")
            assert entry["flywheel_alias"]["target"] == BASE

            # 1. traffic on the alias is captured, with its callers' feedback
            captured_ids = []
            for _ in range(2):
                reply = await gw.ask(ALIAS)
                assert reply.json()["model"] == ALIAS and reply.headers["x-flywheel-served-model"] == BASE
                await gw.feedback(reply.json()["id"], success=True)
                captured_ids.append(reply.json()["id"])
            captured = await until(
                lambda: captured_calls(stack), "the captured calls in the trajectory store"
            )
            assert {t.labels["completion_id"] for t in captured} == set(captured_ids)

            # 2. two rounds
            parent = (
                await o.CreateLoop(opb.CreateLoopRequest(loop=two_rounds(), request_id="rounds-1"))
            ).loop
            assert parent.incumbent_model == BASE  # what the alias served
            final = None
            async for update in o.WatchLoop(opb.WatchLoopRequest(loop_id=parent.id), timeout=900):
                final = update.loop
            assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final
            await check_rounds(stack, o, final, {t.id for t in captured}, tmp_path)

            alias = (await o.GetAlias(apb.GetAliasRequest(name=ALIAS))).alias
            assert [(r.revision, r.target.model) for r in reversed(alias.history)] == [
                (1, BASE),
                (2, "ft/e2e-v1"),
                (3, "ft/e2e-v2"),
            ]
            v2 = alias.current.target.adapter
            assert v2.adapter_id == "e2e/v2" and v2.digest.startswith("sha256:")
            assert alias.history[1].loop_id == final.round_results[0].loop_id
            assert alias.history[1].evaluation_id == final.round_results[0].gate_result.evaluation_id
            # a request to the alias is answered by the promoted adapter's weights
            await until(
                lambda: served_is(gw, "ft/e2e-v2"), "the gateway to serve the alias's newest revision", 30
            )
            reply = await gw.ask(ALIAS)
            assert reply.json()["system_fingerprint"] == v2.digest

            # 3. a canary of round 1's adapter, across an orchestrator crash
            policy = apb.CanaryPolicy(
                fraction=0.5,
                min_requests=6,
                min_feedback=3,
                max_latency_ratio=100,
                max_duration=Duration(seconds=600),
            )
            started = (
                await o.SetAlias(
                    apb.SetAliasRequest(
                        name=ALIAS, target=apb.AliasTarget(model="ft/e2e-v1"), canary=policy, actor="e2e"
                    )
                )
            ).alias.current
            assert started.revision == 4 and started.change == apb.ALIAS_CHANGE_CANARY_STARTED
        stack.restart("orchestrator", kill=True)  # SIGKILL while the canary runs
        arms: dict[str, int] = {}

        async def decided() -> apb.Alias | None:
            reply = await gw.ask(ALIAS)
            served = reply.headers["x-flywheel-served-model"]
            arms[served] = arms.get(served, 0) + 1
            # the forced regression: callers find the candidate's answers wrong
            await gw.feedback(reply.json()["id"], success=served != "ft/e2e-v1")
            async with auth.channel(address(stack, "orchestrator")) as ch:
                got = (
                    await orchestrator_pb2_grpc.OrchestratorServiceStub(ch).GetAlias(
                        apb.GetAliasRequest(name=ALIAS)
                    )
                ).alias
            return got if got.current.revision > started.revision else None

        alias = await until(decided, "the canary controller to decide", 300)
        assert arms.get("ft/e2e-v1", 0) >= 6 and arms.get("ft/e2e-v2", 0) >= 3, arms
        end = alias.current
        assert end.revision == 5 and end.change == apb.ALIAS_CHANGE_CANARY_ROLLED_BACK, end
        assert end.actor == "canary" and "success rate" in end.reason
        assert end.target.model == "ft/e2e-v2" and not end.HasField("canary")
        cand = end.canary_stats[1]
        assert cand.model == "ft/e2e-v1" and cand.feedback >= 3 and cand.success_rate == 0.0
        await asyncio.sleep(3)  # a second decision would have been written by now
        async with auth.channel(address(stack, "orchestrator")) as ch:
            after = (
                await orchestrator_pb2_grpc.OrchestratorServiceStub(ch).GetAlias(
                    apb.GetAliasRequest(name=ALIAS)
                )
            ).alias
        assert after.current.revision == 5  # decided once
        await until(lambda: served_is(gw, "ft/e2e-v2"), "the alias to serve only round 2's adapter", 30)
    finally:
        await gw.http.aclose()


async def served_is(gw: Gateway, model: str) -> bool:
    return await gw.served_model(ALIAS) == model


async def captured_calls(stack: Stack) -> list[tpb.Trajectory]:
    async with auth.channel(address(stack, "trajectory-store")) as ch:
        got = await trajectory_pb2_grpc.TrajectoryServiceStub(ch).ListTrajectories(
            tpb.ListTrajectoriesRequest(
                filter=tpb.TrajectoryFilter(
                    teacher_kinds=[tpb.TEACHER_KIND_CAPTURED], labels={"gateway_alias": ALIAS}
                )
            )
        )
    return list(got.trajectories) if len(got.trajectories) >= 2 else []


async def check_rounds(
    stack: Stack,
    o: orchestrator_pb2_grpc.OrchestratorServiceStub,
    parent: lpb.Loop,
    captured: set[str],
    work: Path,
) -> None:
    assert [s.stage for s in parent.stages] == [lpb.LOOP_STAGE_ROUND, lpb.LOOP_STAGE_ROUND]
    r1, r2 = parent.round_results
    assert [r1.index, r2.index] == [1, 2]
    assert all(r.promotion.outcome == lpb.PROMOTION_OUTCOME_PROMOTED for r in (r1, r2)), parent.round_results
    assert (r1.incumbent_model, r1.candidate_model) == (BASE, "ft/e2e-v1")
    assert (r2.incumbent_model, r2.candidate_model, r2.init_adapter) == ("ft/e2e-v1", "ft/e2e-v2", "e2e/v1")
    child1 = (await o.GetLoop(opb.GetLoopRequest(loop_id=r1.loop_id))).loop
    child2 = (await o.GetLoop(opb.GetLoopRequest(loop_id=r2.loop_id))).loop
    assert child1.parent_loop_id == child2.parent_loop_id == parent.id and (child1.round, child2.round) == (
        1,
        2,
    )
    r1_runs = [a.id for s in child1.stages if s.stage == lpb.LOOP_STAGE_ROLLOUTS for a in s.artefacts]
    assert r1_runs and set(r1_runs) <= set(r2.run_ids) and len(r2.run_ids) > len(r1_runs)
    assert parent.report.key and parent.candidate_model == "ft/e2e-v2"

    objects_root = stack.state_dir / "objects"
    objects = open_object_store(ObjectStoreSettings(backend="fs", root=objects_root))
    async with (
        auth.channel(address(stack, "trainer-svc")) as tch,
        auth.channel(address(stack, "dataset-svc")) as dch,
        auth.channel(address(stack, "trajectory-store")) as sch,
    ):
        # round 2 trained from round 1's adapter
        tr = trainer_pb2_grpc.TrainerServiceStub(tch)
        jobs = (await tr.ListFineTuneJobs(trpb.ListFineTuneJobsRequest(loop_id=r2.loop_id))).jobs
        assert [j.init_adapter for j in jobs] == ["e2e/v1"]
        adapter = (await tr.GetAdapter(trpb.GetAdapterRequest(name="e2e", version=2))).adapter
        assert adapter.init_adapter == "e2e/v1"
        # ... and its initial weights are exactly round 1's adapter (the trainer's own set-up, here)
        v1 = (await tr.GetAdapter(trpb.GetAdapterRequest(name="e2e", version=1))).adapter
        objects_env = {"FLYWHEEL_OBJECT_STORE_BACKEND": "fs", "FLYWHEEL_OBJECT_STORE_ROOT": str(objects_root)}
        v1_dir = work / "v1"
        v1_dir.mkdir()
        (v1_dir / "adapter_model.safetensors").write_bytes(
            objects.get_bytes(f"{v1.object_prefix}adapter_model.safetensors")
        )
        await asyncio.to_thread(assert_starts_from, objects_env, jobs[0], v1_dir, work / "setup")
        # round 2's dataset was built from round 1's trajectories, its own and the captured calls
        ds = dataset_pb2_grpc.DatasetServiceStub(dch)
        build = (await ds.ListDatasetBuilds(dpb.ListDatasetBuildsRequest(loop_id=r2.loop_id))).builds[0]
        assert set(r1_runs) <= set(build.source.run_ids)
        assert [c.alias for c in build.source.captured_traffic] == [ALIAS]
        store = trajectory_pb2_grpc.TrajectoryServiceStub(sch)
        r1_trajs = (
            await store.ListTrajectories(
                tpb.ListTrajectoriesRequest(filter=tpb.TrajectoryFilter(run_ids=r1_runs))
            )
        ).trajectories
        dataset = (await ds.GetDataset(dpb.GetDatasetRequest(dataset_id=build.dataset_id))).dataset
        read = set(objects.get_bytes(dataset.trajectory_ids.key).decode().split())
        assert {t.id for t in r1_trajs} <= read, "round 1's trajectories were not read for round 2's dataset"
        assert captured <= read, "the captured calls were not read for round 2's dataset"
