from slug import slugify, unique_slug


def test_accents_and_spaces():
    assert slugify("Caf\u00e9 au  lait") == "cafe-au-lait"


def test_leading_punctuation():
    assert slugify("--- Already--Dashed") == "already-dashed"


def test_unique_suffix():
    assert unique_slug("Release notes", {"release-notes", "release-notes-2"}) == "release-notes-3"


def test_trailing_punctuation():
    assert slugify("Hello, World!") == "hello-world"


def test_unique_after_punctuation():
    assert unique_slug("What's new?", {"what-s-new"}) == "what-s-new-2"
