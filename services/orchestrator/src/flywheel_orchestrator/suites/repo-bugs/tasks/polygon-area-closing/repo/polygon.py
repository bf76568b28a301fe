"""Area and perimeter of simple polygons given as lists of (x, y) vertices."""

import math


def area(points):
    """Unsigned area by the shoelace formula."""
    n = len(points)
    if n < 3:
        return 0.0
    twice = 0.0
    for i in range(n - 1):
        x1, y1 = points[i]
        x2, y2 = points[(i + 1) % n]
        twice += x1 * y2 - x2 * y1
    return abs(twice) / 2


def perimeter(points):
    n = len(points)
    if n < 2:
        return 0.0
    return sum(math.dist(points[i], points[(i + 1) % n]) for i in range(n))
