import pytest
from text_utils import pad, truncate


def test_short_text_unchanged():
    assert truncate("abc", 6) == "abc"
    assert truncate("abcdef", 6) == "abcdef"


def test_width_below_marker():
    with pytest.raises(ValueError):
        truncate("abcdef", 2)


def test_pad_short():
    assert pad("ab", 5, align="right") == "   ab"


def test_long_text_fits():
    assert truncate("abcdefghij", 6) == "abc..."
    assert truncate("abcdefghij", 8, marker="~") == "abcdefg~"


def test_pad_long_text():
    assert pad("quarterly report", 10) == "quarter..."
