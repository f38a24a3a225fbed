"""Interop: our clients against FluentServer from @fluent-org/logger 1.0.10 (Node).

The peer decodes with @msgpack/msgpack, not with our framing code, so these tests catch
encoding mistakes that a round trip through our own decoder would hide. What JavaScript
cannot represent exactly (integers beyond 2**53, int vs float) is handled by
``assert_peer_equal``; everything else must arrive exactly, EventTime nanoseconds included.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fluentclient import BufferedClient, Buffering, EventTime, RecordRules, SyncClient
from tests.peer_server import (
    NodePeer,
    PeerEvent,
    assert_peer_equal,
    js_int,
    peer_mismatch,
    require_peer,
)

pytestmark = pytest.mark.peer

WAIT = 20.0  # seconds: the longest any test waits for the peer
SENTINEL_TAG = "interop.sentinel"

Post = tuple[str, Any, Any]  # tag, time given to post(), record


@pytest.fixture(scope="module")
def peer() -> Iterator[NodePeer]:
    """One peer for the module; each test (and hypothesis example) clears it first."""
    require_peer()
    with NodePeer() as p:
        yield p


# FluentServer keeps whatever msgpack carries: these tests check the wire itself, so the
# rules that make odd records safe for fluentd and Fluent Bit are off (tests/test_odd_records.py).
AS_IS = RecordRules(max_depth=200, non_str_keys="keep", non_finite_floats="keep",
                    non_utf8_bytes="keep")


def make_client(kind: str, peer: NodePeer, **kwargs: Any) -> Any:
    kwargs.setdefault("records", AS_IS)
    if kind == "buffered":
        return BufferedClient(peer.host, peer.port, at_exit=False, **kwargs)
    return SyncClient(peer.host, peer.port, **kwargs)


def send_and_collect(
    peer: NodePeer, client: Any, posts: Sequence[Post], *, tag_prefix: str = ""
) -> list[PeerEvent]:
    """Post everything, then a sentinel; return what arrived before the sentinel.

    FluentServer handles one connection's frames in order, so once the sentinel is seen every
    earlier record that was going to arrive has arrived; nothing may follow it either.
    ``tag_prefix`` is the client's, which the sentinel gets too.
    """
    sentinel = f"{tag_prefix}.{SENTINEL_TAG}" if tag_prefix else SENTINEL_TAG
    assert peer.alive, peer.describe()
    peer.clear()
    for tag, when, record in posts:
        assert client.post(tag, record, time=when) is True
    # Flush first: a buffered client groups records by tag, so a sentinel posted with the
    # rest could be written before records of other tags.
    assert client.flush(timeout=WAIT), "flush timed out"
    assert client.post(SENTINEL_TAG, {"end": True}) is True
    assert client.flush(timeout=WAIT), "flush timed out"
    report = client.shutdown(timeout=WAIT)
    assert report.unsent_records == 0, report
    seen = peer.wait_until(lambda evs: any(e.tag == sentinel for e in evs), WAIT)
    assert seen, f"sentinel never arrived; {peer.describe()}"
    events = peer.events
    assert not peer.bad_lines, peer.bad_lines
    assert [e.tag for e in events].count(sentinel) == 1, events[-3:]
    assert events[-1].tag == sentinel, f"events after the sentinel: {events[-3:]!r}"
    return events[:-1]


def assert_arrived(posts: Sequence[Post], events: Sequence[PeerEvent]) -> None:
    """Every post arrived once, exactly, and in posting order among posts of its tag.

    Order across tags is not compared: each frame carries one tag, and the buffered client
    is free to group a run of records by tag.
    """
    assert len(events) == len(posts), f"sent {len(posts)} records, the peer got {len(events)}"
    by_tag: dict[str, list[tuple[int, Post]]] = {}
    for i, post in enumerate(posts):
        by_tag.setdefault(post[0], []).append((i, post))
    got_by_tag: dict[str, list[PeerEvent]] = {}
    for event in events:
        got_by_tag.setdefault(event.tag, []).append(event)
    assert set(got_by_tag) == set(by_tag), f"tags {sorted(got_by_tag)} != {sorted(by_tag)}"
    for tag, sent in by_tag.items():
        got = got_by_tag[tag]
        assert len(got) == len(sent), f"tag {tag!r}: sent {len(sent)}, got {len(got)}"
        for (i, (_, when, record)), event in zip(sent, got):
            if isinstance(when, EventTime):
                assert type(event.time) is EventTime, f"post #{i}: time {event.time!r}"
                assert event.time == when, f"post #{i}: time {event.time!r} != {when!r}"
            assert_peer_equal(record, event.record, f"post #{i} ({tag}) record")


# -- strategies ------------------------------------------------------------------------------

tags = st.from_regex(r"[A-Za-z0-9_-]{1,12}(\.[A-Za-z0-9_-]{1,12}){0,3}", fullmatch=True)
event_times = st.builds(EventTime, st.integers(0, 0xFFFFFFFD), st.integers(0, 999_999_999))
# FluentServer's msgpack decoder rejects the key "__proto__" (it closes the connection).
keys = st.text(max_size=12).filter(lambda k: k != "__proto__")
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31)
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=30)
    | st.binary(max_size=40)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)
records = st.dictionaries(keys, values, max_size=8)
posts_strategy = st.lists(st.tuples(tags, event_times, records), min_size=1, max_size=6)


# -- the harness itself ----------------------------------------------------------------------


def test_harness_decodes_raw_frames_losslessly(peer: NodePeer) -> None:
    """Frames packed by hand (not by fluentclient) come back through peer.js unchanged."""
    peer.clear()
    record = {
        "bin": b"\x00\xff\x80",
        "big": 2**63,
        "neg": -(2**63),
        "negzero": -0.0,
        "nan": float("nan"),
        "inf": float("-inf"),
        "tenth": 0.1,
        "dollar": {"$bin": "not-base64"},
        "nested": [1, [None, {"k": True}], "ü😀"],
    }
    when = msgpack.ExtType(0, struct.pack(">II", 1_700_000_000, 999_999_999))
    entries = msgpack.packb([when, record]) + msgpack.packb([42, {"x": 1}])
    frame = msgpack.packb(["raw.tag", entries, {"size": 2, "chunk": "abc"}])
    with socket.create_connection((peer.host, peer.port), timeout=WAIT) as sock:
        sock.sendall(frame)
        assert msgpack.unpackb(sock.recv(64)) == {"ack": "abc"}
        assert peer.wait_for_events(2, WAIT), peer.describe()
    first, second = peer.events
    assert first.tag == "raw.tag" and first.time == EventTime(1_700_000_000, 999_999_999)
    assert type(first.time) is EventTime
    assert_peer_equal(record, first.record)
    assert first.record["bin"] == b"\x00\xff\x80"
    assert second == ("raw.tag", 42, {"x": 1})


def test_comparison_catches_differences() -> None:
    assert peer_mismatch({"a": 1.0}, {"a": 2}) is not None
    assert peer_mismatch({"a": -0.0}, {"a": 0}) is not None
    assert peer_mismatch({"a": 0.0}, {"a": -0.0}) is not None
    assert peer_mismatch({"a": b"x"}, {"a": "x"}) is not None
    assert peer_mismatch({"a": "x"}, {"a": b"x"}) is not None
    assert peer_mismatch({"a": 1}, {"a": True}) is not None
    assert peer_mismatch({"a": [1, 2]}, {"a": [2, 1]}) is not None
    assert peer_mismatch({"a": 1}, {"a": 1, "b": 2}) is not None
    assert peer_mismatch({"a": 2**64 - 1}, {"a": 2**64 - 1}) is not None  # JS sees 2**64
    assert peer_mismatch({"a": 2**64 - 1}, {"a": 2**64}) is None
    assert peer_mismatch({"a": 3.0, "b": float("nan")}, {"a": 3, "b": float("nan")}) is None


# -- interop ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["buffered", "sync"])
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(posts=posts_strategy)
def test_records_arrive_exactly(peer: NodePeer, kind: str, posts: list[Post]) -> None:
    client = make_client(kind, peer)
    try:
        events = send_and_collect(peer, client, posts)
    finally:
        client.close()
    assert_arrived(posts, events)


TRICKY_RECORD = {
    "unicode": "héllo wörld · 日本語 · 😀🎉 · e\u0301 · \u200d · \x00 end",
    "ключ": {"嵌套": {"deeper": ["x", {"🔑": "v"}]}},
    "bytes": bytes(range(256)),
    "empty": {"s": "", "b": b"", "l": [], "m": {}},
    "ints": [
        0,
        1,
        -1,
        127,
        128,
        -32,
        -33,
        255,
        256,
        2**16,
        2**31 - 1,
        -(2**31),
        2**32,
        2**53,
        -(2**53),
        2**62,
        2**63 - 1,
        2**63,
        2**64 - 1,
        -(2**63),
    ],
    "floats": [
        0.0,
        -0.0,
        1.5,
        -2.25,
        1e-300,
        5e-324,
        1.7976931348623157e308,
        0.1,
        3.0,
        float("inf"),
        float("-inf"),
        float("nan"),
    ],
    "none": None,
    "flags": [True, False],
    "large_str": "ab\u00e9" * 70_000,
    "large_bin": b"\x01\x02\xfe" * 40_000,
}


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_tricky_record_arrives_exactly(peer: NodePeer, kind: str) -> None:
    when = EventTime(1_712_345_678, 123_456_789)
    client = make_client(kind, peer)
    try:
        events = send_and_collect(peer, client, [("tricky.rec", when, TRICKY_RECORD)])
    finally:
        client.close()
    assert_arrived([("tricky.rec", when, TRICKY_RECORD)], events)
    got = events[0].record
    assert got["bytes"] == bytes(range(256))
    assert got["ints"][-2] == js_int(2**64 - 1)
    assert got["large_str"] == TRICKY_RECORD["large_str"]


EXPLICIT_TIMES = [
    (EventTime(1_700_000_000, 123_456_789), EventTime(1_700_000_000, 123_456_789)),
    (EventTime(0, 0), EventTime(0, 0)),
    (EventTime(1, 999_999_999), EventTime(1, 999_999_999)),
    (EventTime(0xFFFFFFFD, 999_999_999), EventTime(0xFFFFFFFD, 999_999_999)),
    (EventTime(2_000_000_000, 1), EventTime(2_000_000_000, 1)),
    (1_700_000_000, EventTime(1_700_000_000, 0)),
    (1_700_000_000.5, EventTime(1_700_000_000, 500_000_000)),
    (1.25, EventTime(1, 250_000_000)),
]


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_event_time_nanoseconds_exact(peer: NodePeer, kind: str) -> None:
    posts = [("time.exact", when, {"i": i}) for i, (when, _) in enumerate(EXPLICIT_TIMES)]
    client = make_client(kind, peer)
    try:
        events = send_and_collect(peer, client, posts)
    finally:
        client.close()
    assert len(events) == len(EXPLICIT_TIMES), events
    for (given_time, expected), event in zip(EXPLICIT_TIMES, events):
        assert type(event.time) is EventTime, f"{given_time!r} arrived as {event.time!r}"
        assert event.time == expected, f"{given_time!r} arrived as {event.time!r}"


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_default_time_is_now_as_event_time(peer: NodePeer, kind: str) -> None:
    before = time.time_ns()
    client = make_client(kind, peer)
    try:
        events = send_and_collect(peer, client, [("time.now", None, {"a": 1})])
    finally:
        client.close()
    after = time.time_ns()
    (event,) = events
    assert type(event.time) is EventTime, event
    assert before <= event.time.to_ns() <= after, (before, event.time, after)


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_int_time_sends_integer_seconds(peer: NodePeer, kind: str) -> None:
    posts: list[Post] = [
        ("time.int", EventTime(1_700_000_000, 123_456_789), {"n": 0}),
        ("time.int", EventTime(1_700_000_001, 999_999_999), {"n": 1}),
        ("time.int", 1_700_000_002.75, {"n": 2}),
        ("time.int", None, {"n": 3}),
    ]
    before = time.time()
    client = make_client(kind, peer, records=replace(AS_IS, int_time=True))
    try:
        events = send_and_collect(peer, client, posts)
    finally:
        client.close()
    after = time.time()
    assert [e.record for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    for e in events:
        assert type(e.time) is int, f"int_time=True sent {e.time!r}"
    assert [e.time for e in events[:3]] == [1_700_000_000, 1_700_000_001, 1_700_000_002]
    assert int(before) <= events[3].time <= int(after)


def test_many_records_through_buffered_client_in_order_once(peer: NodePeer) -> None:
    n = 5_000
    posts: list[Post] = [
        (
            "bulk.a" if i % 3 else "bulk.b",
            EventTime(1_700_000_000 + i // 1000, (i * 7_919_993) % 1_000_000_000),
            {"seq": i, "pad": "é" * (i % 40), "bin": i.to_bytes(4, "big")},
        )
        for i in range(n)
    ]
    # A small frame limit makes the client split the run into many PackedForward frames.
    client = make_client("buffered", peer, buffering=Buffering(max_frame_size=16 * 1024))
    try:
        events = send_and_collect(peer, client, posts)
        stats = client.stats()
    finally:
        client.close()
    assert sorted(e.record["seq"] for e in events) == list(range(n))
    for tag in ("bulk.a", "bulk.b"):
        seqs = [e.record["seq"] for e in events if e.tag == tag]
        assert seqs == [i for i, p in enumerate(posts) if p[0] == tag], f"{tag} out of order"
    assert_arrived(posts, events)
    assert stats.frames_sent > 10, stats


def test_many_records_through_sync_client_in_order_once(peer: NodePeer) -> None:
    posts: list[Post] = [
        ("bulk.sync", EventTime(1_700_000_000, i), {"seq": i}) for i in range(1_000)
    ]
    client = make_client("sync", peer)
    try:
        events = send_and_collect(peer, client, posts)
    finally:
        client.close()
    assert_arrived(posts, events)


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_tag_prefix_is_joined_with_a_dot(peer: NodePeer, kind: str) -> None:
    client = make_client(kind, peer, tag_prefix="app")
    try:
        events = send_and_collect(
            peer,
            client,
            [("web.access", EventTime(1_700_000_000, 5), {"a": 1})],
            tag_prefix="app",
        )
    finally:
        client.close()
    assert [e.tag for e in events] == ["app.web.access"]
    assert events[0].record == {"a": 1}
