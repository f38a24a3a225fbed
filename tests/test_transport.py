"""gzip, several servers, keepalive and the options for old servers."""

from __future__ import annotations

import re
import time

import pytest

from fluentclient import BufferedClient, Buffering, RecordRules, Server, SyncClient, Timeouts
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .waiting import wait_until


def test_gzip_frames_arrive_whole(fluent_server):
    with BufferedClient(fluent_server.host, fluent_server.port, compress="gzip",
                        compress_level=9, require_ack=True, at_exit=False) as client:
        for i in range(3000):
            client.post("gz.a", {"i": i, "msg": "compress me " * 4})
    assert fluent_server.wait_for_events(3000, timeout=5)
    assert {f.mode for f in fluent_server.frames} == {"CompressedPackedForward"}
    assert all(f.options["compressed"] == "gzip" for f in fluent_server.frames)
    assert [e.record["i"] for e in fluent_server.events] == list(range(3000))
    # Compression must pay: far fewer bytes on the wire than the records' own size.
    assert fluent_server.bytes_received < 3000 * 60


def test_sync_client_gzip(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port, compress="gzip") as client:
        client.post("gz.sync", {"x": 1})
    assert fluent_server.wait_for_events(1, timeout=5)
    assert fluent_server.frames[0].mode == "CompressedPackedForward"


def test_bad_compress_option():
    with pytest.raises(ValueError):
        BufferedClient(compress="zstd", at_exit=False)


def test_entries_as_str_for_old_servers(fluent_server):
    with BufferedClient(fluent_server.host, fluent_server.port,
                        records=RecordRules(entries_as_str=True, int_time=True),
                        at_exit=False) as client:
        client.post("old.srv", {"x": 1}, time=1700000000)
    assert fluent_server.wait_for_events(1, timeout=5)
    assert fluent_server.events[0].time == 1700000000


def servers_for(*srvs: ForwardServer, standby: tuple[bool, ...] = (), weights=()) -> list[Server]:
    return [
        Server(s.host, s.port, standby=standby[i] if standby else False,
               weight=weights[i] if weights else 60)
        for i, s in enumerate(srvs)
    ]


def test_records_are_spread_over_servers_by_weight():
    with ForwardServer() as a, ForwardServer() as b:
        client = BufferedClient(servers=servers_for(a, b, weights=(30, 90)), at_exit=False,
                                buffering=Buffering(max_frame_size=1024, write_threshold=512))
        for i in range(4000):
            client.post("lb.w", {"i": i, "pad": "w" * 40})
        report = client.shutdown(10)
        assert report.complete
        assert a.event_count + b.event_count == 4000
        assert a.event_count > 0 and b.event_count > 0
        # Weighted 1:3 by frame; allow slack for frame sizes.
        assert 2.0 < b.event_count / a.event_count < 4.5
        states = {s.address: s for s in client.stats().servers}
        assert set(states) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}


def test_a_sync_client_spreads_its_calls_over_servers_by_weight():
    with ForwardServer() as a, ForwardServer() as b:
        with SyncClient(servers=servers_for(a, b, weights=(30, 90))) as client:
            for i in range(400):
                client.post("lb.sync", {"i": i, "pad": "w" * 40})
        assert wait_until(lambda: a.event_count + b.event_count == 400)
        # One record per call, equal sizes: 1:3 exactly, give or take the first calls.
        assert 90 <= a.event_count <= 110, (a.event_count, b.event_count)


def test_failover_to_the_healthy_server_and_rejoin():
    with ForwardServer() as a, ForwardServer() as b:
        client = BufferedClient(servers=servers_for(a, b), backoff=FAST_BACKOFF, at_exit=False,
                                buffering=Buffering(flush_interval=0.01), require_ack=True)
        try:
            a.stop()
            futures = [client.post("lb.f", {"i": i}, ack=True) for i in range(500)]
            for future in futures:
                future.result(timeout=10)
            assert b.event_count == 500
            a_stats = [s for s in client.stats().servers if s.address.endswith(str(a.port))][0]
            assert a_stats.failures >= 1
            a.restart()
            # a rejoins once its backoff allows: keep posting until it takes records.
            deadline = time.monotonic() + 10
            while a.event_count == 0 and time.monotonic() < deadline:
                client.post("lb.f", {"late": 1})
                a.wait_for(lambda: a.event_count > 0, timeout=0.02)
            assert a.event_count > 0
        finally:
            client.shutdown(5)


def test_standby_takes_over_only_while_primaries_fail():
    with ForwardServer() as primary, ForwardServer() as standby:
        client = BufferedClient(servers=servers_for(primary, standby, standby=(False, True)),
                                backoff=FAST_BACKOFF, at_exit=False, require_ack=True)
        try:
            for i in range(100):
                client.post("sb.a", {"i": i})
            assert client.flush(5)
            assert (primary.event_count, standby.event_count) == (100, 0)
            primary.stop()
            futures = [client.post("sb.b", {"i": i}, ack=True) for i in range(100)]
            for future in futures:
                future.result(timeout=10)
            assert standby.event_count == 100
        finally:
            client.shutdown(5)


