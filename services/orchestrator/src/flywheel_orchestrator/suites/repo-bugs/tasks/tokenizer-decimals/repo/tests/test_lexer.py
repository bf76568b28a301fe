import pytest
from lexer import tokenize


def test_integers_and_operators():
    assert tokenize("12+(3*45)") == [
        ("num", "12"),
        ("op", "+"),
        ("op", "("),
        ("num", "3"),
        ("op", "*"),
        ("num", "45"),
        ("op", ")"),
    ]


def test_names():
    assert tokenize("rate_2 ^ x") == [("name", "rate_2"), ("op", "^"), ("name", "x")]


def test_bad_character():
    with pytest.raises(SyntaxError):
        tokenize("3 $ 4")


def test_decimal_numbers():
    assert tokenize("2.5 * r") == [("num", "2.5"), ("op", "*"), ("name", "r")]
    assert tokenize("0.25+10") == [("num", "0.25"), ("op", "+"), ("num", "10")]
