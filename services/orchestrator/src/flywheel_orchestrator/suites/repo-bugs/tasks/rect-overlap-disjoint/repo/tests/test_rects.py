from rects import area, intersection_area, iou


def test_area():
    assert area((0, 0, 4, 3)) == 12


def test_overlapping():
    assert intersection_area((0, 0, 4, 4), (2, 1, 6, 3)) == 4


def test_identical_iou():
    assert iou((1, 1, 3, 3), (1, 1, 3, 3)) == 1.0


def test_far_apart():
    assert intersection_area((0, 0, 1, 1), (5, 5, 6, 6)) == 0
    assert iou((0, 0, 1, 1), (5, 5, 6, 6)) == 0.0


def test_side_by_side():
    assert intersection_area((0, 0, 2, 2), (3, 0, 5, 2)) == 0
