"""The dataset builder as a gRPC service, driven the way a user drives it.

The trajectories come from the REAL trajectory store, started as a process
(`python -m flywheel_trajectory`) and filled through its BatchPutTrajectories RPC. Only the
cancellation test serves ExportTrajectories from an in-test servicer, because it needs an export
slow enough to cancel half-way; the docstring of that test says so.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from dataset_fixtures import repo_run

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.events.v1 import events_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.events import Event, EventBus
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_dataset.service import build_app
from flywheel_dataset.settings import DatasetSettings
from flywheel_testing.processes import grpcurl, start_module
from flywheel_testing.services import boot_service, health_status

RUN = "run-1"


def fixture_trajectories() -> list[tpb.Trajectory]:
    out = []
    for i in range(8):
        for attempt in range(2):
            t = repo_run(
                f"traj-{i}-{attempt}", f"task_{i}", attempt=attempt, resolved=attempt == 1, run_id=RUN
            )
            t.steps[1].content = f"Task {i}: " + " ".join(f"w{i}x{k}" for k in range(30))
            out.append(t)
    return out


@pytest.fixture
def trajectory_store(service_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """The real trajectory store on a free port, holding the fixture trajectories."""
    env = {**service_env, "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(tmp_path / "index")}
    proc, info, _ = start_module("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_", env, tmp_path)
    address = f"127.0.0.1:{info['port']}"
    try:
        with auth.sync_channel(address) as channel:
            stub = trajectory_pb2_grpc.TrajectoryServiceStub(channel)
            reply = stub.BatchPutTrajectories(
                iter([tpb.BatchPutTrajectoriesRequest(trajectory=t) for t in fixture_trajectories()]),
                timeout=60,
            )
            assert not reply.errors, reply.errors
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def collect_events(bus: EventBus, durable: str) -> list[Event]:
    got: list[Event] = []

    async def on(event: Event) -> None:
        got.append(event)

    await bus.subscribe(durable, "flywheel.dataset.>", on)
    return got


async def watch_to_end(stub: dataset_pb2_grpc.DatasetServiceStub, build_id: str) -> list[dpb.DatasetBuild]:
    snapshots = []
    async for update in stub.WatchDatasetBuild(dpb.WatchDatasetBuildRequest(build_id=build_id), timeout=60):
        snapshots.append(update.build)
    return snapshots


def create_request(**build: object) -> dpb.CreateDatasetBuildRequest:
    fields = {"recipe": "step_sft", "source": dpb.DatasetSource(run_ids=[RUN]), **build}
    return dpb.CreateDatasetBuildRequest(build=dpb.DatasetBuild(**fields))


@pytest.mark.parametrize(
    ("build", "field"),
    [
        ({"recipe": "nope"}, "build.recipe"),
        ({"recipe": ""}, "build.recipe"),
        ({"source": dpb.DatasetSource()}, "build.source"),
        ({"split": dpb.SplitConfig(train_ratio=0.8, validation_ratio=0.8)}, "build.split"),
        ({"split": dpb.SplitConfig(train_ratio=1.5, validation_ratio=-0.5)}, "build.split.train_ratio"),
        ({"parameters": {"nope": "1"}}, "build.parameters.nope"),
        ({"parameters": {"require_resolved": "maybe"}}, "build.parameters.require_resolved"),
        ({"formats": [dpb.OUTPUT_FORMAT_TRL_PREFERENCE]}, "build.formats[0]"),
        (
            {"hygiene": dpb.HygieneConfig(near_duplicate_threshold=0)},
            "build.hygiene.near_duplicate_threshold",
        ),
    ],
)
async def test_bad_requests_are_invalid_argument_naming_the_field(
    service_env: dict[str, str], build: dict, field: str
) -> None:
    async with boot_service(build_app, DatasetSettings, service_env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateDatasetBuild(create_request(**build))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(f"{field}:"), err.value.details()
            assert not (await stub.ListDatasetBuilds(dpb.ListDatasetBuildsRequest())).builds


async def test_unknown_ids_are_not_found(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, DatasetSettings, service_env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            for call in (
                stub.GetDataset(dpb.GetDatasetRequest(dataset_id="ds-0123456789abcdef")),
                stub.GetDatasetBuild(dpb.GetDatasetBuildRequest(build_id="dsb-nope")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.WatchDatasetBuild(dpb.WatchDatasetBuildRequest(build_id="dsb-nope")):
                    pass
            assert err.value.code() == grpc.StatusCode.NOT_FOUND and "dsb-nope" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetDataset(dpb.GetDatasetRequest(dataset_id="x"))
            assert (
                err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dataset_id" in err.value.details()
            )
            recipes = await stub.ListRecipes(dpb.ListRecipesRequest())
            assert [r.name for r in recipes.recipes] == [
                "debug_dialogues",
                "dpo_steps",
                "grpo_groups",
                "journal_pairs",
                "patch_sft",
                "step_sft",
            ]
            step = next(r for r in recipes.recipes if r.name == "step_sft")
            assert (
                "require_resolved" in {p.name for p in step.parameters} and "not_resolved" in step.description
            )


async def test_build_watch_publish_preview(
    service_env: dict[str, str], trajectory_store: str, event_bus: EventBus, tmp_path: Path
) -> None:
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_store}
    events = await collect_events(event_bus, "pytest-dataset-built")
    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            assert await health_status(channel) == "SERVING"
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            request = create_request(
                split=dpb.SplitConfig(train_ratio=0.75, validation_ratio=0.25),
                formats=[dpb.OUTPUT_FORMAT_CHAT_MESSAGES, dpb.OUTPUT_FORMAT_CHATML],
                file_formats=[dpb.FILE_FORMAT_JSONL, dpb.FILE_FORMAT_PARQUET],
                labels={"purpose": "test"},
            )
            request.request_id = "req-1"
            created = (await stub.CreateDatasetBuild(request)).build
            assert created.id.startswith("dsb-") and created.state == common_pb2.JOB_STATE_QUEUED
            assert created.parameters["require_valid_tool_call"] == "true"
            again = (await stub.CreateDatasetBuild(request)).build
            assert again.id == created.id  # idempotent on request_id

            snapshots = await watch_to_end(stub, created.id)
            final = snapshots[-1]
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
            fractions = [s.progress.fraction for s in snapshots]
            assert fractions == sorted(fractions) and fractions[-1] == 1.0
            assert final.progress.trajectories_read == 16 and final.dataset_id.startswith("ds-")

            dataset = (await stub.GetDataset(dpb.GetDatasetRequest(dataset_id=final.dataset_id))).dataset
            assert dataset.build_id == created.id and dataset.trajectory_count == 16
            assert dataset.labels == {"purpose": "test"}
            assert dataset.manifest.key == f"datasets/{dataset.id}/manifest.json"
            assert len(dataset.files) == 2 * 2 * 2  # two splits, two formats, two containers
            # Both attempts of a task hold the same steps: the second one's are exact duplicates.
            assert sum(s.example_count for s in dataset.splits) == 8 * 3
            assert dataset.hygiene_stats.exact_duplicates_removed == 8 * 3
            listed = await stub.ListDatasets(dpb.ListDatasetsRequest(recipe="step_sft"))
            assert [d.id for d in listed.datasets] == [dataset.id]

            preview = await stub.PreviewDataset(dpb.PreviewDatasetRequest(dataset_id=dataset.id, count=2))
            train = next(s for s in dataset.splits if s.split == dpb.DATASET_SPLIT_TRAIN)
            assert preview.total_count == train.example_count and len(preview.examples) == 2
            store = FilesystemObjectStore(Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]))
            lines = store.get_bytes(f"datasets/{dataset.id}/train.chat_messages.jsonl").decode().splitlines()
            assert list(preview.examples) == lines[:2]
            chatml = await stub.PreviewDataset(
                dpb.PreviewDatasetRequest(dataset_id=dataset.id, count=1, format=dpb.OUTPUT_FORMAT_CHATML)
            )
            assert json.loads(chatml.examples[0])["text"].startswith("<|im_start|>system\n")

    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.05)
    assert [e.subject for e in events] == ["flywheel.dataset.built"]
    built = events[0].parse(events_pb2.DatasetBuilt)
    assert built.meta.event_id == f"dataset-built:{created.id}" and events[0].msg_id == built.meta.event_id
    assert built.dataset_id == dataset.id and built.trajectory_count == 16


async def test_restart_resumes_a_build_and_gives_the_same_dataset(
    service_env: dict[str, str], trajectory_store: str, event_bus: EventBus
) -> None:
    """A build persisted as RUNNING (the service died mid-build) is run again at the next start,
    and produces the dataset an uninterrupted build of the same request produces. A finished
    build whose event was never published (no `published/` record) gets it at the next start."""
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_store}
    events = await collect_events(event_bus, "pytest-dataset-restart")
    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            first = (await stub.CreateDatasetBuild(create_request())).build
            done = (await watch_to_end(stub, first.id))[-1]
            assert done.state == common_pb2.JOB_STATE_SUCCEEDED

    # Simulate a crash in the middle of a second build of the same request: its record says
    # RUNNING and its dataset was never published.
    store = FilesystemObjectStore(Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]))
    for info in list(store.list(f"datasets/{done.dataset_id}/")):
        store.delete(info.key)
    record = json.loads(store.get_bytes(f"dataset-builds/{first.id}.json"))
    record.update(id="dsb-01CRASHED0000000000000000", state="JOB_STATE_RUNNING")
    for key in ("dataset_id", "end_time", "progress"):
        record.pop(key, None)
    store.put("dataset-builds/dsb-01CRASHED0000000000000000.json", json.dumps(record).encode())

    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            resumed = (await watch_to_end(stub, "dsb-01CRASHED0000000000000000"))[-1]
            assert resumed.state == common_pb2.JOB_STATE_SUCCEEDED, resumed.error
            assert resumed.dataset_id == done.dataset_id
            listed = await stub.ListDatasetBuilds(dpb.ListDatasetBuildsRequest())
            assert {b.id for b in listed.builds} == {first.id, "dsb-01CRASHED0000000000000000"}

    # The resumed build's event "was not published" (no record): the next start publishes it, and
    # JetStream drops it as a repeat of the first one.
    store.delete("dataset-builds/published/dsb-01CRASHED0000000000000000")
    async with boot_service(build_app, DatasetSettings, env):
        for _ in range(100):
            if store.exists("dataset-builds/published/dsb-01CRASHED0000000000000000"):
                break
            await asyncio.sleep(0.05)
    for _ in range(100):
        if len(events) >= 2:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    ids = sorted(e.parse(events_pb2.DatasetBuilt).meta.event_id for e in events)
    assert ids == sorted([f"dataset-built:{first.id}", "dataset-built:dsb-01CRASHED0000000000000000"])
    assert store.exists("dataset-builds/published/dsb-01CRASHED0000000000000000")


async def test_a_build_over_nothing_fails_with_a_reason(
    service_env: dict[str, str], trajectory_store: str, event_bus: EventBus
) -> None:
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_store}
    events = await collect_events(event_bus, "pytest-dataset-empty")
    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            request = create_request(source=dpb.DatasetSource(run_ids=["run-nothing"]))
            build = (await stub.CreateDatasetBuild(request)).build
            final = (await watch_to_end(stub, build.id))[-1]
            assert final.state == common_pb2.JOB_STATE_FAILED
            assert final.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            assert "matched no trajectories" in final.error.message
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.05)
    failed = events[0].parse(events_pb2.DatasetBuildFailed)
    assert failed.state == common_pb2.JOB_STATE_FAILED and failed.build_id == build.id


class SlowTrajectories(trajectory_pb2_grpc.TrajectoryServiceServicer):
    """In-test ExportTrajectories: one trajectory every 0.2 s, so a build can be cancelled half-way."""

    async def ExportTrajectories(
        self, request: tpb.ExportTrajectoriesRequest, context: object
    ) -> AsyncIterator:
        for t in fixture_trajectories():
            await asyncio.sleep(0.2)
            yield tpb.ExportTrajectoriesResponse(trajectory=t)


async def test_cancel_a_running_build(service_env: dict[str, str], event_bus: EventBus) -> None:
    """Uses the in-test SlowTrajectories servicer (the real store answers too fast to cancel)."""
    server = grpc.aio.server()
    trajectory_pb2_grpc.add_TrajectoryServiceServicer_to_server(SlowTrajectories(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    events = await collect_events(event_bus, "pytest-dataset-failed")
    try:
        env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": f"127.0.0.1:{port}"}
        async with boot_service(build_app, DatasetSettings, env) as address:
            async with auth.channel(address) as channel:
                stub = dataset_pb2_grpc.DatasetServiceStub(channel)
                build = (await stub.CreateDatasetBuild(create_request())).build
                async for update in stub.WatchDatasetBuild(dpb.WatchDatasetBuildRequest(build_id=build.id)):
                    if update.build.progress.trajectories_read >= 2:
                        break
                await stub.CancelDatasetBuild(dpb.CancelDatasetBuildRequest(build_id=build.id))
                final = (await watch_to_end(stub, build.id))[-1]
                assert final.state == common_pb2.JOB_STATE_CANCELLED
                assert 2 <= final.progress.trajectories_read < 16 and not final.dataset_id
                assert not (await stub.ListDatasets(dpb.ListDatasetsRequest())).datasets
    finally:
        await server.stop(0)
    for _ in range(100):
        if events:
            break
        await asyncio.sleep(0.05)
    failed = events[0].parse(events_pb2.DatasetBuildFailed)
    assert (
        failed.state == common_pb2.JOB_STATE_CANCELLED
        and failed.meta.event_id == f"dataset-failed:{build.id}"
    )


async def test_service_stopped_mid_build_resumes_it_at_the_next_start(service_env: dict[str, str]) -> None:
    """A real stop (SIGTERM path: GrpcApp.stop) in the middle of a build leaves it RUNNING on
    disk, and the next start runs it to the end. Uses the in-test SlowTrajectories servicer."""
    server = grpc.aio.server()
    trajectory_pb2_grpc.add_TrajectoryServiceServicer_to_server(SlowTrajectories(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    store = FilesystemObjectStore(Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]))
    try:
        env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": f"127.0.0.1:{port}"}
        async with boot_service(build_app, DatasetSettings, env) as address:
            async with auth.channel(address) as channel:
                stub = dataset_pb2_grpc.DatasetServiceStub(channel)
                build = (await stub.CreateDatasetBuild(create_request())).build
                async for update in stub.WatchDatasetBuild(dpb.WatchDatasetBuildRequest(build_id=build.id)):
                    if update.build.progress.trajectories_read >= 2:
                        break
        record = json.loads(store.get_bytes(f"dataset-builds/{build.id}.json"))
        assert record["state"] == "JOB_STATE_RUNNING"
        async with boot_service(build_app, DatasetSettings, env) as address:
            async with auth.channel(address) as channel:
                stub = dataset_pb2_grpc.DatasetServiceStub(channel)
                final = (await watch_to_end(stub, build.id))[-1]
        assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
        assert final.progress.trajectories_read == 16
    finally:
        await server.stop(0)


async def test_readme_grpcurl_build_command(service_env: dict[str, str], trajectory_store: str) -> None:
    """The build command of the README, run with the real grpcurl."""
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_store}
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("<!-- grpcurl-build -->")[1]
    body = block.split("-d '")[1].split("'")[0]
    # The README passes the service token as a user would, from FLYWHEEL_SERVICE_TOKEN.
    header = os.path.expandvars(block.split('-H "')[1].split('"')[0])
    assert header == f"authorization: Bearer {os.environ['FLYWHEEL_SERVICE_TOKEN']}"
    async with boot_service(build_app, DatasetSettings, env) as address:
        done = await asyncio.to_thread(
            grpcurl,
            "-plaintext",
            "-H",
            header,
            "-d",
            body,
            address,
            "flywheel.dataset.v1.DatasetService/CreateDatasetBuild",
        )
        assert done.returncode == 0, done.stderr
        build_id = json.loads(done.stdout)["build"]["id"]
        watch = await asyncio.to_thread(
            grpcurl,
            "-plaintext",
            "-H",
            header,
            "-d",
            json.dumps({"buildId": build_id}),
            address,
            "flywheel.dataset.v1.DatasetService/WatchDatasetBuild",
        )
        assert watch.returncode == 0, watch.stderr
        assert '"JOB_STATE_SUCCEEDED"' in watch.stdout


async def test_cli_build_show_preview(service_env: dict[str, str], trajectory_store: str) -> None:
    """`flywheel dataset build|show|preview` against the service, gRPC only."""
    from click.testing import CliRunner

    from flywheel_cli.main import cli

    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_store}
    runner = CliRunner(env={"COLUMNS": "200"})
    async with boot_service(build_app, DatasetSettings, env) as address:

        def flywheel(*args: str) -> str:
            result = runner.invoke(cli, ["dataset", "--address", address, *args], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            return result.output

        built = await asyncio.to_thread(
            flywheel,
            "build",
            "--recipe",
            "step_sft",
            "--suite",
            "repo-bugs",
            "--split",
            "0.5,0.5",
            "--param",
            "require_resolved=true",
            "--format",
            "chatml",
            "--json",
        )
        final = json.loads(built[built.index("{") :].split("\n}\n")[0] + "\n}")
        assert final["state"] == "JOB_STATE_SUCCEEDED"
        shown = await asyncio.to_thread(flywheel, "show", final["datasetId"])
        assert final["datasetId"] in shown and "not_resolved=8" in shown and "train.chatml.jsonl" in shown
        previewed = await asyncio.to_thread(flywheel, "preview", final["datasetId"], "-n", "1")
        assert "<|im_start|>system" in previewed
        bad = await asyncio.to_thread(
            runner.invoke,
            cli,
            ["dataset", "--address", address, "build", "--recipe", "nope", "--run-id", "r"],
        )
        assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output and "build.recipe" in bad.output


async def test_patch_sft_over_imported_swe_records(
    service_env: dict[str, str], trajectory_store: str
) -> None:
    """SWE-style JSONL imported by the real trajectory store, then patch_sft through the service."""
    from dataset_fixtures import PATCH

    problem = "When the list is empty the helper raises IndexError instead of returning zero " * 2
    records = [
        {
            "instance_id": "lib__a-1",
            "problem_statement": problem,
            "patch": PATCH,
            "attempt": 0,
            "resolved": False,
            "failure_category": "wrong_file",
            "test_stdout": "FAILED test_a - IndexError",
        },
        {
            "instance_id": "lib__a-1",
            "problem_statement": problem,
            "patch": PATCH.replace("0\n", "None\n"),
            "attempt": 1,
            "resolved": True,
            "test_stdout": "1 passed",
        },
        {"instance_id": "lib__b-2", "problem_statement": "Too short.", "patch": PATCH, "resolved": True},
    ]
    content = "".join(json.dumps(r) + "\n" for r in records).encode()
    with auth.sync_channel(trajectory_store) as channel:
        imported = trajectory_pb2_grpc.TrajectoryServiceStub(channel).ImportTrajectories(
            tpb.ImportTrajectoriesRequest(
                format=tpb.IMPORT_FORMAT_SWE_JSONL, content=content, suite="swe-lite", run_id="imp-swe"
            ),
            timeout=30,
        )
    assert imported.created_count == 3, imported
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_store}
    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            request = create_request(
                recipe="patch_sft",
                source=dpb.DatasetSource(run_ids=["imp-swe"]),
                split=dpb.SplitConfig(train_ratio=1.0),
                formats=[dpb.OUTPUT_FORMAT_ALPACA],
            )
            build = (await stub.CreateDatasetBuild(request)).build
            final = (await watch_to_end(stub, build.id))[-1]
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
            dataset = (await stub.GetDataset(dpb.GetDatasetRequest(dataset_id=final.dataset_id))).dataset
            assert dict(dataset.filter_reasons) == {"problem_too_short": 1}
            preview = await stub.PreviewDataset(dpb.PreviewDatasetRequest(dataset_id=dataset.id, count=10))
    rows = [json.loads(e) for e in preview.examples]
    assert len(rows) == 2
    reflection = next(r for r in rows if "Previous attempt failed" in r["input"])
    assert "FAILED test_a - IndexError" in reflection["input"] and reflection["output"] == PATCH.replace(
        "0\n", "None\n"
    )


async def test_journal_pairs_over_an_imported_aide_journal(
    service_env: dict[str, str], trajectory_store: str
) -> None:
    """An AIDE journal imported by the real trajectory store, then journal_pairs through the service."""
    journal = {
        "task_id": "house-prices",
        "nodes": [
            {
                "id": "n1",
                "plan": "Linear model.",
                "code": "fit(lr)",
                "parent": None,
                "is_buggy": True,
                "term_out": "KeyError: 'price'",
            },
            {
                "id": "n2",
                "plan": "Use SalePrice.",
                "code": "fit(lr, 'SalePrice')",
                "parent": "n1",
                "is_buggy": False,
                "term_out": "RMSE 0.2",
                "metric": 0.2,
            },
            {
                "id": "n3",
                "plan": "Boosting.",
                "code": "fit(gbm)",
                "parent": {"id": "n2"},
                "is_buggy": False,
                "term_out": "RMSE 0.1",
                "metric": 0.1,
            },
        ],
    }
    with auth.sync_channel(trajectory_store) as channel:
        imported = trajectory_pb2_grpc.TrajectoryServiceStub(channel).ImportTrajectories(
            tpb.ImportTrajectoriesRequest(
                format=tpb.IMPORT_FORMAT_AIDE_JOURNAL,
                content=json.dumps(journal).encode(),
                suite="aide",
                run_id="imp-aide",
            ),
            timeout=30,
        )
    assert imported.created_count == 1, imported
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_store}
    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            request = create_request(
                recipe="journal_pairs",
                source=dpb.DatasetSource(run_ids=["imp-aide"]),
                split=dpb.SplitConfig(train_ratio=1.0),
                formats=[dpb.OUTPUT_FORMAT_ALPACA],
            )
            build = (await stub.CreateDatasetBuild(request)).build
            final = (await watch_to_end(stub, build.id))[-1]
            assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
            preview = await stub.PreviewDataset(
                dpb.PreviewDatasetRequest(dataset_id=final.dataset_id, count=10)
            )
    rows = [json.loads(e) for e in preview.examples]
    assert [r["output"] for r in rows] == ["fit(lr)", "fit(lr, 'SalePrice')", "fit(gbm)"]
    assert rows[1]["input"].startswith(
        "Buggy code:\n```python\nfit(lr)\n```\n\nExecution output:\n```\nKeyError: 'price'"
    )
    assert rows[2]["input"].startswith("Previous code:\n```python\nfit(lr, 'SalePrice')\n```")
