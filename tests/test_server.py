"""The embedded forward server, driven through raw sockets and the §9 protocol vectors."""

from __future__ import annotations

import gzip
import pickle
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fluentclient._transport._handshake import (
    Helo,
    build_helo,
    build_ping,
    check_pong,
    new_salt,
    parse_helo,
)
from fluentclient.errors import AuthenticationError
from fluentclient.framing import ack_for, new_unpacker
from fluentclient.message import EventTime
from fluentclient.server import ForwardServer, ReceivedEvent

from .certs import Pki, client_context, server_context

# Packs no record through the client (raw frames, the server, plain values): the
# pure-Python pass of CI leaves it out (see tests/conftest.py).
pytestmark = pytest.mark.no_packing

# -- the vectors of forward-protocol.md §9 -------------------------------------------------

TAG = "app.access"
CHUNK = "AAECAwQFBgcICQoLDA0ODw=="
HELLO = {"message": "hello"}
WORLD = {"message": "world"}
T0 = 1700000000

V1 = bytes.fromhex("93aa6170702e616363657373ce6553f10081a76d657373616765a568656c6c6f")
V2 = bytes.fromhex("93aa6170702e616363657373d7006553f100075bcd1581a76d657373616765a568656c6c6f")
V2B = bytes.fromhex(
    "94aa6170702e616363657373ce6553f10081a76d657373616765a568656c6c6f81a56368756e6bb8"
    "41414543417751464267634943516f4c4441304f44773d3d"
)
V3 = bytes.fromhex(
    "93aa6170702e616363657373c43492d7006553f1000000000081a76d657373616765a568656c6c6f"
    "92d7006553f1011dcd650081a76d657373616765a5776f726c6482a473697a6502a56368756e6bb8"
    "41414543417751464267634943516f4c4441304f44773d3d"
)
V3S = bytes.fromhex(
    "93aa6170702e616363657373da003492d7006553f1000000000081a76d657373616765a568656c6c"
    "6f92d7006553f1011dcd650081a76d657373616765a5776f726c6482a473697a6502a56368756e6b"
    "b841414543417751464267634943516f4c4441304f44773d3d"
)
V3F = bytes.fromhex(
    "93aa6170702e616363657373db0000003492d7006553f1000000000081a76d657373616765a56865"
    "6c6c6f92d7006553f1011dcd650081a76d657373616765a5776f726c6483a473697a6502aa636f6d"
    "70726573736564a474657874a56368756e6bb941414543417751464267634943516f4c4441304f44"
    "773d3d0a"
)
V4 = bytes.fromhex(
    "93aa6170702e6163636573739292ce6553f10081a76d657373616765a568656c6c6f92d7006553f1"
    "011dcd650081a76d657373616765a5776f726c6481a473697a6502"
)
V5 = bytes.fromhex(
    "93aa6170702e616363657373c43a1f8b08000000000002ff9b749d2135f8230308342ecf4d2d2e4e"
    "4c4f5d9a919a93933f092cc3287b361549a63cbf282705005f68c38b3400000083a473697a6502aa"
    "636f6d70726573736564a4677a6970a56368756e6bb841414543417751464267634943516f4c4441"
    "304f44773d3d"
)
ENTRIES = bytes.fromhex(
    "92d7006553f1000000000081a76d657373616765a568656c6c6f92d7006553f1011dcd650081a76d"
    "657373616765a5776f726c64"
)
GZ2 = bytes.fromhex(
    "1f8b08000000000002ff9b749d2135f8230308342ecf4d2d2e4e4c4f5d9a919a93930f0046da792f"
    "1a0000001f8b08000000000002ff9b749d2135f823a3ecd95486c6e5b9a9c5c589e9a94bcbf38b72"
    "5200781f16021a000000"
)
ACK = bytes.fromhex("81a361636bb841414543417751464267634943516f4c4441304f44773d3d")
ACK_NL = bytes.fromhex("81a361636bb941414543417751464267634943516f4c4441304f44773d3d0a")
EXT8_TIME = bytes.fromhex("c708006553f100075bcd15")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


# Two gzip members back to back, each holding one entry.
V5_GZ2 = pack([TAG, GZ2, {"size": 2, "compressed": "gzip", "chunk": CHUNK}])
# V2 with its EventTime rewritten from fixext8 (d7 00) to ext8 (c7 08 00).
V2_EXT8 = V2.replace(bytes.fromhex("d7006553f100075bcd15"), EXT8_TIME)

EV_HELLO_INT = ReceivedEvent(TAG, T0, HELLO)
EV_HELLO_NS = ReceivedEvent(TAG, EventTime(T0, 123456789), HELLO)
EV_PAIR = [
    ReceivedEvent(TAG, EventTime(T0, 0), HELLO),
    ReceivedEvent(TAG, EventTime(T0 + 1, 500_000_000), WORLD),
]
EV_FORWARD = [EV_HELLO_INT, ReceivedEvent(TAG, EventTime(T0 + 1, 500_000_000), WORLD)]

# (frame, events it carries, the reply it must get)
VECTORS = [
    (V1, [EV_HELLO_INT], b""),
    (V2, [EV_HELLO_NS], b""),
    (V2_EXT8, [EV_HELLO_NS], b""),
    (V2B, [EV_HELLO_INT], ACK),
    (V3, EV_PAIR, ACK),
    (V3S, EV_PAIR, ACK),
    (V3F, EV_PAIR, ACK_NL),
    (V4, EV_FORWARD, b""),
    (V5, EV_PAIR, ACK),
    (V5_GZ2, EV_PAIR, ACK),
]
STREAM = b"".join(frame for frame, _, _ in VECTORS)
STREAM_EVENTS = [event for _, events, _ in VECTORS for event in events]
STREAM_ACKS = b"".join(reply for _, _, reply in VECTORS)

