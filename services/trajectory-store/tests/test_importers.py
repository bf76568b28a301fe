"""Importers of foreign agent logs, on small fixtures written for these tests (tests/fixtures/)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from flywheel.common.v1 import common_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common.objectstore.fs import FilesystemObjectStore
from flywheel_trajectory import importers

from .conftest import running

FIXTURES = Path(__file__).parent / "fixtures"
CTX = importers.ImportContext(source="fixture", run_id="imp-test", suite="", labels={"origin": "test"})


def _convert(fmt: int, name: str) -> list[importers.Imported]:
    return list(importers.convert(fmt, (FIXTURES / name).read_bytes(), CTX))


def test_aide_journal_becomes_one_tree_shaped_trajectory() -> None:
    (item,) = _convert(pb.IMPORT_FORMAT_AIDE_JOURNAL, "aide_journal.json")
    t = item.trajectory
    assert item.error is None and t.teacher_kind == pb.TEACHER_KIND_IMPORTED
    assert [s.role for s in t.steps] == [pb.ROLE_ASSISTANT, pb.ROLE_USER] * 3
    stages = [s.attributes["aide.stage"] for s in t.steps if s.role == pb.ROLE_ASSISTANT]
    assert stages == ["draft", "improve", "debug"]  # n1 improves n0 (not buggy); n2 debugs n1 (buggy)
    assert not t.steps[0].HasField("parent_index")
    assert t.steps[2].parent_index == 1 and t.steps[4].parent_index == 3  # built on the parent's output
    assert t.steps[3].tool_result.status == pb.TOOL_RESULT_STATUS_ERROR and "KeyError" in t.steps[3].content
    assert "Validation RMSE: 0.31" in t.steps[1].content and t.steps[1].duration.ToMilliseconds() == 1500
    assert t.steps[4].attributes["aide.metric"] == "0.27"
    assert t.outcome.resolved and t.outcome.reward == pytest.approx(0.27)  # minimised: the best is the lowest
    assert t.labels["aide.best_node"] == "n2" and t.labels["origin"] == "test"
    assert t.import_origin.format == pb.IMPORT_FORMAT_AIDE_JOURNAL and t.import_origin.line == 0


def test_aide_journal_with_an_unknown_parent_is_rejected_whole() -> None:
    (item,) = _convert(pb.IMPORT_FORMAT_AIDE_JOURNAL, "aide_bad.json")
    assert item.trajectory is None
    assert item.error.pointer == "/nodes/1/parent" and "missing" in item.error.message


def test_swe_jsonl_converts_good_lines_and_reports_bad_ones_by_line() -> None:
    items = _convert(pb.IMPORT_FORMAT_SWE_JSONL, "swe.jsonl")
    good = {i.line: i.trajectory for i in items if i.trajectory is not None}
    bad = {i.line: i.error for i in items if i.error is not None}
    assert sorted(good) == [1, 2, 8] and sorted(bad) == [3, 4, 6, 7]  # line 5 is blank
    assert "invalid JSON" in bad[3].message and "object" in bad[4].message
    assert bad[6].pointer == "/instance_id" and bad[7].pointer == "/attempt"
    first = good[1]
    assert first.task.task_id == "astropy__astropy-1234" and first.task.suite == "swe"
    assert [s.role for s in first.steps] == [pb.ROLE_USER, pb.ROLE_ASSISTANT, pb.ROLE_USER]
    assert first.outcome.resolved and first.outcome.final_patch.startswith("--- a/u.py")
    assert (
        first.steps[2].test_run.trigger == pb.TEST_TRIGGER_FINAL
        and first.labels["swe.repo"] == "astropy/astropy"
    )
    second = good[2]
    assert not second.outcome.resolved and second.attempt == 1
    assert second.outcome.failure_detail == "wrong_file"  # the source's label, verbatim
    assert second.outcome.failure_category == pb.FAILURE_CATEGORY_NO_CHANGE  # empty patch
    assert (
        good[8].outcome.failure_category == pb.FAILURE_CATEGORY_NO_CHANGE
        and good[8].steps[2].content == "0 passed"
    )
    assert good[8].import_origin.line == 8 and len(good[8].import_origin.record_sha256) == 64
    assert len({t.id for t in good.values()}) == 3


def test_chat_jsonl_reads_both_tool_protocols() -> None:
    items = _convert(pb.IMPORT_FORMAT_CHAT_JSONL, "chat.jsonl")
    good = {i.line: i.trajectory for i in items if i.trajectory is not None}
    bad = {i.line: i.error for i in items if i.error is not None}
    assert sorted(good) == [1, 2] and sorted(bad) == [3, 4, 5]
    assert bad[3].pointer == "/messages/0/role" and "wizard" in bad[3].message
    assert "preference" in bad[4].message and "invalid JSON" in bad[5].message
    j = good[1]
    assert j.tool_protocol == common_pb2.TOOL_PROTOCOL_JSON and j.task.task_id == "quicksort"
    assert j.outcome.resolved and j.policy.model == "big-teacher"
    assert j.steps[2].tool_calls[0].name == "read_file" and j.steps[2].tool_calls[0].id == "call-2"
    assert j.steps[3].tool_result.tool_call_id == "call-2"
    assert j.steps[5].test_run.trigger == pb.TEST_TRIGGER_AFTER_WRITE
    assert j.steps[6].parse_error.kind == pb.PARSE_ERROR_KIND_INVALID_JSON and not j.steps[6].tool_calls
    n = good[2]
    assert (
        n.tool_protocol == common_pb2.TOOL_PROTOCOL_NATIVE
        and n.task.task_id == "gcd"
        and not n.outcome.resolved
    )
    assert n.tools[0].name == "read_file" and '"properties"' in n.tools[0].parameters_json_schema
    assert n.steps[1].tool_calls[0].arguments_json == '{"path": "gcd.py"}'
    assert n.steps[2].role == pb.ROLE_TOOL and n.steps[2].tool_call_id == "c1"


async def test_import_rpc_is_idempotent_and_skips_malformed_records(
    service_env: dict[str, str], index_env: dict[str, str], tmp_path: Path
) -> None:
    content = (FIXTURES / "swe.jsonl").read_bytes()
    async with running({**service_env, **index_env}, tmp_path / "idx") as svc:
        request = pb.ImportTrajectoriesRequest(
            format=pb.IMPORT_FORMAT_SWE_JSONL, content=content, source_name="runs/swe.jsonl", suite="swe-lite"
        )
        dry = await svc.stub.ImportTrajectories(
            pb.ImportTrajectoriesRequest(validate_only=True, **_fields(request))
        )
        assert (dry.created_count, dry.skipped_count) == (3, 4)  # would be stored; nothing is
        assert not (await svc.stub.ListTrajectories(pb.ListTrajectoriesRequest())).trajectories
        first = await svc.stub.ImportTrajectories(request)
        assert (first.created_count, first.unchanged_count, first.skipped_count) == (3, 0, 4)
        assert first.run_id.startswith("imp-")
        assert [(e.source, e.line) for e in first.errors] == [("runs/swe.jsonl", n) for n in (3, 4, 6, 7)]
        again = await svc.stub.ImportTrajectories(request)
        assert (again.created_count, again.unchanged_count, again.run_id) == (0, 3, first.run_id)
        listed = (
            await svc.stub.ListTrajectories(
                pb.ListTrajectoriesRequest(filter=pb.TrajectoryFilter(run_ids=[first.run_id]))
            )
        ).trajectories
        assert len(listed) == 3 and {t.task.suite for t in listed} == {"swe-lite"}
        assert {t.import_origin.source for t in listed} == {"runs/swe.jsonl"}
        # From the object store, read a line at a time.
        objects = FilesystemObjectStore(service_env["FLYWHEEL_OBJECT_STORE_ROOT"])
        objects.put("imports/chat.jsonl", (FIXTURES / "chat.jsonl").read_bytes())
        chat = await svc.stub.ImportTrajectories(
            pb.ImportTrajectoriesRequest(
                format=pb.IMPORT_FORMAT_CHAT_JSONL, object_key="imports/chat.jsonl", run_id="imp-chat"
            )
        )
        assert (chat.run_id, chat.created_count, chat.skipped_count) == ("imp-chat", 2, 3)
        assert {e.source for e in chat.errors} == {"imports/chat.jsonl"}
        for bad, code in [
            (pb.ImportTrajectoriesRequest(content=content), grpc.StatusCode.INVALID_ARGUMENT),
            (
                pb.ImportTrajectoriesRequest(format=pb.IMPORT_FORMAT_SWE_JSONL),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                pb.ImportTrajectoriesRequest(format=pb.IMPORT_FORMAT_SWE_JSONL, object_key="imports/none"),
                grpc.StatusCode.NOT_FOUND,
            ),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await svc.stub.ImportTrajectories(bad)
            assert err.value.code() == code


def _fields(request: pb.ImportTrajectoriesRequest) -> dict:
    return {f.name: v for f, v in request.ListFields()}
