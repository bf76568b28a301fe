"""Read build steps from text: one "step: dep, dep" line per step, # comments."""

from toposort import build_order


def parse(text):
    steps, deps = [], []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, needs = line.partition(":")
        name = name.strip()
        steps.append(name)
        for dep in needs.split(","):
            if dep.strip():
                deps.append((dep.strip(), name))
    return steps, deps


def plan(text):
    steps, deps = parse(text)
    return build_order(steps, deps)
