"""The fast paths answer like the plain ones: a merged adapter like PEFT's unmerged forward, and a
batch of waiting requests like the same requests one at a time (the app in-process, float32)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from flywheel_common.auth import http_headers
from flywheel_model_server.app import build_app
from flywheel_model_server.settings import ModelServerSettings

from .test_app import wait_status

PROMPTS = ["hello world", "red green blue", "one two three four", "the apple of the tree"]


@contextlib.asynccontextmanager
async def serving(tiny: Any, tmp_path: Any, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    config = ModelServerSettings(
        model_path=tiny.base,
        base_model="tiny",
        device="cpu",
        dtype="float32",
        cache_dir=tmp_path / "cache",
        object_store={"backend": "fs", "root": tmp_path / "objects"},
        **settings,
    )
    app = build_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://ms", timeout=120, headers=http_headers()
        ) as client:
            await wait_status(client, "ready")
            yield client, app.state.engine


async def running_alone(engine: Any) -> None:
    """Until the engine has taken the one request submitted (running, nothing waiting)."""
    deadline = asyncio.get_running_loop().time() + 60
    while engine._waiting or engine._pending != 1:
        assert asyncio.get_running_loop().time() < deadline, "the request never started"
        await asyncio.sleep(0.005)


async def ask(client: httpx.AsyncClient, model: str, prompt: str, **fields: Any) -> dict:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 10,
        "temperature": 0,
        "logprobs": True,
        "return_token_ids": True,
        **fields,
    }
    reply = await client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    return {
        "text": choice["message"]["content"],
        "ids": choice["token_ids"],
        "logprobs": [e["logprob"] for e in choice["logprobs"]["content"]],
    }


async def answers(tiny: Any, tmp_path: Any, merged_adapters: int) -> tuple[list[dict], int]:
    async with serving(tiny, tmp_path, merged_adapters=merged_adapters) as (client, engine):
        reply = await client.post(
            "/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(tiny.adapter_a)}
        )
        assert reply.status_code == 200, reply.text
        out = [await ask(client, "a", prompt) for prompt in PROMPTS]
        out.append(await ask(client, "tiny", PROMPTS[0]))  # the base model after the adapter
        return out, len(engine._merged)


async def test_merged_adapter_answers_like_the_unmerged_one(tiny: Any, tmp_path: Any) -> None:
    merged, copies = await answers(tiny, tmp_path / "merged", merged_adapters=2)
    unmerged, none = await answers(tiny, tmp_path / "unmerged", merged_adapters=0)
    assert copies == 1 and none == 0  # each path was really taken
    for fast, slow in zip(merged, unmerged, strict=True):
        assert fast["ids"] == slow["ids"] and fast["text"] == slow["text"]
        assert fast["logprobs"] == pytest.approx(slow["logprobs"], abs=1e-4)
    assert merged[-1] != merged[0]  # the base model is not the adapter (nothing merged into it)


async def test_waiting_requests_are_batched_and_answer_as_alone(tiny: Any, tmp_path: Any) -> None:
    async with serving(tiny, tmp_path, max_batch_size=8) as (client, engine):
        alone = [await ask(client, "tiny", prompt) for prompt in PROMPTS]
        assert engine.largest_batch == 1
        # A long request holds the model; the four that arrive meanwhile wait and go as one batch.
        blocker = asyncio.create_task(ask(client, "tiny", "hello", max_tokens=150, stop=["never"]))
        await running_alone(engine)
        together = await asyncio.gather(*(ask(client, "tiny", prompt) for prompt in PROMPTS))
        await blocker
        assert engine.largest_batch == len(PROMPTS)
        for a, b in zip(together, alone, strict=True):
            assert a["ids"] == b["ids"] and a["text"] == b["text"]
            assert a["logprobs"] == pytest.approx(b["logprobs"], abs=1e-4)
        # Different sampling settings, or a seed, do not share a batch.
        engine.largest_batch = 0
        blocker = asyncio.create_task(ask(client, "tiny", "hello", max_tokens=150, stop=["never"]))
        await running_alone(engine)
        await asyncio.gather(
            ask(client, "tiny", PROMPTS[0], temperature=0.5),
            ask(client, "tiny", PROMPTS[1], temperature=0.7),
            ask(client, "tiny", PROMPTS[2], temperature=0.5, seed=4),
        )
        await blocker
        assert engine.largest_batch == 1


async def test_a_device_failure_fails_readiness_and_liveness(tiny: Any, tmp_path: Any) -> None:
    """After a CUDA error (a device-side assert, seen on the GPU when an adapter gave NaN logits)
    the context is lost for good. The GPU cannot run here, so generate() is made to raise the
    error torch raises there: the request fails with it, and both probes say the server must be
    restarted instead of answering 500 to every later request while looking healthy."""
    async with serving(tiny, tmp_path) as (client, engine):
        assert (await client.get("/health")).status_code == 200

        class AcceleratorError(RuntimeError):  # torch.AcceleratorError's name, as on a GPU
            pass

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise AcceleratorError("CUDA error: device-side assert triggered\nmore lines")

        engine._model.generate = fail
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
        reply = await client.post("/v1/chat/completions", json=body)
        assert reply.status_code == 500 and "device-side assert" in reply.json()["error"]["message"]
        ready = await client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "restart the model server" in ready.json()["message"]
        live = await client.get("/health")
        assert live.status_code == 503 and "device-side assert" in live.json()["message"]
        after = await client.post("/v1/chat/completions", json=body)
        assert after.status_code == 503, after.text
