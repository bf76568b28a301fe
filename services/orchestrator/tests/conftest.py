"""Fixtures of the orchestrator's tests.

Real services wherever they run here: the sandbox runner (bubblewrap + cgroups, as root) and the
trajectory store start once per test module as processes; NATS is the session's nats-server; the
orchestrator itself boots in-process on port 0. The only stand-in is the model: a scripted
OpenAI-compatible HTTP server (flywheel_testing.scripted_model) answers chat completions, because
a hosted model cannot run here and a real small model is neither fast nor predictable enough to
hit each edge case of the driver on purpose.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flywheel.orchestrator.v1 import orchestrator_pb2_grpc
from flywheel_common import auth
from flywheel_orchestrator.service import build_app
from flywheel_orchestrator.settings import OrchestratorSettings
from flywheel_testing.processes import start_module
from flywheel_testing.scripted_model import Responder, ScriptedModelServer
from flywheel_testing.services import boot_service

MINI = Path(__file__).parent / "fixtures" / "mini"


@dataclass
class Backends:
    sandbox: str
    trajectory: str


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def backends(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """The real sandbox runner and trajectory store, shared by the tests of one module."""
    root = tmp_path_factory.mktemp("backends")
    env = {
        "FLYWHEEL_NATS_URL": nats_url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(root / "objects"),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(root / "index"),
    }
    sandbox, sinfo, _ = start_module("flywheel_sandbox", "FLYWHEEL_SANDBOX_", env, root)
    try:
        store, tinfo, _ = start_module("flywheel_trajectory", "FLYWHEEL_TRAJECTORY_", env, root)
    except BaseException:
        _stop(sandbox)
        raise
    try:
        yield Backends(f"127.0.0.1:{sinfo['port']}", f"127.0.0.1:{tinfo['port']}")
    finally:
        _stop(store)
        _stop(sandbox)


@dataclass
class Harness:
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub
    model: ScriptedModelServer
    address: str
    objects: Path


@contextlib.asynccontextmanager
async def orchestrator(
    backends: Backends,
    service_env: dict[str, str],
    responder: Responder,
    *,
    models: tuple[str, ...] = ("scripted",),
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """A scripted model server and the orchestrator in-process, wired to the real backends."""
    async with ScriptedModelServer(responder, models=models) as server:
        env = {
            **service_env,
            "FLYWHEEL_SANDBOX_ADDRESS": backends.sandbox,
            "FLYWHEEL_TRAJECTORY_ADDRESS": backends.trajectory,
            "FLYWHEEL_ORCHESTRATOR_SUITE_DIRS": f'["{MINI}"]',
        }
        settings = {"gateway_base_url": server.base_url, "model_max_retries": 2, **overrides}
        async with boot_service(build_app, OrchestratorSettings, env, **settings) as address:
            async with auth.channel(address) as channel:
                yield Harness(
                    orchestrator_pb2_grpc.OrchestratorServiceStub(channel),
                    server,
                    address,
                    Path(service_env["FLYWHEEL_OBJECT_STORE_ROOT"]),
                )
