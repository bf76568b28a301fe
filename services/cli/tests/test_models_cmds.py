"""``flywheel models register|list`` against a real trainer process (gRPC only, as users run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from flywheel_cli.main import cli
from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
from flywheel_testing.trainer import FACTS, build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", [f"{q} {a}" for q, a in FACTS] * 5)


@pytest.fixture
def trainer(service_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        **service_env,
        "FLYWHEEL_TRAINER_HOST": "127.0.0.1",
        "FLYWHEEL_TRAINER_PORT": "0",
        "FLYWHEEL_TRAINER_READY_FILE": str(ready),
        "FLYWHEEL_TRAINER_STATE_DIR": str(tmp_path / "trainer"),
        "FLYWHEEL_TRAINER_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trainer"], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the trainer did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{json.loads(ready.read_text())['port']}", service_env
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def run(address: str, *args: str, stdout_only: bool = False) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["models", "--address", address, *args], catch_exceptions=False
    )
    return result.exit_code, result.stdout if stdout_only else result.output


def test_register_and_list(trainer: tuple[str, dict[str, str]], tiny_model: Path) -> None:
    address, env = trainer
    store = open_object_store(ObjectStoreSettings(backend="fs", root=Path(env["FLYWHEEL_OBJECT_STORE_ROOT"])))
    for path in tiny_model.iterdir():
        store.put(f"uploads/tiny/{path.name}", path.read_bytes())

    code, output = run(
        address, "register", "--name", "tiny", "--from-prefix", "uploads/tiny/", "--hf-id", "acme/tiny"
    )
    assert code == 0, output
    assert "registered: tiny (hf_id acme/tiny), LlamaForCausalLM" in output
    assert output.rstrip().endswith("tiny")
    code, output = run(
        address, "register", "--name", "tiny", "--from-folder", str(tiny_model), "--hf-id", "acme/tiny"
    )
    assert code == 0 and "already registered (same content)" in output, output
    code, output = run(
        address, "register", "--name", "plain", "--from-folder", str(tiny_model), "--json", stdout_only=True
    )
    assert code == 0, output
    reply = json.loads(output)
    assert reply["created"] is True and reply["baseModel"]["hfId"] == "plain"

    code, output = run(address, "list")
    assert code == 0 and "acme/tiny" in output and "plain" in output, output
    code, output = run(address, "list", "--json", stdout_only=True)
    assert code == 0
    assert {m["name"]: m["hfId"] for m in map(json.loads, output.splitlines())} == {
        "plain": "plain",
        "tiny": "acme/tiny",
    }


def test_errors_are_one_line_each(
    trainer: tuple[str, dict[str, str]], tiny_model: Path, tmp_path: Path
) -> None:
    address, _ = trainer
    code, output = run(address, "register", "--name", "x")
    assert code == 2 and "exactly one of --from-prefix, --from-folder, --from-gguf" in output
    code, output = run(address, "register", "--name", "x", "--from-prefix", "a/", "--from-folder", "/b")
    assert code == 2 and "--from-prefix and --from-folder" in output
    code, output = run(address, "register", "--name", "x", "--from-folder", str(tmp_path / "absent"))
    assert code == 1 and "error (NOT_FOUND)" in output and "absent" in output, output
    code, output = run(address, "register", "--name", "x", "--from-gguf", "uploads/absent.gguf")
    assert code == 1 and "error (NOT_FOUND)" in output and "source_gguf_key" in output, output
    code, output = run(address, "register", "--name", "Bad", "--from-folder", str(tiny_model))
    assert code == 1 and "error (INVALID_ARGUMENT)" in output, output
