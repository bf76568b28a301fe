import pytest
from pages import parse_pages


def test_single_pages():
    assert parse_pages("7, 2,,7", 10) == [2, 7]


def test_backwards_range():
    with pytest.raises(ValueError, match="backwards"):
        parse_pages("5-3", 10)


def test_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        parse_pages("1, 12", 10)


def test_range_includes_last_page():
    assert parse_pages("1-3", 10) == [1, 2, 3]


def test_mixed_selection():
    assert parse_pages("5-5, 9-10, 1", 10) == [1, 5, 9, 10]
