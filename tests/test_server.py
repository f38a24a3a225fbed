"""The embedded forward server, driven through raw sockets and the §9 protocol vectors."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fluentclient.framing import ack_for
from fluentclient.message import EventTime
from fluentclient.server import ForwardServer, ReceivedEvent

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
