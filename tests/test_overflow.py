"""Overflow policies and the shutdown handover (on_unsent), against real servers."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from fluentclient import BufferedClient, BufferFullError, Buffering, EventTime, Timeouts
from fluentclient.server import ForwardServer
from fluentclient.stats import UnsentRecord

from .conftest import FAST_BACKOFF
from .waiting import wait_until

PAD = "p" * 80


def client_for(server: ForwardServer, **kwargs) -> BufferedClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("at_exit", False)
    return BufferedClient(server.host, server.port, **kwargs)




def ids(server: ForwardServer) -> list[int]:
    return [e.record["i"] for e in server.events]


def test_overflow_must_be_a_known_policy(fluent_server):
    with pytest.raises(ValueError, match="overflow"):
        client_for(fluent_server, buffering=Buffering(overflow="drop_everything"))


# Records of about 100 bytes, and of about 1 KiB: post() charges a record still queued
# at a mean size it learns from the reader (256 bytes at first), so the larger ones reach
# the reader in batches bigger than the whole buffer, whose own oldest records then go.
@pytest.mark.parametrize("pad", [PAD, "P" * 1000], ids=["100B", "1KiB"])
def test_drop_oldest_keeps_the_newest_records(fluent_server, pad):
    fluent_server.refuse()
    n = 5000
    client = client_for(fluent_server, buffering=Buffering(limit=64 * 1024, overflow="drop_oldest"))
    taken = sum(bool(client.post("t", {"i": i, "pad": pad})) for i in range(n))
    # Everything posted reaches the reader; the oldest are evicted to make room.
    assert wait_until(lambda: client.stats().buffered + client.stats().dropped_total == n)
    fluent_server.refuse(False)
    assert client.flush(timeout=10)
    report = client.shutdown(timeout=5)
    got = ids(fluent_server)
    evicted = report.dropped.get("evicted", 0)
    assert evicted > n // 2
    assert len(got) + sum(report.dropped.values()) == n
    # Room is always made by evicting: no record is refused. (The writer never holds
    # frames while it tries to connect, where they could not be evicted.)
    assert taken == n and set(report.dropped) == {"evicted"}, report.dropped
    # The newest record survived and what arrived is in order, without repeats.
    assert got[-1] == n - 1 and got == sorted(set(got))
    # The newest, in one unbroken run to the last. Records the reader has taken from the
    # queue and not yet buffered are in neither place for post() to evict, so one older
    # run may survive before it: those, while post() evicted the queued records after them.
    runs: list[list[int]] = []
    for i in got:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    assert len(runs) <= 2, runs
    assert runs[-1][0] < n - 1, runs  # more than the last record: not the newest evicted


def test_drop_oldest_evicts_while_the_writer_waits_on_a_connect(fluent_server):
    # A host that does not answer: the writer's connect hangs for all of Timeouts.connect.
    # The writer connects before it takes any frame, so what it would write stays in the
    # buffer meanwhile, oldest first to be evicted: drop_oldest keeps taking the newest
    # records rather than refusing them (which it did when the writer took the buffer's
    # frames first and then sat in connect() holding them).
    fluent_server.blackhole()
    limit = 16 * 1024
    client = client_for(fluent_server, timeouts=Timeouts(connect=60),
                        buffering=Buffering(limit=limit, write_threshold=limit,
                                            flush_interval=60, overflow="drop_oldest"))
    try:
        first = 150  # about 15 KiB: most of the buffer
        for i in range(first):
            assert client.post("t", {"i": i, "pad": PAD}, sync_append=True)
        # Not written yet (under the threshold, well before the interval): a flush makes
        # the whole buffer due, and the writer starts its connect.
        assert client.flush(timeout=0.05) is False
        assert wait_until(lambda: client.stats().servers[0].state == "connecting")
        assert client.stats().buffered == first and not client.stats().dropped
        n = 500
        for i in range(first, n):
            assert client.post("t", {"i": i, "pad": PAD}, sync_append=True)
        stats = client.stats()
        assert stats.servers[0].state == "connecting", stats
        assert "buffer_full" not in stats.dropped, stats.dropped
        assert stats.dropped["evicted"] >= n - limit // len(PAD), stats.dropped
        fluent_server.blackhole(False)
        # The attempt under way gets its answer on the SYN's next retransmission.
        assert client.flush(timeout=60)
        report = client.shutdown(timeout=10)
    finally:
        fluent_server.blackhole(False)
        client.close()
    got = ids(fluent_server)
    assert len(got) + report.dropped["evicted"] == n
    # The newest survived, in one unbroken run up to the last record.
    assert got == list(range(n - len(got), n))


def test_a_burst_of_small_records_that_fits_is_not_refused(fluent_server):
    # post() charges each record still queued at the mean entry size the reader has seen,
    # a guess of 256 bytes before the first batch. Once one 100-byte record is packed, a
    # burst of 150 such records (15 KiB) fits a 16 KiB buffer, however far the reader
    # lags: none is refused. (Charged at 240 bytes, as when the first batch counted a
    # tenth, the 68th record still queued would be.)
    fluent_server.refuse()
    client = client_for(fluent_server, buffering=Buffering(limit=16 * 1024))
    try:
        assert client.post("t", {"i": -1, "pad": PAD}, sync_append=True)
        taken = [client.post("t", {"i": i, "pad": PAD}) for i in range(150)]
        assert all(taken), taken.index(False)
        assert wait_until(lambda: client.stats().buffered == 151)
        assert not client.stats().dropped
    finally:
        fluent_server.refuse(False)
        client.close()


def test_drop_newest_is_the_default_and_keeps_the_oldest(fluent_server):
    fluent_server.refuse()
    n = 5000
    client = client_for(fluent_server, buffering=Buffering(limit=64 * 1024))
    results = [client.post("t", {"i": i, "pad": PAD}) for i in range(n)]
    assert results[0] is True and results.count(False) > 0
    assert wait_until(lambda: client.stats().buffered + client.stats().dropped_total == n)
    fluent_server.refuse(False)
    assert client.flush(timeout=10)
    report = client.shutdown(timeout=5)
    got = ids(fluent_server)
    assert got[:100] == list(range(100))
    assert len(got) + report.dropped["buffer_full"] == n
    assert "evicted" not in report.dropped


def fill(client: BufferedClient, limit: int = 400_000) -> int:
    """Post until the client refuses a record; returns how many it took."""
    for i in range(limit):
        if not client.post("t", {"i": i, "pad": PAD}):
            return i
    raise AssertionError("the buffer never filled")


def test_raise_policy_raises_without_sync_append(fluent_server):
    fluent_server.stall()
    client = client_for(fluent_server, buffering=Buffering(limit=64 * 1024, overflow="raise"))
    with pytest.raises(BufferFullError):
        for i in range(400_000):
            client.post("t", {"i": i, "pad": PAD})
    assert client.stats().dropped == {"buffer_full": 1}
    client.close()


def test_block_gives_up_after_its_timeout_and_counts_the_drop(fluent_server):
    fluent_server.refuse()
    client = client_for(fluent_server,
                        buffering=Buffering(limit=64 * 1024, overflow="block",
                                            overflow_timeout=0.3))
    taken = fill(client)
    assert taken > 100
    start = time.monotonic()
    assert client.post("t", {"i": -1}) is False
    waited = time.monotonic() - start
    assert 0.3 <= waited < 5
    with pytest.raises(BufferFullError):
        client.post("t", {"i": -2}, sync_append=True)
    assert client.stats().dropped == {"buffer_full": 3}
    client.close()


def test_block_waits_for_room_and_loses_nothing(fluent_server):
    fluent_server.refuse()
    n = 30_000
    client = client_for(fluent_server,
                        buffering=Buffering(limit=64 * 1024, overflow="block",
                                            overflow_timeout=60))
    results: list[bool] = []
    poster = threading.Thread(
        target=lambda: results.extend(client.post("t", {"i": i, "pad": PAD}) for i in range(n))
    )
    poster.start()
    # Nothing can leave, so the buffer fills and post() waits for room.
    assert wait_until(client._admission.full, timeout=30)
    assert poster.is_alive()
    fluent_server.refuse(False)
    poster.join(timeout=60)
    assert not poster.is_alive()
    assert client.flush(timeout=30)
    report = client.shutdown(timeout=10)
    assert results == [True] * n
    assert report.dropped == {} and report.unsent_records == 0
    assert fluent_server.wait_for_events(n, timeout=10)
    assert ids(fluent_server) == list(range(n))


def test_on_unsent_gets_every_record_that_was_not_sent(fluent_server):
    fluent_server.refuse()
    handed: list[UnsentRecord] = []
    client = client_for(fluent_server, on_unsent=handed.extend, compress="gzip")
    posted = []
    for i in range(500):
        tag, when, record = f"app.t{i % 3}", EventTime(1_700_000_000 + i, i), {"i": i, "b": b"\x00"}
        client.post(tag, record, time=when)
        posted.append(UnsentRecord(tag, when, record))
    report = client.shutdown(timeout=0.3)
    assert report.unsent_records == 500 and report.handed_over == 500
    key = lambda r: r.record["i"]  # noqa: E731
    assert sorted(handed, key=key) == posted


def test_on_unsent_that_raises_is_logged_and_counted_as_unsent(fluent_server, caplog):
    fluent_server.refuse()

    def broken(records):
        raise RuntimeError("no disk")

    client = client_for(fluent_server, on_unsent=broken)
    for i in range(10):
        client.post("t", {"i": i})
    with caplog.at_level(logging.WARNING, logger="fluentclient"):
        report = client.shutdown(timeout=0.2)
    assert report.unsent_records == 10 and report.handed_over == 0
    assert "on_unsent callback raised" in caplog.text
    assert "stopped with 10 records" in caplog.text


def test_without_spool_or_callback_the_loss_is_logged_once_with_numbers(fluent_server, caplog):
    fluent_server.refuse()
    client = client_for(fluent_server)
    for i in range(42):
        client.post("t", {"i": i})
    with caplog.at_level(logging.WARNING, logger="fluentclient"):
        report = client.shutdown(timeout=0.2)
        client.shutdown(timeout=0.2)
    assert report.unsent_records == 42
    assert caplog.text.count("stopped with 42 records") == 1
