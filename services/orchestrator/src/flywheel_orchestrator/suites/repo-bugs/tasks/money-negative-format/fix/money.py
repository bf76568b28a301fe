"""Amounts are kept as integer cents and only formatted for display."""


def to_cents(text):
    """Parse "12.34", "-0.5" or "7" into integer cents."""
    text = text.strip()
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("+-").partition(".")
    frac = (frac + "00")[:2]
    return sign * (int(whole or "0") * 100 + int(frac))


def format_cents(cents):
    """Render cents as "1,234.05", with a leading "-" for negative amounts."""
    sign = "-" if cents < 0 else ""
    units, rest = divmod(abs(cents), 100)
    return f"{sign}{abs(units):,}.{rest:02d}"
