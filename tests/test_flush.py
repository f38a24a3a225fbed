"""flush(timeout) is exact: True only once every record posted before the call was written
(acknowledged, with acks) or counted as dropped."""

from __future__ import annotations

import threading

from hypothesis import given
from hypothesis import strategies as st

from fluentclient import BufferedClient, RecordRules
from fluentclient.server import ForwardServer


class Slow:
    """A value the ``default=`` hook converts only once the test lets it."""


def test_flush_waits_for_a_batch_the_reader_holds() -> None:
    """The reader has taken the record off the queue and is still packing it: the queue is
    empty and nothing is buffered, yet the record was posted before flush()."""
    entered, release = threading.Event(), threading.Event()

    def convert(obj: object) -> object:
        if isinstance(obj, Slow):
            entered.set()
            release.wait(30)
            return "converted"
        raise TypeError

    outcome: dict[str, bool] = {}
    with ForwardServer() as server:
        client = BufferedClient(server.host, server.port, at_exit=False,
                                records=RecordRules(default=convert))
        client.post("flush.held", {"value": Slow()})
        assert entered.wait(30)

        def flush() -> None:
            result = client.flush(timeout=30)
            outcome["released_first"] = release.is_set()
            outcome["result"] = result

        flusher = threading.Thread(target=flush)
        flusher.start()
        flusher.join(1.0)  # room for a wrong answer: flush() must not return yet
        release.set()
        flusher.join(30)
        assert outcome == {"result": True, "released_first": True}
        assert client.stats().buffered_bytes == 0
        assert server.wait_for_events(1, timeout=30)
        client.shutdown(timeout=10)


def test_flush_counts_a_record_dropped_in_the_reader() -> None:
    with ForwardServer() as server:
        client = BufferedClient(server.host, server.port, at_exit=False)
        client.post("flush.bad", {"value": object()})  # cannot be serialized: dropped
        client.post("flush.good", {"i": 1})
        assert client.flush(timeout=30)
        stats = client.stats()
        assert stats.dropped == {"unserializable": 1}
        assert stats.buffered_bytes == 0
        client.shutdown(timeout=10)


@given(threads=st.integers(1, 4), per_thread=st.integers(1, 400), ack=st.booleans())
def test_flush_after_concurrent_posts_leaves_nothing_held(
    threads: int, per_thread: int, ack: bool
) -> None:
    with ForwardServer() as server:
        client = BufferedClient(server.host, server.port, at_exit=False, require_ack=ack)
        barrier = threading.Barrier(threads)

        def post(n: int) -> None:
            barrier.wait(30)
            for i in range(per_thread):
                client.post(f"flush.t{n}", {"i": i})

        workers = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert client.flush(timeout=30)
        stats = client.stats()
        assert stats.posted == threads * per_thread
        assert stats.buffered_bytes == 0
        if ack:
            assert stats.sent == threads * per_thread  # acknowledged, every one
        client.shutdown(timeout=10)