def test_server_specs_parse():
    assert Server.parse("example.org:24225") == Server("example.org", 24225)
    assert Server.parse(("h", 1)) == Server("h", 1)
    assert Server.parse("unix:///tmp/f.sock") == Server(unix_path="/tmp/f.sock")
    with pytest.raises(ValueError):
        BufferedClient(servers=[Server(standby=True)], at_exit=False)


def test_server_specs_parse_ipv6_and_check_ports():
    assert Server.parse("::1") == Server("::1")  # bare: the default port
    assert Server.parse("fe80::1:2") == Server("fe80::1:2")
    assert Server.parse("[::1]:24225") == Server("::1", 24225)
    assert Server.parse("[::1]") == Server("::1")
    assert Server.parse("example.org") == Server("example.org")
    assert Server.parse("10.0.0.1:24226") == Server("10.0.0.1", 24226)
    assert Server.parse(("::1", "24225")) == Server("::1", 24225)
    for bad in ("h:", "h:x", "h:0", "h:65536", "h: 1", "[::1]:", "[::1]:port", ("h", 70000)):
        with pytest.raises(ValueError, match="port"):
            Server.parse(bad)  # type: ignore[arg-type]
    for bad in ("[::1", "[::1]x"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            Server.parse(bad)


def test_idle_connection_is_closed_and_reopened(fluent_server):
    client = BufferedClient(fluent_server.host, fluent_server.port, timeouts=Timeouts(idle=0.1),
                            buffering=Buffering(flush_interval=0.01),
                            at_exit=False)
    try:
        client.post("ka.a", {"n": 1})
        assert fluent_server.wait_for_events(1, timeout=5)
        assert fluent_server.wait_for(lambda: fluent_server.open_connections == 0, timeout=5)
        client.post("ka.a", {"n": 2})
        assert fluent_server.wait_for_events(2, timeout=5)
        assert fluent_server.connections_accepted == 2
        assert client.stats().possibly_lost == 0  # closed with a FIN answered: settled
    finally:
        client.shutdown(2)


def test_compressed_frames_of_incompressible_records_stay_within_the_limit(fluent_server):
    import os

    limit = 8192
    with BufferedClient(fluent_server.host, fluent_server.port, compress="gzip",
                        buffering=Buffering(max_frame_size=limit), at_exit=False) as client:
        for _ in range(200):
            client.post("gz.rand", {"noise": os.urandom(700)})
    assert fluent_server.wait_for_events(200, timeout=5)
    frames = fluent_server.frames
    assert len(frames) > 10
    # Every frame's wire size, rebuilt from what arrived, stays within max_frame_size.
    from fluentclient.framing import EntryPacker, FrameBuilder, decoded_time_ns
    from fluentclient.message import Message

    packer, builder = EntryPacker(), FrameBuilder(compress="gzip", level=6)
    for frame in frames:
        entries = b"".join(packer.pack(Message(frame.tag, rec, decoded_time_ns(t)))
                           for t, rec in frame.entries)
        data, _ = builder.build(frame.tag, entries, len(frame.entries))
        assert len(data) <= limit


def test_every_address_of_a_host_is_tried_in_turn(fluent_server):
    import socket

    from fluentclient._transport._connection import Connection
    from fluentclient.errors import FluentConnectionError

    # Nothing listens on 127.0.0.2 (the server is bound to 127.0.0.1 only): refused, so
    # the next address is tried, as for a host whose IPv6 address comes first.
    first = (socket.AF_INET, ("127.0.0.2", fluent_server.port))
    good = (socket.AF_INET, ("127.0.0.1", fluent_server.port))
    conn = Connection(("example.test", fluent_server.port), resolved=[first, good])
    conn.connect(time.monotonic() + 5)
    assert conn.sock is not None and conn.sock.getpeername() == good[1]
    conn.close()
    only_bad = Connection(("example.test", fluent_server.port), resolved=[first, first])
    with pytest.raises(FluentConnectionError, match="refused"):
        only_bad.connect(time.monotonic() + 5)


def test_an_outage_is_logged_once_and_its_end_once(fluent_server, caplog):
    import logging

    fluent_server.refuse()
    with caplog.at_level(logging.DEBUG, logger="fluentclient"):
        client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                                backoff=FAST_BACKOFF)
        client.post("t", {"n": 1})
        deadline = time.monotonic() + 10
        while client.stats().connect_failures < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.stats().connect_failures >= 5
        fluent_server.refuse(False)
        assert client.flush(timeout=10)
        client.shutdown(timeout=5)
    warnings = [r for r in caplog.records
                if r.levelno == logging.WARNING and "cannot connect" in r.getMessage()]
    assert len(warnings) == 1
    recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("failed attempts" in m for m in recovered)
