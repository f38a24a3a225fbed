"""Without acks, against the real servers: the report matches what they stored.

fluentd closes every connection with an RST, and both servers drop what they had not read
when they stop; the client must count every such loss, and little more.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import msgpack

from fluentclient import BufferedClient, Buffering
from tests.real_servers import RealServer, UnreadWatch

from .conftest import FAST_BACKOFF

RATE = 5000  # records a second, paced: a steady stream, as an application's
FRAME = 16 * 1024  # small frames: a stop cuts one, lost whole
SLACK = 0.5  # seconds of the stream, beyond each restart's own length, the bound allows


def test_plain_stream_across_graceful_restarts(real_server: RealServer) -> None:
    tag = "acct.restart"
    client = BufferedClient("127.0.0.1", real_server.port, at_exit=False,
                            backoff=FAST_BACKOFF, buffering=Buffering(max_frame_size=FRAME))
    stop_times: list[float] = []

    unread: list[int] = []

    def restart() -> None:
        began = time.monotonic()
        with UnreadWatch(real_server.port) as watch:
            real_server.stop()
        unread.append(watch.most)
        stop_times.append(time.monotonic() - began)
        real_server.start()

    total, restarts = 3 * RATE, 2
    faulter: threading.Thread | None = None
    start = time.monotonic()
    for i in range(total):
        client.post(tag, {"i": i, "pad": "x" * 100})
        if i and i % (total // (restarts + 1)) == 0 and len(stop_times) < restarts:
            if faulter is not None:
                faulter.join()
            faulter = threading.Thread(target=restart)
            faulter.start()
        ahead = (i + 1) / RATE - (time.monotonic() - start)
        if ahead > 0.002:
            time.sleep(ahead)  # pacing the stream, not waiting for an outcome
    assert faulter is not None
    faulter.join()
    report = client.shutdown(timeout=60)
    expected = total - report.unsent_records - sum(report.dropped.values())
    # The server stores what it took a moment after taking it: wait for the count the
    # report implies, and take what is there when that wait ends.
    try:
        real_server.wait_for(expected - report.possibly_lost, tag, timeout=30)
    except AssertionError:
        pass
    stored = Counter(record["i"] for record in real_server.records(tag))
    lost = expected - len(stored)
    assert lost <= report.possibly_lost, (lost, report)
    # What a stopping server reads and never acks: at most what was written while it stopped.
    bound = sum(int(RATE * (seconds + SLACK)) for seconds in stop_times)
    assert report.possibly_lost <= lost + bound, (lost, bound, report, stop_times)
    # And what is really lost is what the server's kernel took and it never read: frames
    # its TCP had not acknowledged when it went away go out again once it is back. The
    # slack: the frame each stop cut, and the last moment between two samples.
    entry = len(msgpack.packb([0, {"i": 0, "pad": "x" * 100}]))
    slack = restarts * (FRAME + RATE // 20 * entry)
    assert lost * entry <= sum(unread) + slack, (lost, unread, report)
    assert report.sent <= len(stored)
