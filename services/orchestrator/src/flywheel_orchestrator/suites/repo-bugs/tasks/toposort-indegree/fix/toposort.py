"""Order build steps so every step runs after the steps it depends on."""

from collections import deque


class CycleError(Exception):
    pass


def build_order(steps, deps):
    """`deps` holds (before, after) pairs; ready steps are taken alphabetically."""
    indegree = {s: 0 for s in steps}
    after = {s: [] for s in steps}
    for before, later in deps:
        after[before].append(later)
        indegree[later] += 1
    ready = deque(sorted(s for s in steps if indegree[s] == 0))
    order = []
    while ready:
        step = ready.popleft()
        order.append(step)
        for nxt in sorted(after[step]):
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(steps):
        raise CycleError("dependency cycle")
    return order
