"""Runs through the real orchestrator, sandbox runner and trajectory store.

The model is the scripted OpenAI-compatible server from conftest (a hosted model cannot run
here); every other component is real, and each test checks the stored trajectories, not only the
run's counters.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from flywheel.common.v1 import common_pb2
from flywheel.orchestrator.v1 import orchestrator_pb2 as opb
from flywheel.orchestrator.v1 import run_pb2
from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth
from flywheel_testing.scripted_model import Delay, Fail, json_call, text, tool_call

from .conftest import Backends, Harness, orchestrator

TRAIN, TEST = common_pb2.TASK_SPLIT_TRAIN, common_pb2.TASK_SPLIT_TEST
FIXED_ADD = "def add(a, b):\n    return a + b\n"


def turns(messages: list[dict[str, Any]]) -> int:
    return sum(m["role"] == "assistant" for m in messages)


def scripted(*replies: Any):
    """A responder that plays ``replies`` in order, one per assistant turn of the episode."""

    def respond(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        n = turns(messages)
        return replies[n] if n < len(replies) else text('{"type":"final","answer":"done"}')

    return respond


async def run_to_end(h: Harness, **fields: Any) -> run_pb2.Run:
    """Create a run and watch it to its end; episode settings (protocol, limits…) go into
    ``run.episode``, the other fields into the run."""
    episode = {
        k: fields.pop(k)
        for k in ("protocol", "test_policy", "limits", "sampling", "record_tokens")
        if k in fields
    }
    run = run_pb2.Run(suite="mini", model="scripted", episode=run_pb2.EpisodeSettings(**episode), **fields)
    created = await h.stub.CreateRun(opb.CreateRunRequest(run=run))
    last = None
    async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.run.id), timeout=120):
        if update.WhichOneof("update") == "run":
            last = update.run
    assert last is not None
    return last


async def stored(backends: Backends, run_id: str) -> list[tpb.Trajectory]:
    async with auth.channel(backends.trajectory) as ch:
        stub = trajectory_pb2_grpc.TrajectoryServiceStub(ch)
        listing = await stub.ListTrajectories(
            tpb.ListTrajectoriesRequest(filter=tpb.TrajectoryFilter(run_ids=[run_id]), page_size=100)
        )
        out = []
        for t in listing.trajectories:
            out.append((await stub.GetTrajectory(tpb.GetTrajectoryRequest(trajectory_id=t.id))).trajectory)
        return sorted(out, key=lambda t: (t.task.task_id, t.attempt))


def user_texts(t: tpb.Trajectory) -> list[str]:
    return [s.content for s in t.steps if s.role == tpb.ROLE_USER]


async def test_valid_json_episode_fixes_the_bug_and_is_stored(
    backends: Backends, service_env: dict[str, str]
) -> None:
    respond = scripted(
        json_call("list_files", {"rel_dir": "."}),
        json_call("read_file", {"rel_path": "calc.py"}),
        json_call("write_file", {"rel_path": "calc.py", "content": FIXED_ADD}),
        text('```json\n{"type": "final", "answer": "fixed add"}\n```'),
    )
    async with orchestrator(backends, service_env, respond) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"])
        assert run.state == common_pb2.JOB_STATE_SUCCEEDED, run.error
        [t] = await stored(backends, run.id)
        assert run.counters.episodes_finished == 1 and run.counters.episodes_resolved == 1, t.outcome
        assert (
            run.counters.steps == 4
            and run.counters.parse_errors == 0
            and run.counters.episodes_with_write == 1
        )
    assert t.outcome.resolved and t.outcome.tests_passed == 2 == t.outcome.tests_total
    assert "+    return a + b" in t.outcome.final_patch
    assert t.teacher_kind == tpb.TEACHER_KIND_MODEL and t.policy.model == "scripted"
    assert t.task.suite == "mini" and t.task.split == TRAIN and t.task.suite_version
    assert t.tool_protocol == common_pb2.TOOL_PROTOCOL_JSON and {x.name for x in t.tools} == {
        "list_files",
        "read_file",
        "grep",
        "write_file",
    }
    users = user_texts(t)
    assert users[1].startswith("[tool_result]\ncalc.py\ntests/test_calc.py")
    assert users[2] == "[tool_result]\n" + "def add(a, b):\n    return a - b\n"
    # test policy END: the final tests' summary closes the conversation
    assert users[-1].startswith("[tests] PASS: 2/2")
    assert t.steps[-1].test_run.trigger == tpb.TEST_TRIGGER_FINAL
    assert t.sandbox.backend  # the real sandbox ran the tests


async def test_malformed_turns_get_corrective_messages_and_stop_the_episode(
    backends: Backends, service_env: dict[str, str]
) -> None:
    respond = scripted(
        text("I will read the file now."),  # not JSON
        text('{"type": "tool_call", "name": "read_file"'),  # truncated JSON
        text('{"type": "tool_call", "name": "run_tests", "args": {}}'),  # unknown tool
        text(
            '{"type":"tool_call","name":"read_file","args":{"rel_path":"calc.py"}} {"type":"final"}'
        ),  # two actions
        json_call("read_file", {"rel_path": "../../etc/passwd"}),  # path escape
    )
    async with orchestrator(backends, service_env, respond) as h:
        run = await run_to_end(
            h, split=TRAIN, task_ids=["add-bug"], limits=run_pb2.EpisodeLimits(max_consecutive_parse_errors=5)
        )
        [t] = await stored(backends, run.id)
    kinds = [s.parse_error.kind for s in t.steps if s.role == tpb.ROLE_ASSISTANT]
    assert kinds == [
        tpb.PARSE_ERROR_KIND_INVALID_JSON,
        tpb.PARSE_ERROR_KIND_INVALID_JSON,
        tpb.PARSE_ERROR_KIND_UNKNOWN_TOOL,
        tpb.PARSE_ERROR_KIND_MULTIPLE_ACTIONS,
        tpb.PARSE_ERROR_KIND_BAD_ARGUMENTS,
    ]
    assert run.counters.parse_errors == 5
    assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE
    assert "5 parse errors in a row" in t.outcome.failure_detail
    corrective = user_texts(t)[1:]
    assert len(corrective) == 5 and all(c.startswith("[tool_result]\nerror: ") for c in corrective)
    assert "unknown tool 'run_tests'" in corrective[2]
    assert "escapes the repository" in corrective[4]
    assert t.steps[6].tool_calls[0].name == "run_tests"  # the unknown call is still recorded


async def test_repeated_calls_are_loops_and_stop_the_episode(
    backends: Backends, service_env: dict[str, str]
) -> None:
    same = json_call("read_file", {"rel_path": "calc.py"})
    other = json_call("list_files", {})
    respond = scripted(same, same, other, same, other, same, same)
    async with orchestrator(backends, service_env, respond, max_loop_detections=3) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"])
        [t] = await stored(backends, run.id)
    flags = [s.loop_detected for s in t.steps if s.role == tpb.ROLE_ASSISTANT]
    # 2nd call repeats the 1st; calls 3-4-5-6 = (list, read, list, read)... the cycle B A B A
    assert flags[:2] == [False, True] and sum(flags) == 3
    assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE
    assert run.counters.loop_detections == 3
    assert "3 loop detections" in t.outcome.failure_detail
    assert any("loop detected" in u for u in user_texts(t))


async def test_budgets_end_episodes_with_their_reason(
    backends: Backends, service_env: dict[str, str]
) -> None:
    def forever(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        n = turns(messages)
        if n == 0:
            return json_call(
                "write_file", {"rel_path": "calc.py", "content": "def add(a, b):\n    return 0\n"}
            )
        return json_call("grep", {"pattern": f"x{n}"})

    async with orchestrator(backends, service_env, forever) as h:
        it = await run_to_end(
            h, split=TRAIN, task_ids=["add-bug"], limits=run_pb2.EpisodeLimits(max_iterations=3)
        )
        tok = await run_to_end(
            h, split=TRAIN, task_ids=["add-bug"], limits=run_pb2.EpisodeLimits(max_tokens=400)
        )
        [ti] = await stored(backends, it.id)
        [tt] = await stored(backends, tok.id)
    assert (
        ti.outcome.failure_category == tpb.FAILURE_CATEGORY_ITERATION_LIMIT and ti.stats.assistant_turns == 3
    )
    assert tt.outcome.failure_category == tpb.FAILURE_CATEGORY_TOKEN_BUDGET
    # the final tests still ran on the changed workspace
    assert ti.outcome.tests_total == 2 and ti.outcome.tests_passed == 1  # add(0, 0) == 0 still passes


async def test_time_budget(backends: Backends, service_env: dict[str, str]) -> None:
    respond = scripted(json_call("list_files", {}), Delay(5.0, json_call("list_files", {"rel_dir": "tests"})))
    async with orchestrator(backends, service_env, respond) as h:
        limits = run_pb2.EpisodeLimits(max_wall_time=Duration(seconds=1))
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"], limits=limits)
        [t] = await stored(backends, run.id)
    assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE
    assert "timed out" in t.outcome.failure_detail


@pytest.mark.parametrize(
    ("policy", "after_write_summaries", "final_summary"),
    [
        (run_pb2.TEST_POLICY_NEVER, 0, False),
        (run_pb2.TEST_POLICY_AFTER_WRITE, 2, False),
        (run_pb2.TEST_POLICY_END, 0, True),
    ],
)
async def test_test_policies(
    backends: Backends,
    service_env: dict[str, str],
    policy: int,
    after_write_summaries: int,
    final_summary: bool,
) -> None:
    respond = scripted(
        json_call("write_file", {"rel_path": "calc.py", "content": "def add(a, b):\n    return a * b\n"}),
        json_call("write_file", {"rel_path": "calc.py", "content": FIXED_ADD}),
        text('{"type":"final","answer":"ok"}'),
    )
    async with orchestrator(backends, service_env, respond) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"], test_policy=policy)
        [t] = await stored(backends, run.id)
    assert t.outcome.resolved
    summaries = [s for s in t.steps if s.HasField("test_run")]
    after = [s for s in summaries if s.test_run.trigger == tpb.TEST_TRIGGER_AFTER_WRITE]
    final = [s for s in summaries if s.test_run.trigger == tpb.TEST_TRIGGER_FINAL]
    assert len(after) == after_write_summaries and len(final) == int(final_summary)
    if after:
        assert "[tests] FAIL: 1/2 tests passed." in after[0].content  # a*b: add(0,0) still passes
        assert after[0].content.startswith("[tool_result]\nupdated calc.py")
        assert "[tests] PASS: 2/2" in after[1].content
        assert list(after[0].test_run.failed_ids) == ["tests/test_calc.py::test_add"]


async def test_native_tool_calling(backends: Backends, service_env: dict[str, str]) -> None:
    seen_tools: list[Any] = []

    def respond(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        seen_tools.append(tools)
        n = turns(messages)
        if n == 0:
            return tool_call("read_file", {"rel_path": "calc.py"}, "c1")
        if n == 1:
            assert messages[-1]["role"] == "tool" and messages[-1]["tool_call_id"] == "c1"
            return {
                "content": "",
                "tool_calls": [
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "write_file", "arguments": "{bad json"},
                    },
                    {
                        "id": "c3",
                        "type": "function",
                        "function": {
                            "name": "write_file",
                            "arguments": json.dumps({"rel_path": "calc.py", "content": FIXED_ADD}),
                        },
                    },
                ],
            }
        return text("Fixed the addition.")

    async with orchestrator(backends, service_env, respond) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"], protocol=common_pb2.TOOL_PROTOCOL_NATIVE)
        [t] = await stored(backends, run.id)
    assert t.outcome.resolved and t.tool_protocol == common_pb2.TOOL_PROTOCOL_NATIVE
    assert {f["function"]["name"] for f in seen_tools[0]} == {"list_files", "read_file", "grep", "write_file"}
    tool_steps = [s for s in t.steps if s.role == tpb.ROLE_TOOL]
    assert [s.tool_call_id for s in tool_steps] == ["c1", "c2", "c3"]
    assert tool_steps[1].tool_result.status == tpb.TOOL_RESULT_STATUS_REJECTED
    assert run.counters.parse_errors == 1


async def test_record_tokens_stores_sampled_ids_and_logprobs_only_when_asked(
    backends: Backends, service_env: dict[str, str]
) -> None:
    """The scripted server's tokeniser is UTF-8 bytes with a known log-prob per id, so the record
    can be checked exactly; the real model's record is checked in gateway/tests/test_native_episode."""
    from flywheel_testing.scripted_model import token_ids, token_logprob

    replies = (json_call("read_file", {"rel_path": "calc.py"}), text('{"type": "final", "answer": "ok"}'))
    async with orchestrator(backends, service_env, scripted(*replies)) as h:
        on = await run_to_end(h, split=TRAIN, task_ids=["add-bug"], record_tokens=True)
        off = await run_to_end(h, split=TRAIN, task_ids=["add-bug"])
        asked = [bool(r.get("return_token_ids")) and r.get("logprobs") is True for r in h.model.requests]
    assert asked == [True, True, False, False]
    [t_on], [t_off] = await stored(backends, on.id), await stored(backends, off.id)
    turns_on = [s for s in t_on.steps if s.role == tpb.ROLE_ASSISTANT]
    assert len(turns_on) == 2
    for step, reply in zip(turns_on, replies, strict=True):
        ids = token_ids(reply["content"])
        assert list(step.tokens.completion_token_ids) == ids
        assert list(step.tokens.completion_logprobs) == pytest.approx([token_logprob(i) for i in ids])
        assert bytes(step.tokens.completion_token_ids).decode() == step.content
    # The prompt of each call is what the server tokenised: every message sent so far.
    first_prompt = bytes(turns_on[0].tokens.prompt_token_ids).decode()
    assert first_prompt.startswith(t_on.steps[0].content) and first_prompt.endswith(t_on.steps[1].content)
    assert len(turns_on[1].tokens.prompt_token_ids) > len(turns_on[0].tokens.prompt_token_ids)
    assert all(not s.HasField("tokens") for s in t_off.steps), "an ordinary run must stay small"
    assert t_on.ByteSize() > t_off.ByteSize()


