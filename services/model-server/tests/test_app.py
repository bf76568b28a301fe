"""The model server's HTTP surface: health, OpenAI-style errors, honest 501s until issue #8."""

from __future__ import annotations

import httpx
import pytest

from flywheel_model_server.app import OPENAI_ROUTES, build_app


@pytest.fixture
async def client():
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://model-server") as client:
        yield client


async def test_health(client: httpx.AsyncClient) -> None:
    reply = await client.get("/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok"}


@pytest.mark.parametrize(("path", "method"), OPENAI_ROUTES)
async def test_openai_routes_say_not_implemented(client: httpx.AsyncClient, path: str, method: str) -> None:
    reply = await client.request(method, path, json={} if method == "POST" else None)
    assert reply.status_code == 501
    error = reply.json()["error"]
    assert error["code"] == 501
    assert path in error["message"] and "issue #8" in error["message"]


async def test_unknown_path_is_openai_style_404(client: httpx.AsyncClient) -> None:
    reply = await client.get("/v2/nothing")
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "NotFoundError"
    assert "/v2/nothing" in reply.json()["error"]["message"]


async def test_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    reply = await client.get("/v1/chat/completions")
    assert reply.status_code == 405
    assert reply.json()["error"]["code"] == 405
