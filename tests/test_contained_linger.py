"""A failed connection finishes on its own, and what left is never reported unsent.

Without acks, a connection that fails with frames written whole and not yet proven read
is *retired*: half-closed, kept open and read until the server acks its markers, closes,
or the linger runs out. Its records stay live (written) until then; at the end whatever
is unproven counts as possibly lost. Every test checks the client's books against what
the embedded server received:

* no record arrives twice, and nothing reported unsent (or handed to ``on_unsent``)
  arrives;
* ``sent <= arrived <= sent + possibly_lost``;
* ``sent + dropped + possibly_lost + unsent == posted`` once the client has stopped.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

import pytest

from fluentclient import BufferedClient, Buffering, Timeouts, Tls
from fluentclient.server import ForwardServer

from .certs import server_context
from .conftest import FAST_BACKOFF
from .subproc import Child
from .waiting import wait_until

PAD = "p" * 200


def _books_balance(client: BufferedClient) -> None:
    stats = client.stats()
    assert stats.buffered == 0
    assert (stats.sent + sum(stats.dropped.values()) + stats.possibly_lost + stats.unsent
            == stats.posted)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _post_while_stalled(client: BufferedClient, total: int) -> None:
    for i in range(total):
        client.post("linger", {"i": i, "pad": PAD})
        if i % 1000 == 999:
            time.sleep(0.01)


@pytest.fixture(params=["tcp", "tls", "unix"])
def transport(request, tmp_path):
    """A healthy server over each transport, with the client options to reach it."""
    if request.param == "tls":
        pki = request.getfixturevalue("pki")
        server = ForwardServer(ssl_context=server_context(pki))
        options = {"tls": Tls(ca_file=str(pki.ca_file))}
    elif request.param == "unix":
        server = ForwardServer(unix_path=str(tmp_path / "fluent.sock"))
        options = {}
    else:
        server = ForwardServer()
        options = {}
    with server:
        if server.unix_path:
            options["unix_path"] = server.unix_path
        else:
            options.update(host=server.host, port=server.port)
        yield server, options


def test_a_server_that_pauses_and_resumes_gets_nearly_every_record_once(transport):
    # The server stops reading while records come, long enough for the connection to
    # time out, then reads again. Closing the failed connection made our kernel reset
    # it when the resumed server acked its markers, and the server's kernel dropped the
    # rest: about 10% arrived over TCP. Left to finish, it delivers them, and their acks
    # count them sent.
    fluent_server, options = transport
    fluent_server.stall(True)
    client = BufferedClient(timeouts=Timeouts(write=0.5), buffering=Buffering(limit=64 << 20),
                            backoff=FAST_BACKOFF, at_exit=False,
                            **options)
    # Reads again as soon as a connection has failed, even mid-posting: a loaded machine
    # must not let more connections fail first (past two per server, the oldest ends).
    failed = threading.Event()

    def resume() -> None:
        if wait_until(lambda: client.stats().connection_failures >= 1, 90):
            failed.set()
        fluent_server.stall(False)

    watcher = threading.Thread(target=resume)
    watcher.start()
    try:
        # 16,000 records; more only if no connection failed a while after (the kernels'
        # buffers took them all: under TLS only a blocked write fails a connection).
        _post_while_stalled(client, 16_000)
        total = 16_000
        while not failed.wait(3.0) and total < 96_000:
            for i in range(total, total + 8000):
                client.post("linger", {"i": i, "pad": PAD})
            total += 8000
        watcher.join(120)
        assert failed.is_set(), "no connection failed while the server was stalled"
        assert client.flush(30)
    finally:
        report = client.shutdown(20)
    stats = client.stats()
    _books_balance(client)
    assert wait_until(lambda: fluent_server.open_connections == 0, 20)
    seen = Counter(e.record["i"] for e in fluent_server.events)
    assert [i for i, n in seen.items() if n > 1] == []
    assert stats.sent <= len(seen) <= stats.sent + stats.possibly_lost
    assert stats.unsent == 0 and stats.dropped == {}
    assert len(seen) >= 0.99 * total, f"only {len(seen)} of {total} arrived"
    # The books say so too: what arrived was proven read, not merely hoped for.
    assert stats.sent >= 0.99 * total
    assert not report.timed_out


def test_shutdown_while_a_connection_retires_keeps_its_deadline_and_closes_it(
    fluent_server,
):
    # The server never reads while the client runs: shutdown must not wait past its
    # deadline for the retiring connection, must close every socket, and may count its
    # records only as possibly lost, never unsent (they may still arrive).
    unsent: list[object] = []
    fds_before = _open_fds()
    fluent_server.stall(True)
    client = BufferedClient(fluent_server.host, fluent_server.port, timeouts=Timeouts(write=0.3),
                            buffering=Buffering(limit=64 << 20),
                            backoff=FAST_BACKOFF, at_exit=False, on_unsent=unsent.extend)
    link = client._writer.links[0]
    total = 16_000
    try:
        _post_while_stalled(client, total)
        assert wait_until(lambda: client.stats().connection_failures >= 1, 30)
        assert wait_until(lambda: len(link.retiring) >= 1, 30)
    finally:
        started = time.monotonic()
        report = client.shutdown(1.0)
        took = time.monotonic() - started
    # Its deadline, the writer's grace and a loaded machine's slack.
    assert took < 1.0 + 3.0, f"shutdown took {took:.1f} s"
    assert wait_until(lambda: not link.retiring, 20)
    assert report.possibly_lost > 0
    _books_balance(client)
    fluent_server.stall(False)
    # The server gets whatever our kernel still delivers, then the close.
    assert wait_until(lambda: fluent_server.open_connections == 0, 30)
    assert wait_until(lambda: _open_fds() <= fds_before, 20), (
        f"{_open_fds() - fds_before} descriptors left open")
    arrived = Counter(e.record["i"] for e in fluent_server.events)
    assert [i for i, n in arrived.items() if n > 1] == []
    handed = {rec.record["i"] for rec in unsent}  # type: ignore[attr-defined]
    assert not handed & set(arrived)
    stats = client.stats()
    assert stats.sent <= len(arrived) <= stats.sent + stats.possibly_lost


def _in_send(client: BufferedClient) -> bool:
    """Whether the writer thread is inside a socket write right now."""
    frame = sys._current_frames().get(client._writer.thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == "send" and "_connection" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _stays_in_send(client: BufferedClient, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _in_send(client):
            return False
        time.sleep(0.02)
    return True


def test_frames_a_stuck_writer_is_writing_are_possibly_lost_not_handed_over():
    # The writer is blocked writing to a server that reads nothing, and does not stop
    # within shutdown's grace (its abort is made to do nothing, as when a write cannot
    # be broken). Shutdown takes back what the buffer holds: the frames being written
    # may still arrive, so they must not be handed to on_unsent nor counted unsent.
    unsent: list[object] = []
    with ForwardServer() as server:
        server.stall(True)
        client = BufferedClient(server.host, server.port, timeouts=Timeouts(write=60),
                                buffering=Buffering(limit=256 << 20),
                                at_exit=False, on_unsent=unsent.extend)
        client._writer.abort = lambda: None  # type: ignore[method-assign]
        try:
            i = 0
            deadline = time.monotonic() + 60
            # Post until the kernel's buffers are full and a write blocks.
            while not _stays_in_send(client, 1.0):
                assert time.monotonic() < deadline, "the writer never blocked"
                for _ in range(5000):
                    client.post("stuck.writer", {"i": i, "pad": PAD * 4})
                    i += 1
                client.flush(0)
        finally:
            report = client.shutdown(0.5)
        assert client._writer.thread.is_alive(), "the writer was meant to be stuck"
        assert report.possibly_lost > 0
        server.stall(False)
        # The write completes; the writer sees it was given up on and stops, writing
        # nothing shutdown took back.
        client._writer.thread.join(60)
        assert not client._writer.thread.is_alive()
        assert wait_until(lambda: server.open_connections == 0, 30)
        arrived = Counter(e.record["i"] for e in server.events)
        handed = {rec.record["i"] for rec in unsent}  # type: ignore[attr-defined]
        assert arrived, "the frames being written never arrived"
        assert not handed & set(arrived), f"{len(handed & set(arrived))} handed over arrived"
        assert [n for n in arrived.values() if n > 1] == []
        assert len(arrived) <= report.sent + report.possibly_lost
        assert (report.sent + report.possibly_lost + report.unsent_records
                + sum(report.dropped.values()) == i)


def _post_until(client: BufferedClient, done: threading.Event) -> threading.Thread:
    def post() -> None:
        i = 0
        while not done.is_set() and i < 400_000:
            client.post("linger.more", {"i": i, "pad": PAD})
            i += 1
            if i % 1000 == 0:
                time.sleep(0.005)

    poster = threading.Thread(target=post)
    poster.start()
    return poster


def test_retiring_connections_per_server_are_bounded(fluent_server):
    # A server that never reads while connection after connection times out: the writer
    # keeps at most two retiring, ending the oldest (its records possibly lost).
    fluent_server.stall(True)
    client = BufferedClient(fluent_server.host, fluent_server.port, timeouts=Timeouts(write=0.2),
                            buffering=Buffering(limit=64 << 20, overflow="drop_newest"),
                            backoff=FAST_BACKOFF, at_exit=False)
    link = client._writer.links[0]
    done = threading.Event()
    poster = _post_until(client, done)
    most = 0

    def failures_while_watching() -> bool:
        nonlocal most
        most = max(most, len(link.retiring))
        return client.stats().connection_failures >= 4

    try:
        assert wait_until(failures_while_watching, 60)
        # The oldest ended early: what it held counts as possibly lost already.
        assert wait_until(lambda: client.stats().possibly_lost > 0, 20)
    finally:
        done.set()
        poster.join(30)
        client.shutdown(1.0)
    assert 1 <= most <= 2
    fluent_server.stall(False)
    assert wait_until(lambda: fluent_server.open_connections == 0, 30)
    stats = client.stats()
    arrived = Counter(e.record["i"] for e in fluent_server.events)
    assert [i for i, n in arrived.items() if n > 1] == []
    assert stats.sent <= len(arrived) <= stats.sent + stats.possibly_lost


def test_a_retiring_connection_ends_at_its_linger(fluent_server):
    # The server stays stalled past the linger (shortened here from its 30 s): the
    # connection is closed and what it held counts as possibly lost, while the client
    # goes on.
    fluent_server.stall(True)
    client = BufferedClient(fluent_server.host, fluent_server.port, timeouts=Timeouts(write=0.3),
                            buffering=Buffering(limit=64 << 20),
                            backoff=FAST_BACKOFF, at_exit=False)
    client._writer._retirement.linger = 1.0
    link = client._writer.links[0]
    try:
        _post_while_stalled(client, 16_000)
        assert wait_until(lambda: len(link.retiring) >= 1, 30)
        assert wait_until(lambda: not link.retiring and client.stats().possibly_lost > 0, 30)
        # Still counted written until then, never unsent.
        assert client.stats().unsent == 0
    finally:
        fluent_server.stall(False)
        client.shutdown(10)
    _books_balance(client)


RETIRING_COPY = """
import gc, os, time
from fluentclient import BufferedClient, Buffering, Timeouts

