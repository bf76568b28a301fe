"""The capture callback's trajectory: LiteLLM's own response objects, tool calls, redaction."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from litellm import ModelResponse

from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1.trajectory_pb2_grpc import TrajectoryServiceStub
from flywheel_common import auth
from flywheel_gateway.capture import REDACTED, TrajectoryCapture, build_trajectory, redact
from flywheel_testing.processes import start_module


def test_redact_patterns_and_known_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_GATEWAY_MASTER_KEY", "plain-master-value")
    text = (
        "key plain-master-value, openai sk-proj-abcdEFGH1234, aws AKIAABCDEFGHIJKLMNOP, "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.abc, api_key: hunter2hunter2, "
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----, gh ghp_0123456789abcdefghijKLMN"
    )
    out = redact(text)
    for secret in ("plain-master-value", "sk-proj-abcdEFGH1234", "AKIAABCDEFGHIJKLMNOP", "eyJhbGciOiJIUzI1NiJ9",
                   "hunter2hunter2", "MIIE", "ghp_0123456789"):  # fmt: skip
        assert secret not in out, secret
    assert out.count(REDACTED) >= 7
    assert redact("nothing secret here: the sky is blue") == "nothing secret here: the sky is blue"


def test_trajectory_from_litellm_objects_with_tool_calls() -> None:
    response = ModelResponse(
        model="hosted_vllm/coder-v3",
        choices=[{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]}}],
        usage={"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    )  # fmt: skip
    start = datetime.datetime(2026, 1, 1, 12, 0, 0)
    kwargs = {
        "model": "coder-v3",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "open a.py"}]},
                     {"role": "tool", "content": "print(1)", "tool_call_id": "call_0"}],
        "optional_params": {"temperature": 0.2, "max_tokens": 64, "stop": "END",
                            "tools": [{"type": "function", "function": {"name": "read_file", "description": "Read",
                                                                        "parameters": {"type": "object"}}}]},
        "litellm_call_id": "abc/123",
        "litellm_params": {"metadata": {"user_api_key_alias": "Team A", "model_group": "ft/coder-v3"}},
    }  # fmt: skip
    t = build_trajectory(kwargs, response, start, start + datetime.timedelta(milliseconds=250))
    assert t.id == "cap-abc-123" and t.teacher_kind == tpb.TEACHER_KIND_CAPTURED
    assert (
        t.policy.model == "ft/coder-v3"
        and t.policy.sampling.max_tokens == 64
        and list(t.policy.sampling.stop) == ["END"]
    )
    assert [s.role for s in t.steps] == [tpb.ROLE_USER, tpb.ROLE_TOOL, tpb.ROLE_ASSISTANT]
    assert t.steps[0].content == "open a.py" and t.steps[1].tool_call_id == "call_0"
    answer = t.steps[2]
    assert (
        answer.tool_calls[0].name == "read_file" and answer.tool_calls[0].arguments_json == '{"path": "a.py"}'
    )
    assert answer.finish_reason == "tool_calls" and answer.usage.completion_tokens == 7
    assert answer.duration.ToMilliseconds() == 250
    assert t.tools[0].name == "read_file" and t.labels["gateway_key_alias"] == "team-a"


async def test_capture_into_the_real_trajectory_store(service_env: dict[str, str], tmp_path: Path) -> None:
    """The callback against the real trajectory store process (PutTrajectory, then GetTrajectory)."""
    proc, info, log = start_module("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_", service_env, tmp_path)
    try:
        capture = TrajectoryCapture(f"127.0.0.1:{info['port']}")
        start = datetime.datetime.now()
        kwargs = {"model": "gemma-3-270m", "litellm_call_id": "real-store-1",
                  "messages": [{"role": "user", "content": "my key is sk-live-0123456789abcdef"}],
                  "litellm_params": {"metadata": {"user_api_key_alias": "master-key"}}}  # fmt: skip
        response = {"choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 4, "completion_tokens": 1}}  # fmt: skip
        await capture.async_log_success_event(
            kwargs, response, start, start + datetime.timedelta(milliseconds=5)
        )
        assert capture.stored == 1, log.read_text()[-2000:]
        async with auth.channel(f"127.0.0.1:{info['port']}") as channel:
            got = await TrajectoryServiceStub(channel).GetTrajectory(
                tpb.GetTrajectoryRequest(trajectory_id="cap-real-store-1")
            )
        stored = got.trajectory
        assert (
            stored.teacher_kind == tpb.TEACHER_KIND_CAPTURED
            and stored.steps[0].content == f"my key is {REDACTED}"
        )
        assert stored.steps[1].content == "ok" and stored.labels["gateway_key_alias"] == "master-key"
        # A redelivered callback stores nothing new (same id, same content).
        await capture.async_log_success_event(
            kwargs, response, start, start + datetime.timedelta(milliseconds=5)
        )
        assert capture.stored == 2
    finally:
        proc.terminate()
        proc.wait(15)
