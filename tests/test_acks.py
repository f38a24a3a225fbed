"""At-least-once delivery: acks, delivery futures, resends, giving up, server restarts."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from fluentclient import (
    BufferedClient,
    Buffering,
)
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF


def acking_client(server: ForwardServer, **kwargs) -> BufferedClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("at_exit", False)
    kwargs.setdefault("require_ack", True)
    return BufferedClient(server.host, server.port, **kwargs)


def test_every_frame_carries_a_chunk_and_is_acked(fluent_server):
    with acking_client(fluent_server, buffering=Buffering(max_frame_size=4096)) as client:
        for i in range(2000):
            client.post("ack.all", {"i": i})
    stats = client.stats()
    assert stats.sent == 2000 and stats.buffered == 0
    frames = fluent_server.frames
    chunks = [f.options.get("chunk") for f in frames]
    assert all(isinstance(c, str) and len(c) == 24 for c in chunks)
    assert len(set(chunks)) == len(chunks) == fluent_server.acks_sent
    assert [e.record["i"] for e in fluent_server.events] == list(range(2000))


def test_delivery_futures_resolve_on_ack(fluent_server):
    with acking_client(fluent_server) as client:
        futures = [client.post("ack.f", {"i": i}, ack=True) for i in range(50)]
        for future in futures:
            assert future.result(timeout=5) is None
    assert fluent_server.event_count == 50


def test_delivery_futures_can_be_awaited(fluent_server):
    async def main() -> None:
        client = acking_client(fluent_server)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(client.post("ack.aio", {"i": i}, ack=True))
                                 for i in range(20))),
                timeout=5,
            )
        finally:
            client.shutdown(2)

    asyncio.run(main())
    assert fluent_server.event_count == 20


def test_ack_needs_require_ack(fluent_server):
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False)
    try:
        with pytest.raises(ValueError):
            client.post("ack.no", {"x": 1}, ack=True)
    finally:
        client.close()


def test_server_killed_and_restarted_mid_stream_loses_nothing(fluent_server):
    n = 100_000
    client = acking_client(fluent_server)
    try:
        for i in range(n):
            client.post("ack.restart", {"i": i})
            if i == n // 3:
                fluent_server.stop()
            elif i == n // 2:
                fluent_server.restart()
        assert client.flush(60)
    finally:
        report = client.shutdown(10)
    assert report.complete
    seen = Counter(e.record["i"] for e in fluent_server.events)
    assert set(seen) == set(range(n))  # not one record lost
    duplicates = sum(seen.values()) - n
    # Duplicates come only from frames in flight when the server went away, and every
    # one of them was counted as sent again.
    assert duplicates <= client.stats().retried
