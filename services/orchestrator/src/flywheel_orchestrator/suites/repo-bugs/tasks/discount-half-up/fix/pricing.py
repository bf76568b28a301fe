"""Shop prices use Decimal and round half-cents up, as printed receipts do."""

from decimal import ROUND_HALF_UP, Decimal

CENT = Decimal("0.01")


def apply_discount(price, percent):
    """Price after a percentage discount, rounded to the cent (halves go up)."""
    price = Decimal(str(price))
    factor = (Decimal(100) - Decimal(str(percent))) / Decimal(100)
    return (price * factor).quantize(CENT, rounding=ROUND_HALF_UP)


def add_tax(price, rate_percent):
    """Price with tax added, rounded to the cent (halves go up)."""
    price = Decimal(str(price))
    factor = 1 + Decimal(str(rate_percent)) / 100
    return (price * factor).quantize(CENT, rounding=ROUND_HALF_UP)
