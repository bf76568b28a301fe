"""Every gRPC service starts as its own process and works with the real grpcurl binary.

This is what a user does after `flywheel up`: `grpcurl -plaintext HOST:PORT list`, a health
check, and a call — with no proto files on their side (server reflection only). Listing and health
need no token; the call does (``-H "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN"``, the session's
token from flywheel_testing), and a call without it or with a wrong one is UNAUTHENTICATED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
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
        method = f"{component.grpc_service}/{first_rpc}"
        refused = grpcurl("-plaintext", "-d", "{}", address, method)
        assert refused.returncode != 0 and "Code: Unauthenticated" in refused.stderr, refused.stderr
        assert 'grpcurl -H "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN"' in refused.stderr
        wrong = grpcurl(
            "-plaintext", "-H", "authorization: Bearer not-the-token", "-d", "{}", address, method
        )
        assert "Code: Unauthenticated" in wrong.stderr and "not one this service accepts" in wrong.stderr

        token = os.environ["FLYWHEEL_SERVICE_TOKEN"]
        called = grpcurl("-plaintext", "-H", f"authorization: Bearer {token}", "-d", "{}", address, method)
        assert "Unauthenticated" not in called.stderr, called.stderr
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


@pytest.mark.parametrize("component", [c for c in COMPONENTS if c.name != "gateway"], ids=lambda c: c.name)
def test_a_service_without_a_token_refuses_to_start(component, service_env: dict[str, str]) -> None:
    """The secure default: no FLYWHEEL_SERVICE_TOKEN and no FLYWHEEL_AUTH_DISABLED=1 is an error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL_SERVICE_TOKEN")}
    env.update(service_env)
    env[f"{component.env_prefix}PORT"] = "0"
    done = subprocess.run(
        [sys.executable, "-m", component.module], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1, done.stderr
    assert "no service token configured: set FLYWHEEL_SERVICE_TOKEN" in done.stderr
    assert "FLYWHEEL_AUTH_DISABLED=1" in done.stderr


def test_auth_disabled_serves_without_a_token_and_says_so(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    os.environ.pop("FLYWHEEL_SERVICE_TOKEN_NEXT", None)
    saved = os.environ.pop("FLYWHEEL_SERVICE_TOKEN")
    try:
        component = next(c for c in GRPC_COMPONENTS if c.name == "dataset-svc")
        env = {**service_env, "FLYWHEEL_AUTH_DISABLED": "1"}
        proc, info, log = start_module(component.module, component.env_prefix, env, tmp_path)
    finally:
        os.environ["FLYWHEEL_SERVICE_TOKEN"] = saved
    try:
        called = grpcurl("-plaintext", f"127.0.0.1:{info['port']}", f"{component.grpc_service}/ListRecipes")
        assert called.returncode == 0, called.stderr
        assert "WITHOUT AUTHENTICATION" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)


def test_bad_setting_fails_fast_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "FLYWHEEL_SANDBOX_PORT": "not-a-port"}
    done = subprocess.run(
        [sys.executable, "-m", "flywheel_sandbox"], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "FLYWHEEL_SANDBOX_PORT='not-a-port'" in done.stderr
