"""The frames in flight on a link (InFlight): whatever confirms them takes them out oldest
first, and only those it confirms."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fluentclient._buffer import Frame
from fluentclient._transport._pool import InFlight

_SIZES = st.lists(st.integers(1, 50), max_size=12)


def _filled(sizes: list[int]) -> tuple[InFlight, list[tuple[int, Frame]]]:
    """Frames of these sizes written one after another: chunk ids c0, c1, ..."""
    flight = InFlight()
    entries: list[tuple[int, Frame]] = []
    end = 0
    for i, size in enumerate(sizes):
        frame = Frame("t", i, 1 << 20)
        frame.chunk, frame.records = f"c{i}", size
        end += size
        flight.add(end, frame)
        entries.append((end, frame))
    return flight, entries


@given(_SIZES, st.integers(0, 700))
def test_a_stream_offset_takes_exactly_the_frames_that_end_by_it(sizes, offset):
    flight, entries = _filled(sizes)
    assert flight.pop_through(offset) == [e for e in entries if e[0] <= offset]
    assert list(flight) == [e for e in entries if e[0] > offset]
    assert flight.records() == sum(f.records for end, f in entries if end > offset)


@given(_SIZES, st.integers(-1, 13))
def test_a_chunk_id_takes_its_frame_and_those_before_or_nothing(sizes, which):
    flight, entries = _filled(sizes)
    taken = flight.pop_through_chunk(f"c{which}")
    if 0 <= which < len(entries):
        assert taken == [f for _, f in entries[:which + 1]]
        assert list(flight) == entries[which + 1:]
    else:
        assert taken is None
        assert list(flight) == entries


@given(_SIZES)
def test_acks_take_the_head_in_order_and_the_end_takes_the_rest(sizes):
    flight, entries = _filled(sizes)
    if entries:
        assert flight.head() is entries[0][1]
        assert flight.pop_head() is entries[0][1]
    assert flight.take_all() == entries[1:]
    assert not flight and len(flight) == 0 and flight.head() is None
