"""Counts that faults must not make wrong: what is reported unsent never arrives, and a
connection reset never makes the server see a record twice (without acks).

Found while measuring the failure scenarios (benchmarks/scenarios.py).
"""

from __future__ import annotations

import time
from collections import Counter

import pytest

from fluentclient import BufferedClient, Buffering, Timeouts
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF


def fill_until_stuck(client: BufferedClient, tag: str) -> int:
    """Post until the buffer overflows and the writer's byte count stands still."""
    deadline = time.monotonic() + 20
    last, still, i = -1, 0, 0
    while time.monotonic() < deadline:
        for _ in range(500):
            client.post(tag, {"i": i, "pad": "x" * 200})
            i += 1
        s = client.stats()
        if s.dropped.get("buffer_full"):
            still = still + 1 if s.bytes_sent == last else 0
            last = s.bytes_sent
            if still >= 3:
                return i
            time.sleep(0.05)
    raise AssertionError("the client never got stuck")


@pytest.fixture(params=["tcp", "unix"])
def any_server(request, tmp_path):
    if request.param == "tcp":
        server = ForwardServer()
    else:
        server = ForwardServer(unix_path=str(tmp_path / "fluent.sock"))
    with server:
        yield server


def client_for(server: ForwardServer, **kwargs) -> BufferedClient:
    if server.unix_path:
        return BufferedClient(unix_path=server.unix_path, **kwargs)
    return BufferedClient(server.host, server.port, **kwargs)


def test_records_reported_unsent_at_the_deadline_never_reach_the_server(any_server):
    fluent_server = any_server
    fluent_server.stall()
    unsent: list = []
    client = client_for(fluent_server, at_exit=False, timeouts=Timeouts(write=30),
                        buffering=Buffering(limit=2**20), backoff=FAST_BACKOFF,
                        on_unsent=unsent.extend)
    fill_until_stuck(client, "acct.stuck")
    report = client.shutdown(0.3)
    # What was wholly written to the stuck connection may still be read: possibly lost.
    # Only what never went out is unsent (over TCP the kernels' buffers can hold all of
    # a 1 MiB buffer, so there may be none).
    assert report.timed_out and report.unsent_records + report.possibly_lost > 0
    assert len(unsent) == report.unsent_records
    # The server comes back and reads whatever reached it, to the end of the connection.
    fluent_server.stall(False)
    assert fluent_server.wait_for(lambda: fluent_server.open_connections == 0, timeout=10)
    received = Counter(e.record["i"] for e in fluent_server.events)
    # Records counted unsent (handed to on_unsent, or to a spool) must never arrive.
    assert not {u.record["i"] for u in unsent} & set(received)
    assert sum(received.values()) <= report.sent + report.possibly_lost
    assert max(received.values(), default=1) == 1


def test_a_server_restart_mid_stream_never_duplicates_without_acks(fluent_server):
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            backoff=FAST_BACKOFF, buffering=Buffering(flush_interval=0.005))
    posted = 0

    def duplicated() -> list[int]:
        received = Counter(e.record["i"] for e in fluent_server.events)
        return [i for i, n in received.items() if n > 1]

    try:
        # A duplicate needs a reset within a few milliseconds of a write: try up to 40
        # restarts, each in the middle of a steady stream of small frames.
        for _ in range(40):
            start = time.monotonic()
            while time.monotonic() - start < 0.05:
                for _ in range(50):
                    client.post("acct.restart", {"i": posted})
                    posted += 1
                time.sleep(0.002)
            fluent_server.stop()
            fluent_server.restart()
            if duplicated():
                break
        report = client.shutdown(10)
    finally:
        client.close()
    assert report.unsent_records == 0
    assert fluent_server.wait_for(lambda: fluent_server.open_connections == 0, timeout=10)
    assert duplicated() == []
