"""Leaderboard with the highest score on top (heapq is a min-heap: scores are negated)."""

import heapq


class Leaderboard:
    def __init__(self):
        self._heap = []

    def add(self, player, score):
        heapq.heappush(self._heap, (-score, player))

    def best(self):
        """(player, score) of the current leader, without removing it; None when empty."""
        if not self._heap:
            return None
        score, player = self._heap[0]
        return player, score

    def pop_best(self):
        score, player = heapq.heappop(self._heap)
        return player, -score

    def top(self, n):
        return [(player, -score) for score, player in heapq.nsmallest(n, self._heap)]
