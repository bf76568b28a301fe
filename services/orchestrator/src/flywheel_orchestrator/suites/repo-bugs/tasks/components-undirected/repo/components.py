"""Connected components of an undirected graph given as an edge list."""


def build_adjacency(nodes, edges):
    adj = {n: [] for n in nodes}
    for a, b in edges:
        adj[a].append(b)
    return adj


def components(nodes, edges):
    """Groups of mutually reachable nodes, each sorted, ordered by their smallest node."""
    adj = build_adjacency(nodes, edges)
    seen = set()
    groups = []
    for start in sorted(nodes):
        if start in seen:
            continue
        stack, group = [start], []
        seen.add(start)
        while stack:
            node = stack.pop()
            group.append(node)
            for nxt in adj[node]:
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        groups.append(sorted(group))
    return groups
