from intervals import booked_minutes, free_gaps, merge


def test_overlapping():
    assert merge([(10, 30), (20, 40), (50, 60)]) == [(10, 40), (50, 60)]
    assert booked_minutes([(10, 30), (20, 40)]) == 30


def test_unsorted_and_contained():
    assert merge([(50, 90), (0, 10), (60, 70)]) == [(0, 10), (50, 90)]


def test_free_gaps():
    assert free_gaps([(60, 120), (120, 180), (300, 360)], 0, 480) == [(0, 60), (180, 300), (360, 480)]


def test_touching_slots_joined():
    assert merge([(120, 180), (60, 120)]) == [(60, 180)]
