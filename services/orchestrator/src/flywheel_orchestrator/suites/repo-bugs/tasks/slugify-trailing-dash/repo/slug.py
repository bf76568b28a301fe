"""URL slugs for article titles."""

import re
import unicodedata


def slugify(title, max_length=60):
    """Lower-case ASCII words joined by single dashes, no dash at either end."""
    text = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", text.lower())
    text = text.lstrip("-")
    return text[:max_length]


def unique_slug(title, taken):
    """A slug for `title` that is not in the set `taken`, adding -2, -3, ... if needed."""
    base = slugify(title)
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug
