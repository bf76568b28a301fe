"""The gRPC surface of the sandbox runner.

Thin transport: the servicer maps protobuf messages to the domain code and back. Every RPC of
``flywheel.sandbox.v1.SandboxService`` that is not defined here answers UNIMPLEMENTED with a message that
names it and the work that brings it (issue #3).
"""

from __future__ import annotations

from flywheel.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding, fill_unimplemented
from flywheel_sandbox.settings import SandboxSettings

NAME = "sandbox-runner"
DESCRIPTOR = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"]


class SandboxService(sandbox_pb2_grpc.SandboxServiceServicer):
    """``flywheel.sandbox.v1.SandboxService``."""

    def __init__(self, settings: SandboxSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps


fill_unimplemented(SandboxService, DESCRIPTOR, "issue #3")


def build_app(settings: SandboxSettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=False, objects=False)
    servicer = SandboxService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, sandbox_pb2_grpc.add_SandboxServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    return app