WAIT = 5.0


# -- helpers -----------------------------------------------------------------------------


def connect(server: ForwardServer) -> socket.socket:
    if server.unix_path is not None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(WAIT)
            sock.connect(server.unix_path)
        except BaseException:
            sock.close()
            raise
        return sock
    return socket.create_connection((server.host, server.port), timeout=WAIT)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = sock.recv(n - len(data))
        if not more:
            raise AssertionError(f"EOF after {data!r}, wanted {n} bytes")
        data += more
    return data


def read_until_closed(sock: socket.socket) -> tuple[bytes, str]:
    """Everything the server still sends, and how it ended: "eof" or "reset"."""
    data = b""
    while True:
        try:
            more = sock.recv(65536)
        except ConnectionResetError:
            return data, "reset"
        if not more:
            return data, "eof"
        data += more


def send_in_pieces(
    server: ForwardServer, sock: socket.socket, data: bytes, cuts: list[int]
) -> None:
    """Send ``data`` cut at ``cuts``, each piece read by the server before the next is sent."""
    start = server.bytes_received
    bounds = sorted(set(c for c in cuts if 0 < c < len(data))) + [len(data)]
    prev = 0
    for bound in bounds:
        sock.sendall(data[prev:bound])
        assert server.wait_for(lambda b=bound: server.bytes_received - start >= b, WAIT)
        prev = bound


def fill_until_blocked(sock: socket.socket, frame: bytes) -> tuple[int, bytes]:
    """Write frames until the kernel takes no more: (frames begun, rest of the last one)."""
    sock.setblocking(False)
    begun = 0
    try:
        for _ in range(10_000):
            try:
                sent = sock.send(frame)
            except BlockingIOError:
                return begun, b""
            begun += 1
            if sent < len(frame):
                return begun, frame[sent:]
    finally:
        sock.settimeout(WAIT)
    raise AssertionError("the server kept reading while stalled")


# -- event modes and acks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "frame, events, reply",
    VECTORS,
    ids=["V1", "V2", "V2-ext8", "V2b", "V3", "V3s", "V3f", "V4", "V5", "V5-2-members"],
)
def test_each_vector_decodes_and_gets_its_reply(
    fluent_server: ForwardServer, frame: bytes, events: list[ReceivedEvent], reply: bytes
) -> None:
    with connect(fluent_server) as sock:
        # A V1 after the frame: its event arriving proves nothing else was owed before it.
        sock.sendall(frame + V1)
        assert fluent_server.wait_for_events(len(events) + 1, WAIT)
        assert fluent_server.events == events + [EV_HELLO_INT]
        if reply:
            assert recv_exact(sock, len(reply)) == reply
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)  # nothing more than the one reply
    assert fluent_server.errors == []
    assert fluent_server.bytes_received == len(frame) + len(V1)
    assert fluent_server.acks_sent == (1 if reply else 0)


def test_time_types_are_kept_as_received(fluent_server: ForwardServer) -> None:
    with connect(fluent_server) as sock:
        sock.sendall(V1 + V2_EXT8 + V4)
        assert fluent_server.wait_for_events(4, WAIT)
    times = [event.time for event in fluent_server.events]
    assert [type(t) for t in times] == [int, EventTime, int, EventTime]
    assert times[1] == EventTime(T0, 123456789)


def test_frames_report_mode_and_options(fluent_server: ForwardServer) -> None:
    with connect(fluent_server) as sock:
        sock.sendall(V1 + V4 + V3F + V5_GZ2)
        assert fluent_server.wait_for_events(7, WAIT)
    frames = fluent_server.frames
    assert [f.mode for f in frames] == [
        "Message",
        "Forward",
        "PackedForward",
        "CompressedPackedForward",
    ]
    assert frames[1].options == {"size": 2}
    assert frames[2].options == {"size": 2, "compressed": "text", "chunk": CHUNK + "\n"}
    assert gzip.decompress(GZ2) == ENTRIES  # the vector itself is what we think it is


def test_pipelined_acks_come_back_in_order(fluent_server: ForwardServer) -> None:
    ids = [f"id-{i}" for i in range(20)]
    frames = [pack([TAG, T0 + i, {"i": i}, {"chunk": ids[i]}]) for i in range(20)]
    expected = b"".join(ack_for(i) for i in ids)
    with connect(fluent_server) as sock:
        sock.sendall(b"".join(frames))
        assert recv_exact(sock, len(expected)) == expected
    assert [e.record["i"] for e in fluent_server.events] == list(range(20))


# -- streaming: frames split across reads --------------------------------------------------


def test_stream_byte_by_byte(fluent_server: ForwardServer) -> None:
    with connect(fluent_server) as sock:
        send_in_pieces(fluent_server, sock, STREAM, list(range(len(STREAM))))
        assert fluent_server.wait_for_events(len(STREAM_EVENTS), WAIT)
        assert recv_exact(sock, len(STREAM_ACKS)) == STREAM_ACKS
    assert fluent_server.events == STREAM_EVENTS
    assert fluent_server.errors == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(1, len(STREAM) - 1), max_size=25))
