"""Axis-aligned rectangles as (left, bottom, right, top) tuples."""


def area(r):
    left, bottom, right, top = r
    return max(0, right - left) * max(0, top - bottom)


def intersection_area(a, b):
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(0, width) * max(0, height)


def union_area(a, b):
    return area(a) + area(b) - intersection_area(a, b)


def iou(a, b):
    """Intersection over union; 0.0 for rectangles that do not overlap."""
    u = union_area(a, b)
    return intersection_area(a, b) / u if u else 0.0
