"""Without acks, what a reset proves never arrived is sent again, and nothing else is.

A server that stops reading and then goes away (fluentd and Fluent Bit both stop reading
while they shut down, then exit with our bytes unread, which resets every connection)
leaves three kinds of frames behind: those it read, those its kernel took but it never
read (gone with it: possibly lost, and no client can know better), and those its kernel
never acknowledged, still in our kernel's send queue when the reset came. The reset
empties that queue, and the connection can deliver nothing more, so the last kind
provably never arrived: they are written again on the next connection. Each test checks
that what is lost is no more than the server's own unread bytes, and that nothing arrives
twice, including from a server that closes its side and keeps reading, where a reset never
comes and resending would duplicate.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import msgpack
import pytest

from fluentclient import BufferedClient, Buffering, Timeouts, Tls
from fluentclient.server import ForwardServer

from .certs import server_context
from .conftest import FAST_BACKOFF
from .waiting import wait_until

PAD = "p" * 200
# Small frames keep the slack of the bound below (one frame cut where the server stopped
# reading) far under what our kernel's send queue holds when the server stalls.
FRAME = 16 * 1024


def _entry_size() -> int:
    """The fewest bytes one record of these tests takes in a frame."""
    return len(msgpack.packb([0, {"i": 0, "pad": PAD}]))


def _queued(client: BufferedClient) -> int:
    """Bytes written to the live connection that the server's kernel has not taken."""
    conn = client._writer.links[0].conn
    if conn is None:
        return 0
    confirmed = conn.confirmed_offset()
    return 0 if confirmed is None else conn.bytes_written - confirmed


def _stream_until(client: BufferedClient, ready, limit: int = 400_000) -> int:
    """Post records until ``ready()``; how many were posted."""
    posted = 0
    while posted < limit:
        for _ in range(500):
            client.post("resend", {"i": posted, "pad": PAD})
            posted += 1
        if ready():
            return posted
        time.sleep(0.005)
    raise AssertionError(f"{limit} records posted and the state never came")


def _arrivals_once(server: ForwardServer) -> Counter[int]:
    """What the server received once every connection has ended (it then closes), each
    record asserted to have arrived at most once."""
    try:
        assert wait_until(lambda: server.open_connections == 0, 20)
        seen = Counter(e.record["i"] for e in server.events)
    finally:
        server.close()
    assert [i for i, n in seen.items() if n > 1] == []
    return seen


@pytest.mark.parametrize("failed_by", ["write_timeout", "reset"])
def test_what_a_resetting_server_never_took_is_sent_again_once(failed_by):
    # write_timeout: the stalled server blocks a write long enough for the connection to
    # fail and retire first; reset: the reset itself fails the live connection.
    server = ForwardServer().start()
    server.stall(True)
    client = BufferedClient(server.host, server.port, at_exit=False, backoff=FAST_BACKOFF,
                            timeouts=Timeouts(write=0.5 if failed_by == "write_timeout" else 120.0),
                            buffering=Buffering(limit=256 << 20, max_frame_size=FRAME))
    link = client._writer.links[0]
    try:
        if failed_by == "write_timeout":
            posted = _stream_until(client, lambda: bool(link.retiring))
        else:
            posted = _stream_until(client, lambda: _queued(client) > 256 * 1024)
        # Stops with our bytes unread, as a stopping fluentd or Fluent Bit does: the
        # kernel resets each connection. Then it comes back, reading again.
        server.stop()
        unread = server.bytes_unread
        server.stall(False)
        server.restart()
        assert client.flush(60)
    finally:
        report = client.shutdown(30)
    stats = client.stats()
    seen = _arrivals_once(server)
    assert stats.sent + stats.possibly_lost == posted, report
    assert stats.sent <= len(seen) <= posted
    # What the server's kernel took and the server never read is all that may be lost,
    # give or take the frame it stopped reading in.
    lost = posted - len(seen)
    assert lost * _entry_size() <= unread + FRAME, (lost, unread, stats)
    assert stats.possibly_lost * _entry_size() <= unread + FRAME, (unread, stats)
    assert stats.retried > 0


@pytest.mark.parametrize("transport", ["tls", "unix"])
def test_where_a_reset_proves_nothing_nothing_is_sent_again(transport, tmp_path, request):
    # Under TLS the kernel's counts are of encrypted records, and a Unix socket's bytes
    # are in the server's queue as soon as written: a reset proves nothing about which
    # frames arrived, so none is sent again. Every loss is counted instead.
    if transport == "tls":
        pki = request.getfixturevalue("pki")
        server = ForwardServer(ssl_context=server_context(pki)).start()
        options = {"host": server.host, "port": server.port,
                   "tls": Tls(ca_file=str(pki.ca_file))}
    else:
        server = ForwardServer(unix_path=str(tmp_path / "fluent.sock")).start()
        options = {"unix_path": server.unix_path}
    server.stall(True)
    client = BufferedClient(at_exit=False, backoff=FAST_BACKOFF, timeouts=Timeouts(write=0.5),
                            buffering=Buffering(limit=256 << 20, max_frame_size=FRAME),
                            **options)
    link = client._writer.links[0]
    try:
        posted = _stream_until(client, lambda: bool(link.retiring))
        server.stop()
        server.stall(False)
        server.restart()
        assert client.flush(60)
    finally:
        client.shutdown(30)
    stats = client.stats()
    seen = _arrivals_once(server)
    assert stats.sent + stats.possibly_lost == posted
    assert stats.sent <= len(seen) <= posted
    assert stats.retried == 0


class _HalfClosingServer:
    """Closes its side of every connection at once and goes on reading to the end: a
    FIN that no reset follows, so nothing written may be sent again."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.records: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.accepting = threading.Thread(target=self._accept, daemon=True)
        self.accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        with conn:
            conn.shutdown(socket.SHUT_WR)
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                unpacker.feed(data)
                for frame in unpacker:
                    entries = msgpack.Unpacker(raw=False)
                    entries.feed(frame[1])
                    with self.lock:
                        for _, record in entries:
                            self.records[record["i"]] += 1

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way
        self.listener.close()
        self.accepting.join(20)
        for thread in self.threads:
            thread.join(20)


def test_a_server_that_closes_its_side_and_goes_on_reading_gets_nothing_twice():
    server = _HalfClosingServer()
    client = BufferedClient("127.0.0.1", server.port, at_exit=False, backoff=FAST_BACKOFF,
                            buffering=Buffering(limit=256 << 20, max_frame_size=FRAME))
    total = 20_000
    try:
        for i in range(total):
            client.post("resend", {"i": i, "pad": PAD})
        client.flush(60)
    finally:
        client.shutdown(30)
    server.close()
    stats = client.stats()
    with server.lock:
        seen = dict(server.records)
    assert [i for i, n in seen.items() if n > 1] == []
    assert stats.sent + stats.possibly_lost == total
    assert stats.sent <= len(seen)
    assert stats.retried == 0
