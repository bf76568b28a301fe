"""Reads trajectories from the trajectory store over gRPC (ExportTrajectories), never from its code."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from flywheel.trajectory.v1 import trajectory_pb2 as tpb
from flywheel.trajectory.v1 import trajectory_pb2_grpc
from flywheel_common import auth


class StoreUnavailable(RuntimeError):
    """The trajectory store could not be read; the message names its address and the status."""


class GrpcTrajectorySource:
    """A blocking client for the build thread; ``cancel`` stops a running export promptly."""

    def __init__(self, address: str, *, timeout_s: float, cancel: threading.Event | None = None) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.cancel = cancel or threading.Event()
        # Large trajectories: the store may send messages well above gRPC's 4 MiB default.
        self._channel = auth.sync_channel(
            address, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        )
        self._stub = trajectory_pb2_grpc.TrajectoryServiceStub(self._channel)

    def export(self, query: tpb.TrajectoryFilter) -> Iterator[tpb.Trajectory]:
        request = tpb.ExportTrajectoriesRequest(filter=query, view=tpb.TRAJECTORY_VIEW_FULL)
        call = self._stub.ExportTrajectories(request, timeout=self.timeout_s, wait_for_ready=False)
        try:
            for response in call:
                if self.cancel.is_set():
                    call.cancel()
                    return
                yield response.trajectory
        except grpc.RpcError as err:
            if self.cancel.is_set():
                return
            raise StoreUnavailable(
                f"trajectory store at {self.address} (FLYWHEEL_TRAJECTORY_ADDRESS): "
                f"ExportTrajectories failed with {err.code().name}: {err.details()}"
            ) from err
        finally:
            call.cancel()

    def close(self) -> None:
        self._channel.close()
