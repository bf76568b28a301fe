from routes import cheapest, two_way


def test_start_is_goal():
    assert cheapest({"a": {"b": 1}}, "a", "a") == 0


def test_unreachable():
    assert cheapest({"a": {"b": 1}, "c": {}}, "a", "c") is None


def test_two_way_map():
    assert two_way([("x", "y", 4)]) == {"x": {"y": 4}, "y": {"x": 4}}


def test_direct_road():
    assert cheapest({"a": {"b": 3}}, "a", "b") == 3


def test_prefers_cheaper_detour():
    roads = two_way([("a", "b", 10), ("a", "c", 2), ("c", "b", 3), ("b", "d", 1)])
    assert cheapest(roads, "a", "d") == 6
