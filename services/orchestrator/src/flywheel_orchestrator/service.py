"""The gRPC surface of the agent orchestrator.

Thin transport: the servicer maps protobuf messages to the domain code and back. Every RPC of
``flywheel.orchestrator.v1.OrchestratorService`` that is not defined here answers UNIMPLEMENTED with a message that
names it and the work that brings it (issue #5 (loops: issue #10)).
"""

from __future__ import annotations

from flywheel.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding, fill_unimplemented
from flywheel_orchestrator.settings import OrchestratorSettings

NAME = "orchestrator"
DESCRIPTOR = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"]


class OrchestratorService(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """``flywheel.orchestrator.v1.OrchestratorService``."""

    def __init__(self, settings: OrchestratorSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps


fill_unimplemented(OrchestratorService, DESCRIPTOR, "issue #5 (loops: issue #10)")


def build_app(settings: OrchestratorSettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    servicer = OrchestratorService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [
            ServiceBinding(
                servicer, orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server, DESCRIPTOR
            )
        ],
    )
    deps.attach(app)
    return app
