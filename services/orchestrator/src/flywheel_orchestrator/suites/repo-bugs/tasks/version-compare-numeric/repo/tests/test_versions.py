import pytest
from versions import is_newer, latest, parse_version


def test_patch_newer():
    assert is_newer("1.2.3", "1.2.0")
    assert not is_newer("1.2.0", "1.2.0")


def test_prefix_v():
    assert is_newer("v2.0", "1.9")


def test_invalid():
    with pytest.raises(ValueError):
        parse_version("1.x")


def test_two_digit_minor():
    assert is_newer("1.10", "1.9")


def test_latest_numeric():
    assert latest(["1.9.0", "1.10.0", "1.2.12"]) == "1.10.0"
