import pytest
from taskqueue import JobQueue


def test_urgent_first():
    q = JobQueue()
    q.push("report", priority=5)
    q.push("outage", priority=1)
    assert q.pop() == "outage"
    assert len(q) == 1


def test_empty_pop():
    with pytest.raises(IndexError):
        JobQueue().pop()


def test_equal_priority_fifo():
    q = JobQueue()
    for job in ("write", "backup", "alpha"):
        q.push(job)
    assert [q.pop(), q.pop(), q.pop()] == ["write", "backup", "alpha"]


def test_unorderable_jobs():
    q = JobQueue()
    q.push({"id": 1}, priority=2)
    q.push({"id": 2}, priority=2)
    assert q.pop() == {"id": 1}
