"""Shipping quotes, memoised because the real rate lookup is slow."""

from memo import memoize

RATES = {"standard": 5, "express": 12}


@memoize
def quote(weight_kg, service="standard", insured=False):
    """Price of shipping a parcel of `weight_kg` kilograms."""
    if service not in RATES:
        raise ValueError(f"unknown service {service!r}")
    price = RATES[service] + 2 * weight_kg
    if insured:
        price += 3
    return price
