"""The fine-tuning API's routes and error bodies without the services: a filesystem object store,
dataset-svc and trainer-svc addresses where nothing listens (their absence must be a 503 that says
so, and a refused upload must leave nothing behind)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from flywheel_common.objectstore import FilesystemObjectStore
from flywheel_gateway.fast_path import FastPath
from flywheel_gateway.fine_tuning import FineTuningAPI, fine_tuning_path
from flywheel_gateway.settings import GatewaySettings


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def api(tmp_path: Path) -> FineTuningAPI:
    dead = f"127.0.0.1:{closed_port()}"
    settings = GatewaySettings(
        master_key="sk-routes-test-key",
        FLYWHEEL_DATASET_ADDRESS=dead,
        FLYWHEEL_TRAINER_ADDRESS=dead,
        model_server_url=f"http://{dead}/v1",
    )
    store = FilesystemObjectStore(tmp_path / "objects")
    store.ensure_ready()
    return FineTuningAPI(settings, store, FastPath(settings, []))


async def call(
    api: FineTuningAPI, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
) -> tuple[int, Any]:
    target, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": target,
        "query_string": query.encode(),
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    out: dict[str, Any] = {"body": b""}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] += message.get("body", b"")

    bare = fine_tuning_path(target)
    assert bare is not None
    try:
        await api(scope, receive, send, bare)
    finally:
        await api.close()
        await api.fast.close()
    return out["status"], json.loads(out["body"])


def multipart(purpose: str, content: bytes) -> tuple[bytes, str]:
    boundary = "testboundary123"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_paths() -> None:
    assert (
        fine_tuning_path("/v1/files") == "/files"
        and fine_tuning_path("/files/file-1/content") == "/files/file-1/content"
    )
    assert fine_tuning_path("/v1/fine_tuning/jobs/ftj-1/events") == "/fine_tuning/jobs/ftj-1/events"
    assert fine_tuning_path("/v1/chat/completions") is None and fine_tuning_path("/v1/filesystem") is None


async def test_files_listing_and_unknown_ids(api: FineTuningAPI) -> None:
    assert await call(api, "GET", "/v1/files") == (
        200, {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    )  # fmt: skip
    status, body = await call(api, "GET", "/v1/files/file-000000000000000000000000")
    assert status == 404 and body["error"]["code"] == "file_not_found"
    status, body = await call(api, "GET", "/v1/files?limit=0")
    assert status == 400 and body["error"]["param"] == "limit"
    status, body = await call(api, "PATCH", "/v1/fine_tuning/jobs")
    assert status == 404 and body["error"]["code"] == "unknown_url"


async def test_upload_needs_dataset_svc_and_keeps_nothing_without_it(api: FineTuningAPI) -> None:
    body, kind = multipart("fine-tune", b'{"messages": [{"role": "assistant", "content": "hi"}]}\n')
    status, answer = await call(api, "POST", "/v1/files", body, kind)
    assert status == 503 and answer["error"]["code"] == "dataset_svc_unavailable", answer
    assert list(api.store.list("gateway/")) == []
    body, kind = multipart("assistants", b"{}\n")
    status, answer = await call(api, "POST", "/v1/files", body, kind)
    assert status == 400 and answer["error"]["param"] == "purpose"


async def test_create_checks_the_body_then_needs_the_trainer(api: FineTuningAPI) -> None:
    status, body = await call(api, "POST", "/v1/fine_tuning/jobs", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = await call(api, "POST", "/v1/fine_tuning/jobs", json.dumps({"model": "m"}).encode())
    assert (status, body["error"]["param"], body["error"]["code"]) == (
        400, "training_file", "missing_required_parameter"
    )  # fmt: skip
    good = json.dumps({"model": "gemma-3-270m", "training_file": "file-000000000000000000000000"}).encode()
    status, body = await call(api, "POST", "/v1/fine_tuning/jobs", good)
    assert status == 503 and body["error"]["code"] == "trainer_svc_unavailable", body
    status, body = await call(api, "GET", "/v1/fine_tuning/jobs/not-a-job")
    assert status == 404 and body["error"]["code"] == "fine_tuning_job_not_found"
