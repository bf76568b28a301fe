"""Word counts for short texts."""

import re
from collections import Counter

WORD = re.compile(r"[a-z']+")


def count_words(text):
    """Counter of the words in `text`, in lower case."""
    return Counter(WORD.findall(text))


def top_words(text, n):
    """The `n` most frequent words, most frequent first, ties alphabetical."""
    counts = count_words(text)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [word for word, _ in ranked[:n]]
