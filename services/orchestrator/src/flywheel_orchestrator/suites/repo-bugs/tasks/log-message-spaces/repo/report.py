"""Plain-text daily summary built on logparse."""

from collections import Counter

from logparse import count_levels, error_messages, parse_line


def busiest_hour(lines):
    """The hour ("HH") with the most log lines, earliest on ties; None without lines."""
    hours = Counter(parse_line(line)["time"][:2] for line in lines if line.strip())
    return min(hours, key=lambda h: (-hours[h], h)) if hours else None


def summary(lines):
    """Counts per level, then the error messages, one per line."""
    counts = count_levels(lines)
    out = [f"{level}: {counts[level]}" for level in sorted(counts)]
    errors = error_messages(lines)
    if errors:
        out.append("errors:")
        out.extend(f"  - {msg}" for msg in errors)
    return "\n".join(out)
