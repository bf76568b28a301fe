"""Helpers for fitting text into fixed-width table cells."""


def truncate(text, width, marker="..."):
    """Cut `text` to at most `width` characters, ending with `marker` when shortened."""
    if width < len(marker):
        raise ValueError("width is smaller than the marker")
    if len(text) <= width:
        return text
    return text[:width] + marker


def pad(text, width, align="left"):
    """Fit `text` into exactly `width` characters."""
    text = truncate(text, width)
    if align == "left":
        return text.ljust(width)
    if align == "right":
        return text.rjust(width)
    return text.center(width)
