"""Compare fluentclient with a raw ceiling and with fluent-logger, all in one run.

Every contender runs in a fresh process, so that CPU time and peak RSS are its own, and
sends to a sink in yet another process (forward_sink.py). Figures are meant to be read as
ratios within one run: the machines are shared and noisy.

    python benchmarks/compare.py                 # everything (about two minutes)
    python benchmarks/compare.py --quick         # a smoke run with few records
    python benchmarks/compare.py --only buffered,raw

Throughput: caller-side (all post() calls) and end to end (until the sink has every
record). Latency: post() at a steady 1,000 posts/s with the server healthy, stuck (it
accepts and never reads; its buffers are filled first, so it really takes nothing) and
absent. Memory: peak RSS during a burst, healthy and stuck, against the idle RSS and
buffer_limit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RECORD = {
    "message": "GET /api/v1/items/1234 HTTP/1.1 200 512 bytes in 12.5 ms",
    "level": "info",
    "host": "web-1",
    "latency_ms": 12.5,
    "request_id": "6f1c0a0e-1b9e-4c55-a7f3-0123456789ab",
}
TAG = "bench.access"
BUFFER_LIMIT = 8 * 1024 * 1024
THROUGHPUT = ["raw", "raw_naive", "buffered", "buffered_ack", "buffered_gzip", "sync",
              "fluent_logger_async", "fluent_logger_sync"]


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- the sink and the server states -------------------------------------------------------

class Sink:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "forward_sink.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.port = int(self.proc.stdout.readline().split()[1])

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


def stuck_listener() -> socket.socket:
    """A server that is stuck: connections complete, nothing is ever read."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    return listener


def absent_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- contenders, each run in a child process ------------------------------------------------

def make_poster(name: str, port: int) -> tuple[Any, Any, Any]:
    """(post(record), finish(), close_now()) for one contender."""
    if name.startswith("buffered"):
        from fluentclient import BufferedClient

        options: dict[str, Any] = {"at_exit": False, "buffer_limit": BUFFER_LIMIT,
                                   "write_timeout": 3.0, "connect_timeout": 3.0}
        if name == "buffered_ack":
            options["require_ack"] = True
        if name == "buffered_gzip":
            options["compress"] = "gzip"
        client = BufferedClient("127.0.0.1", port, **options)
        return (lambda r: client.post(TAG, r), lambda: client.shutdown(60),
                lambda: client.close())
    if name == "sync":
        from fluentclient import SyncClient

        sync = SyncClient("127.0.0.1", port, connect_timeout=3.0, write_timeout=3.0)

        def post_sync(r: dict[str, Any]) -> None:
            try:
                sync.post(TAG, r)
            except Exception:
                pass
        return post_sync, sync.shutdown, sync.close
    if name == "raw":
        return raw_ceiling(port)
    if name == "raw_naive":
        return raw_ceiling(port, naive=True)
    if name.startswith("fluent_logger"):
        if name == "fluent_logger_async":
            from fluent import asyncsender as sender_module  # type: ignore[import-not-found]
        else:
            from fluent import sender as sender_module  # type: ignore[import-not-found]
        fl = sender_module.FluentSender("bench", host="127.0.0.1", port=port, timeout=3.0,
                                        nanosecond_precision=True)
        return (lambda r: fl.emit("access", r), fl.close, fl.close)
    raise SystemExit(f"unknown contender {name}")


