"""Parse application log lines: "<date> <time> <LEVEL> <message>"."""

from collections import Counter


def parse_line(line):
    parts = line.split()
    if len(parts) < 4:
        raise ValueError(f"malformed log line: {line!r}")
    return {"date": parts[0], "time": parts[1], "level": parts[2].upper(), "message": parts[3]}


def count_levels(lines):
    return Counter(parse_line(line)["level"] for line in lines if line.strip())


def error_messages(lines):
    records = (parse_line(line) for line in lines if line.strip())
    return [r["message"] for r in records if r["level"] == "ERROR"]
