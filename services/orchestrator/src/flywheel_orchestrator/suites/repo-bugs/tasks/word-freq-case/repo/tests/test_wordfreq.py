from wordfreq import count_words, top_words


def test_counts_lowercase_text():
    assert count_words("a b a") == {"a": 2, "b": 1}


def test_apostrophes_kept():
    assert count_words("don't stop, don't")["don't"] == 2


def test_top_words_ties_alphabetical():
    assert top_words("pear fig fig apple pear kiwi", 3) == ["fig", "pear", "apple"]


def test_mixed_case_counted_together():
    counts = count_words("The cat saw the Dog")
    assert counts["the"] == 2
    assert counts["dog"] == 1
    assert "he" not in counts
