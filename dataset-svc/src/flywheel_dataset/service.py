"""The gRPC surface of the dataset builder.

Thin transport: the servicer maps protobuf messages to the domain code and back. Every RPC of
``flywheel.dataset.v1.DatasetService`` that is not defined here answers UNIMPLEMENTED with a message that
names it and the work that brings it (issue #6).
"""

from __future__ import annotations

from flywheel.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from flywheel_common.runtime import Dependencies
from flywheel_common.server import GrpcApp, ServiceBinding, fill_unimplemented
from flywheel_dataset.settings import DatasetSettings

NAME = "dataset-svc"
DESCRIPTOR = dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"]


class DatasetService(dataset_pb2_grpc.DatasetServiceServicer):
    """``flywheel.dataset.v1.DatasetService``."""

    def __init__(self, settings: DatasetSettings, deps: Dependencies) -> None:
        self.settings = settings
        self.deps = deps


fill_unimplemented(DatasetService, DESCRIPTOR, "issue #6")


def build_app(settings: DatasetSettings) -> GrpcApp:
    """The service's gRPC app, with the shared resources it needs opened at start-up."""
    deps = Dependencies(settings, NAME, events=True, objects=True)
    servicer = DatasetService(settings, deps)
    app = GrpcApp(
        NAME,
        settings,
        [ServiceBinding(servicer, dataset_pb2_grpc.add_DatasetServiceServicer_to_server, DESCRIPTOR)],
    )
    deps.attach(app)
    return app
