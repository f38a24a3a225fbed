"""A client's error reports never feed on themselves.

An ``on_error`` that logs, with a log handler that posts to the same client (a
FluentHandler on the root logger) and a server that is down: every drop is reported,
the report logs, the log line is posted and dropped too, and that drop is reported...
Each chain must stop at once, with every record counted and one line said about it.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fluentclient import BufferedClient, BufferFullError, Buffering
from fluentclient.stats import DROP_REENTRANT

from .conftest import FAST_BACKOFF
from .subproc import Child


def dead_port() -> int:
    """A local port nothing listens on: every connection attempt is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Reports:
    """An on_error that posts a record about each report to the client it reports for,
    as a log handler on the root logger would, and notes how deep the reports nest."""

    def __init__(self) -> None:
        self.client: BufferedClient | None = None
        self.calls = 0
        self.deepest = 0
        self.threads: set[str] = set()
        self._depth = threading.local()
        self._lock = threading.Lock()

    def __call__(self, err: Exception, msg: object) -> None:
        depth = getattr(self._depth, "n", 0) + 1
        self._depth.n = depth
        try:
            with self._lock:
                self.calls += 1
                self.deepest = max(self.deepest, depth)
                self.threads.add(threading.current_thread().name)
            assert self.client is not None
            self.client.post("app.errors", {"message": f"fluent drop: {err}"})
        finally:
            self._depth.n = depth - 1


def balanced(client: BufferedClient) -> tuple[int, int]:
    """(records posted, records whose fate the shutdown report accounts for)."""
    report = client.shutdown(0.5)
    return (client.stats().posted,
            report.sent + report.unsent_records + report.possibly_lost
            + sum(report.dropped.values()))


def test_on_error_posting_to_its_own_closed_client_is_reported_once(caplog) -> None:
    reports = Reports()
    client = BufferedClient("127.0.0.1", dead_port(), on_error=reports, at_exit=False,
                            backoff=FAST_BACKOFF)
    reports.client = client
    client.close()
    n = 200
    for i in range(n):
        assert client.post("app", {"i": i}) is False
    # Each refused record is reported once; the record its report posts is refused too,
    # counted, and not reported again.
    assert reports.deepest == 1
    assert reports.calls == n
    assert client.stats().dropped == {"closed": 2 * n}
    silenced = [r for r in caplog.records if "not reported" in r.getMessage()]
    assert len(silenced) == 1


def test_on_error_posting_to_its_own_full_client_stops_every_chain() -> None:
    """buffer_full drops on the caller's thread (a report would recurse) and on the
    reader's (a report's record, queued, would come back to be dropped and reported
    again, for as long as the server is down)."""
    reports = Reports()
    client = BufferedClient("127.0.0.1", dead_port(), on_error=reports, at_exit=False,
                            buffering=Buffering(limit=1024), backoff=FAST_BACKOFF)
    reports.client = client
    n = 2000
    for i in range(n):
        client.post("app", {"i": i, "pad": "x" * 100})
    posted, accounted = balanced(client)
    assert reports.deepest == 1
    # Every report comes from one of our n records, or from a record a report on a
    # caller's thread posted (and no further): a chain of at most two.
    assert reports.calls <= 2 * n
    assert posted == n + reports.calls
    assert accounted == posted
    dropped = client.stats().dropped
    assert dropped.get("buffer_full", 0) > 0


def test_a_report_on_the_readers_thread_posts_nothing_back_to_it() -> None:
    """The reader drops a record that cannot be packed and reports it on its own thread:
    the record that report posts would be queued for the same reader, so it is dropped
    (``reentrant``), counted, and the chain ends."""
    reports = Reports()
    client = BufferedClient("127.0.0.1", dead_port(), on_error=reports, at_exit=False,
                            backoff=FAST_BACKOFF)
    reports.client = client
    assert client.post("app", {"bad": object()}) is True
    # Nothing was buffered, so this waits only for the reader to have taken the record.
    assert client.flush(10)
    posted, accounted = balanced(client)
    assert reports.calls == 1
    assert any(name.startswith("fluentclient-") for name in reports.threads)
    assert client.stats().dropped == {"unserializable": 1, DROP_REENTRANT: 1}
    assert posted == 2 and accounted == 2


