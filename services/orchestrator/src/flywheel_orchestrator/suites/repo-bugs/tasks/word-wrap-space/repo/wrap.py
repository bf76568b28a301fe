"""Greedy word wrapping for plain-text e-mails."""


def wrap(text, width):
    """Lines of at most `width` characters; a longer single word gets a line of its own."""
    lines, current = [], ""
    for word in text.split():
        if not current:
            current = word
        elif len(current) + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def fill(text, width):
    return "\n".join(wrap(text, width))
