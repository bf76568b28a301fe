"""Error helpers: quoted values and whole messages are bounded; enum numbers are checked."""

from __future__ import annotations

import grpc
import pytest

from flywheel.trajectory.v1 import trajectory_pb2 as pb
from flywheel_common import errors
from flywheel_common.errors import InvalidArgument, NotFound, check_enum, shown, status_for


def test_shown_keeps_short_values_and_cuts_long_ones_with_their_length() -> None:
    assert shown("run-1") == "'run-1'"
    assert shown(42) == "42"
    huge = "x" * 1_000_000
    quoted = shown(huge)
    assert quoted.startswith("'xxx") and quoted.endswith("… (1,000,000 characters in all)")
    assert len(quoted) < errors.MAX_SHOWN_CHARS + 50
    assert shown(b"\0" * 5000).endswith("… (5,000 bytes in all)")


def test_every_message_leaving_status_for_is_bounded() -> None:
    huge = "y" * 1_000_000
    for exc in (NotFound(f"no object {huge}"), InvalidArgument(huge, "is bad"), PermissionError(huge)):
        code, message = status_for(exc) or (None, "")
        assert code is not None and len(message) < errors.MAX_MESSAGE_CHARS + 50
        assert "characters in all)" in message
    assert status_for(NotFound("trajectory 't' not found")) == (
        grpc.StatusCode.NOT_FOUND,
        "trajectory 't' not found",
    )


def test_check_enum_names_the_field_and_the_accepted_values() -> None:
    assert (
        check_enum("view", 0, pb.TrajectoryView, default=pb.TRAJECTORY_VIEW_FULL) == pb.TRAJECTORY_VIEW_FULL
    )
    assert check_enum("view", pb.TRAJECTORY_VIEW_BASIC, pb.TrajectoryView) == pb.TRAJECTORY_VIEW_BASIC
    with pytest.raises(InvalidArgument) as err:
        check_enum("view", 7, pb.TrajectoryView, default=pb.TRAJECTORY_VIEW_BASIC)
    assert err.value.message == (
        "view: 7 is not one of TRAJECTORY_VIEW_BASIC, TRAJECTORY_VIEW_FULL (or unset for TRAJECTORY_VIEW_BASIC)"
    )
    with pytest.raises(InvalidArgument, match=r"format: 0 is not one of TRAJECTORY_VIEW_FULL$"):
        check_enum("format", 0, pb.TrajectoryView, allowed=[pb.TRAJECTORY_VIEW_FULL])
