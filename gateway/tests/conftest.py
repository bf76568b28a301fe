"""Real processes for the gateway tests: an OpenAI-compatible upstream, the gateway, a trajectory sink.

* ``upstream``: ``flywheel_testing.gateway_upstream`` as its own process — a tiny server with
  vLLM's HTTP surface (chat, ``/v1/models``, ``/v1/load_lora_adapter``) that answers at once.
  It stands in for the model server, which needs a real model to answer.
* ``trajectory_sink``: a real gRPC server in this process serving ``PutTrajectory`` of
  ``flywheel.trajectory.v1.TrajectoryService`` that records what it gets (the trajectory store's
  own PutTrajectory is still UNIMPLEMENTED, issue #4, so capture is checked against this servicer).
* ``gateways``: two real gateway processes (``python -m flywheel_gateway serve``: the LiteLLM proxy
  plus our layer), with capture on — ``fast`` (default settings) and ``litellm``
  (``FAST_PATH=false``: every request through LiteLLM's own pipeline), so every behaviour is
  checked on both paths. Both have the ``openai/*`` route enabled, pointed at the tiny upstream
  (a hosted API cannot be reached from here), so hosted routes are exercised through LiteLLM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest

from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc as tgrpc
from flywheel_common.server import ready_file_info

MASTER_KEY = "sk-gateway-test-master-7f3a9c"
BASE_MODEL = "gemma-3-270m"


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen
    log: Path
    mode: str = "fast"  #: fast (our fast path) or litellm (FAST_PATH=false)

    def post(self, path: str, body: dict, key: str | None = MASTER_KEY, **kw: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.post(self.url + path, json=body, headers=headers, timeout=30, **kw)


@dataclass
class Sink(tgrpc.TrajectoryServiceServicer):
    address: str = ""
    received: list[tpb.Trajectory] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def PutTrajectory(
        self, request: tpb.PutTrajectoryRequest, context: grpc.ServicerContext
    ) -> tpb.PutTrajectoryResponse:
        with self.lock:
            self.received.append(request.trajectory)
        return tpb.PutTrajectoryResponse(trajectory=request.trajectory, created=True)

    def wait_for(self, predicate, timeout: float = 15.0) -> tpb.Trajectory:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for trajectory in self.received:
                    if predicate(trajectory):
                        return trajectory
            time.sleep(0.05)
        pytest.fail(f"no matching trajectory among {len(self.received)} received")


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (no /v1) of the tiny upstream."""
    root = tmp_path_factory.mktemp("upstream")
    port_file = root / "port"
    proc = _spawn(["-m", "flywheel_testing.gateway_upstream", "--port", "0", "--port-file", str(port_file),
                   "--base-model", BASE_MODEL], {}, root / "log")  # fmt: skip
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, (root / "log").read_text()
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def trajectory_sink() -> Iterator[Sink]:
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    tgrpc.add_TrajectoryServiceServicer_to_server(sink, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sink.address = f"127.0.0.1:{port}"
    try:
        yield sink
    finally:
        server.stop(0)


@pytest.fixture(scope="session")
def gateways(
    upstream: str, trajectory_sink: Sink, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Gateway]]:
    root = tmp_path_factory.mktemp("gateways")
    started: dict[str, tuple[subprocess.Popen, Path, Path]] = {}
    for mode in ("fast", "litellm"):
        ready, log = root / f"{mode}.ready", root / f"{mode}.log"
        env = {
            "FLYWHEEL_GATEWAY_MASTER_KEY": MASTER_KEY,
            "FLYWHEEL_GATEWAY_HOST": "127.0.0.1",
            "FLYWHEEL_GATEWAY_PORT": "0",
            "FLYWHEEL_GATEWAY_READY_FILE": str(ready),
            "FLYWHEEL_GATEWAY_MODEL_SERVER_URL": f"{upstream}/v1",
            "FLYWHEEL_GATEWAY_BASE_MODELS": f'["{BASE_MODEL}"]',
            "FLYWHEEL_GATEWAY_CONFIG_DIR": str(root / mode),
            "FLYWHEEL_GATEWAY_FAST_PATH": "true" if mode == "fast" else "false",
            "FLYWHEEL_GATEWAY_CAPTURE": "true",
            "FLYWHEEL_GATEWAY_NUM_RETRIES": "1",
            "FLYWHEEL_GATEWAY_FALLBACKS": json.dumps({"ft/fail-v1": [BASE_MODEL]}),
            "FLYWHEEL_TRAJECTORY_ADDRESS": trajectory_sink.address,
            # OpenAI cannot be reached from here: the openai/* route points at the tiny upstream.
            "OPENAI_API_KEY": "sk-fake-openai-key-for-tests",
            "OPENAI_API_BASE": f"{upstream}/v1",
            "FLYWHEEL_GATEWAY_LOG_FORMAT": "text",
        }
        started[mode] = (_spawn(["-m", "flywheel_gateway", "serve"], env, log), ready, log)
    result = {}
    try:
        deadline = time.monotonic() + 90
        for mode, (proc, ready, log) in started.items():
            while (info := ready_file_info(ready)) is None:
                assert proc.poll() is None, f"gateway {mode} exited:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"gateway {mode} not ready:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
            result[mode] = Gateway(f"http://127.0.0.1:{info['port']}", proc, log)
        yield result
    finally:
        for proc, _, _ in started.values():
            _stop(proc)


@pytest.fixture(params=["fast", "litellm"])
def gateway(request: pytest.FixtureRequest, gateways: dict[str, Gateway]) -> Gateway:
    return gateways[request.param]


def load_adapter(upstream: str, name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    reply = httpx.post(
        f"{upstream}/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(folder)}, timeout=30
    )
    assert reply.status_code == 200, reply.text
