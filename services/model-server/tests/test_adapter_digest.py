"""Adapter identity on the real server: ``GET /v1/models`` reports the content digest of the files
each adapter was loaded from; a same-name load is refused unless ``load_inplace`` (forced), and a
forced one serves the new weights at once; every answer names the digest of the weights that
generated it in ``system_fingerprint``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx

from flywheel_common.adapter_digest import folder_digest
from flywheel_common.auth import http_headers


def _models(client: httpx.Client) -> dict[str, dict[str, Any]]:
    reply = client.get("/v1/models")
    assert reply.status_code == 200, reply.text
    return {m["id"]: m for m in reply.json()["data"]}


def _load(client: httpx.Client, name: str, path: Path, **extra: Any) -> httpx.Response:
    return client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path), **extra})


def _greedy(client: httpx.Client, model: str) -> str:
    body = {"model": model, "prompt": "hello world the", "max_tokens": 6, "temperature": 0}
    reply = client.post("/v1/completions", json=body)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["text"]


def test_models_reports_the_digest_of_the_loaded_files(
    client: httpx.Client, tiny: Any, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny.adapter_a, corrupt)
    weights = bytearray((corrupt / "adapter_model.safetensors").read_bytes())
    weights[-1] ^= 0x01  # one bit of the last byte: a tensor value, so PEFT still loads it
    (corrupt / "adapter_model.safetensors").write_bytes(bytes(weights))
    try:
        assert _load(client, "dig-a", tiny.adapter_a).status_code == 200
        assert _load(client, "dig-corrupt", corrupt).status_code == 200
        models = _models(client)
        assert models["dig-a"]["digest"] == folder_digest(tiny.adapter_a).digest
        assert models["dig-corrupt"]["digest"] == folder_digest(corrupt).digest
        assert models["dig-corrupt"]["digest"] != models["dig-a"]["digest"]
        assert "digest" not in models["tiny"]  # the base model is not an adapter
    finally:
        for name in ("dig-a", "dig-corrupt"):
            client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def test_same_name_reload_is_refused_unless_forced(client: httpx.Client, tiny: Any) -> None:
    digest_a, digest_b = folder_digest(tiny.adapter_a).digest, folder_digest(tiny.adapter_b).digest
    try:
        assert _load(client, "dig-b", tiny.adapter_b).status_code == 200
        answer_b = _greedy(client, "dig-b")
        assert _load(client, "dig-swap", tiny.adapter_a).status_code == 200
        answer_a = _greedy(client, "dig-swap")
        assert answer_a != answer_b  # the two adapters are told apart by their answers

        refused = _load(client, "dig-swap", tiny.adapter_b)
        assert refused.status_code == 400 and "already been loaded" in refused.json()["error"]["message"]
        assert _models(client)["dig-swap"]["digest"] == digest_a  # nothing changed
        assert _greedy(client, "dig-swap") == answer_a

        merged = client.get("/health/ready").json()["merged_adapters"]  # dig-swap's merged copy among them
        forced = _load(client, "dig-swap", tiny.adapter_b, load_inplace=True)
        assert forced.status_code == 200, forced.text
        assert client.get("/health/ready").json()["merged_adapters"] == merged - 1  # dropped with the name
        card = _models(client)["dig-swap"]
        assert card["digest"] == digest_b and card["root"] == str(tiny.adapter_b)
        assert _greedy(client, "dig-swap") == answer_b  # no state of the old weights is left
        # A forced load of a name that is not loaded is an ordinary load.
        assert _load(client, "dig-fresh", tiny.adapter_a, load_inplace=True).status_code == 200
        assert _models(client)["dig-fresh"]["digest"] == digest_a
    finally:
        for name in ("dig-b", "dig-swap", "dig-fresh"):
            client.post("/v1/unload_lora_adapter", json={"lora_name": name})


def _sse(lines: Any) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in lines if line.startswith("data: {")]


def test_answers_carry_the_digest_of_the_weights_that_generated_them(
    client: httpx.Client, server: str, tiny: Any
) -> None:
    """``system_fingerprint`` on every response and chunk names the adapter that answered; the base
    model's is null; after a forced reload it names the new weights, and an answer whose
    generation began before the reload keeps the old digest to its last chunk."""
    digest_a, digest_b = folder_digest(tiny.adapter_a).digest, folder_digest(tiny.adapter_b).digest
    chat = {"messages": [{"role": "user", "content": "hello world"}], "max_tokens": 4, "temperature": 0}
    text = {"prompt": "hello world the", "max_tokens": 4, "temperature": 0}
    usage = {"stream_options": {"include_usage": True}}

    def fingerprints(model: str) -> list[str | None]:
        """The field on a chat answer, a text answer and every chunk of both streamed."""
        found = []
        for path, body in (("/v1/chat/completions", chat), ("/v1/completions", text)):
            reply = client.post(path, json={"model": model, **body})
            assert reply.status_code == 200, reply.text
            found.append(reply.json()["system_fingerprint"])
            with client.stream(
                "POST", path, json={"model": model, "stream": True, **usage, **body}
            ) as stream:
                chunks = _sse(stream.iter_lines())
            assert len(chunks) >= 3 and "usage" in chunks[-1]  # role, content …, usage
            found += [c["system_fingerprint"] for c in chunks]
        return found

    try:
        assert _load(client, "fp-swap", tiny.adapter_a).status_code == 200
        assert set(fingerprints("fp-swap")) == {digest_a}
        assert set(fingerprints("tiny")) == {None}  # the base model: no adapter identity
        # A streamed answer starts on A; the forced reload to B waits for its generation (one
        # worker thread) and is done before the rest of the stream is read.
        body = {"model": "fp-swap", "stream": True, **chat, "max_tokens": 8}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: {"))
            reload = httpx.post(f"{server}/v1/load_lora_adapter", timeout=60, headers=http_headers(), json={
                "lora_name": "fp-swap", "lora_path": str(tiny.adapter_b), "load_inplace": True})  # fmt: skip
            assert reload.status_code == 200, reload.text
            assert _models(client)["fp-swap"]["digest"] == digest_b
            rest = _sse(lines)
        assert json.loads(first[6:])["system_fingerprint"] == digest_a
        assert rest and {c["system_fingerprint"] for c in rest} == {digest_a}
        assert set(fingerprints("fp-swap")) == {digest_b}
    finally:
        client.post("/v1/unload_lora_adapter", json={"lora_name": "fp-swap"})
