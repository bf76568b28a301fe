from window import SlidingWindow


def test_limit_enforced():
    w = SlidingWindow(limit=2, window=10)
    assert [w.allow(0), w.allow(1), w.allow(5)] == [True, True, False]


def test_allowed_after_long_gap():
    w = SlidingWindow(limit=1, window=10)
    assert w.allow(0)
    assert w.allow(25)


def test_in_window_count():
    w = SlidingWindow(limit=5, window=10)
    for t in (0, 3, 9):
        w.allow(t)
    assert w.in_window(13) == 1


def test_boundary_request_allowed():
    w = SlidingWindow(limit=2, window=10)
    assert w.allow(0) and w.allow(1)
    assert w.allow(10)
    assert not w.allow(10.5)
