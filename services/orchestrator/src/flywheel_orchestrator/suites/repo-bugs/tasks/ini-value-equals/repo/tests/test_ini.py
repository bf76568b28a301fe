import pytest
from ini import get, parse_ini


def test_sections_and_comments():
    text = "; top\n[db]\nhost = localhost\n# port\nport=5432\n[app]\ndebug = no\n"
    assert parse_ini(text) == {"db": {"host": "localhost", "port": "5432"}, "app": {"debug": "no"}}


def test_key_outside_section():
    with pytest.raises(ValueError, match="line 1"):
        parse_ini("name = x\n")


def test_get_default():
    assert get(parse_ini("[a]\nb = 1\n"), "a", "c", "dflt") == "dflt"


def test_value_with_equals():
    data = parse_ini("[web]\nurl = http://host/?a=1&b=2\nexpr = x==y\n")
    assert get(data, "web", "url") == "http://host/?a=1&b=2"
    assert get(data, "web", "expr") == "x==y"
