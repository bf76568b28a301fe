"""The gRPC surface of the trainer.

Thin transport: the servicer maps protobuf messages to the domain code and back. Every RPC of
``flywheel.trainer.v1.TrainerService`` that is not defined here answers UNIMPLEMENTED with a message that
names it and the work that brings it (issue #7).
"""

from __future__ import annotations

from flywheel.trainer.v1 import trainer_pb2, trainer_pb2_grpc
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding, fill_unimplemented
from flywheel_trainer.settings import TrainerSettings

NAME = "trainer-svc"
DESCRIPTOR = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"]


class TrainerService(trainer_pb2_grpc.TrainerServiceServicer):
    """``flywheel.trainer.v1.TrainerService``."""

    def __init__(self, settings: TrainerSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps


fill_unimplemented(TrainerService, DESCRIPTOR, "issue #7")


def build_app(settings: TrainerSettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    servicer = TrainerService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, trainer_pb2_grpc.add_TrainerServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    return app
