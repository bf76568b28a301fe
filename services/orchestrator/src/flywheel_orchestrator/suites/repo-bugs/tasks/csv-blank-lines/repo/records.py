"""Read simple comma-separated records with a header row into dicts."""


def parse_records(text):
    lines = text.splitlines()
    if not lines:
        return []
    header = [h.strip() for h in lines[0].split(",")]
    records = []
    for number, line in enumerate(lines[1:], start=2):
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(header):
            raise ValueError(f"line {number}: expected {len(header)} fields, got {len(values)}")
        records.append(dict(zip(header, values, strict=True)))
    return records


def column(records, name):
    return [r[name] for r in records]
