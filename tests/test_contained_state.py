"""One client state, one source of "settled": flush() and post() against a shutdown.

flush() must not claim that records were written when a shutdown left them unsent, and a
post() that races a shutdown must end either refused (counted ``closed``) or handed over
with every other unsent record, never in between.
"""

from __future__ import annotations

import inspect
import itertools
import sys
import threading
import time
from types import FrameType
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import BufferedClient, Buffering
from fluentclient.server import ForwardServer
from fluentclient.stats import Stats, UnsentRecord

from .conftest import FAST_BACKOFF
from .waiting import wait_until


def client_for(server: ForwardServer, **kwargs: Any) -> BufferedClient:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("at_exit", False)
    return BufferedClient(server.host, server.port, **kwargs)


def ids(server: ForwardServer, tag: str | None = None) -> list[int]:
    return [e.record["i"] for e in server.events if tag is None or e.tag == tag]


# A tag per hypothesis example: what an earlier example's client wrote before it was shut
# down may still reach the shared server after clear() on a loaded machine.
_EXAMPLES = itertools.count()


def balanced(s: Stats) -> bool:
    return s.posted + s.replayed == (
        s.sent + s.dropped_total + s.unsent + s.possibly_lost + s.buffered)


def closing(client: BufferedClient) -> bool:
    """Whether shutdown() has begun: it has set the writer's drain deadline."""
    return client._life.drain_deadline is not None


class Unsent:
    """An on_unsent callback that keeps what it was handed."""

    def __init__(self) -> None:
        self.records: list[UnsentRecord] = []
        self.calls = 0

    def __call__(self, records: list[UnsentRecord]) -> None:
        self.calls += 1
        self.records.extend(records)

    def ids(self) -> list[int]:
        return [r.record["i"] for r in self.records]  # type: ignore[misc]


# -- item 3: flush() during and after a shutdown that leaves records unsent ---------------


def test_flush_during_and_after_a_shutdown_that_left_records_unsent_is_false(fluent_server):
    """A stalled server takes no acks' worth of anything: the 5,000 records held are
    unsent at the deadline, so no flush can say they were written."""
    fluent_server.stall()
    client = client_for(fluent_server, require_ack=True)
    n = 5000
    assert all(client.post("t", {"i": i}) for i in range(n))
    # All written to the socket (the stalled server only stops reading), none confirmed.
    assert wait_until(lambda: client.stats().frames_sent > 0, timeout=30)
    reports: list[Any] = []
    ending = threading.Thread(target=lambda: reports.append(client.shutdown(2)))
    ending.start()
    try:
        assert wait_until(lambda: closing(client) or reports, timeout=30)
        # A flush from another thread while the shutdown drains: it must wait for the
        # outcome (well within its own timeout) and report that it failed.
        started = time.monotonic()
        during = client.flush(timeout=60)
        took = time.monotonic() - started
    finally:
        ending.join(60)
    assert not ending.is_alive()
    [report] = reports
    assert report.unsent_records == n and report.timed_out
    assert during is False
    assert took < 50, "flush() should return when the shutdown ends, not at its timeout"
    assert client.flush() is False
    assert client.flush(timeout=0) is False


def test_flush_after_a_close_with_records_held_is_false(fluent_server):
    fluent_server.stall()
    client = client_for(fluent_server, require_ack=True)
    assert client.post("t", {"i": 0})
    client.close()
    assert client.stats().unsent == 1
    assert client.flush(timeout=5) is False


def test_flush_after_a_clean_shutdown_is_true(fluent_server):
    client = client_for(fluent_server)
    assert all(client.post("t", {"i": i}) for i in range(100))
    report = client.shutdown(30)
    assert report.unsent_records == 0 and not report.timed_out
    assert client.flush(timeout=5) is True
    assert fluent_server.wait_for_events(100, timeout=10)


