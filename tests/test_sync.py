"""SyncClient: sends on the caller's thread, raises on failure, reconnects on the next call."""

from __future__ import annotations

import gc
import socket
import threading
import weakref
from collections import UserDict

import pytest

from fluentclient import (
    EventTime,
    FluentConnectionError,
    FluentError,
    InvalidTagError,
    SerializationError,
    SyncClient,
    Timeouts,
)
from fluentclient.framing import EntryPacker, FrameBuilder
from fluentclient.message import Message
from fluentclient.server import ForwardServer

from .waiting import wait_until


def test_each_post_arrives_before_it_returns(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        for i in range(20):
            client.post("sync.a", {"i": i}, time=EventTime(1700000000, i))
            # Sent means on the wire: the server sees it without any flush.
            assert fluent_server.wait_for_events(i + 1, timeout=5)
    assert [(e.time, e.record) for e in fluent_server.events] == [
        (EventTime(1700000000, i), {"i": i}) for i in range(20)
    ]
    assert client.stats().sent == 20


def test_raises_when_no_server_listens():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    client = SyncClient("127.0.0.1", port, timeouts=Timeouts(connect=1))
    with pytest.raises(FluentConnectionError) as info:
        client.post("sync.down", {"x": 1})
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, FluentError)
    assert client.stats().connect_failures == 1


def test_reconnects_on_the_next_call_after_a_restart(fluent_server):
    client = SyncClient(fluent_server.host, fluent_server.port)
    client.post("sync.r", {"n": 1})
    assert fluent_server.wait_for_events(1, timeout=5)
    fluent_server.stop()
    with pytest.raises(FluentConnectionError):
        # The old connection is gone and nothing listens: this call must fail loudly.
        client.post("sync.r", {"n": 2})
    fluent_server.restart()
    client.post("sync.r", {"n": 3})
    assert fluent_server.wait_for(lambda: any(e.record == {"n": 3} for e in fluent_server.events),
                                  timeout=5)
    client.close()