def test_stream_at_arbitrary_split_points(cuts: list[int]) -> None:
    with ForwardServer() as server, connect(server) as sock:
        send_in_pieces(server, sock, STREAM, cuts)
        assert server.wait_for_events(len(STREAM_EVENTS), WAIT)
        assert recv_exact(sock, len(STREAM_ACKS)) == STREAM_ACKS
        assert server.events == STREAM_EVENTS
        assert server.errors == []


def test_connections_decode_independently(fluent_server: ForwardServer) -> None:
    with connect(fluent_server) as a, connect(fluent_server) as b:
        send_in_pieces(fluent_server, a, V4[:10], [])
        send_in_pieces(fluent_server, b, V3[:17], [])
        send_in_pieces(fluent_server, a, V4[10:], [])
        assert fluent_server.wait_for_events(2, WAIT)
        send_in_pieces(fluent_server, b, V3[17:], [])
        assert fluent_server.wait_for_events(4, WAIT)
        assert recv_exact(b, len(ACK)) == ACK
    assert fluent_server.events == EV_FORWARD + EV_PAIR


# -- broken input ------------------------------------------------------------------------

BROKEN = {
    "never-used byte": b"\xc1",
    "map, not a frame": pack({"a": 1}),
    "nil heartbeat": b"\xc0",
    "tag only": pack([TAG]),
    "message without record": pack([TAG, T0]),
    "bin tag": pack([b"app", T0, HELLO]),
    "entry not an array": pack([TAG, b"\x01\x02", {}]),
    "gzip that is not": pack([TAG, b"plain bytes", {"compressed": "gzip"}]),
    "nil time in Forward": pack([TAG, [[None, HELLO]]]),
    "size disagrees": pack([TAG, ENTRIES, {"size": 3}]),
    "payload cut mid-entry": pack([TAG, ENTRIES[:-3], {"size": 2}]),
}


@pytest.mark.parametrize("broken", list(BROKEN.values()), ids=list(BROKEN))
def test_broken_frame_closes_only_its_connection(
    fluent_server: ForwardServer, broken: bytes
) -> None:
    with connect(fluent_server) as bystander, connect(fluent_server) as culprit:
        assert fluent_server.wait_for(lambda: fluent_server.connections_accepted == 2, WAIT)
        # The frame before the broken one is still recorded and acked.
        culprit.sendall(V2B + broken + V1)
        data, _ = read_until_closed(culprit)
        assert data == ACK
        assert fluent_server.wait_for(lambda: fluent_server.open_connections == 1, WAIT)
        errors = fluent_server.errors
        assert len(errors) == 1 and "broken frame" in errors[0]
        assert fluent_server.events == [EV_HELLO_INT]

        bystander.sendall(V3)
        assert recv_exact(bystander, len(ACK)) == ACK
        with connect(fluent_server) as newcomer:
            newcomer.sendall(V2)
            assert fluent_server.wait_for_events(4, WAIT)
    assert fluent_server.events == [EV_HELLO_INT] + EV_PAIR + [EV_HELLO_NS]


def test_peer_closing_mid_frame_is_reported(fluent_server: ForwardServer) -> None:
    with connect(fluent_server) as sock:
        sock.sendall(V1 + V2[:20])
    assert fluent_server.wait_for(lambda: fluent_server.errors != [], WAIT)
    assert "20 bytes undecoded" in fluent_server.errors[0]
    assert fluent_server.events == [EV_HELLO_INT]


# -- fault switches ----------------------------------------------------------------------


def test_stop_and_restart_on_the_same_port(fluent_server: ForwardServer) -> None:
    port = fluent_server.port
    sock = connect(fluent_server)
    sock.sendall(V1)
    assert fluent_server.wait_for_events(1, WAIT)

    fluent_server.stop()
    assert not fluent_server.listening
    assert fluent_server.open_connections == 0
    assert read_until_closed(sock)[0] == b""
    sock.close()  # the server closed first, so its side now sits in TIME_WAIT
    with pytest.raises(ConnectionRefusedError):
        connect(fluent_server)

    fluent_server.restart()
    assert fluent_server.port == port and fluent_server.listening
    with connect(fluent_server) as again:
        again.sendall(V2B)
        assert recv_exact(again, len(ACK)) == ACK
    assert fluent_server.events == [EV_HELLO_INT, EV_HELLO_INT]


def test_a_new_server_can_take_over_the_port() -> None:
    with ForwardServer() as first:
        sock = connect(first)
        sock.sendall(V1)
        assert first.wait_for_events(1, WAIT)
    read_until_closed(sock)
    sock.close()
    with ForwardServer(port=first.port) as second, connect(second) as sock2:
        sock2.sendall(V1)
        assert second.wait_for_events(1, WAIT)


def test_stall_stops_reading_and_resume_delivers_everything(
    fluent_server: ForwardServer,
) -> None:
    big = pack([TAG, T0, {"pad": "x" * 65536}])
    early = connect(fluent_server)
    assert fluent_server.wait_for(lambda: fluent_server.connections_accepted == 1, WAIT)
    fluent_server.stall(True)
    late = connect(fluent_server)
    try:
        # Accepting goes on while stalled.
        assert fluent_server.wait_for(lambda: fluent_server.connections_accepted == 2, WAIT)
        early_count, early_rest = fill_until_blocked(early, big)
        late_count, late_rest = fill_until_blocked(late, big)
        assert fluent_server.bytes_received == 0
        assert fluent_server.event_count == 0

        fluent_server.stall(False)
        early.sendall(early_rest)
        late.sendall(late_rest + V2B)
        assert fluent_server.wait_for_events(early_count + late_count + 1, WAIT)
        assert recv_exact(late, len(ACK)) == ACK
    finally:
        early.close()
        late.close()
    assert fluent_server.errors == []
    events = fluent_server.events
    assert events.count(EV_HELLO_INT) == 1
    assert sum(1 for e in events if "pad" in e.record) == early_count + late_count


