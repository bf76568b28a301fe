"""Fixtures of the CLI's tests.

``scripted_orchestrator`` (and ``scripted_trainer``, the same for the trainer's service): a real
gRPC server on port 0 serving the orchestrator's service with
scripted answers, for the commands whose orchestrator side needs far more than it tests (a loop of
several rounds needs every service and a trained model; an alias needs the gateway). The CLI
reaches it over gRPC exactly as it reaches the real one, so what is tested is the command line →
request, and response → what is printed, including gRPC errors. The orchestrator's own tests
cover what the real RPCs do.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from flywheel.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc

Answer = Any  # a response message, a list of them (server streams), or an ``Abort``


@dataclass
class Abort:
    """Answer an RPC with this status instead of a response."""

    code: grpc.StatusCode
    details: str


@dataclass
class ScriptedServer:
    """What the fake server was asked (method name → requests, in order) and what it answers."""

    address: str = ""
    requests: dict[str, list[Any]] = field(default_factory=dict)
    answers: dict[str, Answer] = field(default_factory=dict)

    def asked(self, method: str) -> list[Any]:
        return self.requests.get(method, [])

    def refuse(self, method: str, code: grpc.StatusCode, details: str) -> None:
        """Answer ``method`` with this gRPC status from now on."""
        self.answers[method] = Abort(code, details)


def _method(script: ScriptedServer, name: str, streaming: bool) -> Callable[..., Any]:
    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        script.requests.setdefault(name, []).append(request)
        answer = script.answers.get(name)
        if answer is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not scripted")
        if isinstance(answer, Abort):
            context.abort(answer.code, answer.details)
        return answer

    def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        script.requests.setdefault(name, []).append(request)
        answer = script.answers.get(name)
        if answer is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not scripted")
        if isinstance(answer, Abort):
            context.abort(answer.code, answer.details)
        yield from answer

    return stream if streaming else unary


def _serve(servicer: Any, service: Any, add_to_server: Callable[..., None]) -> Iterator[ScriptedServer]:
    """A real gRPC server on port 0 answering every method of ``service`` from a script."""
    script = ScriptedServer()
    for method in service.methods:
        setattr(servicer, method.name, _method(script, method.name, method.server_streaming))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    script.address = f"127.0.0.1:{port}"
    try:
        yield script
    finally:
        server.stop(0)


@pytest.fixture
def scripted_orchestrator() -> Iterator[ScriptedServer]:
    yield from _serve(
        orchestrator_pb2_grpc.OrchestratorServiceServicer(),
        orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"],
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server,
    )


@pytest.fixture
def scripted_trainer() -> Iterator[ScriptedServer]:
    """The trainer's service with scripted answers (a fine-tune's own tests are the trainer's)."""
    yield from _serve(
        trainer_pb2_grpc.TrainerServiceServicer(),
        trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"],
        trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
    )
