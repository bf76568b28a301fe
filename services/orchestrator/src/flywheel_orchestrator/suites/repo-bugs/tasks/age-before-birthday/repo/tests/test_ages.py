from datetime import date

import pytest
from ages import age_on, is_adult


def test_on_birthday():
    assert age_on(date(2000, 6, 15), date(2024, 6, 15)) == 24


def test_future_birth_raises():
    with pytest.raises(ValueError):
        age_on(date(2030, 1, 1), date(2024, 1, 1))


def test_adult_on_eighteenth_birthday():
    assert is_adult(date(2006, 5, 1), date(2024, 5, 1))


def test_day_before_birthday():
    assert age_on(date(2000, 6, 15), date(2024, 6, 14)) == 23


def test_after_birthday():
    assert age_on(date(2000, 6, 15), date(2024, 12, 1)) == 24
