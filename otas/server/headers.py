"""Byte-count headers (Content-Length, Inference-Header-Content-Length), read one way everywhere."""

from __future__ import annotations

MAX_DIGITS = 18
"""More digits than this could overflow an int64, and no body that large is ever served."""


def byte_count(value: str | bytes) -> int | None:
    """A header value as a byte count: ASCII decimal digits only (no sign, no spaces: strip first if
    the header allows them), at most `MAX_DIGITS` of them. None when the value is not one."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_DIGITS else None