client = BufferedClient("127.0.0.1", P["port"], timeouts=Timeouts(write=0.3),
                        buffering=Buffering(limit=64 << 20), shutdown_timeout=1)
link = client._writer.links[0]
for i in range(16_000):
    client.post("copy.retiring", {"i": i, "pad": "p" * 200})
deadline = time.monotonic() + 60
while not link.retiring:
    assert time.monotonic() < deadline, "no connection retired"
    time.sleep(0.01)
inode = os.fstat(link.retiring[0].conn.sock.fileno()).st_ino
gc.disable()

def socket_inodes():
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return found

pid = os.fork()
if pid == 0:
    os._exit(3 if inode in socket_inodes() else 0)
_, status = os.waitpid(pid, 0)
stamp("CHILD", os.waitstatus_to_exitcode(status))
client.shutdown(1)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_closes_its_copy_of_a_retiring_socket(fluent_server):
    # Else the server sees no end of the parent's retiring connection until the child's
    # copy goes, and the child holds a descriptor it never uses.
    fluent_server.stall(True)
    try:
        result = Child("retiring-copy", RETIRING_COPY,
                       {"port": fluent_server.port}).finish(timeout=90)
    finally:
        fluent_server.stall(False)
    assert result.returncode == 0, result.describe()
    assert result.lines("CHILD")[0][1:] == ["0"], result.describe()


