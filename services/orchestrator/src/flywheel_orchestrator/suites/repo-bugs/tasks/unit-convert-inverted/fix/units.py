"""Length conversion through metres."""

TO_METRES = {
    "mm": 0.001,
    "cm": 0.01,
    "m": 1.0,
    "km": 1000.0,
    "in": 0.0254,
    "ft": 0.3048,
    "mi": 1609.344,
}


def convert(value, src, dst):
    """Convert `value` from unit `src` to unit `dst`."""
    for unit in (src, dst):
        if unit not in TO_METRES:
            raise ValueError(f"unknown unit {unit!r}")
    return value * TO_METRES[src] / TO_METRES[dst]


def parse_length(text):
    """Split "3.5 km" into (3.5, "km")."""
    number, unit = text.split()
    return float(number), unit
