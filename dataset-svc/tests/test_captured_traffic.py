"""Captured gateway traffic as a dataset source, through the real services.

The trajectory store runs as a process (``python -m flywheel_trajectory``); the captured calls
are put into it with PutTrajectory exactly as the gateway's capture callback puts them
(teacher kind CAPTURED, the gateway's labels), and the callers' feedback is written with
``flywheel_common.aliases.write_feedback`` into the object store the dataset service reads.
Builds go through the dataset service's gRPC API; what a build selected is read back from the
dataset's lineage (its ``trajectory_ids.txt`` and manifest).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from dataset_fixtures import repo_run
from google.protobuf.timestamp_pb2 import Timestamp

from flywheel.common.v1 import common_pb2
from flywheel.dataset.v1 import dataset_pb2 as dpb
from flywheel.dataset.v1 import dataset_pb2_grpc
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_common.aliases import write_feedback
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_dataset.captured import FeedbackReader, SourceReader
from flywheel_dataset.service import build_app
from flywheel_dataset.settings import DatasetSettings
from flywheel_dataset.source import GrpcTrajectorySource
from flywheel_testing.processes import start_module
from flywheel_testing.services import boot_service

ALPHA, BETA = "agent/alpha", "agent/beta"
RUN = "run-1"
WEATHER_TOOL = tpb.ToolDefinition(
    name="get_weather",
    description="Weather of a city.",
    parameters_json_schema=json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
)


@dataclass(frozen=True)
class Call:
    """One captured call: its id, alias, the labels that vary, and its caller's feedback."""

    id: str
    alias: str
    revision: str | None
    key_alias: str
    completion_id: str | None
    feedback: dict | None = None


# Stored in this order, so their create times increase in this order.
CALLS = [
    Call("cap-c0", ALPHA, "1", "team-a", "cmpl-0", {"success": True}),
    Call("cap-c1", ALPHA, "2", "team-b", "cmpl-1", {"success": False, "comment": "wrong city"}),
    Call("cap-c2", ALPHA, "2", "team-a", "cmpl-2"),  # no feedback record
    Call("cap-c3", ALPHA, "3", "team-a", None),  # no completion id: no feedback possible
    Call("cap-c4", BETA, "1", "team-a", "cmpl-4", {"success": True}),
    Call("cap-c5", ALPHA, "3", "team-c", "cmpl-5", {"success": True, "score": 0.9}),
    Call("cap-c6", ALPHA, None, "team-b", "cmpl-6", {"score": 1}),  # no revision; feedback without a verdict
]
ALPHA_CALLS = {c.id for c in CALLS if c.alias == ALPHA}


def captured(call: Call, n: int) -> tpb.Trajectory:
    """A trajectory shaped as the gateway captures a chat call: the caller's conversation (with
    an earlier assistant turn and its tool result) and the served answer, with a native call."""
    labels = {
        "source": "gateway-capture",
        "gateway_alias": call.alias,
        "gateway_key_alias": call.key_alias,
        "alias_arm": "target",
        "served_model": "ft/agent-alpha/v3",
    }
    if call.revision is not None:
        labels["alias_revision"] = call.revision
    if call.completion_id is not None:
        labels["completion_id"] = call.completion_id
    city = f"city{n}"
    words = " ".join(f"w{n}x{k}" for k in range(25))
    steps = [
        tpb.Step(role=tpb.ROLE_SYSTEM, content="You are a helpful travel agent."),
        tpb.Step(role=tpb.ROLE_USER, content=f"Plan trip {n} to {city}: {words}"),
        tpb.Step(
            role=tpb.ROLE_ASSISTANT,
            content="",
            tool_calls=[
                tpb.ToolCall(id=f"h{n}", name="get_weather", arguments_json=json.dumps({"city": city}))
            ],
        ),
        tpb.Step(role=tpb.ROLE_TOOL, content=f"sunny in {city}, {n} degrees", tool_call_id=f"h{n}"),
        tpb.Step(role=tpb.ROLE_ASSISTANT, content=f"Answer {n}: pack sunglasses for {city}. {words}"),
    ]
    for i, step in enumerate(steps):
        step.index = i
    return tpb.Trajectory(
        id=call.id,
        task=tpb.TaskRef(suite="gateway-traffic", task_id=call.id.removeprefix("cap-")),
        policy=tpb.Policy(model=call.alias),
        teacher_kind=tpb.TEACHER_KIND_CAPTURED,
        tools=[WEATHER_TOOL],
        steps=steps,
        labels=labels,
    )


