import pytest
from stats import mean, median, value_range


def test_odd_median():
    assert median([9, 1, 5]) == 5


def test_mean_and_range():
    assert mean([2, 4, 9]) == 5
    assert value_range([3, -2, 7]) == 9


def test_empty_raises():
    with pytest.raises(ValueError):
        median([])


def test_even_median():
    assert median([4, 1, 3, 2]) == 2.5


def test_two_values():
    assert median([5, 7]) == 6
