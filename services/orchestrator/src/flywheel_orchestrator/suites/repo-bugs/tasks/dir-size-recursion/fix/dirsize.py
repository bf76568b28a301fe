"""Disk usage of an in-memory directory tree.

A file is {"name": str, "size": int}; a directory is {"name": str, "children": [...]}.
"""


def total_size(node):
    """Size of a file, or of everything below a directory."""
    if "children" not in node:
        return node["size"]
    total = 0
    for child in node["children"]:
        if "children" in child:
            total += total_size(child)
        else:
            total += child["size"]
    return total


def all_dirs(node, parent=""):
    """(path, size) for `node` and every directory below it."""
    path = f"{parent}/{node['name']}" if parent else node["name"]
    found = [(path, total_size(node))]
    for child in node["children"]:
        if "children" in child:
            found.extend(all_dirs(child, path))
    return found


def largest_dirs(node, n):
    """The `n` largest directories as (path, size), largest first, ties by path."""
    return sorted(all_dirs(node), key=lambda item: (-item[1], item[0]))[:n]