def raw_ceiling(port: int, naive: bool = False) -> tuple[Any, Any, Any]:
    """One thread packing PackedForward frames with msgpack.Packer and sendall: no threads.

    The ceiling packs each entry's EventTime head with struct, as fluentclient does;
    ``naive`` packs ``[ExtType(0, ...), record]`` per entry, as a plain client would.
    """
    import msgpack

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    packer = msgpack.Packer(use_bin_type=True)
    head = struct.Struct(">BBBII")
    entries = bytearray()
    count = 0

    def send() -> None:
        nonlocal entries, count
        if count:
            sock.sendall(packer.pack([TAG, bytes(entries), {"size": count}]))
            entries, count = bytearray(), 0

    def post(record: dict[str, Any]) -> None:
        nonlocal count
        sec, nsec = divmod(time.time_ns(), 1_000_000_000)
        if naive:
            event_time = msgpack.ExtType(0, struct.pack(">II", sec, nsec))
            entries.extend(packer.pack([event_time, record]))
        else:
            entries.extend(head.pack(0x92, 0xD7, 0, sec, nsec))
            entries.extend(packer.pack(record))
        count += 1
        if len(entries) >= 64 * 1024:
            send()

    def finish() -> None:
        send()
        sock.close()

    return post, finish, sock.close


def child_throughput(name: str, port: int, records: int) -> dict[str, Any]:
    post, finish, _ = make_poster(name, port)
    post(RECORD)  # connect and warm up before the clock starts
    idle = rss_mib()
    cpu0 = time.process_time()
    start = time.monotonic()
    for _ in range(records - 1):
        post(RECORD)
    posted = time.monotonic()
    finish()
    done = time.monotonic()
    return {"start": start, "post_s": posted - start, "finish_s": done - start,
            "cpu_s": time.process_time() - cpu0, "idle_rss": idle, "peak_rss": rss_mib()}


def child_latency(name: str, port: int, seconds: float, fill: int) -> dict[str, Any]:
    post, finish, close_now = make_poster(name, port)
    # A stuck server's kernel takes megabytes before anything blocks: fill it first, so
    # the paced phase measures a client facing a server that really takes nothing.
    fill_start = time.monotonic()
    for _ in range(fill):
        post(RECORD)
    fill_s = time.monotonic() - fill_start
    latencies: list[int] = []
    start = time.monotonic()
    deadline = start + seconds
    i = 0
    while True:
        due = start + i / 1000
        if due >= deadline:
            break
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        t0 = time.perf_counter_ns()
        post(RECORD)
        latencies.append(time.perf_counter_ns() - t0)
        i += 1
        if time.monotonic() > deadline + 5:  # a blocking client: stop measuring
            break
    close_now()
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000  # noqa: E731
    return {"calls": len(latencies), "p50_us": pick(0.5), "p99_us": pick(0.99),
            "max_us": latencies[-1] / 1000, "fill": fill, "fill_s": fill_s}


def child_memory(port: int, records: int) -> dict[str, Any]:
    from fluentclient import BufferedClient

    client = BufferedClient("127.0.0.1", port, at_exit=False, buffer_limit=BUFFER_LIMIT,
                            write_timeout=3.0)
    client.post(TAG, RECORD)
    client.flush(2)
    idle = current_rss_mib()
    peak_before = rss_mib()
    for i in range(records):
        client.post(TAG, {**RECORD, "seq": i})  # a fresh dict each time, as real callers do
    peak = max(rss_mib(), peak_before)
    stats = client.stats()
    client.close()
    return {"idle_rss": idle, "peak_rss": peak, "dropped": stats.dropped_total,
            "buffer_limit_mib": BUFFER_LIMIT / 2**20}


def run_child(args: list[str], timeout: float = 300) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parent ------------------------------------------------------------------------------

