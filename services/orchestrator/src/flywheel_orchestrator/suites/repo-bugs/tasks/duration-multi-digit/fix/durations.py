"""Compact durations such as "1h30m" or "2d 4h", in seconds."""

import re

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
PART = re.compile(r"(\d+)\s*([dhms])")


def parse_duration(text):
    text = text.strip().lower()
    if not text:
        raise ValueError("empty duration")
    parts = PART.findall(text)
    if not parts:
        raise ValueError(f"no duration in {text!r}")
    return sum(int(n) * UNITS[unit] for n, unit in parts)


def format_duration(seconds):
    out = []
    for unit, size in UNITS.items():
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"
