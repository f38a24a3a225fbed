"""asyncio helpers over real sockets: awaiting acks, flush and shutdown off the loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from fluentclient import (
    BufferedClient,
    Buffering,
    DeliveryError,
    FluentTimeoutError,
    SerializationError,
    SyncClient,
    Timeouts,
    aio,
)
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF


def client_for(server: ForwardServer, **kwargs) -> BufferedClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("at_exit", False)
    return BufferedClient(server.host, server.port, **kwargs)


class Ticker:
    """A task that ticks every 5 ms; the longest gap shows whether the loop was blocked."""

    def __init__(self) -> None:
        self.ticks = 0
        self.longest_gap = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            self.longest_gap = max(self.longest_gap, now - last)
            self.ticks += 1
            last = now

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def test_a_coroutine_posting_a_non_mapping_hears_at_once(fluent_server):
    """Even with ack=True: the error comes from post(), not from the awaited future."""

    async def main() -> None:
        client = client_for(fluent_server, require_ack=True)
        try:
            with pytest.raises(SerializationError, match="not str"):
                client.post("aio.nomap", "hello", ack=True)  # type: ignore[arg-type]
            await aio.delivered(client.post("aio.nomap", {"ok": 1}, ack=True), timeout=10)
        finally:
            await aio.shutdown(client, timeout=2)

    asyncio.run(main())
    assert [e.record for e in fluent_server.events] == [{"ok": 1}]


def test_coroutines_post_and_await_every_ack(fluent_server):
    async def main() -> None:
        client = client_for(fluent_server, require_ack=True)
        try:
            futures = [client.post("aio.ack", {"i": i}, ack=True) for i in range(500)]
            await asyncio.gather(*(aio.delivered(f, timeout=10) for f in futures))
            assert all(f.done() and f.exception() is None for f in futures)
            assert client.stats().sent == 500
        finally:
            await aio.shutdown(client, timeout=2)

    asyncio.run(main())
    assert sorted(e.record["i"] for e in fluent_server.events) == list(range(500))
    assert fluent_server.acks_sent == len(fluent_server.frames)


def test_delivered_times_out_without_touching_the_future(fluent_server):
    fluent_server.withhold_acks(True)

    async def main() -> None:
        client = client_for(fluent_server, require_ack=True, timeouts=Timeouts(ack=0.3))
        try:
            future = client.post("aio.late", {"x": 1}, ack=True)
            assert await asyncio.to_thread(fluent_server.wait_for_events, 1)  # it arrived
            with pytest.raises(FluentTimeoutError):
                await aio.delivered(future, timeout=0.1)
            assert not future.done()  # still waiting: the timeout was only ours
            fluent_server.withhold_acks(False)
            await aio.delivered(future, timeout=10)  # resent after ack_timeout, acked now
        finally:
            await aio.shutdown(client, timeout=2)

    asyncio.run(main())
    assert fluent_server.event_count >= 2  # the first send and the resend


def test_delivered_raises_why_a_record_was_given_up(fluent_server):
    fluent_server.withhold_acks(True)

    async def main() -> None:
        client = client_for(fluent_server, require_ack=True,
                            timeouts=Timeouts(ack=0.1, ack_retries=1))
        try:
            with pytest.raises(DeliveryError):
                await aio.delivered(client.post("aio.never", {"x": 1}, ack=True), timeout=10)
        finally:
            await aio.shutdown(client, timeout=1)

    asyncio.run(main())


def test_flush_waits_off_the_loop_and_respects_its_deadline(fluent_server):
    fluent_server.refuse(True)

    async def main() -> None:
        client = client_for(fluent_server, buffering=Buffering(flush_interval=3600))
        try:
            for i in range(100):
                client.post("aio.flush", {"i": i})
            with Ticker() as ticker:
                t0 = time.monotonic()
                assert await aio.flush(client, timeout=0.5) is False  # nobody to send to
                elapsed = time.monotonic() - t0
            assert 0.5 <= elapsed < 1.5
            # A blocked loop would show one gap as long as the flush.
            assert ticker.ticks >= 20 and ticker.longest_gap < 0.25
            fluent_server.refuse(False)
            assert await aio.flush(client, timeout=10) is True
            assert await asyncio.to_thread(fluent_server.wait_for_events, 100)
        finally:
            await aio.shutdown(client, timeout=2)

    asyncio.run(main())
    assert fluent_server.event_count == 100


def test_shutdown_off_the_loop_returns_the_report_by_the_deadline(fluent_server):
    fluent_server.refuse(True)

    async def main() -> None:
        client = client_for(fluent_server)
        for i in range(50):
            client.post("aio.stop", {"i": i})
        with Ticker() as ticker:
            t0 = time.monotonic()
            report = await aio.shutdown(client, timeout=0.3)
            elapsed = time.monotonic() - t0
        assert report.unsent_records == 50 and not report.complete
        assert elapsed < 0.3 + 1.0
        assert ticker.ticks >= 10 and ticker.longest_gap < 0.25

    asyncio.run(main())


def test_a_cancelled_flush_does_not_hold_up_the_loop_or_its_exit(fluent_server):
    # No timeout, and a server that never answers: only cancelling ends the wait. A flush
    # run on asyncio's default pool would now keep asyncio.run() from returning.
    fluent_server.refuse(True)
    client = client_for(fluent_server)
    client.post("aio.cancel", {"x": 1})

    async def main() -> None:
        task = asyncio.ensure_future(aio.flush(client))
        with Ticker() as ticker:
            done, _ = await asyncio.wait({task}, timeout=0.2)
            assert not done
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert ticker.ticks >= 5

    t0 = time.monotonic()
    asyncio.run(main())
    try:
        assert time.monotonic() - t0 < 2
    finally:
        client.shutdown(0.2)  # also releases the flush thread


def test_helpers_accept_the_sync_client(fluent_server):
    async def main() -> None:
        client = SyncClient(fluent_server.host, fluent_server.port, require_ack=True)
        await aio.delivered(client.post("aio.sync", {"x": 1}, ack=True))
        assert await aio.flush(client) is True
        report = await aio.shutdown(client, timeout=1)
        assert report.sent == 1

    asyncio.run(main())
    assert fluent_server.event_count == 1


def test_client_methods_await_flush_and_shutdown(fluent_server):
    async def main() -> tuple[bool, int]:
        client = client_for(fluent_server)
        with Ticker() as ticker:
            for i in range(1000):
                client.post("aio.methods", {"i": i})
            flushed = await client.aflush(timeout=5)
            report = await client.ashutdown(timeout=5)
        assert ticker.longest_gap < 0.5
        return flushed, report.sent

    flushed, sent = asyncio.run(main())
    assert flushed and sent == 1000
    assert fluent_server.wait_for_events(1000)
