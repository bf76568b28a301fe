"""The same server on a CUDA GPU (device=auto picks it, bfloat16): generation and several adapters.

CI has no GPU, so this module is skipped there; it runs on the GPU machine of the device tool.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel_common.auth import http_headers

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CI has none)"),
]


async def test_serves_base_and_adapters_on_the_gpu(tmp_path: Path, tiny: Any) -> None:
    from flywheel_model_server.app import build_app
    from flywheel_model_server.settings import ModelServerSettings

    settings = ModelServerSettings(model_path=tiny.base, base_model="tiny", cache_dir=tmp_path)
    app = build_app(settings)
    engine = app.state.engine
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gpu", timeout=120, headers=http_headers()
        ) as client:
            for _ in range(600):
                ready = (await client.get("/health/ready")).json()
                if ready["status"] == "ready":
                    break
                await asyncio.sleep(0.05)
            assert ready["device"] == "cuda (bfloat16)", ready
            for name, path in (("a", tiny.adapter_a), ("b", tiny.adapter_b)):
                reply = await client.post(
                    "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
                )
                assert reply.status_code == 200, reply.text
            devices = {p.device.type for p in engine._model.parameters()}
            assert devices == {"cuda"}  # the adapters' weights went to the GPU too
            answers = {}
            for model in ("tiny", "a", "b"):
                body = {"model": model, "prompt": "hello world", "max_tokens": 12, "temperature": 0}
                reply = await client.post("/v1/completions", json=body)
                assert reply.status_code == 200, reply.text
                answers[model] = reply.json()["choices"][0]["text"]
            assert len(set(answers.values())) == 3, answers
            seeded = {"model": "a", "prompt": "red", "max_tokens": 12, "temperature": 1.0, "seed": 5, "n": 2}
            first = (await client.post("/v1/completions", json=seeded)).json()
            again = (await client.post("/v1/completions", json=seeded)).json()
            assert [c["text"] for c in first["choices"]] == [c["text"] for c in again["choices"]]
