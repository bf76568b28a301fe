"""Fixtures of the sandbox runner's tests: one real runner (bubblewrap + cgroups) per test module.

Everything is real: the sandbox runs the host's bubblewrap, cgroups and Debian python3; the gRPC
server listens on 127.0.0.1:0. The module-scoped service keeps its warm pool across the tests of a
module, which is what keeps the suite fast.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel.sandbox.v1 import sandbox_pb2_grpc
from flywheel_common import auth
from flywheel_common.settings import load_settings
from flywheel_sandbox.runner import Runner
from flywheel_sandbox.service import SandboxService, build_app
from flywheel_sandbox.settings import SandboxSettings

SECRET = "flywheel-test-secret-3c1f9a"


@dataclass
class Sandbox:
    stub: sandbox_pb2_grpc.SandboxServiceStub
    channel: grpc.aio.Channel
    runner: Runner
    address: str
    objects: Path

    async def assert_healthy_and_clean(self) -> None:
        """The runner still answers health checks and no process of a finished run is alive."""
        reply = await health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await self.runner.wait_idle()
        assert self.runner.leftover_processes() == {}
        # A killed process can take a moment to be reaped; a live one stays.
        for _ in range(40):
            stray = stray_sandbox_processes(self.runner)
            if not stray:
                break
            await asyncio.sleep(0.05)
        assert stray == []


def stray_sandbox_processes(runner: Runner) -> list[tuple[int, str]]:
    """Processes of uid 65534 in this runner's cgroup tree but in no warm or active sandbox.

    Only this runner's tree counts: other test processes on the machine (a colleague's `make test`)
    run sandboxes of their own.
    """
    known = runner.known_sandboxes()
    assert runner.tree is not None
    stray = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid_line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
        state = next((ln for ln in status.splitlines() if ln.startswith("State:")), "State: ?")
        if "65534" not in uid_line.split()[1:2] or state.split()[1] in ("Z", "X"):
            continue
        run = runner.tree.run_of(int(entry))  # the cgroup of this runner's tree it is in (v1 or v2)
        if run is not None and run not in known:
            stray.append((int(entry), run))
    return stray


@pytest.fixture(scope="module")
def sandbox_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    objects = tmp_path_factory.mktemp("objects")
    return {"FLYWHEEL_OBJECT_STORE_BACKEND": "fs", "FLYWHEEL_OBJECT_STORE_ROOT": str(objects)}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sandbox(sandbox_env: dict[str, str]) -> AsyncIterator[Sandbox]:
    saved = {k: os.environ.get(k) for k in [*sandbox_env, "FLYWHEEL_TEST_SECRET"]}
    os.environ.update(sandbox_env)
    os.environ["FLYWHEEL_TEST_SECRET"] = SECRET  # must never be visible inside a sandbox
    try:
        settings = load_settings(
            SandboxSettings,
            host="127.0.0.1",
            port=0,
            max_concurrency=2,
            queue_size=4,
            default_wall_time_s=5.0,
        )
        app = build_app(settings)
        port = await app.start()
        servicer = app.bindings[0].servicer
        assert isinstance(servicer, SandboxService)
        address = f"127.0.0.1:{port}"
        async with auth.channel(address) as channel:
            yield Sandbox(
                sandbox_pb2_grpc.SandboxServiceStub(channel),
                channel,
                servicer.runner,
                address,
                Path(sandbox_env["FLYWHEEL_OBJECT_STORE_ROOT"]),
            )
        await app.stop(grace=1.0)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