def test_flush_true_means_the_server_has_every_record_posted_before_the_call(fluent_server):
    """With acks, a True flush means the server confirmed every record posted before
    the call, while another thread keeps posting through it."""
    client = client_for(fluent_server, require_ack=True, buffering=Buffering(flush_interval=0.05))
    stop = threading.Event()
    returned = [0]  # posts that returned True, in order of their ids

    def poster() -> None:
        i = 0
        while not stop.is_set() and i < 200_000:
            assert client.post("t", {"i": i})
            i += 1
            returned[0] = i

    thread = threading.Thread(target=poster, daemon=True)
    thread.start()
    try:
        checked = 0
        while checked < 5:
            assert wait_until(lambda: returned[0] > 0, timeout=30)
            before = returned[0]
            assert client.flush(timeout=60) is True
            have = set(ids(fluent_server))
            missing = [i for i in range(before) if i not in have]
            assert missing == [], f"{len(missing)} records flushed but not on the server"
            checked += 1
    finally:
        stop.set()
        thread.join(30)
        client.shutdown(30)


# -- item 6: a post() between its check and its append while shutdown() runs -----------


def append_line() -> int:
    """The line of post()'s fast path that appends the record to the queue."""
    lines, first = inspect.getsourcelines(BufferedClient.post)
    for offset, text in enumerate(lines):
        if "queue.append(" in text:
            return first + offset
    raise AssertionError("post() has no queue.append line")


