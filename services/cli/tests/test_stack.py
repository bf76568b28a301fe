"""Unit tests of the stack supervisor's decisions (ports, state file, refusals)."""

from __future__ import annotations

import os
import socket

import pytest

from flywheel_cli.components import COMPONENTS, by_name
from flywheel_cli.stack import Stack, StackError, StackInfo, choose_port


def test_components_have_unique_names_ports_and_prefixes() -> None:
    for attribute in ("name", "default_port", "env_prefix", "module"):
        values = [getattr(c, attribute) for c in COMPONENTS]
        assert len(values) == len(set(values)), attribute
    assert by_name("sandbox-runner").default_port == 50052
    with pytest.raises(KeyError, match="known: sandbox-runner"):
        by_name("nope")


def test_taken_port_is_moved() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        port, moved = choose_port(taken)
        assert moved and port != taken
    port, moved = choose_port(port)
    assert (port, moved)[1] is False


def test_second_stack_on_same_state_dir_is_refused(tmp_path) -> None:
    StackInfo(os.getpid(), str(tmp_path), "nats://x:1", True, "fs").save(tmp_path / "stack.json")
    with pytest.raises(StackError, match="already running"):
        Stack(tmp_path).check_not_running()


def test_stale_state_file_is_ignored(tmp_path) -> None:
    StackInfo(2**22 + 7, str(tmp_path), "nats://x:1", True, "fs").save(tmp_path / "stack.json")
    Stack(tmp_path).check_not_running()


def test_children_learn_every_address_and_their_own_port(tmp_path) -> None:
    stack = Stack(tmp_path)
    stack.nats_url = "nats://127.0.0.1:1234"
    ports = {c.name: 61000 + i for i, c in enumerate(COMPONENTS)}
    env = stack.child_env(by_name("orchestrator"), ports)
    assert env["FLYWHEEL_ORCHESTRATOR_PORT"] == str(ports["orchestrator"])
    assert env["FLYWHEEL_SANDBOX_ADDRESS"] == f"127.0.0.1:{ports['sandbox-runner']}"
    assert env["FLYWHEEL_NATS_URL"] == "nats://127.0.0.1:1234"
    assert env["FLYWHEEL_OBJECT_STORE_ROOT"] == str(tmp_path.resolve() / "objects")
