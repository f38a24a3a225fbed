"""Memory soak: post at a steady rate against a flaky server and watch RSS stay flat.

    python benchmarks/soak.py                      # 20,000 records/s for 10 minutes
    python benchmarks/soak.py --duration 60 --rate 5000

The server runs in another process (this script again, with ``--serve``): an embedded
ForwardServer whose fault switches reset every connection at a random byte offset (a new
offset every second) and stop it for a moment every few seconds, so the client keeps
reconnecting, resending and counting possible losses. This process samples its own RSS
every second and prints one row per report interval, then the RSS slope over the second
half of the run: a client that holds on to nothing it should not has a slope of about 0.
At the end the faults stop, the client drains, and every record posted must be counted
once: sent, dropped, unsent or possibly lost.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fluentclient import Buffering

HERE = Path(__file__).resolve().parent
TAG = "soak.access"


# -- the flaky server, in its own process -------------------------------------------------

def serve(seed: int, max_cut: int) -> None:
    """Run the flaky server; commands on stdin: ``calm`` (faults off), ``count``."""
    from fluentclient.server import ForwardServer

    # Cut frames are the point here: the server's warnings about them are noise.
    logging.getLogger("fluentclient.server").addHandler(logging.NullHandler())
    logging.getLogger("fluentclient.server").propagate = False
    received = 0
    lock = threading.Lock()

    def on_event(_: Any) -> None:
        nonlocal received
        with lock:
            received += 1

    server = ForwardServer(on_event=on_event).start()
    calm = threading.Event()
    rng = random.Random(seed)

    def faults() -> None:
        next_restart = time.monotonic() + rng.uniform(3, 6)
        while not calm.wait(1.0):
            server.clear()  # keep the server's own memory flat: only the count matters
            server.drop_after(rng.randint(1, max_cut))
            if time.monotonic() >= next_restart:
                server.stop()
                if calm.wait(rng.uniform(0.1, 1.0)):
                    break
                server.restart()
                next_restart = time.monotonic() + rng.uniform(3, 6)
        server.drop_after(None)
        server.restart()

    fault_thread = threading.Thread(target=faults, daemon=True)
    fault_thread.start()
    print(f"port {server.port}", flush=True)
    for line in sys.stdin:
        word = line.strip()
        if word == "calm":
            calm.set()
            fault_thread.join()
            print("ok", flush=True)
        elif word == "count":
            server.clear()
            with lock:
                print(received, flush=True)
    server.close()


class FlakyServer:
    def __init__(self, seed: int, max_cut: int) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE.parent), env.get("PYTHONPATH")) if p
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", "--seed", str(seed),
             "--max-cut", str(max_cut)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )
        self.port = int(self.ask(None).split()[1])

    def ask(self, line: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if line is not None:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the posting side -----------------------------------------------------------------------

def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def slope_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return cov / var * 60


def row(elapsed: float, rss: float, stats: Any) -> str:
    return (f"| {elapsed / 60:.1f} | {rss:.1f} | {stats.posted:,} | {stats.sent:,} | "
            f"{stats.dropped_total:,} | {stats.possibly_lost:,} | {stats.retried:,} | "
            f"{stats.connection_failures + stats.connect_failures:,} |")


def soak(args: argparse.Namespace) -> int:
    from fluentclient import BufferedClient

    # One warning per connection failure: hundreds a minute here, all counted in stats().
    logging.getLogger("fluentclient").addHandler(logging.NullHandler())
    logging.getLogger("fluentclient").propagate = False
    server = FlakyServer(args.seed, args.max_cut)
    client = BufferedClient("127.0.0.1", server.port, at_exit=False,
                            buffering=Buffering(limit=args.buffer_limit,
                                                spool_dir=args.spool), require_ack=args.ack)
    report_every = args.report_every or max(1.0, args.duration / 10)
    print(f"{args.rate:,} records/s for {args.duration:g} s{' with acks' if args.ack else ''}"
          f"{' with a spool' if args.spool else ''}"
          f" against a server that resets connections at random offsets (up to "
          f"{args.max_cut:,} bytes) and restarts every 3-6 s\n")
    print("| minutes | RSS MiB | posted | sent | dropped | possibly_lost | retried | "
          "failures |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    samples: list[tuple[float, float]] = []
    tick = 0.01
    start = time.monotonic()
    next_sample = start
    next_report = start
    posted = 0
    seq = 0
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= args.duration:
            break
        due = int(args.rate * elapsed) - posted
        for _ in range(due):
            seq += 1
            client.post(TAG, {"seq": seq, "level": "info", "path": "/api/items",
                              "status": 200, "ms": (seq % 997) / 10,
                              "message": "GET /api/items 200"})
        posted += due
        if now >= next_sample:
            samples.append((elapsed, rss_mib()))
            next_sample += 1.0
        if now >= next_report:
            print(row(elapsed, samples[-1][1], client.stats()), flush=True)
            next_report += report_every
        time.sleep(max(0.0, tick - (time.monotonic() - now)))
    elapsed = time.monotonic() - start
    rss = rss_mib()
    samples.append((elapsed, rss))
    print(row(elapsed, rss, client.stats()), flush=True)

    server.ask("calm")
    report = client.shutdown(30)
    received = int(server.ask("count"))
    server.close()
    stats = client.stats()
    half = [(t, m) for t, m in samples if t >= args.duration / 2]
    print()
    print(f"- RSS slope over the second half: {slope_per_minute(half):+.3f} MiB/min "
          f"({len(half)} samples, {min(m for _, m in half):.1f} to "
          f"{max(m for _, m in half):.1f} MiB)")
    print(f"- after the faults stopped and shutdown: sent {report.sent:,}, unsent "
          f"{report.unsent_records:,}, possibly lost {report.possibly_lost:,}, dropped "
          f"{sum(report.dropped.values()):,}; the server received {received:,}")
    settled = stats.sent + stats.dropped_total + stats.unsent + stats.possibly_lost
    if args.ack:
        # At least once: a record counted sent arrived, maybe more than once.
        ok = settled == stats.posted == posted and stats.sent <= received
    else:
        # A record counted sent surely arrived, and one that arrived was either counted
        # sent or possibly lost: a resend never duplicates.
        ok = (settled == stats.posted == posted
              and stats.sent <= received <= stats.sent + stats.possibly_lost)
    print(f"- every record counted once: {'yes' if ok else 'NO'} "
          f"(posted {stats.posted:,}, settled {settled:,})")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=20_000, help="records per second")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--report-every", type=float, default=0.0,
                        help="seconds between rows (default: a tenth of the duration)")
    parser.add_argument("--buffer-limit", type=int, default=8 * 2**20)
    parser.add_argument("--ack", action="store_true", help="require_ack=True")
    parser.add_argument("--spool", default=None, help="spool_dir for the client")
    parser.add_argument("--max-cut", type=int, default=16 * 2**20,
                        help="largest byte offset at which the server resets a connection")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.seed, args.max_cut)
        return 0
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