async def test_token_ids_that_do_not_match_their_logprobs_are_a_model_error(
    backends: Backends, service_env: dict[str, str]
) -> None:
    bad = {**json_call("read_file", {"rel_path": "calc.py"}), "token_ids": [1, 2, 3], "logprobs": [-0.1]}
    async with orchestrator(backends, service_env, scripted(bad)) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"], record_tokens=True)
    [t] = await stored(backends, run.id)
    assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_MODEL_ERROR
    assert "3 completion token ids but 1 log-probs" in t.outcome.failure_detail, t.outcome


async def test_io_problem_with_run_code_feedback(backends: Backends, service_env: dict[str, str]) -> None:
    respond = scripted(
        json_call("run_code", {"code": "print(int(input()) + 2)", "test_case_index": 1}),
        json_call("run_code", {"code": "print(2 * int(input()))", "test_case_index": 1}),
        text(json.dumps({"type": "final", "code": "print(2 * int(input()))"})),
    )
    async with orchestrator(backends, service_env, respond) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["double"])
        [t] = await stored(backends, run.id)
    assert t.tool_protocol == common_pb2.TOOL_PROTOCOL_IO and t.task.kind == common_pb2.TASK_KIND_IO
    assert t.outcome.resolved and t.outcome.tests_passed == 3 == t.outcome.tests_total
    feedback = user_texts(t)[1]
    assert feedback.startswith("[tool_result]\ntest case 1: WRONG_ANSWER") and "hint:" in feedback
    assert t.steps[3].tool_result.error_category == common_pb2.ERROR_CATEGORY_WRONG_ANSWER
    assert t.steps[3].test_run.trigger == tpb.TEST_TRIGGER_RUN_CODE and list(
        t.steps[3].test_run.failed_ids
    ) == ["1"]
    assert user_texts(t)[2] == "[tool_result]\ntest case 1: PASSED"


