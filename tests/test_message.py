"""Event times: what post(time=) accepts and what it refuses."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluentclient import EventTime, InvalidTimeError
from fluentclient.message import time_to_ns

# Packs no record through the client (raw frames, the server, plain values): the
# pure-Python pass of CI leaves it out (see tests/conftest.py).
pytestmark = pytest.mark.no_packing


def test_default_is_now_to_the_nanosecond():
    before = time.time_ns()
    ns = time_to_ns(None)
    assert before <= ns <= time.time_ns()


def test_event_time_int_and_float():
    assert time_to_ns(EventTime(1700000000, 123456789)) == 1700000000_123456789
    assert time_to_ns(1700000000) == 1700000000_000000000
    assert time_to_ns(1700000000.5) == 1700000000_500000000


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), -1, -0.5, 2**32, True, "1700000000", EventTime(1, 10**9),
     EventTime(1, -1), EventTime(0xFFFFFFFE, 0)],
)
def test_bad_times_are_refused(bad):
    with pytest.raises(InvalidTimeError):
        time_to_ns(bad)


@given(st.integers(min_value=0, max_value=0xFFFFFFFD), st.integers(0, 999_999_999))
def test_event_time_round_trips(sec, nsec):
    assert EventTime.from_ns(time_to_ns(EventTime(sec, nsec))) == (sec, nsec)


@given(st.floats(min_value=0, max_value=4_000_000_000))
def test_float_seconds_keep_their_value_to_the_microsecond(value):
    ns = time_to_ns(value)
    assert abs(ns / 1e9 - value) <= max(1e-6, abs(value) * 1e-15)
