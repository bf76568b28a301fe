from bucket import TokenBucket


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_burst_up_to_capacity():
    bucket = TokenBucket(rate=1, capacity=3, clock=FakeClock())
    assert [bucket.allow() for _ in range(4)] == [True, True, True, False]


def test_refills_over_time():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, capacity=4, clock=clock)
    assert bucket.allow(cost=4)
    clock.now = 1.0
    assert bucket.available() == 2
    assert not bucket.allow(cost=3)


def test_idle_bucket_is_capped():
    clock = FakeClock()
    bucket = TokenBucket(rate=1, capacity=3, clock=clock)
    clock.now = 60.0
    assert bucket.available() == 3
    assert sum(bucket.allow() for _ in range(10)) == 3
