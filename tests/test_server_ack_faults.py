"""The embedded server's ack fault switches, checked with raw sockets."""

from __future__ import annotations

import socket
import time

import msgpack
import pytest

from fluentclient.framing import ack_for, new_unpacker

# Packs no record through the client (raw frames, the server, plain values): the
# pure-Python pass of CI leaves it out (see tests/conftest.py).
pytestmark = pytest.mark.no_packing


def send_frames(server, chunks: list[str]) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    for chunk in chunks:
        sock.sendall(msgpack.packb(["t.ack", 1700000000, {"x": 1}, {"chunk": chunk}]))
    return sock


def read_replies(sock: socket.socket, n: int, timeout: float = 5) -> list:
    unpacker, replies = new_unpacker(), []
    deadline = time.monotonic() + timeout
    while len(replies) < n:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = sock.recv(4096)
        if not data:
            break
        unpacker.feed(data)
        replies.extend(unpacker)
    return replies


def test_plain_acks_answer_each_chunk_in_order(fluent_server):
    with send_frames(fluent_server, ["a", "b"]) as sock:
        assert read_replies(sock, 2) == [{"ack": "a"}, {"ack": "b"}]


def test_duplicate_acks(fluent_server):
    fluent_server.duplicate_acks(True)
    with send_frames(fluent_server, ["a"]) as sock:
        assert read_replies(sock, 2) == [{"ack": "a"}, {"ack": "a"}]


def test_garbled_acks_carry_another_id(fluent_server):
    fluent_server.garble_acks(True)
    with send_frames(fluent_server, ["a"]) as sock:
        [reply] = read_replies(sock, 1)
        assert reply["ack"] != "a"


def test_withheld_acks_never_come_but_events_are_recorded(fluent_server):
    fluent_server.withhold_acks(True)
    with send_frames(fluent_server, ["a"]) as sock:
        assert fluent_server.wait_for_events(1, timeout=5)
        sock.settimeout(0.3)
        with pytest.raises(socket.timeout):
            sock.recv(100)
    assert fluent_server.acks_sent == 0


def test_delayed_acks_come_late_and_reading_goes_on(fluent_server):
    # Long enough that a loaded machine still reads both frames well before it.
    delay = 2.0
    fluent_server.delay_acks(delay)
    t0 = time.monotonic()
    with send_frames(fluent_server, ["a", "b"]) as sock:
        # Both frames are read at once, long before their acks are due.
        assert fluent_server.wait_for_events(2, timeout=5)
        assert time.monotonic() - t0 < delay
        assert read_replies(sock, 2) == [{"ack": "a"}, {"ack": "b"}]
        assert time.monotonic() - t0 >= delay
    assert ack_for("a") == msgpack.packb({"ack": "a"})
