"""Month arithmetic on datetime.date values."""

import calendar
from datetime import date


def add_months(d, months):
    """Shift `d` by whole months (may be negative), clamping the day to the month's length."""
    month = (d.month - 1 + months) % 12 + 1
    year = d.year + (d.month - 1 + months) // 12
    last_day = calendar.monthrange(year, month)[1]
    return date(year, month, min(d.day, last_day))


def month_end(d):
    """The last day of the month of `d`."""
    return date(d.year, d.month, calendar.monthrange(d.year, d.month)[1])


def months_between(a, b):
    """Whole calendar months from the month of `a` to the month of `b`."""
    return (b.year - a.year) * 12 + (b.month - a.month)
