"""Priority queue of jobs: lower number = more urgent; equal priorities are FIFO."""

import heapq
import itertools


class JobQueue:
    def __init__(self):
        self._heap = []
        self._counter = itertools.count()

    def push(self, job, priority=5):
        seq = next(itertools.count())
        heapq.heappush(self._heap, (priority, seq, job))

    def pop(self):
        """The most urgent job, removing it from the queue."""
        if not self._heap:
            raise IndexError("pop from empty queue")
        return heapq.heappop(self._heap)[2]

    def __len__(self):
        return len(self._heap)
