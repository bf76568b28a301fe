"""Cheapest travel cost between towns on a weighted road map."""

import heapq


def cheapest(roads, start, goal):
    """`roads` maps town -> {neighbour: cost}. Returns None when goal is unreachable."""
    best = {start: 0}
    heap = [(0, start)]
    while heap:
        cost, town = heapq.heappop(heap)
        if town == goal:
            return cost
        if cost > best[town]:
            continue
        for nxt, step in roads.get(town, {}).items():
            new_cost = cost + step
            if new_cost < best.get(nxt, float("inf")):
                best[nxt] = new_cost
                heapq.heappush(heap, (new_cost, nxt))
    return None


def two_way(edges):
    """Road map from (a, b, cost) triples where every road can be driven both ways."""
    roads = {}
    for a, b, cost in edges:
        roads.setdefault(a, {})[b] = cost
        roads.setdefault(b, {})[a] = cost
    return roads
