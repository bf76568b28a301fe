"""Memoise pure functions by their arguments."""

import functools


def memoize(func):
    """Cache `func`'s results per distinct call (positional and keyword arguments)."""
    cache = {}

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        key = args
        if key not in cache:
            cache[key] = func(*args, **kwargs)
        return cache[key]

    wrapper.cache = cache
    return wrapper
