"""Group readings into fixed-width bins, e.g. width 10: ..., [-10, 0), [0, 10), ..."""

from collections import Counter


def bin_start(value, width):
    """Lower edge of the bin holding `value`."""
    return int(value / width) * width


def histogram(values, width):
    """Map each bin's lower edge to how many values fall in it, sorted by edge."""
    if width <= 0:
        raise ValueError("width must be positive")
    counts = Counter(bin_start(v, width) for v in values)
    return dict(sorted(counts.items()))


def render(hist, width):
    return "\n".join(f"{edge:>4}..{edge + width:<4} {'#' * n}" for edge, n in hist.items())
