import pytest
from records import column, parse_records


def test_basic_records():
    recs = parse_records("name, qty\nbolt, 3\nnut, 5")
    assert recs == [{"name": "bolt", "qty": "3"}, {"name": "nut", "qty": "5"}]
    assert column(recs, "qty") == ["3", "5"]


def test_wrong_field_count():
    with pytest.raises(ValueError, match="line 3"):
        parse_records("a,b\n1,2\n1,2,3\n")


def test_empty_text():
    assert parse_records("") == []


def test_blank_lines_skipped():
    text = "name,qty,price\nbolt,3,0.10\n\nnut,5,0.05\n\n"
    assert column(parse_records(text), "name") == ["bolt", "nut"]
