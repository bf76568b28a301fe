import pytest
from temperature import c_to_f, c_to_k, daily_mean_c, f_to_c


def test_exact_points():
    assert f_to_c(212) == 100
    assert f_to_c(32) == 0


def test_celsius_conversions():
    assert c_to_f(37) == pytest.approx(98.6)
    with pytest.raises(ValueError):
        c_to_k(-300)


def test_fractional_result():
    assert f_to_c(100) == pytest.approx(37.7778, abs=1e-3)


def test_daily_mean():
    assert daily_mean_c([50, 51, 52]) == 10.6
