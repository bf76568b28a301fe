from decimal import Decimal

from pricing import add_tax, apply_discount


def test_simple_discount():
    assert apply_discount(10, 25) == Decimal("7.50")
    assert apply_discount("0.50", 50) == Decimal("0.25")


def test_tax_rounds_half_up():
    assert add_tax("0.50", 5) == Decimal("0.53")


def test_discount_rounds_half_up():
    assert apply_discount("0.25", 50) == Decimal("0.13")
    assert apply_discount("4.10", 15) == Decimal("3.49")
