"""Offset pagination over an in-memory list, for services whose listings fit in memory."""

from __future__ import annotations

from typing import Any

from flywheel_common.errors import InvalidArgument


def offset_page(
    items: list[Any], page_size: int, page_token: str, field: str = "page_token"
) -> tuple[list[Any], str]:
    """(one page of ``items``, the next page's token or ""); tokens are decimal offsets.

    ``page_size`` <= 0 means 50; at most 1000. A token this function did not make is
    INVALID_ARGUMENT naming ``field``.
    """
    size = 50 if page_size <= 0 else min(page_size, 1000)
    try:
        start = int(page_token) if page_token else 0
    except ValueError:
        raise InvalidArgument(field, f"{page_token!r} is not a page token from this service") from None
    if start < 0:
        raise InvalidArgument(field, f"{page_token!r} is not a page token from this service")
    chunk = items[start : start + size]
    return chunk, str(start + size) if start + size < len(items) else ""