DROP_STREAM = V1 + V2B + V3
DROP_BOUNDS = [len(V1), len(V1) + len(V2B), len(DROP_STREAM)]


@settings(max_examples=30, deadline=None)
@given(limit=st.integers(0, len(DROP_STREAM)))
@example(limit=0)
@example(limit=len(V1))
@example(limit=len(V1) + 1)
@example(limit=len(V1) + len(V2B))
@example(limit=len(DROP_STREAM))
def test_drop_after_resets_at_exactly_n_bytes(limit: int) -> None:
    with ForwardServer() as server:
        server.drop_after(limit)
        data, how = b"", "reset"
        try:
            with connect(server) as sock:
                sock.sendall(DROP_STREAM)
                data, how = read_until_closed(sock)
        except (ConnectionResetError, BrokenPipeError):
            # Only a reset at accept can beat the connect or the write of 138 bytes.
            assert limit == 0
        assert how == "reset"
        assert server.wait_for(lambda: server.open_connections == 0, WAIT)
        assert server.connections_accepted == 1
        assert server.bytes_received == limit
        whole = sum(1 for bound in DROP_BOUNDS if bound <= limit)
        expected = [[EV_HELLO_INT], [EV_HELLO_INT], EV_PAIR][:whole]
        assert server.events == [e for group in expected for e in group]
        # Acks for frames inside the cut are written before the reset, which may still
        # overtake them; nothing else may arrive.
        owed = ACK * max(0, whole - 1)
        assert owed.startswith(data) and len(data) % len(ACK) == 0
        assert server.errors == []


def test_drop_after_applies_to_new_connections_only(fluent_server: ForwardServer) -> None:
    old = connect(fluent_server)
    assert fluent_server.wait_for(lambda: fluent_server.connections_accepted == 1, WAIT)
    fluent_server.drop_after(10)
    try:
        with connect(fluent_server) as cut:
            cut.sendall(V1)
            assert read_until_closed(cut) == (b"", "reset")
        old.sendall(V2B)
        assert recv_exact(old, len(ACK)) == ACK

        fluent_server.drop_after(None)
        with connect(fluent_server) as free:
            free.sendall(V3 + V2B)
            assert recv_exact(free, 2 * len(ACK)) == ACK + ACK
    finally:
        old.close()
    assert fluent_server.events == [EV_HELLO_INT] + EV_PAIR + [EV_HELLO_INT]
    with pytest.raises(ValueError):
        fluent_server.drop_after(-1)


def test_refuse_closes_the_listener_but_keeps_connections(fluent_server: ForwardServer) -> None:
    port = fluent_server.port
    kept = connect(fluent_server)
    assert fluent_server.wait_for(lambda: fluent_server.connections_accepted == 1, WAIT)
    try:
        fluent_server.refuse(True)
        assert not fluent_server.listening
        with pytest.raises(ConnectionRefusedError):
            connect(fluent_server)
        kept.sendall(V2B)
        assert recv_exact(kept, len(ACK)) == ACK

        fluent_server.refuse(False)
        assert fluent_server.port == port
        with connect(fluent_server) as fresh:
            fresh.sendall(V3)
            assert recv_exact(fresh, len(ACK)) == ACK
    finally:
        kept.close()
    assert fluent_server.events == [EV_HELLO_INT] + EV_PAIR


def test_refuse_before_start_still_picks_a_port() -> None:
    server = ForwardServer()
    server.refuse(True)
    with server:
        assert server.port != 0 and not server.listening
        with pytest.raises(ConnectionRefusedError):
            connect(server)
        server.refuse(False)
        with connect(server) as sock:
            sock.sendall(V1)
            assert server.wait_for_events(1, WAIT)


# -- Unix socket -------------------------------------------------------------------------


def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "fwd.sock")
    with ForwardServer(unix_path=path) as server:
        assert server.address == path and server.port == 0
        with connect(server) as sock:
            send_in_pieces(server, sock, V3 + V5_GZ2, [7, 50, 120])
            assert recv_exact(sock, 2 * len(ACK)) == ACK + ACK
        assert server.events == EV_PAIR + EV_PAIR

        server.refuse(True)
        with pytest.raises(ConnectionRefusedError):
            connect(server)
        server.refuse(False)
        server.stop()
        with pytest.raises(ConnectionRefusedError):
            connect(server)
        server.restart()
        with connect(server) as sock:
            sock.sendall(V1)
            assert server.wait_for_events(5, WAIT)
    assert not Path(path).exists()


# -- recording, callbacks and life cycle ---------------------------------------------------


def test_on_event_sees_each_event_in_order_and_may_fail() -> None:
    seen: list[ReceivedEvent] = []

    def on_event(event: ReceivedEvent) -> None:
        seen.append(event)
        if len(seen) == 1:
            raise RuntimeError("a broken callback must not break the server")

    with ForwardServer(on_event=on_event) as server, connect(server) as sock:
        sock.sendall(STREAM)
        assert recv_exact(sock, len(STREAM_ACKS)) == STREAM_ACKS
        assert server.wait_for_events(len(STREAM_EVENTS), WAIT)
        assert seen == server.events == STREAM_EVENTS


