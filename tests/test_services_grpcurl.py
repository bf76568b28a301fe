"""Every gRPC service starts as its own process and works with the real grpcurl binary.

This is what a user does after `flywheel up`: `grpcurl -plaintext HOST:PORT list`, a health
check, and a call — with no proto files on their side (server reflection only).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from flywheel_cli.components import COMPONENTS
from flywheel_testing.processes import grpcurl, start_module

GRPC_COMPONENTS = [c for c in COMPONENTS if c.protocol == "grpc"]


@pytest.mark.parametrize("component", GRPC_COMPONENTS, ids=lambda c: c.name)
def test_service_lists_checks_health_and_stops_cleanly(
    component, service_env: dict[str, str], tmp_path: Path
) -> None:
    proc, info, log = start_module(component.module, component.env_prefix, service_env, tmp_path)
    address = f"127.0.0.1:{info['port']}"
    try:
        listed = grpcurl("-plaintext", address, "list")
        assert listed.returncode == 0, listed.stderr
        services = listed.stdout.split()
        assert component.grpc_service in services
        assert "grpc.health.v1.Health" in services

        health = grpcurl(
            "-plaintext",
            "-d",
            json.dumps({"service": component.grpc_service}),
            address,
            "grpc.health.v1.Health/Check",
        )
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout) == {"status": "SERVING"}

        described = grpcurl("-plaintext", address, "describe", component.grpc_service)
        assert described.returncode == 0, described.stderr
        assert "rpc " in described.stdout

        first_rpc = next(
            line.split()[1].split("(")[0]
            for line in described.stdout.splitlines()
            if line.strip().startswith("rpc ")
        )
        called = grpcurl("-plaintext", "-d", "{}", address, f"{component.grpc_service}/{first_rpc}")
        if called.returncode != 0:
            # Not served yet: the answer names the RPC (grpcurl prints code and message).
            assert "Unimplemented" in called.stderr or "Code:" in called.stderr, called.stderr
            if "Unimplemented" in called.stderr:
                assert f"{component.grpc_service}/{first_rpc} is not implemented yet" in called.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0, log.read_text()[-3000:]
    assert "stopped" in log.read_text()


def test_bad_setting_fails_fast_naming_the_variable(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLYWHEEL_SANDBOX_PORT": "not-a-port"}
    done = subprocess.run(
        [sys.executable, "-m", "flywheel_sandbox"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "FLYWHEEL_SANDBOX_PORT='not-a-port'" in done.stderr