@dataclass
class Stored:
    address: str
    store: FilesystemObjectStore
    times: dict[str, Timestamp]  #: trajectory id → the store's create_time


@pytest.fixture
def stored(service_env: dict[str, str], tmp_path: Path) -> Iterator[Stored]:
    """The real trajectory store holding the captured calls (one PutTrajectory each, in order),
    two run trajectories and a MODEL trajectory that carries an alias label but was not captured;
    the feedback records in the dataset service's object store."""
    env = {**service_env, "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(tmp_path / "index")}
    proc, info, _ = start_module("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_", env, tmp_path)
    address = f"127.0.0.1:{info['port']}"
    store = FilesystemObjectStore(Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]))
    times: dict[str, Timestamp] = {}
    not_captured = captured(Call("model-m0", ALPHA, "3", "team-a", "cmpl-m0"), 99)
    not_captured.teacher_kind = tpb.TEACHER_KIND_MODEL
    others = [
        repo_run("run-r0", "task_0", run_id=RUN),
        repo_run("run-r1", "task_1", run_id=RUN),
        not_captured,
    ]
    try:
        with auth.sync_channel(address) as channel:
            stub = trajectory_pb2_grpc.TrajectoryServiceStub(channel)
            for t in [captured(c, n) for n, c in enumerate(CALLS)] + others:
                reply = stub.PutTrajectory(tpb.PutTrajectoryRequest(trajectory=t), timeout=30)
                assert reply.created
                times[t.id] = reply.trajectory.create_time
        for call in CALLS:
            if call.feedback is not None:
                assert call.completion_id is not None
                write_feedback(store, call.completion_id, call.feedback)
        write_feedback(store, "cmpl-m0", {"success": True})
        yield Stored(address, store, times)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
async def dataset_stub(
    service_env: dict[str, str], stored: Stored
) -> AsyncIterator[dataset_pb2_grpc.DatasetServiceStub]:
    env = {**service_env, "FLYWHEEL_TRAJECTORY_ADDRESS": stored.address}
    async with boot_service(build_app, DatasetSettings, env) as address:
        async with auth.channel(address) as channel:
            yield dataset_pb2_grpc.DatasetServiceStub(channel)


def traffic(alias: str = ALPHA, **kw: object) -> dpb.CapturedTraffic:
    return dpb.CapturedTraffic(alias=alias, **kw)


def request(
    source: dpb.DatasetSource, recipe: str = "step_sft", **kw: object
) -> dpb.CreateDatasetBuildRequest:
    build = dpb.DatasetBuild(
        recipe=recipe,
        source=source,
        split=dpb.SplitConfig(train_ratio=1.0),  # every call in TRAIN: a call is its own task
        hygiene=dpb.HygieneConfig(near_duplicate_threshold=1.0),
        **kw,
    )
    return dpb.CreateDatasetBuildRequest(build=build)


async def run_build(
    stub: dataset_pb2_grpc.DatasetServiceStub, req: dpb.CreateDatasetBuildRequest
) -> dpb.DatasetBuild:
    created = (await stub.CreateDatasetBuild(req)).build
    final = created
    async for update in stub.WatchDatasetBuild(dpb.WatchDatasetBuildRequest(build_id=created.id), timeout=60):
        final = update.build
    assert final.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED), final
    return final


async def built(
    stub: dataset_pb2_grpc.DatasetServiceStub,
    store: FilesystemObjectStore,
    req: dpb.CreateDatasetBuildRequest,
) -> tuple[dpb.Dataset, set[str], dict]:
    """(dataset, ids of the trajectories it read, its manifest) of a build that must succeed."""
    final = await run_build(stub, req)
    assert final.state == common_pb2.JOB_STATE_SUCCEEDED, final.error
    dataset = (await stub.GetDataset(dpb.GetDatasetRequest(dataset_id=final.dataset_id))).dataset
    ids = set(store.get_bytes(dataset.trajectory_ids.key).decode().split())
    assert final.progress.trajectories_read == final.progress.trajectories_total == len(ids)
    assert dataset.trajectory_count == len(ids)
    return dataset, ids, json.loads(store.get_bytes(dataset.manifest.key))


def train_records(store: FilesystemObjectStore, dataset: dpb.Dataset) -> list[dict]:
    key = f"datasets/{dataset.id}/train.chat_messages.jsonl"
    return [json.loads(line) for line in store.get_bytes(key).decode().splitlines()]