def test_received_events_pickle_under_their_public_name(fluent_server: ForwardServer) -> None:
    # Events cross process boundaries in user tests (multiprocessing queues), and a pickle
    # names the class by module: that has to stay the documented one.
    with connect(fluent_server) as sock:
        sock.sendall(V3)
        assert fluent_server.wait_for_events(2, WAIT)
    events = fluent_server.events
    assert ReceivedEvent.__module__ == "fluentclient.server"
    assert pickle.loads(pickle.dumps(events)) == events


def test_clear_and_wait_for(fluent_server: ForwardServer) -> None:
    assert not fluent_server.wait_for_events(1, timeout=0.05)
    with connect(fluent_server) as sock:
        sock.sendall(V3)
        assert fluent_server.wait_for_events(2, WAIT)
        fluent_server.clear()
        assert fluent_server.events == [] and fluent_server.frames == []
        assert fluent_server.event_count == 0 and fluent_server.bytes_received == 0
        sock.sendall(V1)
        assert fluent_server.wait_for(lambda: fluent_server.events == [EV_HELLO_INT], WAIT)
        assert fluent_server.bytes_received == len(V1)


def test_close_joins_the_thread_and_closes_every_socket() -> None:
    before = set(threading.enumerate())
    server = ForwardServer().start()
    threads = [t for t in threading.enumerate() if t not in before]
    assert [t.name for t in threads] == ["fluentclient-server"]
    sock = connect(server)
    server.close()
    server.close()  # idempotent
    assert not threads[0].is_alive()
    assert read_until_closed(sock)[0] == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect(server)
    for switch in (server.stop, server.restart, lambda: server.stall(True)):
        with pytest.raises(RuntimeError):
            switch()
    with pytest.raises(RuntimeError):
        server.start()


def test_a_start_that_failed_to_bind_can_be_tried_again() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = ForwardServer("127.0.0.1", port)
        with pytest.raises(OSError):
            server.start()
        assert not server.listening
    with server, connect(server) as sock:
        assert server.port == port and server.listening
        sock.sendall(V1)
        assert server.wait_for_events(1, WAIT)


def test_close_ends_waits_early() -> None:
    server = ForwardServer().start()
    threading.Timer(0.05, server.close).start()
    began = time.monotonic()
    assert not server.wait_for_events(1, timeout=30)
    assert time.monotonic() - began < 10


def test_serve_forever_returns_when_closed() -> None:
    server = ForwardServer()
    runner = threading.Thread(target=server.serve_forever, daemon=True)
    runner.start()
    assert server.wait_for(lambda: server.listening, WAIT)
    with connect(server) as sock:
        sock.sendall(V1)
        assert server.wait_for_events(1, WAIT)
    server.close()
    runner.join(WAIT)
    assert not runner.is_alive()


def test_fixture_gives_a_started_server(fluent_server: ForwardServer) -> None:
    assert fluent_server.host == "127.0.0.1"
    assert fluent_server.port > 0 and fluent_server.listening
    assert fluent_server.address == ("127.0.0.1", fluent_server.port)


# -- handshake (fluentd <security>) ------------------------------------------------------

KEY = "a key only the tests know"
CLIENT_HOST = "client.test"


class Peer:
    """A raw client socket (plain or TLS) with a streaming decoder for what comes back."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.unpacker = new_unpacker()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def next(self, timeout: float = WAIT) -> Any:
        """The next object the server sends; fails on EOF or when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return next(self.unpacker)
            except StopIteration:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no reply from the server in time")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError("the server closed the connection instead of replying")
            self.unpacker.feed(data)

    def rest(self) -> tuple[list[Any], str]:
        """Everything else the server sends until it closes, and how: "eof" or "reset"."""
        self.sock.settimeout(WAIT)
        how = "eof"
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                how = "reset"
                break
            except ssl.SSLEOFError:
                how = "eof without close_notify"
                break
            if not data:
                break
            self.unpacker.feed(data)
        return list(self.unpacker), how

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except (BlockingIOError, ssl.SSLWantReadError):
            return True
        finally:
            self.sock.settimeout(WAIT)
        return False

    def shake(
        self, *, key: str = KEY, hostname: str = CLIENT_HOST, user: str = "",
        password: str = "",
    ) -> tuple[Helo, str, Any]:
        """Read HELO, answer it with a PING: (HELO, the salt used, the server's PONG)."""
        helo = parse_helo(self.next())
        salt = new_salt()
        self.sock.sendall(build_ping(helo, self_hostname=hostname, shared_key=key, salt=salt,
                                     username=user, password=password))
        return helo, salt, self.next()


def peer(server: ForwardServer, context: ssl.SSLContext | None = None) -> Peer:
    sock = connect(server)
    if context is not None:
        try:
            # Ragged EOFs show up as errors: a server closing without close_notify is seen.
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1",
                                       suppress_ragged_eofs=False)
        except BaseException:
            sock.close()
            raise
    return Peer(sock)


def framed(chunk: str, i: int = 0) -> bytes:
    return pack([TAG, T0 + i, {"i": i}, {"chunk": chunk}])


def authenticated(
    server: ForwardServer, context: ssl.SSLContext | None = None, *,
    expect: str = "server.test", **kw: str,
) -> Peer:
    """A connection past a successful handshake with a server called ``expect``."""
    p = peer(server, context)
    helo, salt, pong = p.shake(**kw)
    assert check_pong(pong, helo=helo, salt=salt, shared_key=kw.get("key", KEY),
                      self_hostname=kw.get("hostname", CLIENT_HOST)) == expect
    return p


