"""A fast forward-protocol receiver for the benchmarks, run as its own process.

It counts records exactly and decodes every one of them, as a real server must (it
unpacks every entry of a PackedForward payload, inflates gzip payloads, counts Message and
Forward frames), answers acks, and tells the parent on stdout when it has seen N records,
with the system-wide monotonic time of that moment, so that end-to-end times can be
computed across processes.

``--flaky SECONDS``: every connection is reset that long after it was accepted (a server
that keeps failing); what arrived before the reset still counts.

Commands on stdin, one per line:
    wait N TIMEOUT   answer "reached <monotonic time>" once N records arrived, or "timeout"
    count            answer the count
    reset            zero the count (answers "ok")
The first line on stdout is "port <number>".
"""

from __future__ import annotations

import gzip
import socket
import struct
import sys
import threading
import time

import msgpack

count = 0
# When the count last grew: the moment the last awaited record arrived.
last_update = 0.0
changed = threading.Condition()


def _entries(payload: bytes) -> int:
    # Decoded, not skipped: the sink pays for each record what a server pays.
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload)
    return sum(1 for _ in unpacker)


def _records(frame: list) -> tuple[int, bytes | None]:
    second = frame[1]
    options = frame[2] if len(frame) > 2 and isinstance(frame[2], dict) else {}
    if len(frame) > 3 and isinstance(frame[3], dict):
        options = frame[3]
    if isinstance(second, (bytes, bytearray)):
        payload = bytes(second)
        if options.get(b"compressed") == b"gzip":
            payload = gzip.decompress(payload)
        n = _entries(payload)
    elif isinstance(second, list):
        n = len(second)
    else:
        n = 1
    chunk = options.get(b"chunk")
    ack = msgpack.packb({"ack": chunk.decode()}) if isinstance(chunk, bytes) else None
    return n, ack


def _serve(conn: socket.socket, lifetime: float | None) -> None:
    global count, last_update
    unpacker = msgpack.Unpacker(raw=True, max_buffer_size=256 * 1024 * 1024)
    ends = None if lifetime is None else time.monotonic() + lifetime
    if ends is not None:
        conn.settimeout(lifetime)
    with conn:
        while True:
            if ends is not None:
                left = ends - time.monotonic()
                if left <= 0:
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
                    return
                conn.settimeout(left)
            try:
                data = conn.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            unpacker.feed(data)
            got = 0
            acks = []
            for frame in unpacker:
                n, ack = _records(frame)
                got += n
                if ack is not None:
                    acks.append(ack)
            if acks:
                try:
                    conn.sendall(b"".join(acks))
                except OSError:
                    return
            if got:
                with changed:
                    count += got
                    last_update = time.monotonic()
                    changed.notify_all()


def _accept(listener: socket.socket, lifetime: float | None) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn, lifetime), daemon=True).start()


def main() -> None:
    global count
    lifetime = float(sys.argv[sys.argv.index("--flaky") + 1]) if "--flaky" in sys.argv else None
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(f"port {listener.getsockname()[1]}", flush=True)
    threading.Thread(target=_accept, args=(listener, lifetime), daemon=True).start()
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "wait":
            target, deadline = int(words[1]), time.monotonic() + float(words[2])
            with changed:
                while count < target and time.monotonic() < deadline:
                    changed.wait(deadline - time.monotonic())
                answer = f"reached {last_update!r}" if count >= target else "timeout"
            print(answer, flush=True)
        elif words[0] == "count":
            with changed:
                print(count, flush=True)
        elif words[0] == "reset":
            with changed:
                count = 0
            print("ok", flush=True)


if __name__ == "__main__":
    main()
