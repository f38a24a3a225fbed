"""Acks under server faults: delayed, withheld, garbled or duplicated acks."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from fluentclient import (
    Buffering,
    ClientClosedError,
    DeliveryError,
    FluentTimeoutError,
    SyncClient,
    Timeouts,
)

from .test_acks import acking_client


def test_flush_waits_for_acks_not_writes(fluent_server):
    fluent_server.delay_acks(0.3)
    client = acking_client(fluent_server, buffering=Buffering(flush_interval=3600))
    try:
        for i in range(100):
            client.post("ack.flush", {"i": i})
        assert client.flush(5)
        # sent counts only acknowledged records: after flush() every one must be.
        assert client.stats().sent == 100
    finally:
        client.shutdown(2)


def test_withheld_acks_are_resent_on_a_new_connection(fluent_server):
    fluent_server.withhold_acks(True)
    client = acking_client(fluent_server, timeouts=Timeouts(ack=0.3))
    try:
        futures = [client.post("ack.held", {"i": i}, ack=True) for i in range(100)]
        assert fluent_server.wait_for(lambda: client.stats().retried >= 100, timeout=10)
        fluent_server.withhold_acks(False)
        for future in futures:
            future.result(timeout=10)
    finally:
        client.shutdown(2)
    seen = Counter(e.record["i"] for e in fluent_server.events)
    assert set(seen) == set(range(100))  # none lost
    assert max(seen.values()) >= 2  # the same frames again, as at-least-once allows
    stats = client.stats()
    assert stats.sent == 100 and stats.retried >= 100 and stats.connection_failures >= 1


@pytest.mark.parametrize("fault", ["garble_acks", "duplicate_acks"])
def test_acks_out_of_step_fail_the_connection_and_nothing_is_lost(fluent_server, fault):
    getattr(fluent_server, fault)(True)
    client = acking_client(fluent_server, timeouts=Timeouts(ack_retries=100),
                           buffering=Buffering(max_frame_size=2048))
    try:
        futures = [client.post("ack.bad", {"i": i, "pad": "b" * 50}, ack=True)
                   for i in range(200)]
        assert fluent_server.wait_for(lambda: client.stats().connection_failures >= 1, 10)
        getattr(fluent_server, fault)(False)
        for future in futures:
            future.result(timeout=10)
    finally:
        client.shutdown(2)
    assert {e.record["i"] for e in fluent_server.events} == set(range(200))


def test_a_frame_never_acked_is_given_up_and_reported(fluent_server):
    fluent_server.withhold_acks(True)
    errors = []
    client = acking_client(fluent_server, timeouts=Timeouts(ack=0.1, ack_retries=2),
                           on_error=lambda err, msg: errors.append(err))
    try:
        future = client.post("ack.never", {"x": 1}, ack=True)
        with pytest.raises(DeliveryError):
            future.result(timeout=10)
        stats = client.stats()
        # It was written three times: the server may hold it, so it is possibly lost,
        # never dropped (which would say it never left the process).
        assert stats.dropped == {} and stats.possibly_lost == 1
        assert any(isinstance(e, DeliveryError) for e in errors)
        assert fluent_server.event_count == 3  # the first attempt and two retries
    finally:
        client.close()


def test_futures_of_records_unsent_at_shutdown_fail(fluent_server):
    fluent_server.withhold_acks(True)
    client = acking_client(fluent_server)
    future = client.post("ack.close", {"x": 1}, ack=True)
    report = client.shutdown(0.3)
    assert report.unsent_records == 1
    with pytest.raises(ClientClosedError):
        future.result(timeout=1)


def test_sync_client_waits_for_the_ack(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port, require_ack=True) as client:
        done = client.post("ack.sync", {"x": 1}, ack=True)
        assert done.done() and done.result() is None
        assert fluent_server.acks_sent == 1
    fluent_server.withhold_acks(True)
    client = SyncClient(fluent_server.host, fluent_server.port, require_ack=True,
                        timeouts=Timeouts(ack=0.2))
    t0 = time.monotonic()
    with pytest.raises(FluentTimeoutError):
        client.post("ack.sync", {"x": 2})
    assert time.monotonic() - t0 < 2
    client.close()
