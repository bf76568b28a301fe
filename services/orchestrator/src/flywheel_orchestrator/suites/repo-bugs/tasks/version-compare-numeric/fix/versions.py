"""Compare dotted version strings such as "1.10.2" or "v2.0"."""


def parse_version(text):
    parts = text.strip().lstrip("v").split(".")
    if not all(p.isdigit() for p in parts):
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in parts)


def is_newer(candidate, current):
    return parse_version(candidate) > parse_version(current)


def latest(versions):
    """The highest version in `versions`."""
    if not versions:
        raise ValueError("no versions")
    return max(versions, key=parse_version)
