import pytest
from roundrobin import assign, busiest, load


def test_fewer_jobs_than_workers():
    assert assign(["j1", "j2"], ["w1", "w2", "w3"]) == {"w1": ["j1"], "w2": ["j2"], "w3": []}


def test_no_workers_raises():
    with pytest.raises(ValueError):
        assign(["j1"], [])


def test_no_jobs():
    assert load(assign([], ["a", "b"])) == {"a": 0, "b": 0}


def test_wraps_around_workers():
    plan = assign(["j1", "j2", "j3", "j4", "j5"], ["a", "b"])
    assert plan == {"a": ["j1", "j3", "j5"], "b": ["j2", "j4"]}
    assert busiest(plan) == "a"