def test_bad_input_raises_and_nothing_is_sent(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        with pytest.raises(InvalidTagError):
            client.post("bad tag", {"x": 1})
        with pytest.raises(SerializationError):
            client.post("sync.bad", {"x": object()})
        client.post("sync.bad", {"x": 1})
    assert fluent_server.wait_for_events(1, timeout=5)
    assert [e.record for e in fluent_server.events] == [{"x": 1}]


@pytest.mark.parametrize("record", ["hello", ["a", "list"], None])
def test_a_record_that_is_not_a_mapping_raises_with_the_cure(fluent_server, record):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        with pytest.raises(SerializationError,
                           match=f"mapping.*not {type(record).__name__}.*\\{{\"message\""):
            client.post("sync.nomap", record)
        client.post("sync.nomap", {"x": 1})
        assert client.stats().posted == 1
    assert [e.record for e in fluent_server.events] == [{"x": 1}]


def test_unix_socket(tmp_path):
    with ForwardServer(unix_path=str(tmp_path / "s.sock")) as server:
        with SyncClient(unix_path=server.unix_path) as client:
            client.post("sync.unix", {"x": 1})
        assert server.wait_for_events(1, timeout=5)


def test_uses_the_same_frames_as_the_buffered_client(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        client.post("sync.f", {"x": 1})
    assert fluent_server.wait_for_events(1, timeout=5)
    frame = fluent_server.frames[0]
    assert frame.mode == "PackedForward" and frame.options == {"size": 1}


def _fates(stats) -> int:
    return stats.sent + stats.dropped_total + stats.unsent + stats.possibly_lost


def test_a_failed_send_is_counted_as_dropped_never_as_buffered():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    client = SyncClient("127.0.0.1", port, timeouts=Timeouts(connect=1))
    for _ in range(2):
        with pytest.raises(FluentConnectionError):
            client.post("sync.down", {"x": 1})
    s = client.stats()
    assert (s.posted, s.sent, s.buffered, s.possibly_lost) == (2, 0, 0, 0)
    assert s.dropped == {"send_failed": 2}
    assert s.posted == _fates(s)
    assert client.shutdown().dropped == {"send_failed": 2}


def test_a_record_written_but_never_acked_is_possibly_lost_not_buffered(fluent_server):
    fluent_server.withhold_acks()
    client = SyncClient(fluent_server.host, fluent_server.port, require_ack=True,
                        timeouts=Timeouts(ack=0.5))
    with pytest.raises(FluentError):
        client.post("sync.noack", {"x": 1})
    s = client.stats()
    assert (s.posted, s.sent, s.buffered, s.possibly_lost, s.dropped) == (1, 0, 0, 1, {})
    client.close()


def test_stats_during_a_send_show_nothing_buffered():
    with ForwardServer() as server:
        server.withhold_acks()
        client = SyncClient(server.host, server.port, require_ack=True, timeouts=Timeouts(ack=30))
        failed: list[BaseException] = []

        def post() -> None:
            try:
                client.post("sync.inflight", {"x": 1})
            except FluentError as exc:
                failed.append(exc)

        poster = threading.Thread(target=post)
        poster.start()
        try:
            # The record is on the server: the call now waits for an ack that never comes.
            assert server.wait_for_events(1, timeout=10)
            s = client.stats()
            assert s.buffered == 0 and s.posted == _fates(s) == 0, s
        finally:
            server.stop()  # the connection ends: the wait for the ack fails
            poster.join(10)
        assert not poster.is_alive() and len(failed) == 1
        s = client.stats()
        assert (s.posted, s.buffered, s.possibly_lost) == (1, 0, 1), s
        client.close()


def _arrived(server: ForwardServer) -> list[object]:
    return [e.record for e in server.events]


@pytest.mark.parametrize("how", ["closed", "reset"])
def test_a_server_that_ended_the_connection_since_the_last_post_gets_the_next_on_a_new_one(
    fluent_server, how
):
    """Checked before every write: written on the dead connection, the record would be
    lost and counted sent."""
    when = EventTime(1700000000, 0)
    if how == "reset":
        # The server resets each connection once it has read one frame.
        entry = EntryPacker().pack(Message("sync.end", {"n": 1}, when.to_ns()))
        fluent_server.drop_after(len(FrameBuilder().build("sync.end", entry, 1)[0]))
    client = SyncClient(fluent_server.host, fluent_server.port)
    client.post("sync.end", {"n": 1}, time=when)
    assert fluent_server.wait_for(lambda: {"n": 1} in _arrived(fluent_server), timeout=10)
    conn = client._links[0].conn
    assert conn is not None
    if how == "closed":
        fluent_server.stop()  # closes every connection
        fluent_server.restart()
    # The server's end has reached our socket (in the test's time, not the client's).
    assert wait_until(lambda: conn.wait_readable(0.05), timeout=20)
    client.post("sync.end", {"n": 2}, time=when)
    assert fluent_server.wait_for(lambda: {"n": 2} in _arrived(fluent_server), timeout=10)
    s = client.stats()
    assert (s.sent, s.possibly_lost, s.dropped, s.connects) == (2, 0, {}, 2), s
    client.close()


def test_a_frame_the_kernel_takes_only_in_part_is_finished_or_counted_possibly_lost(
    fluent_server
):
    """A frame whose head went at once and whose rest waits for room: it is finished
    within write_timeout, or the call raises and counts it possibly lost, and never writes
    it again (the server would get its head twice)."""
    fluent_server.stall()  # it takes connections and reads nothing
    client = SyncClient(fluent_server.host, fluent_server.port, timeouts=Timeouts(write=0.5))
    filler = "x" * 20_000
    raised: FluentError | None = None
    posted = 0
    while raised is None and posted < 10_000:
        try:
            client.post("sync.full", {"i": posted, "filler": filler})
        except FluentError as exc:
            raised = exc
        posted += 1
    assert raised is not None, "the kernel buffers never filled"
    s = client.stats()
    assert (s.posted, s.sent, s.possibly_lost, s.dropped) == (posted, posted - 1, 1, {}), s
    fluent_server.stall(False)
    # Every record that was sent arrives, once, in order; the one cut short never does.
    assert fluent_server.wait_for_events(posted - 1, timeout=30)
    assert [r["i"] for r in _arrived(fluent_server)] == list(range(posted - 1))
    client.close()


def test_a_call_whose_timeout_ran_out_writes_nothing(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        client.post("sync.t", {"n": 1})
        with pytest.raises(FluentError):
            client.post("sync.t", {"n": 2}, timeout=0)
        client.post("sync.t", {"n": 3})
    assert fluent_server.wait_for_events(2, timeout=10)
    assert _arrived(fluent_server) == [{"n": 1}, {"n": 3}]
    s = client.stats()
    assert (s.sent, s.dropped) == (2, {"send_failed": 1}), s


class _Record(UserDict):  # type: ignore[type-arg]
    """A Mapping a weak reference can follow (a plain dict cannot have one)."""


def test_the_client_keeps_no_record_after_the_call(fluent_server):
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        record = _Record({"n": 1})
        alive = weakref.ref(record)
        client.post("sync.gone", record)
        bad = _Record({"n": object()})
        gone_too = weakref.ref(bad)
        try:
            client.post("sync.gone", bad)
        except SerializationError:
            pass  # (not kept: its traceback holds the record)
        else:
            pytest.fail("an object() was packed")
        del record, bad
        gc.collect()
        assert alive() is None and gone_too() is None
    assert fluent_server.wait_for_events(1, timeout=10)


def test_a_frame_larger_than_the_socket_buffers_goes_whole_and_once(fluent_server):
    """The kernel takes the head of each frame at once and the call writes the rest as
    the server reads: the first on a new connection, the next ones on the same."""
    filler = "y" * 12_000_000  # more than any send buffer here takes in one call
    with SyncClient(fluent_server.host, fluent_server.port, max_frame_size=32 * 2**20,
                    timeouts=Timeouts(write=60)) as client:
        for i in range(3):
            client.post("sync.large", {"i": i, "filler": filler})
        s = client.stats()
        assert (s.sent, s.possibly_lost, s.dropped, s.connects) == (3, 0, {}, 1), s
    assert fluent_server.wait_for_events(3, timeout=60)
    arrived = _arrived(fluent_server)
    assert [r["i"] for r in arrived] == [0, 1, 2]
    assert all(r["filler"] == filler for r in arrived)
    assert not fluent_server.errors


def test_posts_from_several_threads_are_each_counted_once_and_every_snapshot_balances(
    fluent_server
):
    client = SyncClient(fluent_server.host, fluent_server.port)
    threads, each = 4, 300
    unbalanced: list[object] = []
    posting = threading.Event()
    posting.set()

    def post(n: int) -> None:
        for i in range(each):
            client.post("sync.threads", {"t": n, "i": i})

    def watch() -> None:
        while posting.is_set():
            s = client.stats()
            if s.posted != _fates(s) or s.frames_sent != s.sent:
                unbalanced.append(s)

    watcher = threading.Thread(target=watch)
    watcher.start()
    posters = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
    for t in posters:
        t.start()
    for t in posters:
        t.join(60)
    posting.clear()
    watcher.join(60)
    assert not unbalanced, unbalanced[:3]
    s = client.stats()
    assert (s.posted, s.sent, s.frames_sent) == (threads * each,) * 3, s
    assert fluent_server.wait_for_events(threads * each, timeout=30)
    assert s.bytes_sent == fluent_server.bytes_received
    client.close()


def test_a_fork_mark_that_reads_forked_in_the_same_process_keeps_the_connection(
    fluent_server,
):
    """post() reads a mark that a fork wipes (see _lifetime/_mark.py); one that reads as
    wiped in the process that made it costs a pid check and a new mark, never the
    connection."""
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        client.post("sync.mark", {"n": 1})
        conn = client._links[0].conn
        client._unforked = bytearray(1)  # reads as wiped: as if made before a fork
        client.post("sync.mark", {"n": 2})
        assert client._links[0].conn is conn
        assert client._unforked[0]
        assert client.stats().connects == 1
    assert fluent_server.wait_for_events(2, timeout=10)
