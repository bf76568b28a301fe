from grid import blank, flood, paint


def test_blank_shape():
    assert blank(2, 3, fill=1) == [[1, 1, 1], [1, 1, 1]]


def test_flood_hand_written_board():
    board = [[0, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert flood(board, 0, 0, 5) == [[5, 1, 5], [5, 1, 5], [5, 5, 5]]


def test_paint_single_cell():
    board = paint(blank(3, 3), 0, 1, 7)
    assert board == [[0, 7, 0], [0, 0, 0], [0, 0, 0]]


def test_flood_on_blank_board():
    board = blank(2, 3)
    paint(board, 0, 2, 1)
    flood(board, 1, 0, 4)
    assert board == [[4, 4, 1], [4, 4, 4]]
