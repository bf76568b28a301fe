"""Flatten nested lists and tuples; strings and other values count as single items."""


def flatten(items):
    out = []
    for item in items:
        if isinstance(item, list):
            out.extend(flatten(item))
        else:
            out.append(item)
    return out


def depth(items):
    """Nesting depth of lists and tuples: a flat sequence has depth 1, a scalar 0."""
    if not isinstance(items, (list, tuple)):
        return 0
    return 1 + max((depth(i) for i in items), default=0)
