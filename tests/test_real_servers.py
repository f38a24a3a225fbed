"""The client against the servers users run: fluentd v1.14.4 and Fluent Bit v4.2.8."""

from __future__ import annotations

from fluentclient import BufferedClient, EventTime, SyncClient
from tests.real_servers import RealServer


def test_buffered_plain_stream_arrives_and_is_counted_sent(real_server: RealServer) -> None:
    client = BufferedClient("127.0.0.1", real_server.port)
    for i in range(2000):
        client.post("real.plain", {"i": i, "text": "é☃"}, time=EventTime(1700000000, i))
    report = client.shutdown(timeout=30)
    events = real_server.wait_for(2000, "real.plain")
    assert [r["i"] for _, _, r in events] == list(range(2000))
    assert [t for _, t, _ in events] == [1700000000 * 10**9 + i for i in range(2000)]
    assert events[0][2]["text"] == "é☃"
    assert (report.sent, report.possibly_lost, report.unsent_records) == (2000, 0, 0)


def test_sync_client_arrives(real_server: RealServer) -> None:
    with SyncClient("127.0.0.1", real_server.port) as client:
        for i in range(10):
            client.post("real.sync", {"i": i})
    events = real_server.wait_for(10, "real.sync")
    assert [record["i"] for _, _, record in events] == list(range(10))