def _decode_one(data: bytes) -> Any:
    unpacker = new_unpacker()
    unpacker.feed(data)
    [obj] = list(unpacker)
    return obj


def test_without_security_the_server_does_not_speak_first(fluent_server: ForwardServer) -> None:
    with peer(fluent_server) as p:
        p.sock.sendall(V2B)
        assert recv_exact(p.sock, len(ACK)) == ACK  # an ack, not a HELO, comes first
    assert fluent_server.handshakes == 0 and fluent_server.auth_failures == 0


@pytest.mark.parametrize("keepalive", [True, False])
def test_helo_fluentd_style(keepalive: bool) -> None:
    with ForwardServer(shared_key=KEY, keepalive=keepalive) as server:
        with peer(server) as a, peer(server) as b:
            raw_a, raw_b = recv_exact(a.sock, 65), recv_exact(b.sock, 65)
            assert a.nothing_pending()
        helo_a = parse_helo(_decode_one(raw_a))
        # bin8 nonce and auth of 16 bytes each, keepalive as a bool: fluentd's layout.
        assert raw_a == build_helo(helo_a.nonce, helo_a.auth, keepalive)
        assert raw_a[13:15] == b"\xc4\x10" and raw_a[36:38] == b"\xc4\x10"
        assert raw_a[-1:] == (b"\xc3" if keepalive else b"\xc2")
        helo_b = parse_helo(_decode_one(raw_b))
        # Each connection gets its own nonce and auth salt.
        assert helo_a.nonce != helo_b.nonce and helo_a.auth != helo_b.auth
        assert server.event_count == 0 and server.handshakes == 0


@pytest.mark.parametrize("keepalive", [True, False])
def test_helo_fluent_bit_style(keepalive: bool) -> None:
    with ForwardServer(shared_key=KEY, helo_as_str=True, keepalive=keepalive) as server:
        with peer(server) as p:
            size = 52 if keepalive else 63
            raw = recv_exact(p.sock, size)
            assert p.nothing_pending()
            helo = parse_helo(_decode_one(raw))
    # str (b0) holding 16 raw bytes, and a keepalive key only when it is false.
    assert raw.startswith(bytes.fromhex("92a448454c4f") + (b"\x82" if keepalive else b"\x83"))
    assert raw[7:14] == b"\xa5nonce\xb0" and raw[30:36] == b"\xa4auth\xb0"
    assert (b"keepalive" in raw) == (not keepalive)
    assert raw == build_helo(helo.nonce, helo.auth, keepalive, as_str=True)
    assert helo.keepalive is keepalive and len(helo.nonce) == len(helo.auth) == 16


@pytest.mark.parametrize("helo_as_str", [False, True], ids=["fluentd", "fluent-bit"])
def test_handshake_then_records_and_acks(helo_as_str: bool) -> None:
    with ForwardServer(shared_key=KEY, helo_as_str=helo_as_str,
                       self_hostname="collector.internal") as server:
        with authenticated(server, expect="collector.internal") as p:
            p.sock.sendall(V2B)
            assert p.next() == {"ack": CHUNK}
        assert server.events == [EV_HELLO_INT]
        assert server.handshakes == 1 and server.auth_failures == 0
        assert server.errors == []


def test_a_ping_split_across_writes_is_accepted() -> None:
    with ForwardServer(shared_key=KEY) as server, peer(server) as p:
        helo = parse_helo(p.next())
        salt = new_salt()
        ping = build_ping(helo, self_hostname=CLIENT_HOST, shared_key=KEY, salt=salt)
        send_in_pieces(server, p.sock, ping, [1, 7, 100, 200])
        check_pong(p.next(), helo=helo, salt=salt, shared_key=KEY, self_hostname=CLIENT_HOST)
        p.sock.sendall(V2B)
        assert p.next() == {"ack": CHUNK}


USERS = {"alice": "wonderland", "bob": "builder"}


@pytest.mark.parametrize("user, password", [("alice", "wonderland"), ("bob", "builder")])
def test_users_with_the_right_password_get_in(user: str, password: str) -> None:
    with ForwardServer(shared_key=KEY, users=USERS) as server:
        with authenticated(server, user=user, password=password) as p:
            p.sock.sendall(V2B)
            assert p.next() == {"ack": CHUNK}
        assert server.handshakes == 1 and server.event_count == 1


def ping_with_bin_salt(p: Peer) -> None:
    helo = parse_helo(p.next())
    good = msgpack.unpackb(build_ping(helo, self_hostname=CLIENT_HOST, shared_key=KEY,
                                      salt=new_salt()))
    good[2] = good[2].encode()  # bin instead of str
    p.sock.sendall(pack(good))


def records_instead_of_ping(p: Peer) -> None:
    parse_helo(p.next())
    p.sock.sendall(V2B)


REFUSALS = {
    "wrong key": (None, {"key": "not it"}, "shared_key mismatch"),
    "wrong password": (None, {"user": "bob", "password": "wonderland"},
                       "username/password mismatch"),
    "unknown user": (None, {"user": "carol", "password": "builder"},
                     "username/password mismatch"),
    "no user": (None, {}, "username/password mismatch"),
    "our hostname": (None, {"user": "bob", "password": "builder", "hostname": "server.test"},
                     "same hostname between input and output: invalid configuration"),
    "bin field": (ping_with_bin_salt, {}, "invalid ping message"),
    "records first": (records_instead_of_ping, {}, "invalid ping message"),
}


