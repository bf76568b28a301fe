"""Adapter identity end to end, through every real service: the trainer publishes an adapter with its
content digest, adapter sync (in the gateway process) verifies it on the embedded model server and
announces it with that digest, and a run on the adapter stores trajectories whose every model turn
names the adapter id, version and the digest of the weights that answered.

`flywheel_cli.stack.Stack` (what `flywheel up` runs) starts the processes on one filesystem object
store and the session's nats-server; the base model is the tiny random Llama built here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.common.v1 import common_pb2
from flywheel.events.v1 import events_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import orchestrator_pb2_grpc, run_pb2
from flywheel.trainer.v1 import trainer_pb2 as trpb
from flywheel.trainer.v1 import trainer_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_cli.stack import Stack
from flywheel_common import auth
from flywheel_common.adapter_digest import folder_digest
from flywheel_common.events import Event, EventBus, NatsSettings
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_testing.stack import address, long_context, running_stack
from flywheel_testing.trainer import SFT_ROWS, build_tiny_model, wait_for, write_dataset

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "services" / "orchestrator" / "tests" / "fixtures" / "mini"
BASE = "tiny-ident"
DATASET = "ds-ident00000000001"


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nats_settings: NatsSettings) -> Iterator[Stack]:
    corpus = [p.read_text() for p in MINI.rglob("*") if p.is_file()] + [json.dumps(r) for r in SFT_ROWS]
    folder = build_tiny_model(tmp_path / "base", corpus * 4, with_template=True)
    long_context(folder)
    state = tmp_path / "state"
    with running_stack(
        state, monkeypatch, nats_settings.url, base=BASE, base_folder=folder, suite_dirs=[MINI]
    ) as s:
        store = open_object_store(ObjectStoreSettings(backend="fs", root=state / "objects"))
        write_dataset(store, DATASET, "SFT", SFT_ROWS)
        yield s


async def test_trajectories_carry_the_digest_of_the_adapter_that_answered(
    stack: Stack, nats_settings: NatsSettings, tmp_path: Path
) -> None:
    bus = await EventBus.connect(nats_settings, name="identity-e2e")
    loaded: list[events_pb2.AdapterLoaded] = []

    async def on_loaded(event: Event) -> None:
        loaded.append(event.parse(events_pb2.AdapterLoaded))

    try:
        await bus.ensure_stream()
        await bus.subscribe("identity-e2e", "flywheel.adapter.loaded", on_loaded)
        async with auth.channel(address(stack, "trainer-svc")) as ch:
            trainer = trainer_pb2_grpc.TrainerServiceStub(ch)
            job = trpb.FineTuneJob(base_model=BASE, dataset_id=DATASET, method=trpb.FINE_TUNE_METHOD_SFT,
                                   adapter_name="ident")  # fmt: skip
            job.hyperparameters.max_steps = 2
            job.hyperparameters.batch_size = 2
            job.hyperparameters.max_seq_length = 128
            job.hyperparameters.lora.rank = 4
            job.hyperparameters.lora.alpha = 8
            created = (await trainer.CreateFineTuneJob(trpb.CreateFineTuneJobRequest(job=job))).job
            done = await wait_for(
                trainer, created.id, lambda j: j.state >= common_pb2.JOB_STATE_SUCCEEDED, 240
            )
            assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
        digest = done.adapter.content_digest
        store = open_object_store(ObjectStoreSettings(backend="fs", root=tmp_path / "state" / "objects"))
        from flywheel_trainer.storeio import download_dir

        local = download_dir(store, done.adapter.object_prefix, tmp_path / "published")
        assert folder_digest(local).digest == digest  # anyone can recompute the published digest

        deadline = time.monotonic() + 120
        while not any(e.name == "ident" for e in loaded):
            assert time.monotonic() < deadline, "no adapter.loaded for ident/v1"
            await asyncio.sleep(0.2)
        event = next(e for e in loaded if e.name == "ident")
        assert event.content_digest == digest
        assert event.verification == events_pb2.ADAPTER_VERIFICATION_DIGEST
    finally:
        await bus.close()

    async with auth.channel(address(stack, "orchestrator")) as ch:
        orchestrator = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
        run = run_pb2.Run(
            suite="mini",
            model="ft/ident-v1",
            split=common_pb2.TASK_SPLIT_TRAIN,
            task_ids=["add-bug"],
            episode=run_pb2.EpisodeSettings(
                limits=run_pb2.EpisodeLimits(max_iterations=2, max_consecutive_parse_errors=2),
                sampling=common_pb2.SamplingParams(temperature=0, max_tokens=8),
            ),
        )
        created_run = (await orchestrator.CreateRun(opb.CreateRunRequest(run=run))).run
        final = None
        async for update in orchestrator.WatchRun(opb.WatchRunRequest(run_id=created_run.id), timeout=240):
            if update.WhichOneof("update") == "run":
                final = update.run
        assert final is not None and final.state == common_pb2.JOB_STATE_SUCCEEDED, final

    async with auth.channel(address(stack, "trajectory-store")) as ch:
        trajectories = trajectory_pb2_grpc.TrajectoryServiceStub(ch)
        listing = await trajectories.ListTrajectories(
            tpb.ListTrajectoriesRequest(filter=tpb.TrajectoryFilter(run_ids=[created_run.id]))
        )
        assert len(listing.trajectories) == 1
        got = await trajectories.GetTrajectory(
            tpb.GetTrajectoryRequest(trajectory_id=listing.trajectories[0].id)
        )
    trajectory = got.trajectory
    turns = [s for s in trajectory.steps if s.role == tpb.ROLE_ASSISTANT]
    assert turns, trajectory
    for step in turns:
        assert step.adapter == tpb.AdapterIdentity(
            adapter_id="ident/v1", name="ident", version=1, digest=digest
        )
    assert trajectory.policy.adapter_name == "ident" and trajectory.policy.adapter_version == 1
