"""Helpers for weekly recurring events."""

from datetime import timedelta

NAMES = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def next_weekday(d, name):
    """The first date strictly after `d` that falls on weekday `name` (e.g. "fri")."""
    target = NAMES.index(name)
    ahead = (target - d.weekday()) % 7
    return d + timedelta(days=ahead)


def occurrences(start, name, count):
    """`count` successive dates on weekday `name`, all after `start`."""
    out = []
    d = start
    for _ in range(count):
        d = next_weekday(d, name)
        out.append(d)
    return out