@pytest.mark.parametrize("opening, creds, reason", list(REFUSALS.values()), ids=list(REFUSALS))
def test_refused_pings_get_pong_false_then_a_close(
    opening: Callable[[Peer], None] | None, creds: dict[str, str], reason: str
) -> None:
    with ForwardServer(shared_key=KEY, users=USERS) as server:
        # A connection that got in earlier is not disturbed by the refusal.
        with authenticated(server, user="alice", password="wonderland") as good:
            with peer(server) as p:
                if opening is None:
                    helo, salt, pong = p.shake(**creds)
                    with pytest.raises(AuthenticationError, match=reason):
                        check_pong(pong, helo=helo, salt=salt, shared_key=creds.get("key", KEY),
                                   self_hostname=creds.get("hostname", CLIENT_HOST))
                else:
                    opening(p)
                    pong = p.next()
                assert pong == ["PONG", False, reason, "", ""]
                assert p.rest() == ([], "eof")
            good.sock.sendall(V2B)
            assert good.next() == {"ack": CHUNK}
        assert server.auth_failures == 1 and server.handshakes == 1
        assert server.events == [EV_HELLO_INT]  # only the good connection's record


def test_users_need_a_shared_key() -> None:
    with pytest.raises(ValueError, match="shared_key"):
        ForwardServer(users=USERS)


def test_clear_resets_the_handshake_counters() -> None:
    with ForwardServer(shared_key=KEY) as server:
        authenticated(server).sock.close()
        with peer(server) as p:
            p.shake(key="wrong")
        assert server.wait_for(lambda: server.handshakes == 1 and server.auth_failures == 1)
        server.clear()
        assert (server.handshakes, server.auth_failures) == (0, 0)


# -- keepalive off (fluentd deny_keepalive) ---------------------------------------------------


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "handshake"])
def test_keepalive_off_closes_after_the_first_frame_and_its_ack(secure: bool) -> None:
    with ForwardServer(keepalive=False, shared_key=KEY if secure else None) as server:
        with (authenticated(server) if secure else peer(server)) as p:
            # Two frames in one write: the second one is never taken.
            p.sock.sendall(framed("one", 1) + framed("two", 2))
            assert p.rest() == ([{"ack": "one"}], "eof")
        assert [e.record for e in server.events] == [{"i": 1}]
        assert server.acks_sent == 1


def test_keepalive_off_without_an_ack_closes_at_once() -> None:
    with ForwardServer(keepalive=False) as server, peer(server) as p:
        p.sock.sendall(V1)
        assert p.rest() == ([], "eof")
        assert server.events == [EV_HELLO_INT]


def test_keepalive_off_with_withheld_acks_closes_without_one() -> None:
    with ForwardServer(keepalive=False) as server, peer(server) as p:
        server.withhold_acks(True)
        p.sock.sendall(V2B)
        assert p.rest() == ([], "eof")
        assert server.event_count == 1 and server.acks_sent == 0


def test_keepalive_off_waits_for_a_delayed_ack() -> None:
    # The second send must land while the ack is still held: long enough for a loaded
    # machine, whose steps here may each take a scheduling delay.
    delay = 1.5
    with ForwardServer(keepalive=False) as server, peer(server) as p:
        server.delay_acks(delay)
        began = time.monotonic()
        p.sock.sendall(framed("one", 1))
        assert server.wait_for_events(1)
        # More bytes while the ack is held: read and ignored, and they close nothing early.
        before = server.bytes_received
        p.sock.sendall(framed("two", 2))
        assert server.wait_for(lambda: server.bytes_received > before)
        assert p.rest() == ([{"ack": "one"}], "eof")
        assert time.monotonic() - began >= delay
        assert [e.record for e in server.events] == [{"i": 1}]


# -- TLS -----------------------------------------------------------------------------------


def test_tls_carries_every_vector(pki: Pki) -> None:
    with ForwardServer(ssl_context=server_context(pki)) as server:
        with peer(server, client_context(pki)) as p:
            assert isinstance(p.sock, ssl.SSLSocket) and p.sock.version()
            p.sock.sendall(STREAM)
            assert recv_exact(p.sock, len(STREAM_ACKS)) == STREAM_ACKS
        assert server.events == STREAM_EVENTS
        assert server.errors == []


def test_tls_large_frames_split_over_many_records(pki: Pki) -> None:
    # Frames far larger than one TLS record (16 KiB), and records holding several frames.
    frames = [pack([TAG, T0, {"pad": "x" * (i * 997 % 40_000)}]) for i in range(120)]
    frames.append(framed("last"))
    with ForwardServer(ssl_context=server_context(pki)) as server:
        with peer(server, client_context(pki)) as p:
            p.sock.sendall(b"".join(frames))
            assert p.next() == {"ack": "last"}
        assert server.event_count == 121
        assert [len(e.record.get("pad", "")) for e in server.events[:120]] == [
            i * 997 % 40_000 for i in range(120)
        ]


def test_tls_then_handshake(pki: Pki) -> None:
    with ForwardServer(ssl_context=server_context(pki), shared_key=KEY, users=USERS) as server:
        with authenticated(server, client_context(pki), user="bob", password="builder") as p:
            p.sock.sendall(V2B)
            assert p.next() == {"ack": CHUNK}
        with peer(server, client_context(pki)) as p:
            _, _, pong = p.shake(user="bob", password="nope")
            assert pong == ["PONG", False, "username/password mismatch", "", ""]
            # The server says goodbye properly (close_notify) before closing.
            assert p.rest() == ([], "eof")
        assert server.handshakes == 1 and server.auth_failures == 1


