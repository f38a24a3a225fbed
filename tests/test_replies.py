"""The reading side of a connection on real sockets: what a server said before it closed
is kept, and how the connection ended is set by the reads or by ``Replies.end`` alone."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest

from fluentclient._transport._replies import ConnectionLost, Replies

from .waiting import wait_until


def test_acks_before_the_servers_close_are_read_then_eof():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        replies = Replies("peer", tls=False, unix=True)
        packed = msgpack.packb({"ack": "a"}) + msgpack.packb({"ack": "b"})
        theirs.sendall(packed[:5])  # a reply split across reads is returned whole, once
        assert replies.read_available(ours, 0) == []
        theirs.sendall(packed[5:])
        theirs.close()
        got: list[object] = []
        # The acks may come in one read and the close in the next.
        assert wait_until(lambda: got.extend(replies.read_available(ours, 0)) or replies.eof)
        assert got == [{"ack": "a"}, {"ack": "b"}]
        assert replies.lost is None


def test_garbage_is_a_lost_connection_not_a_crash():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        replies = Replies("peer", tls=False, unix=True)
        theirs.sendall(b"\xc1")  # never used in msgpack
        assert wait_until(lambda: replies.wait_readable(ours, 0.05))
        with pytest.raises(ConnectionLost, match="peer sent something unreadable"):
            replies.read_available(ours, 0)


def test_a_reset_from_a_server_that_never_answered_hints_at_tls():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname(), timeout=5)
        theirs, _ = listener.accept()
        with ours:
            replies = Replies("peer", tls=False, unix=False)
            ours.sendall(b"x")
            theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            theirs.close()  # with a zero linger: a reset
            assert wait_until(lambda: replies.wait_readable(ours, 0.05))
            assert replies.read_available(ours, 1) == []
            assert replies.eof and isinstance(replies.lost_error, ConnectionResetError)
            assert replies.lost is not None and "set tls=True" in replies.lost


def test_end_marks_the_connection_ended_for_every_later_reader():
    replies = Replies("peer", tls=False, unix=False)
    assert not replies.eof and replies.lost is None
    replies.end("peer requires the forward handshake")
    assert replies.eof and replies.lost == "peer requires the forward handshake"
    with pytest.raises(AttributeError):
        replies.eof = False  # type: ignore[misc]
