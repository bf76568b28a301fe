"""The whole product as processes, for end-to-end tests: `flywheel up`'s Stack on one filesystem
object store, a real nats-server, and a tiny base model registered with the trainer.

Every end-to-end test of a loop needs the same environment; this is it once. The caller builds
the base model folder (each test shapes its tiny model for what it checks) and picks the suites.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def stack_env(state: Path, nats_url: str, base: str, suite_dirs: list[Path]) -> dict[str, str]:
    """The settings of every service of a test stack rooted at ``state``."""
    return {
        "FLYWHEEL_NATS_URL": nats_url,
        "FLYWHEEL_OBJECT_STORE_BACKEND": "fs",
        "FLYWHEEL_OBJECT_STORE_ROOT": str(state / "objects"),
        "FLYWHEEL_MODEL_SERVER_BASE_MODEL": base,
        "FLYWHEEL_MODEL_SERVER_DEVICE": "cpu",
        "FLYWHEEL_MODEL_SERVER_TORCH_THREADS": "1",
        "FLYWHEEL_MODEL_SERVER_CACHE_DIR": str(state / "model-cache"),
        "FLYWHEEL_GATEWAY_BASE_MODELS": json.dumps([base]),
        "FLYWHEEL_TRAINER_STATE_DIR": str(state / "trainer"),
        "FLYWHEEL_TRAJECTORY_INDEX_DIR": str(state / "trajectory-index"),
        "FLYWHEEL_ORCHESTRATOR_SUITE_DIRS": json.dumps([str(d) for d in suite_dirs]),
        "FLYWHEEL_ORCHESTRATOR_LOOP_HOT_LOAD_POLL_S": "1",
        "FLYWHEEL_DATASET_DEFAULT_BASE_MODEL": base,
    }


def long_context(folder: Path, positions: int = 8192) -> None:
    """Let whole episodes fit the tiny model (rope needs no table, so this costs nothing)."""
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = positions
    (folder / "config.json").write_text(json.dumps(config))


def agent_base_model(folder: Path, suite_dir: Path) -> Path:
    """The trainer's tiny test model with a tokenizer trained on a suite's own text and the
    agent's prompts, its context long enough for whole episodes."""
    from flywheel_orchestrator.protocol import IO_JSON_SYSTEM, REPO_JSON_SYSTEM
    from flywheel_testing.trainer import build_tiny_model

    corpus = [REPO_JSON_SYSTEM, IO_JSON_SYSTEM]
    corpus += [p.read_text() for p in suite_dir.rglob("*") if p.is_file()]
    corpus += [
        '{"type":"tool_call","name":"read_file","args":{"rel_path":"calc.py"}}',
        "[tool_result]",
        "[tests]",
    ]
    build_tiny_model(folder, corpus * 4, with_template=True)
    long_context(folder)
    return folder


@contextmanager
def running_stack(
    state: Path,
    monkeypatch: pytest.MonkeyPatch,
    nats_url: str,
    *,
    base: str,
    base_folder: Path,
    suite_dirs: list[Path],
    extra_env: dict[str, str] | None = None,
) -> Iterator:
    """Register ``base_folder`` as base model ``base``, start every service, stop them after.
    The process environment is cleared of other FLYWHEEL_ settings first (through monkeypatch),
    except the session's service token, which the stack then hands to every service."""
    from flywheel_cli.stack import Stack
    from flywheel_common.objectstore import ObjectStoreSettings, open_object_store
    from flywheel_trainer.catalog import register_base_model

    for key in list(os.environ):
        if key.startswith("FLYWHEEL_") and key != "FLYWHEEL_SERVICE_TOKEN":
            monkeypatch.delenv(key)
    for key, value in {**stack_env(state, nats_url, base, suite_dirs), **(extra_env or {})}.items():
        monkeypatch.setenv(key, value)
    store = open_object_store(ObjectStoreSettings(backend="fs", root=state / "objects"))
    store.ensure_ready()
    register_base_model(store, base_folder, base, "tiny test model")
    stack = Stack(state, grace_s=5.0)
    stack.start(timeout_s=120)
    try:
        yield stack
    finally:
        stack.stop()


def address(stack, name: str) -> str:
    """The address of one component of a running stack."""
    return next(c.address for c in stack.children if c.component.name == name)
