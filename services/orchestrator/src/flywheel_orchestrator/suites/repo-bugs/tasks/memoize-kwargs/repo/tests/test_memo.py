from memo import memoize
from shipping import quote


def test_caches_repeated_calls():
    calls = []

    @memoize
    def square(x):
        calls.append(x)
        return x * x

    assert square(3) == 9
    assert square(3) == 9
    assert calls == [3]


def test_positional_arguments_differ():
    assert quote(1) == 7
    assert quote(4) == 13


def test_keyword_arguments_differ():
    assert quote(2) == 9
    assert quote(2, service="express") == 16
    assert quote(2, insured=True) == 12
