from datetime import date

import pytest
from weekdays import next_weekday, occurrences


def test_later_in_same_week():
    assert next_weekday(date(2024, 3, 4), "fri") == date(2024, 3, 8)


def test_wraps_to_next_week():
    assert next_weekday(date(2024, 3, 10), "mon") == date(2024, 3, 11)


def test_unknown_name_raises():
    with pytest.raises(ValueError):
        next_weekday(date(2024, 3, 4), "funday")


def test_same_weekday_goes_to_next_week():
    assert next_weekday(date(2024, 3, 4), "mon") == date(2024, 3, 11)


def test_occurrences_are_weekly():
    got = occurrences(date(2024, 3, 1), "fri", 3)
    assert got == [date(2024, 3, 8), date(2024, 3, 15), date(2024, 3, 22)]
