"""The gRPC surface of the trajectory store.

Thin transport: the servicer maps protobuf messages to the domain code and back. Every RPC of
``flywheel.trajectory.v1.TrajectoryService`` that is not defined here answers UNIMPLEMENTED with a message that
names it and the work that brings it (issue #4).
"""

from __future__ import annotations

from flywheel.trajectory.v1 import trajectory_pb2, trajectory_pb2_grpc
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding, fill_unimplemented
from flywheel_trajectory.settings import TrajectorySettings

NAME = "trajectory-store"
DESCRIPTOR = trajectory_pb2.DESCRIPTOR.services_by_name["TrajectoryService"]


class TrajectoryService(trajectory_pb2_grpc.TrajectoryServiceServicer):
    """``flywheel.trajectory.v1.TrajectoryService``."""

    def __init__(self, settings: TrajectorySettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps


fill_unimplemented(TrajectoryService, DESCRIPTOR, "issue #4")


def build_app(settings: TrajectorySettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    servicer = TrajectoryService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, trajectory_pb2_grpc.add_TrajectoryServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    return app
