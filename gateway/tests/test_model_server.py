"""The whole path with the real embedded model server: gateway → model server with a tiny model,
and adapter sync hot-loading a real PEFT adapter into it.

The model is built here, offline: a word-level tokenizer and a 2-layer Llama with random weights
(about 50k parameters), and a LoRA adapter with random non-zero weights. Nothing is mocked: the
model server (`python -m flywheel_model_server`) runs transformers + PEFT on the CPU, the gateway is
the real process, NATS is a real nats-server and the adapter goes through the filesystem object store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flywheel.events.v1.events_pb2 import AdapterLoaded
from flywheel_common.auth import http_headers
from flywheel_common.events import EventBus, NatsSettings
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_common.server import ready_file_info

from .conftest import MASTER_KEY, Gateway, _stop
from .test_adapter_sync import chat, next_of, published, running, sync_settings, watch

VOCAB = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    *"red green blue cat dog sun moon tree one two hi ping user assistant".split(),
]


def build_tiny(root: Path) -> tuple[Path, Path]:
    """A tiny base model folder and a LoRA adapter folder for it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    base, adapter = root / "base", root / "adapter"
    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(base)  # fmt: skip
    config = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(base)
    lora = get_peft_model(LlamaForCausalLM.from_pretrained(base),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))  # fmt: skip
    lora.save_pretrained(adapter)
    return base, adapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def _wait(proc: subprocess.Popen, ready: Path, log: Path, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (info := ready_file_info(ready)) is None:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    return info


@pytest.fixture(scope="module")
def model_server(tiny: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("model-server")
    ready, log = root / "ready", root / "log"
    env = {**os.environ, "FLYWHEEL_MODEL_SERVER_MODEL_PATH": str(tiny[0]), "FLYWHEEL_MODEL_SERVER_BASE_MODEL": "tiny",
           "FLYWHEEL_MODEL_SERVER_DEVICE": "cpu", "FLYWHEEL_MODEL_SERVER_TORCH_THREADS": "1",
           "FLYWHEEL_MODEL_SERVER_HOST": "127.0.0.1", "FLYWHEEL_MODEL_SERVER_PORT": "0",
           "FLYWHEEL_MODEL_SERVER_READY_FILE": str(ready), "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
           "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects"), "FLYWHEEL_MODEL_SERVER_LOG_FORMAT": "text"}  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flywheel_model_server"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{_wait(proc, ready, log)['port']}"
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/v1/models", timeout=5).status_code != 200:  # the model loads after boot
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module", params=["fast", "litellm"])
def ms_gateway(
    model_server: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """The gateway on our fast path, then with FAST_PATH=false (LiteLLM's hosted_vllm provider)."""
    root = tmp_path_factory.mktemp(f"ms-gateway-{request.param}")
    ready, log = root / "ready", root / "log"
    env = {**os.environ, "FLYWHEEL_GATEWAY_MASTER_KEY": MASTER_KEY, "FLYWHEEL_GATEWAY_HOST": "127.0.0.1",
           "FLYWHEEL_GATEWAY_PORT": "0", "FLYWHEEL_GATEWAY_READY_FILE": str(ready),
           "FLYWHEEL_GATEWAY_MODEL_SERVER_URL": f"{model_server}/v1", "FLYWHEEL_GATEWAY_BASE_MODELS": '["tiny"]',
           "FLYWHEEL_GATEWAY_CONFIG_DIR": str(root), "FLYWHEEL_GATEWAY_LOG_FORMAT": "text",
           "FLYWHEEL_GATEWAY_FAST_PATH": str(request.param == "fast").lower()}  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "flywheel_gateway", "serve"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield Gateway(f"http://127.0.0.1:{_wait(proc, ready, log)['port']}", proc, log, mode=request.param)
    finally:
        _stop(proc)


def test_base_model_and_streaming_through_gateway(ms_gateway: Gateway) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
        "temperature": 0,
    }
    reply = ms_gateway.post("/v1/chat/completions", body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["model"].endswith("tiny") and answer["usage"]["completion_tokens"] >= 1
    chunks = []
    with httpx.stream("POST", ms_gateway.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"}) as stream:  # fmt: skip
        assert stream.status_code == 200
        chunks = [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == answer["choices"][0]["message"]["content"]  # greedy: same text both ways
    reply = ms_gateway.post("/v1/chat/completions", {**body, "model": "ft/not-loaded-v1"})
    assert reply.status_code == 404, reply.text
    assert "not-loaded-v1" in reply.json()["error"]["message"]


async def test_published_adapter_hot_loads_into_model_server(
    event_bus: EventBus, nats_settings: NatsSettings, tiny: tuple[Path, Path], model_server: str,
    ms_gateway: Gateway, tmp_path: Path,
) -> None:  # fmt: skip
    store_settings = ObjectStoreSettings(backend="fs", root=tmp_path / "objects")
    store = open_object_store(store_settings)
    store.ensure_ready()
    prefix = "adapters/tinyco/1/"
    for path in tiny[1].rglob("*"):
        if path.is_file():
            store.put(prefix + path.relative_to(tiny[1]).as_posix(), path.read_bytes())
    events = await watch(event_bus, "test-watch")
    settings = sync_settings(nats_settings, store_settings, model_server, ms_gateway, tmp_path)
    async with running(settings):
        started = time.monotonic()
        await event_bus.publish("flywheel.adapter.published", published("tinyco", 1, prefix),
                                msg_id="adapter-published:tinyco/1")  # fmt: skip
        loaded = (await next_of(events, "flywheel.adapter.loaded", within_s=60)).parse(AdapterLoaded)
        hot_load_s = time.monotonic() - started
    assert loaded.served_model_name == "ft/tinyco-v1"
    async with httpx.AsyncClient(timeout=30) as client:
        models = {m["id"]: m for m in (await client.get(f"{model_server}/v1/models")).json()["data"]}
    assert models["tinyco-v1"]["parent"] == "tiny"
    reply = await chat(ms_gateway, "ft/tinyco-v1")
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"].endswith("tinyco-v1")  # LiteLLM reports the provider's name
    print(f"hot-load latency (published -> loaded, probe included): {hot_load_s:.2f} s")
    assert hot_load_s < 10


def _stream(gateway: Gateway, body: dict) -> list[dict]:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60,
                      headers={"Authorization": f"Bearer {MASTER_KEY}"}) as stream:  # fmt: skip
        assert stream.status_code == 200, stream.read()
        return [json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")]


def test_token_ids_and_logprobs_pass_through(ms_gateway: Gateway, model_server: str) -> None:
    """vLLM's return_token_ids and OpenAI's logprobs reach the caller unchanged on both paths."""
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
        "temperature": 1.0,
        "seed": 5,
        "logprobs": True,
        "top_logprobs": 2,
        "return_token_ids": True,
    }
    direct = httpx.post(f"{model_server}/v1/chat/completions", json=body, timeout=60).json()
    reply = ms_gateway.post("/v1/chat/completions", body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["prompt_token_ids"] == direct["prompt_token_ids"]
    (choice,), (expected,) = answer["choices"], direct["choices"]
    assert choice["token_ids"] == expected["token_ids"]  # seeded: the same sample
    assert choice["logprobs"]["content"] == expected["logprobs"]["content"]
    chunks = _stream(ms_gateway, body)
    prompt_ids = [c["prompt_token_ids"] for c in chunks if c.get("prompt_token_ids")]
    # LiteLLM rebuilds the first chunk and drops its top-level extras: a known gap of that path.
    assert prompt_ids == ([direct["prompt_token_ids"]] if ms_gateway.mode == "fast" else [])
    streamed = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids") or []]
    assert streamed == expected["token_ids"]
    logprobs = [
        e for c in chunks for ch in c["choices"] if ch.get("logprobs") for e in ch["logprobs"]["content"]
    ]
    assert [e["logprob"] for e in logprobs] == [e["logprob"] for e in expected["logprobs"]["content"]]
    # Text completions: the ids sit in the choice, as vLLM puts them.
    text = {
        "model": "tiny",
        "prompt": "hi",
        "max_tokens": 3,
        "temperature": 0,
        "logprobs": 1,
        "return_token_ids": True,
    }
    direct = httpx.post(f"{model_server}/v1/completions", json=text, timeout=60).json()["choices"][0]
    reply = ms_gateway.post("/v1/completions", text)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    assert (
        choice["token_ids"] == direct["token_ids"]
        and choice["prompt_token_ids"] == direct["prompt_token_ids"]
    )
    assert choice["logprobs"]["token_logprobs"] == direct["logprobs"]["token_logprobs"]


def test_system_fingerprint_passes_through(
    ms_gateway: Gateway, model_server: str, tiny: tuple[Path, Path]
) -> None:
    """The model server's ``system_fingerprint`` (the digest of the adapter that answered) reaches
    the caller of a whole answer on both paths, and of every streamed chunk on the fast path; the
    base model's stays empty. LiteLLM's hosted_vllm stream parser rebuilds each chunk from a fixed
    list of fields and drops it: a known gap of that path (see the README)."""
    from flywheel_common.adapter_digest import folder_digest

    name = f"fp{ms_gateway.mode}-v1"  # the model server is shared by both gateways
    reply = httpx.post(f"{model_server}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(tiny[1])},
                       timeout=60, headers=http_headers())  # fmt: skip
    assert reply.status_code == 200, reply.text
    digest = folder_digest(tiny[1]).digest
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
    text = {"prompt": "hi", "max_tokens": 3, "temperature": 0}
    for model, expected in ((f"ft/{name}", digest), ("tiny", None)):
        for path, body in (("/v1/chat/completions", chat), ("/v1/completions", text)):
            reply = ms_gateway.post(path, {"model": model, **body})
            assert reply.status_code == 200, reply.text
            assert reply.json().get("system_fingerprint") == expected, (model, path, reply.json())
        chunks = _stream(ms_gateway, {"model": model, **chat})
        streamed = expected if ms_gateway.mode == "fast" else None
        fingerprints = [c.get("system_fingerprint") for c in chunks]
        assert chunks and fingerprints == [streamed] * len(chunks), (model, chunks)
