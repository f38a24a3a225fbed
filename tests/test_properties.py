"""Hypothesis properties over real sockets: concurrent posting, and connections cut anywhere."""

from __future__ import annotations

import threading
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import BufferedClient, Buffering, RecordRules

from .conftest import FAST_BACKOFF
from .test_framing import records


@settings(max_examples=25)
@given(
    st.lists(st.lists(records, min_size=0, max_size=40), min_size=1, max_size=8),
    st.booleans(),
)
def test_concurrent_posts_all_arrive_once_equal_in_order(fluent_server, per_thread, one_tag):
    fluent_server.clear()
    # The records may hold infinities, bytes that are not UTF-8 and deep nesting; this is
    # about transport, so the odd-record rules (tested on their own) send them as they are.
    client = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                            at_exit=False, buffering=Buffering(write_threshold=512),
                            records=RecordRules(non_finite_floats="keep", non_utf8_bytes="keep",
                                                max_depth=64))
    barrier = threading.Barrier(len(per_thread))

    def run(t: int, recs: list) -> None:
        barrier.wait(timeout=10)
        tag = "prop.all" if one_tag else f"prop.t{t}"
        for i, rec in enumerate(recs):
            client.post(tag, {"t": t, "i": i, "r": rec})

    threads = [threading.Thread(target=run, args=(t, recs)) for t, recs in enumerate(per_thread)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    report = client.shutdown(10)
    total = sum(map(len, per_thread))
    assert report.complete and report.sent == total
    assert fluent_server.wait_for_events(total, timeout=10)
    got = defaultdict(list)
    for e in fluent_server.events:
        got[e.record["t"]].append((e.record["i"], e.record["r"]))
    for t, recs in enumerate(per_thread):
        assert got[t] == list(enumerate(recs))
    assert fluent_server.errors == []


@settings(max_examples=15)
@given(st.integers(min_value=1, max_value=60_000), st.integers(min_value=200, max_value=3000))
def test_cut_connections_never_yield_half_frames_or_unseen_losses(fluent_server, cut, n):
    fluent_server.clear()
    fluent_server.drop_after(cut)
    client = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                            at_exit=False, buffering=Buffering(write_threshold=2048,
                                                               max_frame_size=8192))
    for i in range(n):
        client.post("cut.stream", {"i": i, "pad": "c" * 64})
    # Let it go through at least one cut, then heal the server so the rest can drain.
    fluent_server.wait_for(
        lambda: fluent_server.bytes_received >= cut or fluent_server.event_count >= n,
        timeout=5,
    )
    fluent_server.drop_after(None)
    report = client.shutdown(10)
    received = {e.record["i"] for e in fluent_server.events}
    # Every frame that reached the server decoded whole: nothing broken, nothing foreign.
    assert fluent_server.errors == []
    assert received <= set(range(n))
    # Every record either arrived or is counted as not sent.
    not_sent = report.unsent_records + report.possibly_lost + sum(report.dropped.values())
    assert len(received) + not_sent >= n
    stats = client.stats()
    assert stats.sent + stats.possibly_lost + stats.unsent + stats.dropped_total == n
