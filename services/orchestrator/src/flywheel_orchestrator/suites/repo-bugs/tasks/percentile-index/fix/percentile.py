"""Percentiles with linear interpolation between closest ranks."""


def percentile(xs, p):
    """The p-th percentile (0 <= p <= 100); p=0 is the minimum and p=100 the maximum."""
    if not xs:
        raise ValueError("no data")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile out of range: {p}")
    s = sorted(xs)
    pos = p / 100 * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs):
    return {"min": percentile(xs, 0), "median": percentile(xs, 50), "max": percentile(xs, 100)}
