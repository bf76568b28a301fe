"""Unit tests of the stack supervisor's decisions (ports, state file, refusals)."""

from __future__ import annotations

import os
import socket

import pytest

from flywheel_cli.components import COMPONENTS, by_name
from flywheel_cli.stack import SERVICE_TOKEN_FILE, Stack, StackError, StackInfo, choose_port, service_token
from flywheel_cli.stack_cmds import token_hint


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


def test_the_stack_generates_a_service_token_once_and_the_cli_finds_it(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLYWHEEL_SERVICE_TOKEN", raising=False)
    assert service_token(tmp_path) is None  # no stack, no variable: calls go out without one
    stack = Stack(tmp_path)
    token = stack.service_token()
    path = tmp_path / SERVICE_TOKEN_FILE
    assert token.startswith("fw-") and len(token) > 40
    assert path.read_text().strip() == token and path.stat().st_mode & 0o777 == 0o600
    assert Stack(tmp_path).service_token() == token  # kept: the next `flywheel up` reuses it
    stack.nats_url = "nats://127.0.0.1:1234"
    ports = {c.name: 61000 + i for i, c in enumerate(COMPONENTS)}
    for component in COMPONENTS:
        assert stack.child_env(component, ports)["FLYWHEEL_SERVICE_TOKEN"] == token
    assert stack.info().service_token_file == str(path.resolve())
    assert service_token(tmp_path) == token  # what `flywheel …` sends
    monkeypatch.setenv("FLYWHEEL_SERVICE_TOKEN", "tok-from-env")
    assert service_token(tmp_path) == "tok-from-env"  # the variable wins


def test_a_token_in_the_environment_is_used_as_is(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SERVICE_TOKEN", "tok-pinned")
    stack = Stack(tmp_path)
    assert stack.service_token() == "tok-pinned"
    assert not (tmp_path / SERVICE_TOKEN_FILE).exists() and stack.info().service_token_file == ""
    hint = token_hint(stack.info())
    assert 'grpcurl -plaintext -H "authorization: Bearer $FLYWHEEL_SERVICE_TOKEN"' in hint


def test_cli_calls_carry_the_stack_token(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from concurrent import futures

    import grpc

    from flywheel_cli import rpc

    seen: list[str | None] = []

    def remember(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()).get("authorization"))
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.method_handlers_generic_handler(
        "flywheel.test.v1.Echo", {"Call": grpc.unary_unary_rpc_method_handler(remember)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.delenv("FLYWHEEL_SERVICE_TOKEN", raising=False)
        (tmp_path / SERVICE_TOKEN_FILE).write_text("fw-from-the-state-dir\n")
        with rpc.channel(f"127.0.0.1:{port}", tmp_path) as channel:
            channel.unary_unary("/flywheel.test.v1.Echo/Call")(b"")
    finally:
        server.stop(None)
    assert seen == ["Bearer fw-from-the-state-dir"]
