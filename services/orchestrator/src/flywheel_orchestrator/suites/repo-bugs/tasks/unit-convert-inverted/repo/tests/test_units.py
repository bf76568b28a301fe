import pytest
from units import convert, parse_length


def test_same_unit():
    assert convert(7.5, "cm", "cm") == 7.5


def test_unknown_unit():
    with pytest.raises(ValueError, match="furlong"):
        convert(1, "m", "furlong")


def test_parse_length():
    assert parse_length("3.5 km") == (3.5, "km")


def test_km_to_m():
    assert convert(2, "km", "m") == pytest.approx(2000)


def test_feet_to_inches():
    assert convert(1, "ft", "in") == pytest.approx(12)
    assert convert(*parse_length("1 mi"), "km") == pytest.approx(1.609344)
