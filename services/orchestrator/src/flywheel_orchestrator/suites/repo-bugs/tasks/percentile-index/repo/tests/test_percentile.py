import pytest
from percentile import percentile, summary


def test_minimum():
    assert percentile([7, 3, 5], 0) == 3


def test_out_of_range():
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def test_single_value_median():
    assert percentile([42], 50) == 42


def test_interpolated_median():
    assert percentile([40, 10, 30, 20], 50) == 25


def test_summary():
    assert summary([1, 2, 3, 4, 5]) == {"min": 1, "median": 3, "max": 5}