async def test_gateway_errors_are_retried_then_reported(
    backends: Backends, service_env: dict[str, str]
) -> None:
    calls = {"n": 0}

    def flaky(model: str, messages: list[dict[str, Any]], tools: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            return Fail(503, "warming up")
        return text('{"type":"final","answer":"nothing to do"}')

    async with orchestrator(backends, service_env, flaky) as h:
        ok = await run_to_end(h, split=TRAIN, task_ids=["add-bug"])
        [t] = await stored(backends, ok.id)
        assert calls["n"] == 3  # two 503s retried by the client, then an answer
        assert t.outcome.failure_category == tpb.FAILURE_CATEGORY_NO_CHANGE

        calls["n"] = -100  # every call fails now, more times than the retries
        bad = await run_to_end(h, split=TRAIN, task_ids=["add-bug"])
        [tb] = await stored(backends, bad.id)
    assert tb.outcome.failure_category == tpb.FAILURE_CATEGORY_MODEL_ERROR
    assert "HTTP 503" in tb.outcome.failure_detail and "warming up" in tb.outcome.failure_detail
    assert bad.counters.episodes_errored == 1 and bad.state == common_pb2.JOB_STATE_SUCCEEDED


async def test_unknown_model_is_a_model_error(backends: Backends, service_env: dict[str, str]) -> None:
    async with orchestrator(backends, service_env, scripted()) as h:
        run = run_pb2.Run(suite="mini", model="no-such-model", split=TRAIN, task_ids=["add-bug"])
        created = await h.stub.CreateRun(opb.CreateRunRequest(run=run))
        async for update in h.stub.WatchRun(opb.WatchRunRequest(run_id=created.run.id), timeout=60):
            if update.WhichOneof("update") == "episode":
                assert update.episode.failure_category == tpb.FAILURE_CATEGORY_MODEL_ERROR


async def test_cancel_mid_run(backends: Backends, service_env: dict[str, str]) -> None:
    respond = scripted(Delay(30.0, json_call("list_files", {})))
    async with orchestrator(backends, service_env, respond) as h:
        run = run_pb2.Run(suite="mini", model="scripted", split=TEST, rollouts_per_task=3, concurrency=2)
        created = (await h.stub.CreateRun(opb.CreateRunRequest(run=run))).run
        await asyncio.sleep(0.5)
        cancelled = (await h.stub.CancelRun(opb.CancelRunRequest(run_id=created.id))).run
        final = (await h.stub.GetRun(opb.GetRunRequest(run_id=created.id))).run
        assert final.state == common_pb2.JOB_STATE_CANCELLED, cancelled
        assert final.error.message == "cancelled by request"
        assert final.counters.episodes_finished == 0 and final.counters.episodes_total == 6
        assert await stored(backends, created.id) == []


async def test_bad_requests_name_the_problem(backends: Backends, service_env: dict[str, str]) -> None:
    async with orchestrator(backends, service_env, scripted()) as h:
        cases = [
            (
                run_pb2.Run(suite="nope", model="m", split=TRAIN),
                grpc.StatusCode.NOT_FOUND,
                "suite 'nope' does not exist",
            ),
            (run_pb2.Run(suite="mini", model="m"), grpc.StatusCode.INVALID_ARGUMENT, "run.split"),
            (
                run_pb2.Run(suite="mini", split=TRAIN),
                grpc.StatusCode.INVALID_ARGUMENT,
                "run.model: is required",
            ),
            (
                run_pb2.Run(suite="mini", model="m", split=TRAIN, task_ids=["greet-bug"]),
                grpc.StatusCode.INVALID_ARGUMENT,
                "is on the TASK_SPLIT_TEST side",
            ),
            (
                run_pb2.Run(suite="mini", model="m", split=TRAIN, task_ids=["zzz"]),
                grpc.StatusCode.NOT_FOUND,
                "no task 'zzz'",
            ),
            (
                run_pb2.Run(suite="mini", model="m", split=TRAIN, teacher_kind=tpb.TEACHER_KIND_REFERENCE),
                grpc.StatusCode.INVALID_ARGUMENT,
                "must be empty",
            ),
            (
                run_pb2.Run(
                    suite="mini",
                    model="m",
                    split=TRAIN,
                    episode=run_pb2.EpisodeSettings(protocol=common_pb2.TOOL_PROTOCOL_IO),
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "applies to input/output problems",
            ),
            (
                run_pb2.Run(suite="mini", model="m", split=TRAIN, rollouts_per_task=1000),
                grpc.StatusCode.INVALID_ARGUMENT,
                "rollouts_per_task",
            ),
            (
                run_pb2.Run(
                    suite="mini",
                    model="m",
                    split=TRAIN,
                    episode=run_pb2.EpisodeSettings(sampling=common_pb2.SamplingParams(top_p=0)),
                ),
                grpc.StatusCode.INVALID_ARGUMENT,
                "top_p",
            ),
        ]
        for run, code, needle in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.stub.CreateRun(opb.CreateRunRequest(run=run))
            assert err.value.code() == code, (run, err.value.details())
            assert needle in err.value.details(), err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.GetRun(opb.GetRunRequest(run_id="run-nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_request_id_makes_create_idempotent(backends: Backends, service_env: dict[str, str]) -> None:
    async with orchestrator(backends, service_env, scripted()) as h:
        run = run_pb2.Run(suite="mini", model="scripted", split=TRAIN, task_ids=["add-bug"])
        a = (await h.stub.CreateRun(opb.CreateRunRequest(run=run, request_id="k1"))).run
        b = (await h.stub.CreateRun(opb.CreateRunRequest(run=run, request_id="k1"))).run
        assert a.id == b.id
        run.rollouts_per_task = 2
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await h.stub.CreateRun(opb.CreateRunRequest(run=run, request_id="k1"))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        listed = (await h.stub.ListRuns(opb.ListRunsRequest(suite="mini"))).runs
        assert [r.id for r in listed] == [a.id]


async def test_editing_a_test_is_an_integrity_failure_and_a_broken_module_is_not(
    backends: Backends, service_env: dict[str, str]
) -> None:
    cheat = scripted(
        json_call("write_file", {"rel_path": "calc.py", "content": FIXED_ADD}),
        json_call("write_file", {"rel_path": "tests/test_calc.py", "content": "def test_add():\n    pass\n"}),
    )
    broken = scripted(json_call("write_file", {"rel_path": "calc.py", "content": "def add(a, b:\n"}))
    async with orchestrator(backends, service_env, cheat) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"])
        [t] = await stored(backends, run.id)
    assert not t.outcome.resolved and t.outcome.failure_category == tpb.FAILURE_CATEGORY_INTEGRITY
    assert "TEST_EDITED" in t.outcome.failure_detail
    async with orchestrator(backends, service_env, broken) as h:
        run = await run_to_end(h, split=TRAIN, task_ids=["add-bug"])
        [t] = await stored(backends, run.id)
    assert not t.outcome.resolved and t.outcome.failure_category == tpb.FAILURE_CATEGORY_TESTS_FAILED
