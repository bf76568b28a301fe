"""Start services and tools as real processes in tests, the way a user runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel_common.server import ready_file_info

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A binary installed in the venv by `make install` (grpcurl, buf, nats-server, flywheel)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; run `make install`")
    return found


def grpcurl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("grpcurl"), *args], capture_output=True, text=True, timeout=timeout)


def wait_ready(proc: subprocess.Popen, ready: Path, log: Path, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = ready_file_info(ready)
        if info is not None:
            return info
        if proc.poll() is not None:
            pytest.fail(f"exited with {proc.returncode} before ready:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail(f"not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def start_module(
    module: str, prefix: str, env: dict[str, str], tmp_path: Path
) -> tuple[subprocess.Popen, dict, Path]:
    ready = tmp_path / f"{module}.ready"
    log = tmp_path / f"{module}.log"
    full_env = {
        **os.environ,
        **env,
        f"{prefix}PORT": "0",
        f"{prefix}HOST": "127.0.0.1",
        f"{prefix}READY_FILE": str(ready),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module], env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    return proc, wait_ready(proc, ready, log), log
