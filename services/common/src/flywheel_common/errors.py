"""Domain errors and their gRPC status codes.

Service code raises these plain exceptions; the server interceptor (``flywheel_common.server``)
turns them into canonical gRPC status codes with the message intact, so no servicer method ever
calls ``context.abort`` for an ordinary error and every RPC maps errors the same way.

Messages quote request values, and a request field may hold megabytes: :func:`shown` quotes one
value cut to :data:`MAX_SHOWN_CHARS`, and every message that leaves through :func:`status_for`
(the caller's status details and the service's log line) is cut to :data:`MAX_MESSAGE_CHARS`, with
a note of the full length either way. gRPC carries the details in a trailer, and a trailer over a
few KiB makes the client drop the whole answer, so the cap also keeps errors readable at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

#: Characters of one quoted request value kept in an error message.
MAX_SHOWN_CHARS = 200
#: Characters of a whole error message kept (status details and log lines).
MAX_MESSAGE_CHARS = 2000


def shortened(text: str, limit: int) -> str:
    """``text`` whole if it has at most ``limit`` characters, else its start and the full length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters in all)"


def shown(value: Any, limit: int = MAX_SHOWN_CHARS) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters with a note of the length.

    Use it for every request value quoted in a message: ``f"{shown(request.name)} is not a name"``.
    The note counts the value's own length (characters of a string, bytes of bytes), so a caller
    can tell a 1 MB field from a 300-character one.
    """
    if isinstance(value, str | bytes) and len(value) > limit:
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:limit]!r}… ({len(value):,} {unit} in all)"
    return shortened(repr(value), limit)


def bounded_message(message: str) -> str:
    """A whole message cut to :data:`MAX_MESSAGE_CHARS` (the last guard; :func:`shown` is the first)."""
    return shortened(message, MAX_MESSAGE_CHARS)


class FlywheelError(Exception):
    """Base of every error a service reports to its caller.

    ``code`` is the gRPC status the caller receives; the message must say what is wrong in terms
    the caller can act on (the field, the id, the limit), never a bare "error".
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        message = bounded_message(message)
        super().__init__(message)
        self.message = message


class InvalidArgument(FlywheelError):
    """A request field has a bad value. ``field`` names it in the message, e.g. ``limits.memory_bytes``."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        field = shortened(field, MAX_SHOWN_CHARS)
        super().__init__(f"{field}: {problem}")
        self.field = field


def check_timestamp(field: str, stamp: Any) -> None:
    """:class:`InvalidArgument` unless a ``google.protobuf.Timestamp`` is in its valid range
    (years 1-9999, nanos in [0, 1e9)); protobuf's conversions raise ValueError on any other."""
    try:
        stamp.ToNanoseconds()
    except ValueError as err:
        raise InvalidArgument(field, f"is not a valid timestamp: {err}") from None


def check_enum(
    field: str, value: int, enum: Any, *, allowed: Iterable[int] | None = None, default: int | None = None
) -> int:
    """``value`` if it is one of ``enum``'s numbers (a generated ``EnumTypeWrapper``), else
    :class:`InvalidArgument` naming the field and the accepted names.

    Protobuf keeps an enum number it does not know (proto3 enums are open), so every enum a
    request carries must be checked before use. ``allowed`` narrows the accepted numbers;
    ``default`` replaces 0 (UNSPECIFIED) when given.
    """
    numbers = list(allowed) if allowed is not None else list(enum.values())
    if value == 0 and default is not None:
        return default
    if value not in numbers:
        names = ", ".join(enum.Name(n) for n in numbers if n != 0 or default is None)
        if default is not None:
            names += f" (or unset for {enum.Name(default)})"
        raise InvalidArgument(field, f"{value} is not one of {names}")
    return value


class NotFound(FlywheelError):
    """The named resource does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(FlywheelError):
    """A create collided with an existing resource that has different content."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(FlywheelError):
    """The caller is authenticated but this deployment does not let the request reach what it names."""

    code = grpc.StatusCode.PERMISSION_DENIED


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
        return exc.code, bounded_message(exc.message)
    for exc_type, code in _EXTRA_CODES:
        if isinstance(exc, exc_type):
            return code, bounded_message(str(exc) or exc_type.__name__)
    return None
