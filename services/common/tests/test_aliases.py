"""The alias table's storage format (``flywheel_common.aliases``) on the real filesystem store."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.orchestrator.v1 import alias_pb2 as apb
from flywheel_common import aliases as al
from flywheel_common.objectstore import ObjectExistsError
from flywheel_common.objectstore.fs import FilesystemObjectStore


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    s = FilesystemObjectStore(tmp_path / "objects")
    s.ensure_ready()
    return s


def rev(n: int, model: str, change: int = apb.ALIAS_CHANGE_SET) -> apb.AliasRevision:
    return apb.AliasRevision(revision=n, target=apb.AliasTarget(model=model), change=change)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "required"),
        ("Agent/x", "segments"),
        ("a//b", "segments"),
        ("a/b/c/d", "segments"),
        ("ft/coder", "gateway route"),
        ("openai/gpt", "gateway route"),
        ("x" * 129, "at most 128"),
        ("agent/x.json", "segments"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        al.validate_name(name)


def test_revisions_are_created_once_and_read_back_newest_first(store: FilesystemObjectStore) -> None:
    al.write_revision(store, "agent/a", rev(1, "base"))
    al.write_revision(store, "agent/a", rev(2, "ft/a-v1"))
    al.write_revision(store, "agent/a/b", rev(1, "base"))  # a longer name under the first one
    with pytest.raises(ObjectExistsError):
        al.write_revision(store, "agent/a", rev(2, "ft/a-v9"))  # the loser of a race
    assert [r.target.model for r in al.history(store, "agent/a")] == ["ft/a-v1", "base"]
    assert [r.revision for r in al.history(store, "agent/a/b")] == [1]
    assert al.newest_keys(store)["agent/a"][0] == 2
    assert al.parse_revision_key(al.revision_key("agent/a/b", 7)) == ("agent/a/b", 7)
    assert al.parse_revision_key("aliases/agent/a/notes.txt") is None


def test_the_cache_reads_only_what_changed(store: FilesystemObjectStore) -> None:
    cache = al.AliasCache()
    assert cache.refresh(store) is False and cache.current == {}
    al.write_revision(store, "x", rev(1, "base"))
    assert cache.refresh(store) is True and cache.current["x"].target.model == "base"
    assert cache.refresh(store) is False
    al.write_revision(store, "x", rev(2, "base", apb.ALIAS_CHANGE_DELETED))
    assert cache.refresh(store) is True
    assert "x" in cache.current and "x" not in cache.served()


def test_live_signals_sum_over_replicas(store: FilesystemObjectStore) -> None:
    a, b = al.ArmCounters(), al.ArmCounters()
    for ms in (3, 40, 40, 40):
        a.record(ms, error=False)
    a.record(0, error=True)
    b.record(150, error=False)
    b.feedback, b.feedback_success = 4, 1
    al.write_stats(store, "agent/a", 3, "gw-1", {"base": a})
    al.write_stats(store, "agent/a", 3, "gw-2", {"base": b, "ft/a-v2": b})
    al.write_stats(store, "agent/a", 4, "gw-1", {"base": a})  # another canary: not summed
    total = al.read_stats(store, "agent/a", 3)
    base = total["base"].to_proto("base")
    assert (base.requests, base.errors, base.feedback, base.feedback_success) == (6, 1, 4, 1)
    assert base.error_rate == pytest.approx(1 / 6) and base.success_rate == pytest.approx(0.25)
    assert 20 <= base.latency_p50_ms <= 50  # three of the five successes took 40 ms
    assert total["ft/a-v2"].requests == 1


def test_feedback_is_kept_by_completion_id(store: FilesystemObjectStore) -> None:
    al.write_feedback(store, "chatcmpl-1", {"success": False})
    al.write_feedback(store, "chatcmpl-1", {"success": True, "comment": "fixed"})
    assert al.read_feedback(store, "chatcmpl-1") == {"id": "chatcmpl-1", "success": True, "comment": "fixed"}
    assert al.read_feedback(store, "chatcmpl-2") is None
    with pytest.raises(ValueError, match="completion id"):
        al.feedback_key("../../etc/passwd")
