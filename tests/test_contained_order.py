"""Issue 17, items 12 and 13: order under back-pressure, and replay as part of the drain.

A record that waits for room (overflow="block") holds back every record posted after it,
and a client started on a spool sends the backlog before a shutdown returns, or says how
much of it stays on disk.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import BufferedClient, Buffering
from fluentclient._spool import Spool
from fluentclient.framing import EntryPacker
from fluentclient.message import Message
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .waiting import wait_until

# -- item 13: order kept under back-pressure -----------------------------------------------


def block_client(server: ForwardServer, **buffering: Any) -> BufferedClient:
    return BufferedClient(
        server.host, server.port, at_exit=False, backoff=FAST_BACKOFF,
        buffering=Buffering(overflow="block", overflow_timeout=60, flush_interval=0.01,
                            **buffering),
    )


def test_a_smaller_record_never_overtakes_one_waiting_for_room(fluent_server):
    # Nothing can leave while the server refuses: the buffer fills and stays full.
    fluent_server.refuse()
    client = block_client(fluent_server, limit=4096, max_frame_size=4096)
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
    client = block_client(fluent_server, limit=4096, max_frame_size=4096)
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
                            backoff=FAST_BACKOFF, buffering=Buffering(limit=4096,
                                                                      max_frame_size=4096))
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


# -- item 12: replay is part of the drain -------------------------------------------------

T0 = 1_700_000_000 * 10**9


def leave_spool(directory: Path, n: int, *, first: int = 0, per_block: int = 100) -> None:
    """What a killed process leaves: ``n`` records in the spool, ids from ``first``."""
    pack = EntryPacker().pack
    left = Spool(str(directory), limit=1 << 24)
    for start in range(first, first + n, per_block):
        ids = range(start, min(start + per_block, first + n))
        run = b"".join(pack(Message("replay.test", {"i": i}, T0)) for i in ids)
        left.append(start, [("replay.test", run)], len(ids))
    left.close(keep=True)


def spool_client(server: ForwardServer, spool: Path, **buffering: Any) -> BufferedClient:
    return BufferedClient(server.host, server.port,
                          buffering=Buffering(spool_dir=spool, **buffering),
                          at_exit=False, backoff=FAST_BACKOFF)


def received_ids(server: ForwardServer) -> list[int]:
    return sorted(e.record["i"] for e in server.events)


def test_a_shutdown_right_after_start_sends_the_whole_backlog(tmp_path, fluent_server):
    leave_spool(tmp_path, 1000)
    client = spool_client(fluent_server, tmp_path)
    report = client.shutdown(10)
    assert report.sent == 1000 and report.complete and report.left_in_spool == 0, report
    assert client.stats().replayed == 1000
    assert received_ids(fluent_server) == list(range(1000))
    assert list(tmp_path.iterdir()) == []


def test_with_the_server_down_the_report_counts_what_stays_on_disk(
    tmp_path, fluent_server, caplog
):
    leave_spool(tmp_path, 1000)
    fluent_server.refuse()
    # A buffer too small for the backlog: replay waits for room that never comes.
    client = spool_client(fluent_server, tmp_path, limit=4096)
    with caplog.at_level(logging.WARNING, logger="fluentclient"):
        report = client.shutdown(1)
    assert report.timed_out and not report.complete
    # Replayed ones went to this client's own spool; the rest never left the old one.
    assert report.spooled == report.unsent_records == client.stats().replayed
    assert 0 < report.left_in_spool < 1000
    assert report.spooled + report.left_in_spool == 1000
    assert f"stopped with {report.left_in_spool} records a previous process left" in caplog.text
    # A later start finds all of them, each once.
    fluent_server.refuse(False)
    again = spool_client(fluent_server, tmp_path)
    assert again.shutdown(10).complete
    assert again.stats().replayed == 1000
    assert received_ids(fluent_server) == list(range(1000))
    assert list(tmp_path.iterdir()) == []


def test_close_counts_the_owners_it_never_reached(tmp_path, fluent_server):
    leave_spool(tmp_path, 300)
    leave_spool(tmp_path, 200, first=300)
    fluent_server.refuse()
    client = spool_client(fluent_server, tmp_path, limit=4096)
    client.close()
    report = client.shutdown()
    assert report.spooled + report.left_in_spool == 500
    assert report.left_in_spool >= 200
    fluent_server.refuse(False)
    again = spool_client(fluent_server, tmp_path)
    assert again.shutdown(10).complete
    assert received_ids(fluent_server) == list(range(500))


@settings(max_examples=40)
@given(
    blocks=st.lists(st.lists(st.tuples(st.sampled_from("abc"), st.integers(1, 5)),
                             min_size=1, max_size=3), min_size=1, max_size=6),
    done=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 40), st.integers(0, 6)),
                  max_size=8),
    with_counts=st.booleans(),
)
def test_pending_counts_what_replay_would_yield(tmp_path_factory, blocks, done, with_counts):
    """Counting from the blocks (with their run counts or, for blocks written without
    them, by splitting) agrees with replaying record by record."""
    directory = tmp_path_factory.mktemp("spool")
    entry = EntryPacker().pack(Message("t", {"x": 1}, T0))
    left = Spool(str(directory), limit=1 << 24)
    seq = 0
    for runs in blocks:
        counts = [n for _, n in runs]
        left.append(seq, [(tag, entry * n) for tag, n in runs], sum(counts),
                    counts if with_counts else None)
        seq += sum(counts)
    left.done([(tag, first, first + span) for tag, first, span in done])
    left.close(keep=True)
    reader = Spool(str(directory), limit=1 << 24)
    orphan = next(reader.orphans())
    assert orphan.pending() == len(list(orphan.records()))
    orphan.abandon()
    reader.close(keep=False)
