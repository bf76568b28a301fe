import pytest
from logparse import count_levels, parse_line
from report import busiest_hour, summary

LINES = [
    "2024-05-01 09:59:00 info started",
    "2024-05-01 12:00:01 ERROR disk full on /dev/sda",
    "",
    "2024-05-01 12:30:00 warn retrying",
]


def test_count_levels():
    assert count_levels(LINES) == {"INFO": 1, "ERROR": 1, "WARN": 1}


def test_malformed():
    with pytest.raises(ValueError):
        parse_line("2024-05-01 oops")


def test_busiest_hour():
    assert busiest_hour(LINES) == "12"


def test_message_with_spaces():
    assert parse_line(LINES[1])["message"] == "disk full on /dev/sda"


def test_summary():
    assert summary(LINES) == "ERROR: 1\nINFO: 1\nWARN: 1\nerrors:\n  - disk full on /dev/sda"
