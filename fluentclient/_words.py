"""Counts in messages: "1 record", "2 records", never "1 records"."""

from __future__ import annotations


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, the noun in the plural unless ``n`` is one (``plural`` for
    nouns that do not just take an "s"); thousands separated, as people read them."""
    if n == 1:
        return f"1 {noun}"
    return f"{n:,} {plural or noun + 's'}"
