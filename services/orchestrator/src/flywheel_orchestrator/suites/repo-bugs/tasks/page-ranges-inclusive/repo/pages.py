"""Parse print-dialog page selections like "1-3, 7, 10-12"."""


def parse_pages(spec, last_page):
    """Sorted distinct page numbers; ranges are inclusive at both ends."""
    pages = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            first, last = (int(x) for x in part.split("-", 1))
            if first > last:
                raise ValueError(f"backwards range {part!r}")
            pages.update(range(first, last))
        else:
            pages.add(int(part))
    bad = sorted(p for p in pages if not 1 <= p <= last_page)
    if bad:
        raise ValueError(f"pages out of range: {bad}")
    return sorted(pages)
