import pytest
from durations import format_duration, parse_duration


def test_single_digits():
    assert parse_duration("2d 4h") == 2 * 86400 + 4 * 3600
    assert parse_duration("1H5M") == 3900


def test_empty_raises():
    with pytest.raises(ValueError):
        parse_duration("  ")


def test_format():
    assert format_duration(3900) == "1h5m"
    assert format_duration(0) == "0s"


def test_multi_digit_numbers():
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400


def test_round_trip():
    assert parse_duration(format_duration(200000)) == 200000
