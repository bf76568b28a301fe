"""Health probes used by ``flywheel up`` and ``flywheel status``."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flywheel_common import auth


def grpc_health(address: str, timeout: float = 2.0, service: str = "") -> str:
    """SERVING / NOT_SERVING / … as the server reports it, or UNREACHABLE (health needs no token)."""
    with auth.sync_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(  # type: ignore[attr-defined]  # the stub package's HealthStub lists no RPCs
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as err:
            code = err.code() if hasattr(err, "code") else None
            return (
                "UNREACHABLE"
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                else f"ERROR ({code.name if code else err})"
            )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def http_health(url: str, timeout: float = 2.0) -> str:
    """SERVING when ``GET url`` answers 200, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return "SERVING" if reply.status == 200 else f"HTTP {reply.status}"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}"
    except (urllib.error.URLError, OSError):
        return "UNREACHABLE"


def tcp_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    """Whether we could bind host:port right now (nothing listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