def test_a_first_frame_the_server_never_takes_whole_counts_a_failure_and_backs_off(
        tmp_path):
    # A frame far larger than a Unix socket's buffers, to a server that reads nothing: it
    # is never wholly written, so the connection times out with nothing confirmed or
    # unsettled. That is a failure, not a server closing an idle connection: counted,
    # and the reconnects spaced by the backoff (once taken for idle, they came every
    # write_timeout, uncounted).
    with ForwardServer(unix_path=str(tmp_path / "fwd.sock")) as server:
        server.stall(True)
        client = BufferedClient(unix_path=server.unix_path, timeouts=Timeouts(write=0.3),
                                buffering=Buffering(max_frame_size=4 << 20, limit=64 << 20),
                                backoff=FAST_BACKOFF, at_exit=False,
                                )
        try:
            for i in range(2000):
                client.post("linger", {"i": i, "pad": PAD * 10})
            assert wait_until(lambda: client.stats().connection_failures >= 1, 30), \
                client.stats()
        finally:
            client.close()
    _books_balance(client)


def test_a_drain_cut_by_its_deadline_times_out_even_if_the_writer_is_gone_when_looked_at():
    # Without acks, the writer stopped by the deadline counts what it wrote to a stuck
    # server as possibly lost and empties the buffer. On a loaded machine shutdown's join
    # can return only after that, and then found nothing held: a drain that delivered
    # nothing was reported as not timed out. The join here returns late on purpose.
    with ForwardServer() as server:
        server.stall(True)
        client = BufferedClient(server.host, server.port, at_exit=False,
                                timeouts=Timeouts(write=30), buffering=Buffering(limit=1 << 20),
                                backoff=FAST_BACKOFF)
        for i in range(2000):
            client.post("linger", {"i": i, "pad": PAD})
        assert wait_until(lambda: client.stats().frames_sent > 0, 20), client.stats()
        writer = client._writer.thread
        writer.join = lambda timeout=None: threading.Thread.join(writer, 20)  # type: ignore
        report = client.shutdown(0.3)
        server.stall(False)
    assert report.timed_out, report
    assert report.possibly_lost + report.unsent_records > 0, report
    _books_balance(client)
