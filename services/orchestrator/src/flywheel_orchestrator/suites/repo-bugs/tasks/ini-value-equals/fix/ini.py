"""Parse a small INI-like config: [sections], key = value lines, ; or # comments."""


def parse_ini(text):
    data = {}
    section = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
            data.setdefault(section, {})
            continue
        if section is None:
            raise ValueError(f"line {number}: key outside any section")
        if "=" not in line:
            raise ValueError(f"line {number}: expected key = value")
        key, value = line.split("=", 1)
        data[section][key.strip()] = value.strip()
    return data


def get(data, section, key, default=None):
    return data.get(section, {}).get(key, default)