# ------------------------------------------------------------------------------------ selection


async def test_each_filter_selects_exactly_its_calls(
    dataset_stub: dataset_pb2_grpc.DatasetServiceStub, stored: Stored
) -> None:
    t = stored.times
    cases: list[tuple[str, dpb.CapturedTraffic, set[str]]] = [
        ("alias", traffic(), ALPHA_CALLS),
        ("other alias", traffic(BETA), {"cap-c4"}),
        (
            "time range [c1, c5)",
            traffic(time_range=common_pb2.TimeRange(start_time=t["cap-c1"], end_time=t["cap-c5"])),
            {"cap-c1", "cap-c2", "cap-c3"},
        ),
        (
            "open end from c3",
            traffic(time_range=common_pb2.TimeRange(start_time=t["cap-c3"])),
            {"cap-c3", "cap-c5", "cap-c6"},
        ),
        ("one key alias", traffic(key_aliases=["team-a"]), {"cap-c0", "cap-c2", "cap-c3"}),
        (
            "two key aliases",
            traffic(key_aliases=["team-a", "team-c"]),
            {"cap-c0", "cap-c2", "cap-c3", "cap-c5"},
        ),
        # c6 has no alias_revision label: it fails any minimum.
        ("min revision 2", traffic(min_alias_revision=2), {"cap-c1", "cap-c2", "cap-c3", "cap-c5"}),
        ("min revision 3", traffic(min_alias_revision=3), {"cap-c3", "cap-c5"}),
        ("success feedback", traffic(feedback=dpb.FEEDBACK_FILTER_SUCCESS), {"cap-c0", "cap-c5"}),
        ("any feedback", traffic(feedback=dpb.FEEDBACK_FILTER_ANY_FEEDBACK), {"cap-c0", "cap-c1", "cap-c5"}),
        (
            "not failed",
            traffic(feedback=dpb.FEEDBACK_FILTER_NOT_FAILED),
            {"cap-c0", "cap-c2", "cap-c3", "cap-c5", "cap-c6"},
        ),
        (
            "filters together",
            traffic(
                key_aliases=["team-a", "team-b"],
                min_alias_revision=2,
                feedback=dpb.FEEDBACK_FILTER_NOT_FAILED,
            ),
            {"cap-c2", "cap-c3"},
        ),
    ]
    for name, entry, expected in cases:
        _, ids, manifest = await built(
            dataset_stub, stored.store, request(dpb.DatasetSource(captured_traffic=[entry]))
        )
        assert ids == expected, name
        row = manifest["source_lineage"]["captured_traffic"][0]
        assert row["alias"] == entry.alias and row["matched"] == row["contributed"] == len(expected), name


async def test_failure_feedback_is_selected_but_never_an_sft_target(
    dataset_stub: dataset_pb2_grpc.DatasetServiceStub, stored: Stored
) -> None:
    """The FAILURE filter selects c1 only; step_sft then has nothing to learn and says why."""
    final = await run_build(
        dataset_stub,
        request(dpb.DatasetSource(captured_traffic=[traffic(feedback=dpb.FEEDBACK_FILTER_FAILURE)])),
    )
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert final.progress.trajectories_read == 1
    assert "failure_feedback=1" in final.error.message, final.error.message


async def test_union_with_run_ids_reads_each_trajectory_once_with_lineage(
    dataset_stub: dataset_pb2_grpc.DatasetServiceStub, stored: Stored
) -> None:
    source = dpb.DatasetSource(
        run_ids=[RUN],
        captured_traffic=[
            traffic(feedback=dpb.FEEDBACK_FILTER_SUCCESS),  # c0, c5
            traffic(key_aliases=["team-a"]),  # c0 (already read), c2, c3
            traffic(BETA),  # c4
        ],
    )
    dataset, ids, manifest = await built(dataset_stub, stored.store, request(source))
    assert ids == {"run-r0", "run-r1", "cap-c0", "cap-c5", "cap-c2", "cap-c3", "cap-c4"}
    assert len(dataset.source.captured_traffic) == 3 and list(dataset.source.run_ids) == [RUN]

    lineage = manifest["source_lineage"]
    assert lineage["trajectories"] == 7
    assert lineage["run_ids"] == {"trajectories": 2}
    rows = lineage["captured_traffic"]
    assert [(r["alias"], r["matched"], r["contributed"]) for r in rows] == [
        (ALPHA, 2, 2),
        (ALPHA, 3, 2),
        (BETA, 1, 1),
    ]
    assert rows[0]["feedback"] == "FEEDBACK_FILTER_SUCCESS" and rows[1]["key_aliases"] == ["team-a"]
    # The store returned every alpha call for each entry; the rest were filtered out, by reason.
    assert rows[0]["skipped"] == {"feedback": 4} and rows[1]["skipped"] == {"key_alias": 3}
    assert lineage["captured_feedback"] == {"none": 2, "success": 3}
    assert manifest["trajectory_count"] == "7"  # int64 in protobuf JSON

    # The examples: three steps of each run trajectory, and each captured call's served answer.
    records = train_records(stored.store, dataset)
    assert len(records) == 2 * 3 + 5
    assert dict(dataset.failure_categories) == {"RESOLVED": 5, "no_feedback": 2}

    # The same request again gives the same dataset.
    again, _, _ = await built(dataset_stub, stored.store, request(source))
    assert again.id == dataset.id


