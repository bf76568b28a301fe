"""Token ids and log-probs (vLLM's ``return_token_ids``, OpenAI's ``logprobs``), and tool options,
on the real server process with the tiny model.

The log-probs are checked against a forward pass of the same weights over prompt + completion:
what a trainer re-scoring a rollout computes.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .test_serving import CHAT, chat, complete, events, load, unique


def rescore(folder: Any, prompt_ids: list[int], ids: list[int], adapter: Any = None) -> list[float]:
    """Log-probs of ``ids`` after ``prompt_ids`` from one forward pass (float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(prompt_ids) - 1  # the position that predicts the first completion token
    return [float(logprobs[start + k, token]) for k, token in enumerate(ids)]


def tokenizer(folder: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_chat_ids_and_logprobs_match_a_forward_pass(
    client: httpx.Client, tiny: Any, temperature: float
) -> None:
    body = chat(
        client,
        max_tokens=12,
        temperature=temperature,
        seed=3,
        logprobs=True,
        top_logprobs=3,
        return_token_ids=True,
    )
    (choice,) = body["choices"]
    ids, prompt_ids = choice["token_ids"], body["prompt_token_ids"]
    assert (
        len(prompt_ids) == body["usage"]["prompt_tokens"] and len(ids) == body["usage"]["completion_tokens"]
    )
    content = choice["logprobs"]["content"]
    assert len(content) == len(ids)
    expected = rescore(tiny.base, prompt_ids, ids)
    assert [entry["logprob"] for entry in content] == pytest.approx(expected, abs=2e-4)
    tok = tokenizer(tiny.base)
    # The ids are the sampled tokens themselves: they decode to the text (no stop string cut here;
    # an end-of-sequence id, if sampled, is a special token the text leaves out).
    assert tok.decode(ids, skip_special_tokens=True) == choice["message"]["content"]
    for entry, token in zip(content, ids, strict=True):
        assert entry["token"] == tok.decode([token])
        assert entry["bytes"] == list(entry["token"].encode())
        tops = entry["top_logprobs"]
        assert len(tops) == 3 and [t["logprob"] for t in tops] == sorted(
            (t["logprob"] for t in tops), reverse=True
        )
        assert tops[0]["logprob"] >= entry["logprob"]
        if temperature == 0:  # greedy picks the most likely token (no repetition penalty here)
            assert tops[0]["token"] == entry["token"]
    # The prompt ids are the rendered chat template, tokenised as the server says it was.
    assert tok.decode(prompt_ids).replace(" ", "") == "<|user|>helloworld<|end|><|assistant|>"


def test_adapter_logprobs_match_the_adapter_forward_pass(client: httpx.Client, tiny: Any) -> None:
    name = unique("lp")
    assert load(client, name, tiny.adapter_a).status_code == 200
    try:
        body = chat(
            client, model=name, max_tokens=10, temperature=1.0, seed=5, logprobs=True, return_token_ids=True
        )
        (choice,) = body["choices"]
        expected = rescore(tiny.base, body["prompt_token_ids"], choice["token_ids"], adapter=tiny.adapter_a)
        got = [entry["logprob"] for entry in choice["logprobs"]["content"]]
        # The server answers from a merged copy of the adapter: float rounding only.
        assert got == pytest.approx(expected, abs=2e-3)
    finally:
        client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def test_streamed_ids_and_logprobs_equal_the_whole_answer(client: httpx.Client) -> None:
    fields = {
        "max_tokens": 10,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 1,
        "return_token_ids": True,
    }
    whole = chat(client, **fields)
    chunks = events(client, "/v1/chat/completions", {**CHAT, **fields, "stream": True})
    body = [c for c in chunks[:-1] if c["choices"]]
    assert body[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    assert all("prompt_token_ids" not in c for c in body[1:])
    ids = [t for c in body for t in c["choices"][0].get("token_ids") or []]
    content = [e for c in body if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
    assert ids == whole["choices"][0]["token_ids"]
    assert content == whole["choices"][0]["logprobs"]["content"]
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in body)
        == whole["choices"][0]["message"]["content"]
    )


def test_completions_legacy_logprobs_and_ids(client: httpx.Client, tiny: Any) -> None:
    body = complete(
        client, prompt="hello world", max_tokens=6, temperature=0, logprobs=2, return_token_ids=True
    )
    (choice,) = body["choices"]
    lp = choice["logprobs"]
    ids = choice["token_ids"]
    assert choice["prompt_token_ids"] == tokenizer(tiny.base)("hello world").input_ids
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(ids)
    assert lp["token_logprobs"] == pytest.approx(
        rescore(tiny.base, choice["prompt_token_ids"], ids), abs=2e-4
    )
    # text_offset: where each token's text starts in the choice's text (tokens are joined as decoded).
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    for token, top, value in zip(lp["tokens"], lp["top_logprobs"], lp["token_logprobs"], strict=True):
        assert top[token] == value and 2 <= len(top) <= 3
    # Streamed: prompt ids in the first chunk, then the ids piece by piece.
    chunks = events(
        client,
        "/v1/completions",
        {
            "prompt": "hello world",
            "max_tokens": 6,
            "temperature": 0,
            "logprobs": 2,
            "return_token_ids": True,
            "stream": True,
        },
    )
    assert chunks[0]["choices"][0]["prompt_token_ids"] == choice["prompt_token_ids"]
    assert [t for c in chunks[1:-1] for t in c["choices"][0].get("token_ids") or []] == ids
    streamed = [
        v
        for c in chunks[1:-1]
        if c["choices"][0]["logprobs"]
        for v in c["choices"][0]["logprobs"]["token_logprobs"]
    ]
    assert streamed == lp["token_logprobs"]


def test_plain_requests_carry_no_extras(client: httpx.Client) -> None:
    body = chat(client, max_tokens=3, temperature=0)
    assert "prompt_token_ids" not in body and "token_ids" not in body["choices"][0]
    assert body["choices"][0]["logprobs"] is None


def test_n_choices_each_get_their_ids(client: httpx.Client, tiny: Any) -> None:
    body = chat(client, max_tokens=8, temperature=1.0, n=3, seed=9, return_token_ids=True, logprobs=True)
    tok = tokenizer(tiny.base)
    for choice in body["choices"]:
        assert tok.decode(choice["token_ids"], skip_special_tokens=True) == choice["message"]["content"]
        expected = rescore(tiny.base, body["prompt_token_ids"], choice["token_ids"])
        assert [e["logprob"] for e in choice["logprobs"]["content"]] == pytest.approx(expected, abs=2e-4)


# ---------------------------------------------------------------------------------------------- tools

TOOL = {
    "type": "function",
    "function": {"name": "lookup", "description": "look up a word", "parameters": {"type": "object"}},
}


def test_tools_are_rendered_unless_tool_choice_is_none(client: httpx.Client) -> None:
    plain = chat(client, max_tokens=1, temperature=0)["usage"]["prompt_tokens"]
    auto = chat(client, max_tokens=1, temperature=0, tools=[TOOL])
    none = chat(client, max_tokens=1, temperature=0, tools=[TOOL], tool_choice="none")
    assert auto["usage"]["prompt_tokens"] > plain
    assert none["usage"]["prompt_tokens"] == plain


def test_forced_call_that_the_model_cannot_finish_stays_content(client: httpx.Client) -> None:
    # The tiny random model does not write JSON: the forced start plus its words do not parse.
    for choice in ("required", {"type": "function", "function": {"name": "lookup"}}):
        body = chat(client, max_tokens=4, temperature=0, tools=[TOOL], tool_choice=choice)
        (answer,) = body["choices"]
        assert answer["message"]["content"].startswith("<tool_call>\n")
        assert answer["message"]["tool_calls"] == [] and answer["finish_reason"] != "tool_calls"
        chunks = events(
            client,
            "/v1/chat/completions",
            {
                **CHAT,
                "max_tokens": 4,
                "temperature": 0,
                "tools": [TOOL],
                "tool_choice": choice,
                "stream": True,
            },
        )
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1] if c["choices"])
        assert text == answer["message"]["content"]


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
            "not among",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools", "pattern"),
        ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice", "sometimes"),
    ],
)
def test_bad_tool_requests_are_400(client: httpx.Client, fields: dict, param: str, words: str) -> None:
    reply = client.post("/v1/chat/completions", json={**CHAT, **fields})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error
