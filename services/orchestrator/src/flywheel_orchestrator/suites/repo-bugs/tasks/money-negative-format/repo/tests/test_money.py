from money import format_cents, to_cents


def test_format_positive():
    assert format_cents(123405) == "1,234.05"
    assert format_cents(0) == "0.00"


def test_parse():
    assert to_cents("-0.5") == -50
    assert to_cents("7") == 700
    assert to_cents("12.34") == 1234


def test_format_negative():
    assert format_cents(-5) == "-0.05"
    assert format_cents(-250) == "-2.50"


def test_negative_round_trip():
    assert format_cents(to_cents("-1234.56")) == "-1,234.56"
