import pytest
from histogram import bin_start, histogram, render


def test_positive_values():
    assert histogram([1, 9, 10, 25, 3], 10) == {0: 3, 10: 1, 20: 1}


def test_bad_width():
    with pytest.raises(ValueError):
        histogram([1], 0)


def test_render():
    assert render({0: 2, 10: 1}, 10) == "   0..10   ##\n  10..20   #"


def test_negative_values():
    assert histogram([-3, -12, 4, -10], 10) == {-20: 1, -10: 2, 0: 1}


def test_small_negative_edge():
    assert bin_start(-0.5, 5) == -5
