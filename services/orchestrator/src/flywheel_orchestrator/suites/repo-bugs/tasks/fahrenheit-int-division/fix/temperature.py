"""Temperature conversions for a weather station feed."""


def f_to_c(f):
    return (f - 32) * 5 / 9


def c_to_f(c):
    return c * 9 / 5 + 32


def c_to_k(c):
    if c < -273.15:
        raise ValueError("below absolute zero")
    return c + 273.15


def daily_mean_c(readings_f):
    """Mean of Fahrenheit readings, in Celsius, rounded to one decimal."""
    if not readings_f:
        raise ValueError("no readings")
    return round(sum(f_to_c(f) for f in readings_f) / len(readings_f), 1)
