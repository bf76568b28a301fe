"""Domain errors and their gRPC status codes.

Service code raises these plain exceptions; the server interceptor (``flywheel_common.server``)
turns them into canonical gRPC status codes with the message intact, so no servicer method ever
calls ``context.abort`` for an ordinary error and every RPC maps errors the same way.
"""

from __future__ import annotations

import grpc


class FlywheelError(Exception):
    """Base of every error a service reports to its caller.

    ``code`` is the gRPC status the caller receives; the message must say what is wrong in terms
    the caller can act on (the field, the id, the limit), never a bare "error".
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(FlywheelError):
    """A request field has a bad value. ``field`` names it in the message, e.g. ``limits.memory_bytes``."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(FlywheelError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FlywheelError):
    """A create collided with an existing resource that has different content."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(FlywheelError):
    """The request is valid but the system is not in a state to run it (e.g. QLoRA without a GPU)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(FlywheelError):
    """A queue or quota is full; the caller should retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(FlywheelError):
    """A dependency (NATS, the object store, another service) cannot be reached right now."""

    code = grpc.StatusCode.UNAVAILABLE


class Aborted(FlywheelError):
    """A concurrent change won; retrying the whole operation is safe."""

    code = grpc.StatusCode.ABORTED


class Unimplemented(FlywheelError):
    """The RPC exists in the contract but this version of the service does not serve it yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


# Exceptions from libraries and from other parts of flywheel_common that are not FlywheelErrors but
# still have an obvious status code. Checked in order; the first isinstance match wins.
_EXTRA_CODES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED),
    (TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (PermissionError, grpc.StatusCode.PERMISSION_DENIED),
]


def register_error(exc_type: type[BaseException], code: grpc.StatusCode) -> None:
    """Map another exception type to a status code (used by the object store and the event bus)."""
    _EXTRA_CODES.insert(0, (exc_type, code))


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    """The status code and message for a known error, or None for an unexpected one (INTERNAL)."""
    if isinstance(exc, FlywheelError):
        return exc.code, exc.message
    for exc_type, code in _EXTRA_CODES:
        if isinstance(exc, exc_type):
            return code, str(exc) or exc_type.__name__
    return None