# The exact case reported: the root logger's only handler is a FluentHandler whose
# server is down, with a buffer small enough to drop, and an on_error that logs.
ROOT_HANDLER_CHILD = """
import logging, sys, threading
from fluentclient import Backoff, Buffering
from fluentclient.handler import FluentHandler

calls = 0
deepest = 0
depth = threading.local()

def on_error(err, msg):
    global calls, deepest
    d = getattr(depth, "n", 0) + 1
    depth.n = d
    calls += 1
    deepest = max(deepest, d)
    try:
        logging.error("fluent drop: %s", err)
    finally:
        depth.n = d - 1

handler = FluentHandler("app", port=P["port"], buffering=Buffering(limit=1024), on_error=on_error,
                        close_timeout=0.5, backoff=Backoff(initial=0.01, maximum=0.1))
root = logging.getLogger()
root.addHandler(handler)
root.setLevel(logging.INFO)
for i in range(P["n"]):
    logging.info("line %d %s", i, "x" * 100)
handler.close()
root.removeHandler(handler)
r = handler.report
stats = handler.client.stats()
print("CALLS", calls, deepest)
print("BOOKS", stats.posted, r.sent + r.unsent_records + r.possibly_lost + sum(r.dropped.values()))
"""


def test_root_fluent_handler_with_a_logging_on_error_and_a_dead_server() -> None:
    n = 3000
    result = Child("root-handler", ROOT_HANDLER_CHILD, {"port": dead_port(), "n": n}).finish(120)
    assert result.returncode == 0, result.describe()
    assert "RecursionError" not in result.stderr, result.stderr[:5000]
    assert "Traceback" not in result.stderr, result.stderr[:5000]
    # Once-per-reason warnings only: no flood (it was 238 MB for 3,000 lines).
    assert len(result.stderr) < 10_000, result.stderr[:5000]
    assert result.stderr.count("not reported") == 1, result.stderr
    calls, deepest = map(int, result.lines("CALLS")[0])
    posted, accounted = map(int, result.lines("BOOKS")[0])
    assert deepest == 1
    assert calls <= 2 * n
    # Every log call became one post: the n lines, and one per on_error call.
    assert posted == n + calls
    assert accounted == posted


def fill(client: BufferedClient, limit: int = 1000) -> None:
    """Post until the client refuses one (it returns False or raises)."""
    for i in range(limit):
        try:
            if client.post("app", {"i": i, "pad": "x" * 200}) is False:
                return
        except BufferFullError:
            return
    raise AssertionError(f"{limit} records taken by a client that sends nowhere")


def test_a_post_from_on_error_never_raises_with_overflow_raise() -> None:
    """overflow="raise" is for the application's own post(): raised inside on_error it
    would reach a log handler's handleError, a traceback on stderr for every drop."""
    inner: list[object] = []
    nested: list[Exception] = []
    reporting = threading.Event()

    def on_error(err: Exception, msg: object) -> None:
        if reporting.is_set():
            nested.append(err)  # a report of our own post: the loop this test is about
            return
        reporting.set()
        try:
            # Several, so that some are refused whatever room the reader made meanwhile:
            # nothing is sent, so nothing frees more than one record's worth.
            inner.extend(_post_about(client, err) for _ in range(8))
        finally:
            reporting.clear()

    client = BufferedClient("127.0.0.1", dead_port(), at_exit=False,
                            buffering=Buffering(limit=1024, overflow="raise"),
                            backoff=FAST_BACKOFF, on_error=on_error)
    try:
        with pytest.raises(BufferFullError):
            for i in range(1000):
                client.post("app", {"i": i, "pad": "x" * 200})
        assert all(isinstance(result, bool) for result in inner), inner
        assert False in inner, inner
        assert not nested
    finally:
        client.close()


def test_a_post_from_on_error_does_not_wait_for_room_with_overflow_block() -> None:
    """overflow="block": the application's post() waits up to overflow_timeout for room;
    a post made while reporting that wait's failure is refused at once."""
    waits: list[float] = []
    reporting = threading.Event()

    def on_error(err: Exception, msg: object) -> None:
        if reporting.is_set():
            return  # nested: the other tests are about that
        reporting.set()
        try:
            start = time.monotonic()
            _post_about(client, err)
            waits.append(time.monotonic() - start)
        finally:
            reporting.clear()

    client = BufferedClient("127.0.0.1", dead_port(), at_exit=False,
                            buffering=Buffering(limit=1024, overflow="block", overflow_timeout=4.0),
                            backoff=FAST_BACKOFF,
                            on_error=on_error)
    try:
        fill(client)
        assert waits
        # Far below the 4 s the application's own post waited (before: 4 s more each).
        assert max(waits) < 2.0, waits
    finally:
        client.close()


def _post_about(client: BufferedClient, err: Exception) -> object:
    try:
        return client.post("app.errors", {"message": f"fluent drop: {err}"})
    except Exception as exc:  # noted as the result, for the test to see
        return exc
