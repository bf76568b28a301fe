"""Merge booked time slots given as (start, end) pairs in minutes."""


def merge(slots):
    """Union of the slots as sorted, non-overlapping pairs; touching slots are joined."""
    merged = []
    for start, end in sorted(slots):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def free_gaps(slots, day_start, day_end):
    """Free periods between the merged slots within [day_start, day_end]."""
    gaps, cursor = [], day_start
    for start, end in merge(slots):
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < day_end:
        gaps.append((cursor, day_end))
    return gaps


def booked_minutes(slots):
    return sum(end - start for start, end in merge(slots))
