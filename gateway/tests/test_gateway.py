"""The real gateway process (LiteLLM proxy + our layer) in front of a real OpenAI-compatible upstream.

Every test runs against both paths: ``fast`` (model-server routes forwarded by our layer) and
``litellm`` (fast path off: LiteLLM's own router, ``hosted_vllm`` provider and callbacks).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from flywheel.trajectory.v1 import trajectory_pb2 as tpb

from .conftest import BASE_MODEL, MASTER_KEY, Gateway, Sink, load_adapter

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def assert_openai_error(reply: httpx.Response, status: int, code: str | None) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert error["code"] == code, error
    assert error["message"], error
    return error


def test_probes_need_no_key(gateway: Gateway) -> None:
    assert httpx.get(gateway.url + "/health/liveliness", timeout=30).status_code == 200
    reply = httpx.get(gateway.url + "/health/readiness", timeout=30)
    assert reply.status_code == 200 and reply.json()["status"] == "healthy"


def test_chat_through_base_model_route(gateway: Gateway) -> None:
    reply = gateway.post("/v1/chat/completions", {"model": BASE_MODEL, **CHAT})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == f"hello from {BASE_MODEL}"


def test_chat_through_adapter_route(gateway: Gateway, upstream: str, tmp_path: Path) -> None:
    name = f"route{gateway.url.rsplit(':', 1)[1]}-v1"  # one adapter per gateway: the upstream is shared
    load_adapter(upstream, name, tmp_path / name)
    reply = gateway.post("/v1/chat/completions", {"model": f"ft/{name}", **CHAT})
    assert reply.status_code == 200, reply.text
    # The upstream saw the adapter's own name: `ft/` was stripped exactly as `ft/*` -> `hosted_vllm/*`.
    assert reply.json()["choices"][0]["message"]["content"] == f"hello from {name}"


def test_streaming(gateway: Gateway) -> None:
    text, done = [], False
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"},
                      json={"model": BASE_MODEL, "stream": True, **CHAT}) as reply:  # fmt: skip
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    assert done
    assert "".join(text) == f"hello from {BASE_MODEL}"


def test_unknown_model_is_404(gateway: Gateway) -> None:
    error = assert_openai_error(gateway.post("/v1/chat/completions", {"model": "no-such-model", **CHAT}),
                                404, "model_not_found")  # fmt: skip
    assert "no-such-model" in error["message"]


def test_unknown_adapter_is_404(gateway: Gateway) -> None:
    reply = gateway.post("/v1/chat/completions", {"model": "ft/never-loaded-v9", **CHAT})
    assert reply.status_code == 404, reply.text
    assert "never-loaded-v9" in reply.json()["error"]["message"]


def test_missing_key_is_401(gateway: Gateway) -> None:
    assert_openai_error(gateway.post("/v1/chat/completions", {"model": BASE_MODEL, **CHAT}, key=None),
                        401, "missing_api_key")  # fmt: skip
    assert_openai_error(httpx.get(gateway.url + "/v1/models", timeout=30), 401, "missing_api_key")


def test_wrong_key_is_401(gateway: Gateway) -> None:
    error = assert_openai_error(
        gateway.post("/v1/chat/completions", {"model": BASE_MODEL, **CHAT}, key="sk-wrong-key-123456"),
        401, "invalid_api_key",
    )  # fmt: skip
    assert "sk-wrong-key-123456" not in error["message"]  # never echo a key back whole


def test_bad_body_is_400(gateway: Gateway) -> None:
    reply = httpx.post(gateway.url + "/v1/chat/completions", content=b"{not json", timeout=30,
                       headers={"Authorization": f"Bearer {MASTER_KEY}"})  # fmt: skip
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]["message"]
    assert_openai_error(
        gateway.post("/v1/chat/completions", {"messages": []}), 400, "missing_required_parameter"
    )


def test_models_listed_with_master_key(gateway: Gateway, upstream: str, tmp_path: Path) -> None:
    name = f"listed{gateway.url.rsplit(':', 1)[1]}-v2"
    load_adapter(upstream, name, tmp_path / name)
    reply = httpx.get(
        gateway.url + "/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )
    assert reply.status_code == 200
    ids = {m["id"] for m in reply.json()["data"]}
    assert BASE_MODEL in ids and f"ft/{name}" in ids  # adapters are discoverable under their gateway name


def test_capture_stores_trajectory_with_secrets_redacted(gateway: Gateway, trajectory_sink: Sink) -> None:
    marker = f"capture-{gateway.url.rsplit(':', 1)[1]}"
    content = f"{marker}: my key is {MASTER_KEY} and token Bearer abcdefghijkl0123 and password=hunter22"
    reply = gateway.post("/v1/chat/completions", {"model": BASE_MODEL, "temperature": 0.5,
                                                 "messages": [{"role": "system", "content": "be brief"},
                                                              {"role": "user", "content": content}]})  # fmt: skip
    assert reply.status_code == 200, reply.text
    stored = trajectory_sink.wait_for(lambda t: any(marker in s.content for s in t.steps))
    text = stored.SerializeToString()
    assert MASTER_KEY.encode() not in text
    assert b"abcdefghijkl0123" not in text and b"hunter22" not in text
    user = stored.steps[1]
    assert user.role == tpb.ROLE_USER and "[REDACTED]" in user.content
    answer = stored.steps[-1]
    assert answer.role == tpb.ROLE_ASSISTANT and answer.content == f"hello from {BASE_MODEL}"
    assert answer.usage.prompt_tokens == 5 and answer.usage.completion_tokens == 3
    assert answer.finish_reason == "stop"
    assert stored.teacher_kind == tpb.TEACHER_KIND_CAPTURED
    assert stored.policy.model == BASE_MODEL
    assert abs(stored.policy.sampling.temperature - 0.5) < 1e-9
    assert stored.id.startswith("cap-") and stored.labels["gateway_key_alias"]


def test_failing_model_falls_back(gateway: Gateway) -> None:
    """`ft/fail-v1` always answers 503 upstream; the configured fallback (the base model) answers."""
    reply = gateway.post("/v1/chat/completions", {"model": "ft/fail-v1", **CHAT})
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == f"hello from {BASE_MODEL}"


def test_failing_model_without_fallback_is_5xx_openai_error(gateway: Gateway) -> None:
    reply = gateway.post("/v1/chat/completions", {"model": "ft/fail-v2", **CHAT})
    assert reply.status_code in (502, 503), reply.text
    error = reply.json()["error"]
    assert "fail-v2" in error["message"] and error["type"]


def test_hosted_route_goes_through_litellm(gateway: Gateway, trajectory_sink: Sink) -> None:
    """`openai/*` (enabled by OPENAI_API_KEY) is served by LiteLLM's openai provider, on both gateways."""
    marker = f"hosted-{gateway.url.rsplit(':', 1)[1]}"
    body = {"model": f"openai/{BASE_MODEL}", "messages": [{"role": "user", "content": marker}]}
    reply = gateway.post("/v1/chat/completions", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == f"hello from {BASE_MODEL}"
    stored = trajectory_sink.wait_for(lambda t: any(marker in s.content for s in t.steps))
    assert b"sk-fake-openai-key-for-tests" not in stored.SerializeToString()
