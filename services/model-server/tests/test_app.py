"""The app in-process (httpx over ASGI, lifespan run): probes, error shapes, a missing base model
(503 that says what is missing and how to get it), and the base model taken from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel_common.auth import http_headers
from flywheel_common.objectstore import FilesystemObjectStore
from flywheel_model_server.app import build_app
from flywheel_model_server.engine import Done, Failed, GenerationJob, Prompt, SamplingParams
from flywheel_model_server.protocol import APIError
from flywheel_model_server.settings import ModelServerSettings


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings.setdefault("cache_dir", tmp_path / "cache")
    settings.setdefault("device", "cpu")
    config = ModelServerSettings(object_store={"backend": "fs", "root": tmp_path / "objects"}, **settings)
    app = build_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://model-server", timeout=60, headers=http_headers()
        ) as client:
            yield client


async def wait_status(client: httpx.AsyncClient, wanted: str, within: float = 240) -> dict:
    deadline = asyncio.get_running_loop().time() + within
    info: dict = {}
    while asyncio.get_running_loop().time() < deadline:
        info = (await client.get("/health/ready")).json()
        if info["status"] == wanted:
            return info
        await asyncio.sleep(0.05)
    raise AssertionError(f"status never became {wanted}: {info}")


def upload_base_model(store: FilesystemObjectStore, folder: Path, name: str, complete: bool = True) -> None:
    """What the trainer's register_base_model writes: the files, the manifest, then _COMPLETE."""
    prefix = f"base-models/{name}/"
    files = []
    for path in sorted(folder.iterdir()):
        store.put(prefix + path.name, path.read_bytes(), overwrite=True)
        files.append(path.name)
    store.put(prefix + "flywheel-base-model.json", json.dumps({"name": name}).encode(), overwrite=True)
    if complete:
        store.put(prefix + "_COMPLETE", json.dumps({"files": files}).encode(), overwrite=True)


async def test_health_and_unknown_paths(tmp_path: Path) -> None:
    async with running(tmp_path) as client:
        reply = await client.get("/health")
        assert reply.status_code == 200 and reply.json() == {"status": "ok"}
        reply = await client.get("/v2/nothing")
        assert reply.status_code == 404
        assert (
            reply.json()["error"]["type"] == "NotFoundError"
            and "/v2/nothing" in reply.json()["error"]["message"]
        )
        reply = await client.get("/v1/chat/completions")
        assert reply.status_code == 405 and reply.json()["error"]["code"] == 405