def available(name: str) -> bool:
    if not name.startswith("fluent_logger"):
        return True
    try:
        import fluent.sender  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="few records, short latency runs")
    parser.add_argument("--only", default="", help="comma-separated contenders")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "throughput":
            result = child_throughput(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "latency":
            result = child_latency(rest[0], int(rest[1]), float(rest[2]), int(rest[3]))
        else:
            result = child_memory(int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return

    records = 5_000 if args.quick else args.records
    latency_seconds = 0.5 if args.quick else 3.0
    wanted = [n for n in (args.only.split(",") if args.only else THROUGHPUT) if available(n)]
    sink = Sink()
    results: dict[str, Any] = {"records": records, "throughput": {}, "latency": {},
                               "memory": {}}
    try:
        for name in wanted:
            n = records if not name.endswith("sync") and "fluent_logger" not in name else (
                min(records, 50_000))
            sink.ask("reset")
            child = run_child(["throughput", name, str(sink.port), str(n)])
            answer = sink.ask(f"wait {n} 120")
            e2e = float(answer.split()[1]) - child["start"] if answer.startswith("reached") \
                else float("nan")
            child.update(records=n, e2e_s=e2e, e2e_rate=n / e2e, post_rate=n / child["post_s"])
            results["throughput"][name] = child
            print(f"  {name:22s} e2e {n / e2e:>10,.0f} rec/s", file=sys.stderr)
        stuck = stuck_listener()
        states = {"healthy": sink.port, "stuck": stuck.getsockname()[1], "absent": absent_port()}
        for client in [n for n in ("buffered", "fluent_logger_async", "fluent_logger_sync")
                       if n in wanted or not args.only]:
            if not available(client):
                continue
            for state, port in states.items():
                fill = 0 if state != "stuck" else (2_000 if args.quick else 40_000)
                results["latency"][f"{client}/{state}"] = run_child(
                    ["latency", client, str(port), str(latency_seconds), str(fill)],
                    timeout=180)
        for state in ("healthy", "stuck"):
            results["memory"][state] = run_child(["memory", str(states[state]), str(records)])
        stuck.close()
    finally:
        sink.close()
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    print(report(results))


def report(results: dict[str, Any]) -> str:
    t = results["throughput"]
    lines = ["| contender | records | post() rec/s | end-to-end rec/s | CPU s | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in t.items():
        lines.append(f"| {name} | {r['records']:,} | {r['post_rate']:,.0f} | "
                     f"{r['e2e_rate']:,.0f} | {r['cpu_s']:.2f} | {r['peak_rss']:.0f} |")
    ratios = []
    if "raw" in t and "buffered" in t:
        ratios.append(f"BufferedClient / raw ceiling, end to end: "
                      f"{t['buffered']['e2e_rate'] / t['raw']['e2e_rate']:.2f}")
    if "raw_naive" in t and "buffered" in t:
        ratios.append(f"BufferedClient / naive raw loop, end to end: "
                      f"{t['buffered']['e2e_rate'] / t['raw_naive']['e2e_rate']:.2f}")
    if "buffered_ack" in t and "buffered" in t:
        ratios.append(f"ack mode / plain: "
                      f"{t['buffered_ack']['e2e_rate'] / t['buffered']['e2e_rate']:.2f}")
    if "buffered_gzip" in t and "buffered" in t:
        ratios.append(f"gzip / plain: "
                      f"{t['buffered_gzip']['e2e_rate'] / t['buffered']['e2e_rate']:.2f}")
    for other in ("fluent_logger_async", "fluent_logger_sync"):
        if other in t and "buffered" in t:
            ratios.append(f"BufferedClient / {other}: "
                          f"{t['buffered']['e2e_rate'] / t[other]['e2e_rate']:.1f}")
    lines += ["", *[f"- {r}" for r in ratios], ""]
    lines += ["| post() at 1,000/s | calls | p50 µs | p99 µs | max µs | posted first |",
              "|---|---:|---:|---:|---:|---:|"]
    for key, r in results["latency"].items():
        lines.append(f"| {key} | {r['calls']:,} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | "
                     f"{r['max_us']:,.0f} | {r['fill']:,} in {r['fill_s']:.2f} s |")
    lines += ["", "| burst of " + f"{results['records']:,}" + " records | idle RSS MiB | "
              "peak RSS MiB | growth MiB | buffer_limit MiB | dropped |",
              "|---|---:|---:|---:|---:|---:|"]
    for state, r in results["memory"].items():
        lines.append(f"| server {state} | {r['idle_rss']:.1f} | {r['peak_rss']:.1f} | "
                     f"{r['peak_rss'] - r['idle_rss']:.1f} | {r['buffer_limit_mib']:.0f} | "
                     f"{r['dropped']:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