async def test_time_range_is_the_stores_create_time(
    dataset_stub: dataset_pb2_grpc.DatasetServiceStub, stored: Stored
) -> None:
    """A range that ends before the first call was stored selects nothing: the build fails."""
    early = Timestamp()
    early.FromSeconds(stored.times["cap-c0"].seconds - 3600)
    final = await run_build(
        dataset_stub,
        request(
            dpb.DatasetSource(captured_traffic=[traffic(time_range=common_pb2.TimeRange(end_time=early))])
        ),
    )
    assert final.state == common_pb2.JOB_STATE_FAILED and "matched no trajectories" in final.error.message


# -------------------------------------------------------------------------------------- recipes


async def test_step_sft_learns_the_served_answer_by_feedback(
    dataset_stub: dataset_pb2_grpc.DatasetServiceStub, stored: Stored
) -> None:
    source = dpb.DatasetSource(captured_traffic=[traffic()])
    dataset, ids, _ = await built(dataset_stub, stored.store, request(source))
    assert ids == ALPHA_CALLS
    records = train_records(stored.store, dataset)
    # One example per call (its served answer), except c1, whose caller reported failure.
    answers = sorted(r["messages"][-1]["content"].split(":")[0] for r in records)
    assert answers == ["Answer 0", "Answer 2", "Answer 3", "Answer 5", "Answer 6"]
    assert dataset.filter_reasons["failure_feedback"] == 1
    assert dataset.filter_reasons["caller_history"] == 5  # the earlier assistant turn of each kept call
    # The conversation is rendered with native tool calls and the call's tools.
    first = records[0]
    assert first["messages"][2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert first["messages"][3]["role"] == "tool" and first["tools"][0]["function"]["name"] == "get_weather"

    strict, _, _ = await built(
        dataset_stub, stored.store, request(source, parameters={"require_resolved": "true"})
    )
    answers = sorted(r["messages"][-1]["content"].split(":")[0] for r in train_records(stored.store, strict))
    assert answers == ["Answer 0", "Answer 5"]
    assert strict.filter_reasons["not_resolved"] == 3 and strict.filter_reasons["failure_feedback"] == 1


async def test_recipes_without_a_captured_rule_drop_captured_calls(
    dataset_stub: dataset_pb2_grpc.DatasetServiceStub, stored: Stored
) -> None:
    final = await run_build(
        dataset_stub, request(dpb.DatasetSource(captured_traffic=[traffic(BETA)]), recipe="dpo_steps")
    )
    assert final.state == common_pb2.JOB_STATE_FAILED
    assert "captured_not_supported=1" in final.error.message, final.error.message


async def test_new_feedback_gives_a_new_dataset(
    dataset_stub: dataset_pb2_grpc.DatasetServiceStub, stored: Stored
) -> None:
    """Feedback can arrive after the call was stored; a build after it must not reuse the
    dataset built before it (same trajectories, different feedback)."""
    req = request(dpb.DatasetSource(captured_traffic=[traffic()]), parameters={"require_resolved": "true"})
    before, _, _ = await built(dataset_stub, stored.store, req)
    write_feedback(stored.store, "cmpl-2", {"success": True})
    after, _, manifest = await built(dataset_stub, stored.store, req)
    assert after.id != before.id
    assert sum(s.example_count for s in after.splits) == sum(s.example_count for s in before.splits) + 1
    assert manifest["source_lineage"]["captured_feedback"] == {"failure": 1, "none": 2, "success": 3}


async def test_source_reader_against_the_real_store(stored: Stored) -> None:
    """The resolution without the service: every captured call of an alias, normalised, and a
    MODEL trajectory with the same alias label left out."""
    source = GrpcTrajectorySource(stored.address, timeout_s=30)
    try:
        reader = SourceReader(
            dpb.DatasetSource(captured_traffic=[traffic(min_alias_revision=1)]),
            source.export,
            FeedbackReader(stored.store),
        )
        got = {t.id: t for t in reader}
    finally:
        source.close()
    assert set(got) == ALPHA_CALLS - {"cap-c6"}
    assert {i: t.labels["feedback"] for i, t in got.items()} == {
        "cap-c0": "success",
        "cap-c1": "failure",
        "cap-c2": "none",
        "cap-c3": "none",
        "cap-c5": "success",
    }
    assert got["cap-c0"].outcome.resolved and not got["cap-c1"].outcome.resolved
    assert got["cap-c1"].outcome.failure_detail == "caller_reported_failure"
    assert all(t.tool_protocol == common_pb2.TOOL_PROTOCOL_NATIVE for t in got.values())
    assert reader.entries[0].skipped == {"alias_revision": 1}


# ----------------------------------------------------------------------------------- bad inputs


def _bad_time() -> Timestamp:
    stamp = Timestamp(seconds=100)
    stamp.nanos = -5
    return stamp


def _at(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


F = "build.source.captured_traffic"


@pytest.mark.parametrize(
    ("source", "field"),
    [
        (dpb.DatasetSource(), "build.source"),
        (
            dpb.DatasetSource(
                run_ids=[RUN], filter=tpb.TrajectoryFilter(suite="x"), captured_traffic=[traffic()]
            ),
            "build.source",
        ),
        (dpb.DatasetSource(captured_traffic=[traffic("")]), f"{F}[0].alias"),
        (dpb.DatasetSource(captured_traffic=[traffic(), traffic("Not An Alias")]), f"{F}[1].alias"),
        (dpb.DatasetSource(captured_traffic=[traffic("ft/agent")]), f"{F}[0].alias"),
        (
            dpb.DatasetSource(
                captured_traffic=[
                    traffic(time_range=common_pb2.TimeRange(start_time=_at(200), end_time=_at(100)))
                ]
            ),
            f"{F}[0].time_range",
        ),
        (
            dpb.DatasetSource(
                captured_traffic=[
                    traffic(time_range=common_pb2.TimeRange(start_time=_at(100), end_time=_at(100)))
                ]
            ),
            f"{F}[0].time_range",
        ),
        (
            dpb.DatasetSource(
                captured_traffic=[traffic(time_range=common_pb2.TimeRange(start_time=_bad_time()))]
            ),
            f"{F}[0].time_range.start_time",
        ),
        (
            dpb.DatasetSource(captured_traffic=[traffic(key_aliases=["team-a", "Team A"])]),
            f"{F}[0].key_aliases[1]",
        ),
        (dpb.DatasetSource(captured_traffic=[traffic(key_aliases=[""])]), f"{F}[0].key_aliases[0]"),
        (dpb.DatasetSource(captured_traffic=[traffic(feedback=42)]), f"{F}[0].feedback"),  # type: ignore[arg-type]
        (dpb.DatasetSource(captured_traffic=[traffic(min_alias_revision=-1)]), f"{F}[0].min_alias_revision"),
    ],
)
async def test_bad_sources_are_invalid_argument_naming_the_field(
    service_env: dict[str, str], source: dpb.DatasetSource, field: str
) -> None:
    async with boot_service(build_app, DatasetSettings, service_env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateDatasetBuild(request(source))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(f"{field}:"), err.value.details()
            assert not (await stub.ListDatasetBuilds(dpb.ListDatasetBuildsRequest())).builds


async def test_captured_traffic_alone_or_with_a_filter_is_a_valid_source(service_env: dict[str, str]) -> None:
    async with boot_service(build_app, DatasetSettings, service_env) as address:
        async with auth.channel(address) as channel:
            stub = dataset_pb2_grpc.DatasetServiceStub(channel)
            for source in (
                dpb.DatasetSource(captured_traffic=[traffic(feedback=dpb.FEEDBACK_FILTER_NOT_FAILED)]),
                dpb.DatasetSource(
                    filter=tpb.TrajectoryFilter(suite="repo-bugs"), captured_traffic=[traffic(BETA)]
                ),
            ):
                req = request(source)
                req.validate_only = True
                checked = (await stub.CreateDatasetBuild(req)).build
                assert checked.source == source and not checked.id
