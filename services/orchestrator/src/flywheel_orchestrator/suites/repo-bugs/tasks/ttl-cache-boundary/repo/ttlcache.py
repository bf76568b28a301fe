"""Entries that expire a fixed number of seconds after they are stored."""

import time


class TTLCache:
    def __init__(self, ttl, clock=time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._items = {}

    def set(self, key, value):
        self._items[key] = (value, self._clock())

    def get(self, key, default=None):
        entry = self._items.get(key)
        if entry is None:
            return default
        value, stored = entry
        if self._clock() - stored > self.ttl:
            del self._items[key]
            return default
        return value

    def __len__(self):
        now = self._clock()
        return sum(1 for _, stored in self._items.values() if now - stored < self.ttl)
