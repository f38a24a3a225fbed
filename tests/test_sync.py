"""SyncClient: sends on the caller's thread, raises on failure, reconnects on the next call."""

from __future__ import annotations

import socket
import threading

import pytest

from fluentclient import (
    EventTime,
    FluentConnectionError,
    FluentError,
    InvalidTagError,
    SerializationError,
    SyncClient,
)
from fluentclient.server import ForwardServer


def test_each_post_arrives_before_it_returns(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        for i in range(20):
            client.post("sync.a", {"i": i}, time=EventTime(1700000000, i))
            # Sent means on the wire: the server sees it without any flush.
            assert fluent_server.wait_for_events(i + 1, timeout=5)
    assert [(e.time, e.record) for e in fluent_server.events] == [
        (EventTime(1700000000, i), {"i": i}) for i in range(20)
    ]
    assert client.stats().sent == 20


def test_raises_when_no_server_listens():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    client = SyncClient("127.0.0.1", port, connect_timeout=1)
    with pytest.raises(FluentConnectionError) as info:
        client.post("sync.down", {"x": 1})
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, FluentError)
    assert client.stats().connect_failures == 1


def test_reconnects_on_the_next_call_after_a_restart(fluent_server):
    client = SyncClient(fluent_server.host, fluent_server.port)
    client.post("sync.r", {"n": 1})
    assert fluent_server.wait_for_events(1, timeout=5)
    fluent_server.stop()
    with pytest.raises(FluentConnectionError):
        # The old connection is gone and nothing listens: this call must fail loudly.
        client.post("sync.r", {"n": 2})
    fluent_server.restart()
    client.post("sync.r", {"n": 3})
    assert fluent_server.wait_for(lambda: any(e.record == {"n": 3} for e in fluent_server.events),
                                  timeout=5)
    client.close()


def test_bad_input_raises_and_nothing_is_sent(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        with pytest.raises(InvalidTagError):
            client.post("bad tag", {"x": 1})
        with pytest.raises(SerializationError):
            client.post("sync.bad", {"x": object()})
        client.post("sync.bad", {"x": 1})
    assert fluent_server.wait_for_events(1, timeout=5)
    assert [e.record for e in fluent_server.events] == [{"x": 1}]


def test_unix_socket(tmp_path):
    with ForwardServer(unix_path=str(tmp_path / "s.sock")) as server:
        with SyncClient(unix_path=server.unix_path) as client:
            client.post("sync.unix", {"x": 1})
        assert server.wait_for_events(1, timeout=5)


def test_uses_the_same_frames_as_the_buffered_client(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        client.post("sync.f", {"x": 1})
    assert fluent_server.wait_for_events(1, timeout=5)
    frame = fluent_server.frames[0]
    assert frame.mode == "PackedForward" and frame.options == {"size": 1}


def _fates(stats) -> int:
    return stats.sent + stats.dropped_total + stats.unsent + stats.possibly_lost


def test_a_failed_send_is_counted_as_dropped_never_as_buffered():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    client = SyncClient("127.0.0.1", port, connect_timeout=1)
    for _ in range(2):
        with pytest.raises(FluentConnectionError):
            client.post("sync.down", {"x": 1})
    s = client.stats()
    assert (s.posted, s.sent, s.buffered, s.possibly_lost) == (2, 0, 0, 0)
    assert s.dropped == {"send_failed": 2}
    assert s.posted == _fates(s)
    assert client.shutdown().dropped == {"send_failed": 2}


def test_a_record_written_but_never_acked_is_possibly_lost_not_buffered(fluent_server):
    fluent_server.withhold_acks()
    client = SyncClient(fluent_server.host, fluent_server.port, require_ack=True,
                        ack_timeout=0.5)
    with pytest.raises(FluentError):
        client.post("sync.noack", {"x": 1})
    s = client.stats()
    assert (s.posted, s.sent, s.buffered, s.possibly_lost, s.dropped) == (1, 0, 0, 1, {})
    client.close()


def test_stats_during_a_send_show_nothing_buffered():
    with ForwardServer() as server:
        server.withhold_acks()
        client = SyncClient(server.host, server.port, require_ack=True, ack_timeout=30)
        failed: list[BaseException] = []

        def post() -> None:
            try:
                client.post("sync.inflight", {"x": 1})
            except FluentError as exc:
                failed.append(exc)

        poster = threading.Thread(target=post)
        poster.start()
        try:
            # The record is on the server: the call now waits for an ack that never comes.
            assert server.wait_for_events(1, timeout=10)
            s = client.stats()
            assert s.buffered == 0 and s.posted == _fates(s) == 0, s
        finally:
            server.stop()  # the connection ends: the wait for the ack fails
            poster.join(10)
        assert not poster.is_alive() and len(failed) == 1
        s = client.stats()
        assert (s.posted, s.buffered, s.possibly_lost) == (1, 0, 1), s
        client.close()
