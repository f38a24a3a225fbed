"""What issue 17's guards cost per record stays what they need.

post() asks on every record whether its own thread is reporting an error for the client
(see _reporting.py). Nearly always no thread is, and a count answers that for free; the
thread-local behind the exact answer is far dearer (for a thread that never reported,
Python builds and discards an AttributeError each time).
"""

from __future__ import annotations

import threading

from fluentclient import BufferedClient, EventTime
from fluentclient._reporting import Reporting
from fluentclient.server import ForwardServer

from .waiting import wait_until


class CountingLocal(threading.local):
    """A thread-local that counts the looks into it, from any thread."""

    looks = [0]

    def __getattribute__(self, name: str) -> object:
        CountingLocal.looks[0] += 1
        return super().__getattribute__(name)


def test_a_post_with_a_time_does_not_look_into_the_reporting_thread_local():
    records = 200
    with ForwardServer() as server:
        client = BufferedClient(server.host, server.port, at_exit=False)
        try:
            counting = CountingLocal()
            client._reporting._inside = counting
            CountingLocal.looks[0] = 0
            for i in range(records):
                # A time of its own: the careful path, which the demo takes for each record.
                assert client.post("cpu", {"i": i}, time=EventTime(1_700_000_000, i))
            looks = CountingLocal.looks[0]
            assert client.flush(30)
        finally:
            report = client.shutdown(20)
        assert report.complete
        assert wait_until(lambda: len(server.events) == records, 30)
    assert looks == 0, f"{looks} looks into the thread-local for {records} posts"


def test_only_the_thread_inside_a_report_counts_as_reporting():
    reporting = Reporting()
    seen: dict[str, bool] = {}

    def other() -> None:
        seen["other"] = reporting.active()

    assert not reporting.active()
    with reporting:
        with reporting:  # it nests
            assert reporting.active()
            assert reporting.busy == 1
        assert reporting.active()
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(30)
    assert seen == {"other": False}
    assert not reporting.active()
    assert reporting.busy == 0
