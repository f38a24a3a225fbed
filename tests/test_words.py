"""Counts in the library's messages: "1 record", "2 records", never "1 records"."""

from __future__ import annotations

import pytest

from fluentclient._words import count


@pytest.mark.parametrize(("n", "said"), [
    (0, "0 records"), (1, "1 record"), (2, "2 records"), (1000, "1,000 records"),
])
def test_a_count_takes_the_plural_unless_it_is_one(n, said):
    assert count(n, "record") == said


def test_a_noun_with_its_own_plural():
    assert count(1, "entry", "entries") == "1 entry"
    assert count(3, "entry", "entries") == "3 entries"
