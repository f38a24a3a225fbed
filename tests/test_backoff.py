"""Backoff as a value: grows, is capped, jitters within bounds, resets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluentclient import Backoff


def test_grows_exponentially_and_is_capped():
    b = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)
    delays = []
    for _ in range(8):
        delays.append(b.delay())
        b = b.next()
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert delays[4:] == pytest.approx([1.0] * 4)


def test_reset_starts_over():
    b = Backoff(initial=0.1, jitter=0.0).next().next()
    assert b.reset().delay() == pytest.approx(0.1)
    assert b.reset() == Backoff(initial=0.1, jitter=0.0)


@given(st.integers(0, 200), st.floats(0, 1), st.floats(0, 1))
def test_jitter_stays_within_bounds(attempts, jitter, r):
    b = Backoff(initial=0.05, maximum=10.0, jitter=jitter, attempts=attempts)
    base = min(10.0, 0.05 * 2.0 ** min(attempts, 64))
    d = b.delay(lambda: r)
    assert base * (1 - jitter) - 1e-12 <= d <= base + 1e-12


@pytest.mark.parametrize("kwargs", [{"initial": -1}, {"maximum": 0.01}, {"multiplier": 0.5},
                                    {"jitter": 1.5}])
def test_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)
