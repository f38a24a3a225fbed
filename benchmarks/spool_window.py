"""How much a ``kill -9`` during a burst loses when the client has a ``spool_dir``.

A child posts numbered records flat out towards a server that is down, with a spool, and
publishes after each ``post()`` how many have returned. The parent kills it with SIGKILL
in the middle of the burst, then starts a client on the same spool against an embedded
server, which replays what the dead process left. Whatever returned from ``post()`` but
never reached the spool is the write-ahead window: reported as records and as
milliseconds of posting at the burst's rate.

    python benchmarks/spool_window.py [--rounds N] [--after SECONDS]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

from fluentclient import Buffering

_COUNT = struct.Struct("<Qd")  # posts returned, and the monotonic time of the first


def _absent_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child(spool_dir: str, shared: str) -> None:
    from fluentclient import BufferedClient

    client = BufferedClient("127.0.0.1", _absent_port(),
                            buffering=Buffering(spool_dir=spool_dir, limit=64 * 2**20),
                            at_exit=False)
    with open(shared, "r+b") as f:
        counter = mmap.mmap(f.fileno(), _COUNT.size)
    start = time.monotonic()
    i = 0
    print("ready", flush=True)
    while True:
        client.post("spool.window", {"i": i, "msg": "request served", "status": 200})
        i += 1
        _COUNT.pack_into(counter, 0, i, start)


def one_round(after: float) -> dict[str, float]:
    from fluentclient import BufferedClient
    from fluentclient.server import ForwardServer

    with tempfile.TemporaryDirectory() as spool_dir, \
            tempfile.NamedTemporaryFile(delete=False) as shared:
        shared.write(b"\0" * _COUNT.size)
        shared.flush()
        proc = subprocess.Popen([sys.executable, __file__, "--child", spool_dir, shared.name],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(after)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait()
        with open(shared.name, "rb") as f:
            posted, start = _COUNT.unpack(f.read(_COUNT.size))
        os.unlink(shared.name)
        rate = posted / (killed_at - start)
        with ForwardServer() as server:
            client = BufferedClient(server.host, server.port,
                                    buffering=Buffering(spool_dir=spool_dir),
                                    at_exit=False)
            # Replay reaches the server as fast as it can; wait until nothing more comes.
            seen = -1
            while seen != server.event_count:
                seen = server.event_count
                server.wait_for_events(seen + 1, timeout=2.0)
            client.shutdown(10)
            numbers = {e.record["i"] for e in server.events}
    missing = [i for i in range(int(posted)) if i not in numbers]
    # Only a tail may be missing: anything earlier would be a hole, not a window.
    contiguous = not missing or missing == list(range(missing[0], int(posted)))
    return {"posted": posted, "arrived": len(numbers), "lost": len(missing),
            "lost_ms": len(missing) / rate * 1000, "rate": rate, "tail_only": contiguous}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--after", type=float, default=0.5, help="seconds into the burst")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    rounds = [one_round(args.after) for _ in range(args.rounds)]
    for r in rounds:
        print(f"posted {r['posted']:>9,.0f}  lost {r['lost']:>5,.0f} "
              f"({r['lost_ms']:.2f} ms of posting at {r['rate']:,.0f}/s), "
              f"tail only: {r['tail_only']}", file=sys.stderr)
    summary = {"rounds": rounds, "median_lost": statistics.median(r["lost"] for r in rounds),
               "max_lost_ms": max(r["lost_ms"] for r in rounds)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
