from datetime import date

from calendar_math import add_months, month_end, months_between


def test_clamps_to_short_month():
    assert add_months(date(2024, 1, 31), 1) == date(2024, 2, 29)


def test_crosses_year_forward():
    assert add_months(date(2023, 10, 3), 5) == date(2024, 3, 3)


def test_lands_in_december():
    assert add_months(date(2023, 11, 15), 1) == date(2023, 12, 15)
    assert add_months(date(2024, 3, 31), -3) == date(2023, 12, 31)


def test_month_end_and_between():
    assert month_end(date(2023, 2, 10)) == date(2023, 2, 28)
    assert months_between(date(2023, 11, 1), date(2024, 2, 1)) == 3