@pytest.mark.parametrize(
    ("path", "method", "body"),
    [
        ("/v1/models", "GET", None),
        ("/v1/chat/completions", "POST", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", "POST", {"prompt": "hi"}),
        ("/v1/load_lora_adapter", "POST", {"lora_name": "a", "lora_path": "/tmp"}),
        ("/v1/unload_lora_adapter", "POST", {"lora_name": "a"}),
    ],
)
async def test_missing_base_model_is_503_naming_it(tmp_path: Path, path: str, method: str, body: Any) -> None:
    async with running(tmp_path) as client:
        info = await wait_status(client, "missing")
        assert "base-models/gemma-3-270m/flywheel-base-model.json" in info["message"]
        assert (await client.get("/health")).status_code == 200  # liveness is not readiness
        assert (await client.get("/health/ready")).status_code == 503
        reply = await client.request(method, path, json=body)
        assert reply.status_code == 503
        error = reply.json()["error"]
        assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
        assert "gemma-3-270m" in error["message"] and "FLYWHEEL_MODEL_SERVER_MODEL_PATH" in error["message"]
        assert reply.headers["retry-after"]


async def test_model_path_that_does_not_exist_is_503(tmp_path: Path) -> None:
    async with running(tmp_path, model_path=tmp_path / "nowhere") as client:
        await wait_status(client, "missing")
        reply = await client.post("/v1/completions", json={"prompt": "hi"})
        assert reply.status_code == 503
        assert str(tmp_path / "nowhere") in reply.json()["error"]["message"]


async def test_half_uploaded_base_model_is_not_used(tmp_path: Path, tiny: Any) -> None:
    store = FilesystemObjectStore(tmp_path / "objects")
    store.ensure_ready()
    upload_base_model(store, tiny.base, "tiny", complete=False)
    async with running(tmp_path, base_model="tiny") as client:
        info = await wait_status(client, "missing")
        assert "still being uploaded" in info["message"]


async def test_base_model_imported_later_is_picked_up_without_restart(tmp_path: Path, tiny: Any) -> None:
    store = FilesystemObjectStore(tmp_path / "objects")
    store.ensure_ready()
    async with running(tmp_path, base_model="tiny", model_poll_interval_s=0.2) as client:
        await wait_status(client, "missing")
        upload_base_model(store, tiny.base, "tiny")
        info = await wait_status(client, "ready")
        assert "registry base-models/tiny/" in info["message"]
        models = (await client.get("/v1/models")).json()["data"]
        assert models[0]["id"] == "tiny"
        cached = Path(models[0]["root"])
        assert cached.parent == tmp_path / "cache" and (cached / "config.json").is_file()
        reply = await client.post(
            "/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 3},
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] <= 3
    # A restart finds the cached copy and needs no download: the store's weights can go.
    for info in list(store.list("base-models/tiny/")):
        if info.key.endswith(".safetensors"):
            store.delete(info.key)
    async with running(tmp_path, base_model="tiny") as client:
        info = await wait_status(client, "ready")
        assert "cached in" in info["message"]


async def test_queue_limit_is_429(tmp_path: Path, tiny: Any) -> None:
    """Submitting straight to the engine: the first job holds the only slot, the second is refused."""
    config = ModelServerSettings(model_path=tiny.base, base_model="tiny", max_queued_requests=1, device="cpu")
    app = build_app(config)
    engine = app.state.engine
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://model-server", headers=http_headers()
        ) as client:
            await wait_status(client, "ready")
            job = GenerationJob("tiny", [Prompt(text="hello")], params(max_tokens=50), 16)
            events = engine.submit(job)
            with pytest.raises(APIError) as refused:
                engine.submit(GenerationJob("tiny", [Prompt(text="hello")], params(max_tokens=1), 16))
            assert refused.value.status == 429
            assert "FLYWHEEL_MODEL_SERVER_MAX_QUEUED_REQUESTS" in refused.value.message
            event = await events.get()
            while not isinstance(event, Done | Failed):
                event = await events.get()
            assert isinstance(event, Done), event
            reply = await client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 1})
            assert reply.status_code == 200, reply.text  # the slot is free again


def params(**overrides: Any) -> SamplingParams:
    values: dict[str, Any] = dict(
        max_tokens=None,
        temperature=0.0,
        top_p=None,
        top_k=None,
        min_p=None,
        repetition_penalty=None,
        n=1,
        stop=[],
        seed=None,
    )
    values.update(overrides)
    return SamplingParams(**values)


async def test_admin_routes_need_the_service_token_and_inference_stays_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load and unload change what is served: 401 (OpenAI error body) without the service token."""
    monkeypatch.setenv("FLYWHEEL_SERVICE_TOKEN", "tok-right")
    async with running(tmp_path) as client:  # its default headers carry tok-right
        await wait_status(client, "missing")
        admin = [
            ("/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/tmp"}),
            ("/v1/unload_lora_adapter", {"lora_name": "a"}),
        ]
        for path, body in admin:
            for header in ("", "Bearer tok-wrong", "tok-right"):
                reply = await client.post(path, json=body, headers={"Authorization": header})
                assert reply.status_code == 401, (path, header, reply.text)
                assert reply.headers["www-authenticate"] == "Bearer"
                error = reply.json()["error"]
                assert error["code"] == 401 and error["type"] == "AuthenticationError"
                assert "Authorization: Bearer $FLYWHEEL_SERVICE_TOKEN" in error["message"]
            # With the token the request gets through to the handler (503: no base model here).
            assert (await client.post(path, json=body)).status_code == 503
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        reply = await client.post("/v1/chat/completions", json=chat, headers={"Authorization": ""})
        assert reply.status_code == 503  # not 401: inference needs no token, as before
        assert (await client.get("/v1/models", headers={"Authorization": ""})).status_code == 503


def test_no_service_token_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flywheel_common.auth import MissingServiceToken

    monkeypatch.delenv("FLYWHEEL_SERVICE_TOKEN", raising=False)
    monkeypatch.delenv("FLYWHEEL_SERVICE_TOKEN_NEXT", raising=False)
    with pytest.raises(MissingServiceToken, match="model-server: no service token configured"):
        build_app(ModelServerSettings(cache_dir=tmp_path / "cache"))
