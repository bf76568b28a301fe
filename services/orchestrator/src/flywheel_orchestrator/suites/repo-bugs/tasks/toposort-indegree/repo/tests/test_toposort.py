import pytest
from buildfile import parse, plan
from toposort import CycleError, build_order


def test_no_dependencies_sorted():
    assert build_order(["c", "a", "b"], []) == ["a", "b", "c"]


def test_cycle_raises():
    with pytest.raises(CycleError):
        build_order(["a", "b"], [("a", "b"), ("b", "a")])


def test_parse_buildfile():
    assert parse("link: compile\n# note\ncompile:\n") == (["link", "compile"], [("compile", "link")])


def test_chain():
    assert build_order(["a", "b", "c"], [("b", "c"), ("a", "b")]) == ["a", "b", "c"]


def test_plan_from_text():
    text = "test: build\nbuild: fetch, configure\nconfigure: fetch\nfetch:\n"
    assert plan(text) == ["fetch", "configure", "build", "test"]
