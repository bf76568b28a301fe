"""A rectangular board of cells for a paint-bucket style editor."""


def blank(rows, cols, fill=0):
    """A new rows x cols board where every cell holds `fill`."""
    return [[fill] * cols] * rows


def paint(board, r, c, value):
    board[r][c] = value
    return board


def flood(board, r, c, value):
    """Repaint the 4-connected region containing (r, c) with `value`."""
    old = board[r][c]
    if old == value:
        return board
    stack = [(r, c)]
    while stack:
        y, x = stack.pop()
        if 0 <= y < len(board) and 0 <= x < len(board[0]) and board[y][x] == old:
            board[y][x] = value
            stack.extend([(y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)])
    return board
