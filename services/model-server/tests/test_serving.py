"""The real server process (uvicorn, real HTTP) serving the tiny model: OpenAI endpoints, sampling,
streaming, and vLLM's runtime LoRA API with its status codes and messages.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from typing import Any

import httpx
import pytest
import safetensors.torch

from flywheel_common.auth import http_headers

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}]}


def chat(client: httpx.Client, **fields: Any) -> dict:
    reply = client.post("/v1/chat/completions", json={**CHAT, **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()


def complete(client: httpx.Client, **fields: Any) -> dict:
    reply = client.post("/v1/completions", json={"model": "tiny", **fields})
    assert reply.status_code == 200, reply.text
    return reply.json()


def events(client: httpx.Client, path: str, body: dict) -> list[Any]:
    """The server-sent events of a streamed request, decoded; '[DONE]' stays a string."""
    out: list[Any] = []
    with client.stream("POST", path, json=body) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        for line in reply.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                out.append(data if data == "[DONE]" else json.loads(data))
    return out


def load(client: httpx.Client, name: str, path: Any) -> httpx.Response:
    return client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------------------------- models


def test_models_lists_the_base_model(client: httpx.Client, tiny: Any) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    base = body["data"][0]
    assert base["id"] == "tiny" and base["object"] == "model"
    assert base["root"] == str(tiny.base) and base["parent"] is None and base["max_model_len"] == 512
    ready = client.get("/health/ready").json()
    assert ready["status"] == "ready" and ready["device"].startswith("cpu")


# ------------------------------------------------------------------------------------------------ chat


def test_chat_completion(client: httpx.Client, tiny: Any) -> None:
    from transformers import AutoTokenizer

    from flywheel_model_server.templates import DEFAULT_CHAT_TEMPLATE

    body = chat(client, max_tokens=8, temperature=0)
    assert (
        body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    )
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    # The tokenizer has no chat template, so the documented default renders the prompt.
    tokenizer = AutoTokenizer.from_pretrained(tiny.base)
    prompt = tokenizer.apply_chat_template(
        CHAT["messages"], chat_template=DEFAULT_CHAT_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False).input_ids)
    assert 1 <= usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 8


def test_streaming_chat_matches_the_whole_answer(client: httpx.Client) -> None:
    whole = chat(client, max_tokens=12, temperature=0)
    chunks = events(
        client,
        "/v1/chat/completions",
        {
            **CHAT,
            "max_tokens": 12,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    body = chunks[:-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == body[0]["id"] for c in body)
    assert body[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(body) >= 3  # role, at least one token, the finish
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in body)
    assert text == whole["choices"][0]["message"]["content"]
    assert body[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in body[:-1])


def test_n_choices(client: httpx.Client) -> None:
    body = chat(client, max_tokens=10, temperature=1.0, n=3, seed=11)
    choices = body["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2]
    assert len({c["message"]["content"] for c in choices}) > 1  # sampled independently
    assert body["usage"]["completion_tokens"] <= 30
    chunks = events(
        client,
        "/v1/chat/completions",
        {**CHAT, "max_tokens": 10, "temperature": 1.0, "n": 3, "seed": 11, "stream": True},
    )
    streamed = ["", "", ""]
    for chunk in chunks[:-1]:
        for choice in chunk["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content", "")
    assert streamed == [c["message"]["content"] for c in choices]


def test_seed_makes_sampling_repeatable(client: httpx.Client) -> None:
    first = chat(client, max_tokens=16, temperature=1.0, seed=7)["choices"][0]["message"]["content"]
    again = chat(client, max_tokens=16, temperature=1.0, seed=7)["choices"][0]["message"]["content"]
    other = chat(client, max_tokens=16, temperature=1.0, seed=8)["choices"][0]["message"]["content"]
    assert first == again
    assert first != other


def test_stop_sequence_ends_the_answer(client: httpx.Client) -> None:
    free = chat(client, max_tokens=16, temperature=0)["choices"][0]["message"]["content"]
    words = free.split()
    assert len(words) >= 4, free
    stop = " ".join(words[2:4])
    body = chat(client, max_tokens=16, temperature=0, stop=[stop, "never-said"])
    choice = body["choices"][0]
    assert choice["message"]["content"] == free[: free.index(stop)]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    # Streamed, the words of the stop sequence are never sent, not even their first part.
    chunks = events(
        client,
        "/v1/chat/completions",
        {**CHAT, "max_tokens": 16, "temperature": 0, "stop": stop, "stream": True},
    )
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    assert text == free[: free.index(stop)]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


# ----------------------------------------------------------------------------------------- completions


def test_completions(client: httpx.Client) -> None:
    body = complete(client, prompt="hello world", temperature=0)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert body["usage"]["prompt_tokens"] == 2  # hello world (this tokenizer adds no <s>)
    assert body["usage"]["completion_tokens"] <= 16  # the OpenAI default max_tokens
    if choice["finish_reason"] == "length":
        assert body["usage"]["completion_tokens"] == 16
    # Several prompts, each with n choices, indexed prompt-major; echo puts the prompt first.
    body = complete(client, prompt=["hello world", "red green"], n=2, max_tokens=4, temperature=0, echo=True)
    texts = [c["text"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert texts[0].startswith("hello world") and texts[2].startswith("red green")
    assert texts[0] == texts[1]  # greedy: both choices agree
    # Token ids are a prompt too.
    ids = complete(client, prompt=[1, 20, 21], max_tokens=3, temperature=0)
    assert ids["usage"]["prompt_tokens"] == 3
    streamed = events(client, "/v1/completions", {"prompt": "hello world", "temperature": 0, "stream": True})
    assert streamed[-1] == "[DONE]"
    text = "".join(c["choices"][0]["text"] for c in streamed[:-1])
    assert text == complete(client, prompt="hello world", temperature=0)["choices"][0]["text"]


# -------------------------------------------------------------------------------------------- adapters


def test_two_adapters_answer_differently(client: httpx.Client, tiny: Any) -> None:
    a, b = unique("ft/a"), unique("ft/b.v2")  # any served name: slashes and dots included
    assert load(client, a, tiny.adapter_a).status_code == 200
    reply = load(client, b, tiny.adapter_b)
    assert reply.status_code == 200 and reply.text == f"Success: LoRA adapter '{b}' added successfully."
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards[a]["root"] == str(tiny.adapter_a) and cards[a]["parent"] == "tiny"
    assert cards[b]["root"] == str(tiny.adapter_b) and cards[b]["parent"] == "tiny"
    answers = {
        name: chat(client, model=name, max_tokens=12, temperature=0)["choices"][0]["message"]["content"]
        for name in ("tiny", a, b)
    }
    assert len(set(answers.values())) == 3, answers
    # Switching back and forth gives the same answers: each request gets its own adapter.
    assert (
        chat(client, model=a, max_tokens=12, temperature=0)["choices"][0]["message"]["content"] == answers[a]
    )
    assert chat(client, max_tokens=12, temperature=0)["choices"][0]["message"]["content"] == answers["tiny"]
    for name in (a, b):
        assert client.post("/v1/unload_lora_adapter", json={"lora_name": name}).status_code == 200


def test_concurrent_requests_keep_their_adapter(client: httpx.Client, server: str, tiny: Any) -> None:
    name = unique("conc")
    assert load(client, name, tiny.adapter_a).status_code == 200
    expected = {
        model: complete(client, model=model, prompt="one two", max_tokens=6, temperature=0)["choices"][0][
            "text"
        ]
        for model in ("tiny", name)
    }
    results: list[tuple[str, str]] = []

    def ask(model: str) -> None:
        with httpx.Client(base_url=server, timeout=60, headers=http_headers()) as own:
            text = complete(own, model=model, prompt="one two", max_tokens=6, temperature=0)["choices"][0][
                "text"
            ]
            results.append((model, text))

    threads = [threading.Thread(target=ask, args=(m,)) for m in ("tiny", name) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert all(text == expected[model] for model, text in results)
    client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def test_lora_api_status_codes_like_vllm(client: httpx.Client, tiny: Any) -> None:
    name = unique("codes")
    assert load(client, name, tiny.adapter_a).status_code == 200
    twice = load(client, name, tiny.adapter_a)
    assert twice.status_code == 400
    assert twice.json()["error"] == {
        "message": f"The lora adapter '{name}' has already been loaded.",
        "type": "InvalidUserInput",
        "param": None,
        "code": 400,
    }
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": name}).text == (
        f"Success: LoRA adapter '{name}' removed successfully."
    )
    gone = client.post("/v1/unload_lora_adapter", json={"lora_name": name})
    assert gone.status_code == 404
    assert gone.json()["error"]["message"] == f"The lora adapter '{name}' cannot be found."
    asked = client.post("/v1/chat/completions", json={**CHAT, "model": name})
    assert asked.status_code == 404
    assert asked.json()["error"]["message"] == f"The model `{name}` does not exist."
    assert asked.json()["error"]["type"] == "NotFoundError"
    assert name not in {card["id"] for card in client.get("/v1/models").json()["data"]}
    # A name can be loaded again after an unload.
    assert load(client, name, tiny.adapter_b).status_code == 200
    client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def test_bad_adapter_loads(client: httpx.Client, tiny: Any, tmp_path: Any) -> None:
    missing = load(client, unique("missing"), tmp_path / "nothing-here")
    # vLLM answers a path without an adapter with 404 NotFoundError and these words.
    assert missing.status_code == 404 and "No adapter found for" in missing.json()["error"]["message"]
    wrong = load(client, unique("wrong"), tiny.adapter_wrong_shape)
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "BadRequestError"
    assert "Loading lora" in wrong.json()["error"]["message"]
    (tmp_path / "adapter_config.json").write_text("{not json")
    broken = load(client, unique("broken"), tmp_path)
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    # An adapter whose weights hold a NaN (a diverged training run) is refused: sampling from NaN
    # logits is a device-side assert on a GPU, which ends the CUDA context for every request.
    nan_copy = tmp_path / "nan-adapter"
    shutil.copytree(tiny.adapter_a, nan_copy)
    weights = safetensors.torch.load_file(nan_copy / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first][0, 0] = float("nan")
    safetensors.torch.save_file(weights, nan_copy / "adapter_model.safetensors")
    nan = load(client, unique("nan"), nan_copy)
    assert nan.status_code == 400, nan.text
    assert (
        "NaN or infinity" in nan.json()["error"]["message"] and "diverged" in nan.json()["error"]["message"]
    )
    fields = client.post("/v1/load_lora_adapter", json={"lora_name": "x"})
    assert fields.status_code == 400
    assert fields.json()["error"]["message"] == "Both 'lora_name' and 'lora_path' must be provided."
    assert client.post("/v1/unload_lora_adapter", json={}).status_code == 400
    # The failed loads left the model as it was.
    assert chat(client, max_tokens=4, temperature=0)["choices"]
    assert [card["id"] for card in client.get("/v1/models").json()["data"]] == ["tiny"]


def test_adapter_chat_template_is_used(client: httpx.Client, tiny: Any) -> None:
    plain, templated = unique("plain"), unique("templated")
    load(client, plain, tiny.adapter_a)
    load(client, templated, tiny.adapter_templated)
    ours = chat(client, model=plain, max_tokens=1)["usage"]["prompt_tokens"]
    theirs = chat(client, model=templated, max_tokens=1)["usage"]["prompt_tokens"]
    # "one two three hello world end four": 7 words, against the default template's 10 tokens.
    assert theirs == 7 and ours != theirs
    for name in (plain, templated):
        client.post("/v1/unload_lora_adapter", json={"lora_name": name})


# ----------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        ("/v1/chat/completions", {"model": "tiny"}, "messages", "messages: field required"),
        ("/v1/chat/completions", {**CHAT, "messages": []}, "messages", "at least 1"),
        ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, "temperature", "'hot'"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ("/v1/chat/completions", {**CHAT, "n": 5}, "n", "over the limit of 4"),
        ("/v1/chat/completions", {**CHAT, "stop": ["ok", ""]}, "stop", "stop[1] is empty"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs", "`logprobs` must be set"),
        ("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than"),
        ("/v1/completions", {"prompt": "x", "logprobs": 1, "echo": True}, "logprobs", "with echo"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 600}, "max_tokens", "maximum context length is 512"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"content": "no role"}]}, "messages", "role"),
        ("/v1/completions", {"model": "tiny"}, "prompt", "prompt: field required"),
        ("/v1/completions", {"prompt": [1, 99999]}, "prompt", "outside the vocabulary"),
        ("/v1/completions", {"prompt": "x", "presence_penalty": 1}, "presence_penalty", "repetition_penalty"),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    client: httpx.Client, path: str, body: dict, param: str, words: str
) -> None:
    reply = client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert error["param"] == param and words in error["message"], error


def test_bodies_that_are_not_json_objects(client: httpx.Client) -> None:
    for content in (b"{not json", b"", b"[1, 2]"):
        reply = client.post(
            "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
        assert reply.status_code == 400
        assert "JSON" in reply.json()["error"]["message"] or "json" in reply.json()["error"]["message"]


def test_unknown_model_is_404(client: httpx.Client) -> None:
    reply = client.post("/v1/completions", json={"model": "no-such-model", "prompt": "hi"})
    assert reply.status_code == 404
    assert reply.json()["error"]["message"] == "The model `no-such-model` does not exist."


def test_client_that_goes_away_stops_its_generation(client: httpx.Client, server: str) -> None:
    import time

    body = {"prompt": "hello", "max_tokens": 500, "temperature": 0, "stream": True}
    with (
        httpx.Client(base_url=server, timeout=60, headers=http_headers()) as own,
        own.stream("POST", "/v1/completions", json=body) as reply,
    ):
        lines = reply.iter_lines()
        assert next(lines).startswith("data: ")
    # 500 tokens would keep the model busy for seconds; a cancelled job frees the queue at once.
    deadline = time.monotonic() + 5
    while client.get("/health/ready").json()["queued"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.get("/health/ready").json()["queued"] == 0
    reply = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 1})
    assert reply.status_code == 200