def test_a_client_stuck_in_the_tls_handshake_holds_up_nobody(pki: Pki) -> None:
    with ForwardServer(ssl_context=server_context(pki)) as server:
        with connect(server), connect(server) as halfway:  # one says nothing at all
            halfway.sendall(b"\x16\x03\x01")  # the start of a ClientHello, never finished
            assert server.wait_for(lambda: server.open_connections == 2)
            with peer(server, client_context(pki)) as p:
                p.sock.sendall(V2B)
                assert p.next() == {"ack": CHUNK}
            assert server.event_count == 1
            assert server.wait_for(lambda: server.open_connections == 2)  # both still there
        # When they give up, the server notices and lets go of them.
        assert server.wait_for(lambda: server.open_connections == 0)
        assert server.wait_for(
            lambda: sum("TLS handshake failed" in e for e in server.errors) == 2
        )


def test_a_plaintext_client_gets_nothing_from_a_tls_server(pki: Pki) -> None:
    with ForwardServer(ssl_context=server_context(pki)) as server, connect(server) as sock:
        sock.sendall(V2B)
        data, _ = read_until_closed(sock)
        assert ACK not in data  # at most a TLS alert
        assert server.event_count == 0
        assert server.wait_for(lambda: any("TLS handshake failed" in e for e in server.errors))


def test_mutual_tls_accepts_a_client_certificate(pki: Pki) -> None:
    with ForwardServer(ssl_context=server_context(pki, require_client_cert=True)) as server:
        with peer(server, client_context(pki, cert="client")) as p:
            p.sock.sendall(V2B)
            assert p.next() == {"ack": CHUNK}
        assert server.errors == []


@pytest.mark.parametrize("cert", [None, "stranger"], ids=["no-cert", "untrusted-cert"])
def test_mutual_tls_refuses_a_client_without_a_trusted_certificate(
    pki: Pki, cert: str | None
) -> None:
    with ForwardServer(ssl_context=server_context(pki, require_client_cert=True)) as server:
        outcome: object
        try:
            # With TLS 1.3 the client finishes its side before the server checks its
            # certificate, so the refusal may only show on the first read.
            with peer(server, client_context(pki, cert=cert)) as p:
                p.sock.sendall(V2B)
                outcome = p.rest()
        except (ssl.SSLError, ConnectionError) as exc:
            outcome = exc
        assert outcome != ([{"ack": CHUNK}], "eof")
        assert server.event_count == 0
        assert server.wait_for(lambda: any("TLS handshake failed" in e for e in server.errors))


# -- ack faults, beyond tests/test_server_ack_faults.py ---------------------------------------


def test_delayed_acks_leave_other_connections_served(fluent_server: ForwardServer) -> None:
    fluent_server.delay_acks(30)
    with peer(fluent_server) as a, peer(fluent_server) as b:
        a.sock.sendall(framed("held"))
        assert fluent_server.wait_for_events(1)
        b.sock.sendall(V1)  # read and recorded while a's ack waits
        assert fluent_server.wait_for_events(2)
        assert a.nothing_pending()
        assert fluent_server.acks_sent == 0  # counted once written, not when queued
        fluent_server.delay_acks(None)
        b.sock.sendall(V2B)
        assert b.next() == {"ack": CHUNK}  # far sooner than 30 s: no delay any more
        assert a.nothing_pending()  # an ack queued earlier keeps its time
        assert fluent_server.acks_sent == 1


def test_a_delayed_ack_whose_connection_closed_meanwhile_is_let_go(
    fluent_server: ForwardServer,
) -> None:
    # Long enough that a loaded server sees the close well before the ack falls due.
    fluent_server.delay_acks(2.0)
    with peer(fluent_server) as gone:
        gone.sock.sendall(framed("gone"))
        assert fluent_server.wait_for_events(1)
    assert fluent_server.wait_for(lambda: fluent_server.open_connections == 0)
    assert fluent_server.acks_sent == 0
    with peer(fluent_server) as p:
        p.sock.sendall(framed("kept"))
        # Held after the first one: once it is written, the first one fell due too.
        assert p.next() == {"ack": "kept"}
    assert fluent_server.acks_sent == 1
    assert fluent_server.errors == []


def test_withheld_acks_resume_with_the_next_frame(fluent_server: ForwardServer) -> None:
    with peer(fluent_server) as p:
        fluent_server.withhold_acks(True)
        p.sock.sendall(framed("lost"))
        assert fluent_server.wait_for_events(1)
        fluent_server.withhold_acks(False)
        p.sock.sendall(framed("kept"))
        assert p.next() == {"ack": "kept"}
        assert p.nothing_pending()
    assert fluent_server.acks_sent == 1


def test_duplicated_and_garbled_acks_together(fluent_server: ForwardServer) -> None:
    fluent_server.duplicate_acks(True)
    fluent_server.garble_acks(True)
    with peer(fluent_server) as p:
        p.sock.sendall(framed("real"))
        first, second = p.next(), p.next()
        assert first == second and first["ack"] != "real"
        fluent_server.duplicate_acks(False)
        fluent_server.garble_acks(False)
        p.sock.sendall(framed("fine"))
        assert p.next() == {"ack": "fine"}
    assert fluent_server.acks_sent == 3
