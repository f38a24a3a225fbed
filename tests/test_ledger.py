"""The ledger against what the tests themselves did: records they posted, records they
made unsendable, events the embedded server received, and a report that must not drift."""

from __future__ import annotations

import logging
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import BufferedClient, Buffering, Timeouts
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF

GOOD, UNSERIALIZABLE, TOO_LARGE = "good", "unserializable", "too_large"
FRAME = 4096


def record_of(kind: str, t: int, i: int) -> dict[str, object]:
    if kind == UNSERIALIZABLE:
        return {"t": t, "i": i, "bad": object()}
    if kind == TOO_LARGE:
        return {"t": t, "i": i, "pad": "x" * (2 * FRAME)}
    return {"t": t, "i": i}


@settings(max_examples=20, deadline=None)
@given(st.lists(
    st.lists(st.sampled_from([GOOD, GOOD, GOOD, UNSERIALIZABLE, TOO_LARGE]), max_size=60),
    min_size=1, max_size=4,
))
def test_the_ledger_matches_the_posts_made_and_the_events_received(
    fluent_server, caplog, plans,
):
    fluent_server.clear()
    client = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                            at_exit=False, buffering=Buffering(max_frame_size=FRAME,
                                                               write_threshold=512))
    returned: list[bool] = []
    barrier = threading.Barrier(len(plans))

    def run(t: int, plan: list[str]) -> None:
        barrier.wait(timeout=10)
        for i, kind in enumerate(plan):
            returned.append(client.post("ledger.mix", record_of(kind, t, i)))

    threads = [threading.Thread(target=run, args=(t, p)) for t, p in enumerate(plans)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
        assert not th.is_alive()
    report = client.shutdown(10)
    kinds = [kind for plan in plans for kind in plan]
    good = kinds.count(GOOD)
    assert fluent_server.wait_for_events(good, timeout=10)
    received = [(e.record["t"], e.record["i"]) for e in fluent_server.events]
    assert len(received) == len(set(received)) == good
    stats = client.stats()
    # post() returns before packing: every call was taken, and is counted as posted.
    assert all(returned) and stats.posted == len(kinds) == len(returned)
    assert stats.sent == report.sent == good
    expected_drops = {k: kinds.count(k) for k in (UNSERIALIZABLE, TOO_LARGE) if k in kinds}
    assert dict(stats.dropped) == dict(report.dropped) == expected_drops
    assert stats.buffered == stats.unsent == stats.possibly_lost == 0
    assert report.complete == (good == len(kinds))
    # The ledger logs an error when a thread steps records it does not hold.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


class _HoldWriter(logging.Handler):
    """Holds the writer thread inside its wait for marker acks, where it keeps records it
    wrote and has not yet counted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.entered = threading.Event()
        self.go = threading.Event()

    def handle(self, record: logging.LogRecord) -> bool:
        # Not emit(): that runs under the handler's lock, which would hold up every other
        # thread's logging while the writer waits here.
        if record.funcName == "await_markers" and not self.entered.is_set():
            self.entered.set()
            self.go.wait(30)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        pass


def test_stats_after_shutdown_equal_the_report_once_the_abandoned_writer_ends(
    fluent_server: ForwardServer,
) -> None:
    fluent_server.clear()
    fluent_server.stall(True)
    logger = logging.getLogger("fluentclient")
    hold = _HoldWriter()
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(hold)
    client = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                            at_exit=False, timeouts=Timeouts(idle=0.2),
                            buffering=Buffering(flush_interval=0.01))
    try:
        for i in range(10):
            client.post("ledger.drift", {"i": i})
        # The server's kernel took them; the server itself never reads or answers.
        assert client.flush(timeout=10)
        assert hold.entered.wait(30)
        report = client.shutdown(0.3)
        hold.go.set()
        client._writer.thread.join(30)
        assert not client._writer.thread.is_alive()
    finally:
        hold.go.set()
        logger.removeHandler(hold)
        logger.setLevel(level)
        fluent_server.stall(False)
    stats = client.stats()
    assert (stats.sent, stats.unsent, stats.possibly_lost, dict(stats.dropped)) == (
        report.sent, report.unsent_records, report.possibly_lost, dict(report.dropped))
    assert stats.posted == 10 and stats.buffered == 0
    assert report.sent + report.unsent_records + report.possibly_lost == 10


def test_a_spooled_record_that_cannot_be_sent_reaches_on_error_without_a_fake_message(
    tmp_path, fluent_server: ForwardServer,
) -> None:
    from fluentclient._spool import Spool
    from fluentclient.framing import EntryPacker
    from fluentclient.message import Message

    fluent_server.clear()
    pack = EntryPacker().pack
    big = pack(Message("ledger.spool", {"i": 0, "pad": "z" * 4000}, 1_700_000_000 * 10**9))
    small = pack(Message("ledger.spool", {"i": 1}, 1_700_000_000 * 10**9))
    left = Spool(str(tmp_path), limit=1 << 20)
    left.append(0, [("ledger.spool", big + small)], 2)
    left.close(keep=True)
    told: list[tuple[Exception, object]] = []
    client = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                            at_exit=False,
                            buffering=Buffering(spool_dir=tmp_path, max_frame_size=2048),
                            on_error=lambda err, msg: told.append((err, msg)))
    report = client.shutdown(10)
    assert fluent_server.wait_for_events(1, timeout=10)
    assert [e.record["i"] for e in fluent_server.events] == [1]
    # No Message exists for a record another process posted: on_error hears None.
    assert [msg for _, msg in told] == [None]
    stats = client.stats()
    assert stats.replayed == 2 and stats.sent == report.sent == 1
    assert dict(stats.dropped) == {"too_large": 1} and stats.buffered == 0
