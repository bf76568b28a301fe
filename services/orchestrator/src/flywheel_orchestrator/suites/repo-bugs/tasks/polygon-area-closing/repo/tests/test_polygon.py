from polygon import area, perimeter


def test_square_at_origin():
    assert area([(0, 0), (2, 0), (2, 2), (0, 2)]) == 4.0


def test_degenerate():
    assert area([(0, 0), (5, 5)]) == 0.0


def test_perimeter():
    assert perimeter([(0, 0), (3, 0), (3, 4)]) == 12.0


def test_offset_square():
    assert area([(1, 1), (3, 1), (3, 3), (1, 3)]) == 4.0


def test_triangle_clockwise():
    assert area([(2, 1), (2, 5), (5, 1)]) == 6.0
