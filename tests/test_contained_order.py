"""Issue 17, items 12 and 13: order under back-pressure, and replay as part of the drain.

A record that waits for room (overflow="block") holds back every record posted after it,
and a client started on a spool sends the backlog before a shutdown returns, or says how
much of it stays on disk.
"""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import BufferedClient
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .waiting import wait_until

# -- item 13: order kept under back-pressure -----------------------------------------------


def block_client(server: ForwardServer, **kwargs: object) -> BufferedClient:
    return BufferedClient(
        server.host, server.port, at_exit=False, backoff=FAST_BACKOFF, overflow="block",
        overflow_timeout=60, flush_interval=0.01, **kwargs,  # type: ignore[arg-type]
    )


def test_a_smaller_record_never_overtakes_one_waiting_for_room(fluent_server):
    # Nothing can leave while the server refuses: the buffer fills and stays full.
    fluent_server.refuse()
    client = block_client(fluent_server, buffer_limit=4096, max_frame_size=4096)
    for i, pad in ((99, 1500), (100, 1500), (101, 1500), (102, 10)):
        client.post("order.test", {"i": i, "pad": "a" * pad})
    # 99 and 100 fit; 101 waits for room, and 102, small enough to fit, waits behind it.
    assert wait_until(lambda: client._buffer.held_records >= 2)
    fluent_server.refuse(False)
    assert client.flush(timeout=20)
    assert fluent_server.wait_for_events(4, timeout=20)
    assert [e.record["i"] for e in fluent_server.events] == [99, 100, 101, 102]
    assert client.shutdown(10).complete


@settings(max_examples=12)
@given(
    sizes=st.lists(st.lists(st.integers(min_value=0, max_value=1800), min_size=1,
                            max_size=40), min_size=1, max_size=4),
)
def test_each_threads_records_arrive_in_the_order_posted(fluent_server, sizes):
    """Random record sizes, a buffer that fills while the server is away, several threads
    posting: each thread's records reach the server in the order posted, none missing."""
    fluent_server.clear()
    fluent_server.refuse()
    client = block_client(fluent_server, buffer_limit=4096, max_frame_size=4096)
    start = threading.Barrier(len(sizes))

    def poster(thread: int, pads: list[int]) -> None:
        start.wait(timeout=20)
        for i, pad in enumerate(pads):
            client.post("order.test", {"t": thread, "i": i, "pad": "p" * pad})

    threads = [threading.Thread(target=poster, args=(t, pads)) for t, pads in enumerate(sizes)]
    for thread in threads:
        thread.start()
    total = sum(map(len, sizes))
    # Back-pressure first: everything posted or blocked, the buffer as full as it gets.
    wait_until(lambda: client.stats().posted == total or client._buffer.room_waiters > 0,
               timeout=5)
    fluent_server.refuse(False)
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    report = client.shutdown(30)
    assert report.complete, report
    assert fluent_server.wait_for_events(total, timeout=10)
    got: dict[int, list[int]] = {}
    for event in fluent_server.events:
        got.setdefault(event.record["t"], []).append(event.record["i"])
    assert got == {t: list(range(len(pads))) for t, pads in enumerate(sizes)}


def test_drop_newest_drops_what_does_not_fit_and_keeps_the_rest_in_order(fluent_server):
    """The default policy may buffer a later, smaller record after dropping a larger one:
    the larger one is lost and counted, never sent late."""
    fluent_server.refuse()
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            backoff=FAST_BACKOFF, buffer_limit=4096, max_frame_size=4096)
    for i, pad in ((99, 1500), (100, 1500), (101, 1500), (102, 10)):
        client.post("order.test", {"i": i, "pad": "a" * pad})
    assert wait_until(lambda: client.stats().buffered + client.stats().dropped_total == 4)
    fluent_server.refuse(False)
    assert client.flush(timeout=20)
    report = client.shutdown(10)
    received = [e.record["i"] for e in fluent_server.events]
    assert received == sorted(received)
    assert len(received) + sum(report.dropped.values()) == 4
    assert set(report.dropped) <= {"buffer_full"}
