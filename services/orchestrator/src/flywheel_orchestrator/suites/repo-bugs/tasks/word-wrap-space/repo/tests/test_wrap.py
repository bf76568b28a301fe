from wrap import fill, wrap


def test_long_word_kept_whole():
    assert wrap("a supercalifragilistic b", 6) == ["a", "supercalifragilistic", "b"]


def test_empty_text():
    assert wrap("   ", 10) == []


def test_fill():
    assert fill("one two three", 9) == "one two\nthree"


def test_exact_fit_boundary():
    assert wrap("abc de", 5) == ["abc", "de"]


def test_no_line_too_long():
    text = "hello there world wide web, once again"
    assert all(len(line) <= 10 for line in wrap(text, 10))
