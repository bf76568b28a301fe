"""Sliding-window limiter: at most `limit` requests in any `window` seconds.

A request made at time t counts for the half-open interval [t, t + window).
"""

from collections import deque


class SlidingWindow:
    def __init__(self, limit, window):
        self.limit = limit
        self.window = window
        self._times = deque()

    def allow(self, now):
        """Record a request at time `now` (never decreasing) if the limit allows it."""
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()
        if len(self._times) < self.limit:
            self._times.append(now)
            return True
        return False

    def in_window(self, now):
        return sum(1 for t in self._times if t > now - self.window)
