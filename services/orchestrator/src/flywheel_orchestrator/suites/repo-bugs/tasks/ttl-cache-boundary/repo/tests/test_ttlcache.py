from ttlcache import TTLCache


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_fresh_entry():
    clock = FakeClock()
    cache = TTLCache(10, clock)
    cache.set("k", "v")
    clock.now += 9
    assert cache.get("k") == "v"


def test_long_expired():
    clock = FakeClock()
    cache = TTLCache(10, clock)
    cache.set("k", "v")
    clock.now += 30
    assert cache.get("k", "gone") == "gone"
    assert len(cache) == 0


def test_expires_exactly_at_ttl():
    clock = FakeClock()
    cache = TTLCache(10, clock)
    cache.set("k", "v")
    clock.now += 10
    assert len(cache) == 0
    assert cache.get("k") is None
