"""Small dense matrices as lists of rows."""


def shape(m):
    return (len(m), len(m[0]) if m else 0)


def transpose(m):
    rows, cols = shape(m)
    return [[m[r][c] for r in range(rows)] for c in range(cols)]


def matmul(a, b):
    """Product of an (n x k) and a (k x p) matrix."""
    n, k = shape(a)
    if len(b) != k:
        raise ValueError(f"cannot multiply {shape(a)} by {shape(b)}")
    p = shape(b)[1]
    out = [[0] * p for _ in range(n)]
    for i in range(n):
        for j in range(p):
            out[i][j] = sum(a[i][t] * b[t][j] for t in range(k))
    return out


def identity(n):
    return [[1 if i == j else 0 for j in range(n)] for i in range(n)]