class Preempted:
    """Runs post() on a thread that pauses right before the fast path's append, until
    told to go on: as if the interpreter switched threads at that line."""

    def __init__(self, client: BufferedClient, tag: str, record: dict[str, Any]) -> None:
        self._client = client
        self._tag, self._record = tag, record
        self._line = append_line()
        self._code = BufferedClient.post.__code__
        self.paused = threading.Event()
        self.resume = threading.Event()
        self.result: list[object] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _trace(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if frame.f_code is not self._code:
            return None
        return self._local

    def _local(self, frame: FrameType, event: str, arg: object) -> Callable[..., Any] | None:
        if event == "line" and frame.f_lineno == self._line and not self.paused.is_set():
            self.paused.set()
            if not self.resume.wait(60):
                raise AssertionError("never resumed")
        return self._local

    def _run(self) -> None:
        sys.settrace(self._trace)
        try:
            # The Python path's post(), whose lines can be traced: the compiled one (the
            # instance's post where it runs) makes the same steps in C, where no line
            # event can pause it; a shutdown between them is the same race.
            self.result.append(BufferedClient.post(self._client, self._tag, self._record))
        finally:
            sys.settrace(None)

    def start(self) -> None:
        self.thread.start()
        assert self.paused.wait(30), "post() did not reach its append"

    def finish(self) -> object:
        self.resume.set()
        self.thread.join(30)
        assert not self.thread.is_alive()
        [result] = self.result
        return result


def warmed_client(server: ForwardServer, unsent: Unsent, **kwargs: Any) -> BufferedClient:
    """A running client that knows the tag: the next post takes the fast path."""
    client = client_for(server, on_unsent=unsent, **kwargs)
    assert client.post("t", {"i": -1})
    assert client.flush(timeout=30)
    return client


def test_a_post_preempted_across_a_whole_shutdown_is_refused_or_handed_over(fluent_server):
    unsent = Unsent()
    client = warmed_client(fluent_server, unsent)
    post = Preempted(client, "t", {"i": 1})
    post.start()
    # The whole shutdown runs while post() sits between its check and its append.
    report = client.shutdown(10)
    queued = post.finish()
    stats = client.stats()
    if queued:
        # Taken: then it must have been handed over like any other unsent record.
        assert unsent.ids() == [1] and report.unsent_records == 1
    else:
        assert dict(stats.dropped) == {"closed": 1}
        assert unsent.ids() == [] and report.unsent_records == 0
    assert not any(True for _ in client._queue), "a record was left in the queue"
    assert stats.buffered == 0 and balanced(stats), stats
    assert ids(fluent_server) == [-1]


def test_a_post_preempted_until_a_shutdown_is_under_way_is_handed_over(fluent_server):
    """Appended while the shutdown still drains: the final sweep finds it."""
    unsent = Unsent()
    client = warmed_client(fluent_server, unsent, require_ack=True)
    fluent_server.stall()
    post = Preempted(client, "t", {"i": 1})
    post.start()
    reports: list[Any] = []
    ending = threading.Thread(target=lambda: reports.append(client.shutdown(1.5)))
    ending.start()
    assert wait_until(lambda: closing(client) or reports, timeout=30)
    queued = post.finish()
    ending.join(60)
    [report] = reports
    stats = client.stats()
    if queued:
        assert 1 in unsent.ids()
        assert report.unsent_records == report.handed_over == len(unsent.records)
    else:
        assert dict(stats.dropped) == {"closed": 1} and 1 not in unsent.ids()
    assert stats.buffered == 0 and balanced(stats), stats


@settings(max_examples=12)
@given(
    threads=st.integers(min_value=2, max_value=6),
    posts=st.integers(min_value=50, max_value=2000),
    delay=st.floats(min_value=0.0, max_value=0.02),
    drain=st.booleans(),
)
def test_posts_racing_a_shutdown_are_all_accounted_for(
    fluent_server, threads, posts, delay, drain,
):
    """Many threads post while another shuts down: every True is sent (or at least
    written) or handed to on_unsent, every False is counted closed, and the books
    balance with nothing left live."""
    fluent_server.clear()
    tag = f"race.{next(_EXAMPLES)}"
    unsent = Unsent()
    client = client_for(fluent_server, on_unsent=unsent)
    go = threading.Event()
    results: list[list[tuple[int, bool]]] = [[] for _ in range(threads)]

    def poster(k: int) -> None:
        go.wait(30)
        out = results[k]
        for j in range(posts):
            i = k * posts + j
            out.append((i, client.post(tag, {"i": i})))

    workers = [threading.Thread(target=poster, args=(k,), daemon=True) for k in range(threads)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, to land in the window
    try:
        for w in workers:
            w.start()
        go.set()
        time.sleep(delay)  # where in the stream of posts the shutdown lands
        report = client.shutdown(30) if drain else (client.close(), None)[1]
        for w in workers:
            w.join(60)
    finally:
        sys.setswitchinterval(old)
    assert not any(w.is_alive() for w in workers)
    taken = {i for out in results for i, ok in out if ok}
    refused = [i for out in results for i, ok in out if not ok]
    stats = client.stats()
    assert dict(stats.dropped).get("closed", 0) == len(refused)
    assert stats.dropped_total == len(refused)
    assert stats.posted == threads * posts + 0
    assert stats.buffered == 0 and balanced(stats), stats
    # Handed over: exactly the unsent ones, each a record some post() was told was taken.
    assert stats.unsent == len(unsent.records)
    assert set(unsent.ids()) <= taken
    if report is not None:
        assert report.unsent_records == stats.unsent
    # Every taken record is on the server or was handed over (possibly lost ones were
    # written; the healthy server gets them too).
    if stats.possibly_lost == 0:
        assert fluent_server.wait_for(
            lambda: len(set(ids(fluent_server, tag))) >= stats.sent, timeout=30)
        assert taken == set(ids(fluent_server, tag)) | set(unsent.ids())
    assert not any(True for _ in client._queue)


@pytest.mark.parametrize("overflow", ["drop_newest", "drop_oldest"])
def test_flush_waits_for_records_an_eviction_or_a_drop_settles(fluent_server, overflow):
    """The ledger is what flush() reads: records dropped on the way count as settled,
    so a flush with drops still completes once the rest is written."""
    fluent_server.refuse()
    client = client_for(fluent_server, buffering=Buffering(limit=64 * 1024, overflow=overflow))
    try:
        for i in range(3000):
            client.post("t", {"i": i, "pad": "p" * 80})
        assert client.stats().dropped_total > 0 or wait_until(
            lambda: client.stats().dropped_total > 0, timeout=30)
        fluent_server.refuse(False)
        assert client.flush(timeout=60) is True
        # Written is not yet confirmed sent: the writer learns that a moment later.
        assert wait_until(lambda: client.stats().buffered == 0, timeout=30)
        stats = client.stats()
        assert fluent_server.wait_for(lambda: len(ids(fluent_server)) == stats.sent, 30)
        assert balanced(stats), stats
    finally:
        client.shutdown(10)
