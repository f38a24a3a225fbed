"""Compare fluentclient with a raw ceiling and with fluent-logger, all in one run.

Every contender runs in a fresh process, so that CPU time and peak RSS are its own, and
sends to a sink in yet another process (forward_sink.py). Figures are meant to be read as
ratios within one run: the machines are shared and noisy.

    python benchmarks/compare.py                 # everything (a minute or two)
    python benchmarks/compare.py --quick         # a smoke run with few records
    python benchmarks/compare.py --only buffered,raw
    python benchmarks/compare.py --only raw_sync,sync,fluent_logger_sync --rounds 5 \
        --workloads fresh --throughput-only    # one frame per record, 5 interleaved rounds
    python benchmarks/compare.py --only sync --baseline ../old-checkout ...
        # also runs sync@baseline: the same contender with the package of another tree
    python benchmarks/compare.py --chart docs/benchmark.svg   # also draw the figures
    FLUENTCLIENT_NO_EXTENSIONS=1 python benchmarks/compare.py  # all of it in pure Python

Throughput, for two workloads: ``fresh`` builds a new dict per record, as applications
do, and ``reused`` posts one dict again and again. Caller-side (all post() calls), end to
end (until the sink, which decodes every record, has them all), and the client process's
CPU per record. Latency: every post() timed, at a steady 1,000 posts/s and during a burst,
with the server healthy, stuck (it accepts and never reads; its buffers are filled first,
so it really takes nothing), absent and flaky (it resets every connection after 100 ms);
with the garbage collector's generation-2 runs and the process's context switches (the
nearest the OS comes to counting GIL hand-offs) during the measured part. Memory: peak RSS
during a burst, healthy and stuck, against the idle RSS and buffer_limit.

Where fluentclient's compiled packer is built, ``buffered_pure`` and ``sync_pure`` run
those clients again with it switched off (``FLUENTCLIENT_NO_EXTENSIONS=1`` in their
process), so one run shows both paths; the report says which path the others used.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

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
WORKLOADS = ("fresh", "reused")
STATES = ("healthy", "stuck", "absent", "flaky")
FLAKY_LIFETIME = 0.1


def fresh_record(i: int) -> dict[str, Any]:
    """A new dict per record, shaped like an application's access log line."""
    return {"level": "info", "msg": "request served", "path": f"/api/v1/items/{i}",
            "status": 200, "latency_ms": 12.5, "user_id": 1000 + i % 5000, "host": "web-1"}


def records_of(workload: str, n: int, start: int = 0) -> Any:
    """The records a run posts; fresh ones are built as they are posted, on the clock."""
    if workload == "reused":
        return (RECORD for _ in range(n))
    return (fresh_record(i) for i in range(start, start + n))


class Observer:
    """Generation-2 collections and context switches while a measured part runs."""

    def __init__(self) -> None:
        self.gen2 = 0
        gc.callbacks.append(self._on_gc)
        self._switches = self._context_switches()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info.get("generation") == 2:
            self.gen2 += 1

    @staticmethod
    def _context_switches() -> tuple[int, int]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_nvcsw, usage.ru_nivcsw

    def result(self) -> dict[str, int]:
        gc.callbacks.remove(self._on_gc)
        vol, invol = self._context_switches()
        return {"gen2": self.gen2, "voluntary_switches": vol - self._switches[0],
                "involuntary_switches": invol - self._switches[1]}
THROUGHPUT = ["raw", "raw_naive", "raw_sync", "buffered", "buffered_pure", "buffered_ack",
              "buffered_gzip", "sync", "sync_pure", "fluent_logger_async", "fluent_logger_sync"]
# The contenders that write one frame per record: they post fewer records.
ONE_BY_ONE = ("raw_sync", "sync", "sync_pure", "fluent_logger_async", "fluent_logger_sync")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- the sink and the server states -------------------------------------------------------

class Sink:
    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "forward_sink.py"), *extra],
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

PURE = "_pure"


def base_name(name: str) -> str:
    """The client a contender runs: ``buffered_pure`` is ``buffered`` in pure Python."""
    return name[:-len(PURE)] if name.endswith(PURE) else name


def settings(*, buffer_limit: int | None = None, write_timeout: float | None = None,
             connect_timeout: float | None = None) -> dict[str, Any]:
    """Client keywords for the package that runs: a --baseline tree may predate the option
    objects, and then takes the same settings as flat keywords."""
    flat = {"buffer_limit": buffer_limit, "write_timeout": write_timeout,
            "connect_timeout": connect_timeout}
    given = {k: v for k, v in flat.items() if v is not None}
    try:
        from fluentclient import Buffering, Timeouts
    except ImportError:
        return given
    options: dict[str, Any] = {}
    if buffer_limit is not None:
        options["buffering"] = Buffering(limit=buffer_limit)
    times = {"write": write_timeout, "connect": connect_timeout}
    if any(v is not None for v in times.values()):
        options["timeouts"] = Timeouts(**{k: v for k, v in times.items() if v is not None})
    return options


def make_poster(name: str, port: int) -> tuple[Any, Any, Any]:
    """(post(record), finish(), close_now()) for one contender."""
    name = base_name(name)
    if name.startswith("buffered"):
        from fluentclient import BufferedClient

        options: dict[str, Any] = {"at_exit": False, **settings(
            buffer_limit=BUFFER_LIMIT, write_timeout=3.0, connect_timeout=3.0)}
        if name == "buffered_ack":
            options["require_ack"] = True
        if name == "buffered_gzip":
            options["compress"] = "gzip"
        client = BufferedClient("127.0.0.1", port, **options)
        return (lambda r: client.post(TAG, r), lambda: client.shutdown(60),
                lambda: client.close())
    if name == "sync":
        from fluentclient import SyncClient

        sync = SyncClient("127.0.0.1", port,
                          **settings(connect_timeout=3.0, write_timeout=3.0))

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
    if name == "raw_sync":
        return raw_ceiling(port, batch=1)
    if name.startswith("fluent_logger"):
        if name == "fluent_logger_async":
            from fluent import asyncsender as sender_module  # type: ignore[import-not-found]
        else:
            from fluent import sender as sender_module  # type: ignore[import-not-found]
        fl = sender_module.FluentSender("bench", host="127.0.0.1", port=port, timeout=3.0,
                                        nanosecond_precision=True)
        return (lambda r: fl.emit("access", r), fl.close, fl.close)
    raise SystemExit(f"unknown contender {name}")


def raw_ceiling(port: int, naive: bool = False, batch: int = 64 * 1024) -> tuple[Any, Any, Any]:
    """One thread packing PackedForward frames with msgpack.Packer and sendall: no threads.

    The ceiling packs each entry's EventTime head with struct, as fluentclient does;
    ``naive`` packs ``[ExtType(0, ...), record]`` per entry, as a plain client would.
    A frame goes once it holds ``batch`` bytes: 1 sends each record in a frame of its
    own, one packb and one sendall per record (the ceiling of a sync sender).
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
        if len(entries) >= batch:
            send()

    def finish() -> None:
        send()
        sock.close()

    return post, finish, sock.close


THREADS = {"MainThread": "caller", "fluentclient-reader": "reader",
           "fluentclient-writer": "writer"}


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of the caller's thread and the client's reader and writer, read
    from /proc (Linux; elsewhere nothing). In clock ticks: 10 ms steps on most kernels."""
    import threading

    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    found: dict[str, float] = {}
    for thread in threading.enumerate():
        role = next((r for prefix, r in THREADS.items() if thread.name.startswith(prefix)),
                    None)
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if role is not None:
            found[role] = found.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def child_throughput(name: str, port: int, records: int, workload: str) -> dict[str, Any]:
    post, finish, _ = make_poster(name, port)
    post(RECORD)  # connect and warm up before the clock starts
    idle = rss_mib()
    observer = Observer()
    cpu_at_start = thread_cpu()
    cpu0 = time.process_time()
    start = time.monotonic()
    for record in records_of(workload, records - 1):
        post(record)
    posted = time.monotonic()
    # Before finish(): a BufferedClient's threads end in it.
    by_thread = thread_cpu()
    report = finish()
    done = time.monotonic()
    cpu = time.process_time() - cpu0
    by_thread = {f"{role}_us_per_record": (seconds - cpu_at_start.get(role, 0.0))
                 / records * 1e6 for role, seconds in by_thread.items()}
    package = sys.modules.get("fluentclient")
    # What a BufferedClient says it never sent (dropped when its buffer was full, or left
    # unsent at shutdown): the sink is not waited for those.
    not_sent = (sum(report.dropped.values()) + report.unsent_records
                if hasattr(report, "dropped") else 0)
    return {"start": start, "post_s": posted - start, "finish_s": done - start,
            "not_sent": not_sent,
            "cpu_s": cpu, "cpu_us_per_record": cpu / records * 1e6, **by_thread,
            "idle_rss": idle,
            "peak_rss": rss_mib(), **observer.result(),
            # Which package ran: the tree under test, or a --baseline one.
            "package": str(Path(package.__file__).parent) if package and package.__file__
            else None}


def _percentiles(timed: Sequence[int]) -> dict[str, float]:
    latencies = sorted(timed)

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000

    return {"calls": len(latencies), "p50_us": pick(0.5), "p99_us": pick(0.99),
            "p999_us": pick(0.999), "max_us": latencies[-1] / 1000}


def _stalls(post: Any, n: int, start: int) -> dict[str, Any]:
    """A second burst, each call timed by the wall clock and by the thread's CPU clock:
    of the calls that took over a millisecond, how long the thread actually ran in them.
    A long call that barely ran waited for a core or for the GIL (the machine and the
    interpreter), not for work in post(). Kept apart from the timed burst, since the
    CPU clock is a system call that would weigh on every figure there."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    slow: list[tuple[int, int]] = []
    for record in records_of("fresh", n, start):
        c0, t0 = cpu(), wall()
        post(record)
        t1, c1 = wall(), cpu()
        if t1 - t0 > 1_000_000:
            slow.append((t1 - t0, c1 - c0))
    longest = max(slow, default=(0, 0))
    return {"stalls_over_1ms": len(slow), "stall_max_us": longest[0] / 1000,
            "stall_max_on_cpu_us": longest[1] / 1000,
            "stalls_most_on_cpu_us": max((c for _, c in slow), default=0) / 1000}


def child_latency(name: str, port: int, seconds: float, fill: int, burst: int) -> dict[str, Any]:
    """post() timed one call at a time: paced at 1,000/s, then (``burst``) flat out."""
    post, finish, close_now = make_poster(name, port)
    # A stuck server's kernel takes megabytes before anything blocks: fill it first, so
    # the measured phases face a server that really takes nothing.
    fill_start = time.monotonic()
    for record in records_of("fresh", fill):
        post(record)
    fill_s = time.monotonic() - fill_start
    clock = time.perf_counter_ns
    # Kept in an array, which the garbage collector does not walk: a list of 200,000
    # ints would lengthen every full collection, the pauses this measures.
    latencies = array("q")
    observer = Observer()
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
        record = fresh_record(fill + i)
        t0 = clock()
        post(record)
        latencies.append(clock() - t0)
        i += 1
        if time.monotonic() > deadline + 5:  # a blocking client: stop measuring
            break
    result = {"steady": {**_percentiles(latencies), **observer.result()}}
    if burst:
        latencies = array("q")
        observer = Observer()
        for record in records_of("fresh", burst, fill + i):
            t0 = clock()
            post(record)
            latencies.append(clock() - t0)
        result["burst"] = {**_percentiles(latencies), **observer.result(),
                           **_stalls(post, burst, fill + i + burst)}
    close_now()
    result.update(fill=fill, fill_s=fill_s)
    return result


def child_memory(port: int, records: int) -> dict[str, Any]:
    from fluentclient import BufferedClient

    client = BufferedClient("127.0.0.1", port, at_exit=False,
                            **settings(buffer_limit=BUFFER_LIMIT, write_timeout=3.0))
    client.post(TAG, RECORD)
    client.flush(2)
    idle = current_rss_mib()
    peak_before = rss_mib()
    for i in range(records):
        client.post(TAG, fresh_record(i))  # a fresh dict each time, as real callers do
    peak = max(rss_mib(), peak_before)
    stats = client.stats()
    client.close()
    return {"idle_rss": idle, "peak_rss": peak, "dropped": stats.dropped_total,
            "buffer_limit_mib": BUFFER_LIMIT / 2**20}


# --baseline: where the NAME@baseline contenders import fluentclient from.
BASELINE: str | None = None


def run_child(args: list[str], timeout: float = 300,
              pythonpath: str | None = None, pure: bool = False) -> dict[str, Any]:
    env = None
    if pythonpath is not None:
        env = {**os.environ, "PYTHONPATH": pythonpath}
    if pure:
        env = {**(env or os.environ), "FLUENTCLIENT_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parent ------------------------------------------------------------------------------

def packer_path() -> str:
    """Which packer fluentclient runs in this environment (the children inherit it)."""
    sys.path.insert(0, str(HERE.parent))
    from fluentclient._accel import REASON

    return REASON


def available(name: str) -> bool:
    if name.endswith(PURE):
        # Only a second path to show where the first is compiled.
        return packer_path() == "compiled"
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
    parser.add_argument("--chart", metavar="PATH", help="also write an SVG chart of this run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="throughput rounds, each running every contender in turn; the "
                        "tables show each figure's median, ratios the median of each round's")
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help="comma-separated throughput workloads (fresh, reused)")
    parser.add_argument("--throughput-only", action="store_true",
                        help="skip the latency and memory runs")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a source tree of fluentclient (another commit's checkout): each "
                        "of our contenders also runs from it, as NAME@baseline, in the same "
                        "rounds")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        if kind == "throughput":
            result = child_throughput(rest[0], int(rest[1]), int(rest[2]), rest[3])
        elif kind == "latency":
            result = child_latency(rest[0], int(rest[1]), float(rest[2]), int(rest[3]),
                                   int(rest[4]))
        else:
            result = child_memory(int(rest[0]), int(rest[1]))
        print(json.dumps(result))
        return

    records = 5_000 if args.quick else args.records
    latency_seconds = 0.5 if args.quick else 3.0
    burst = 5_000 if args.quick else 200_000
    wanted = [n for n in (args.only.split(",") if args.only else THROUGHPUT) if available(n)]
    workloads = [w for w in WORKLOADS if w in args.workloads.split(",")]
    if args.baseline:
        global BASELINE
        BASELINE = str(Path(args.baseline).resolve())
        wanted = [m for n in wanted
                  for m in ((n, f"{n}@baseline") if _family(n) == "ours" else (n,))]
    sink = Sink()
    flaky = Sink("--flaky", str(FLAKY_LIFETIME))
    results: dict[str, Any] = {"records": records, "burst": burst, "rounds": args.rounds,
                               "packer": packer_path(),
                               "throughput": {w: {} for w in workloads}, "latency": {},
                               "memory": {}}
    try:
        for workload in workloads:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
            for round_no in range(args.rounds):
                # Interleaved, each round in another order: a burst of load from elsewhere
                # on the machine then hits different contenders, not always the same one.
                shift = round_no % len(wanted)
                for name in wanted[shift:] + wanted[:shift]:
                    n = min(records, 50_000) if name.partition("@")[0] in ONE_BY_ONE else records
                    runs[name].append(throughput_run(sink, name, n, workload))
            for name in wanted:
                results["throughput"][workload][name] = median_run(runs[name])
        if args.throughput_only:
            sink.close()
            flaky.close()
            return finish(results, args.chart)
        stuck = stuck_listener()
        states = {"healthy": sink.port, "stuck": stuck.getsockname()[1], "absent": absent_port(),
                  "flaky": flaky.port}
        for client in [n for n in ("buffered", "buffered_pure", "fluent_logger_async",
                                   "fluent_logger_sync")
                       if n in wanted or not args.only]:
            if not available(client):
                continue
            for state, port in states.items():
                fill = 0 if state != "stuck" else (2_000 if args.quick else 40_000)
                # A client that blocks would take minutes over a burst: only ours runs one.
                n = burst if _family(client) == "ours" else 0
                results["latency"][f"{client}/{state}"] = run_child(
                    ["latency", client, str(port), str(latency_seconds), str(fill), str(n)],
                    timeout=300, pure=client.endswith(PURE))
        for state in ("healthy", "stuck"):
            results["memory"][state] = run_child(["memory", str(states[state]), str(records)])
        stuck.close()
    finally:
        sink.close()
        flaky.close()
    finish(results, args.chart)


def finish(results: dict[str, Any], chart_path: str | None) -> None:
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    print(report(results))
    if chart_path:
        Path(chart_path).write_text(chart(results), encoding="utf-8")


def throughput_run(sink: Sink, name: str, n: int, workload: str) -> dict[str, Any]:
    """One contender posting ``n`` records in a child process, timed until the sink has
    decoded them all."""
    sink.ask("reset")
    contender, _, baseline = name.partition("@")
    child = run_child(["throughput", contender, str(sink.port), str(n), workload],
                      pythonpath=BASELINE if baseline else None, pure=contender.endswith(PURE))
    arrived = n - child.get("not_sent", 0)
    answer = sink.ask(f"wait {arrived} 120")
    e2e = float(answer.split()[1]) - child["start"] \
        if answer.startswith("reached") else float("nan")
    child.update(records=n, e2e_s=e2e, e2e_rate=arrived / e2e, post_rate=n / child["post_s"])
    dropped = f", {n - arrived:,} not sent (buffer full)" if arrived < n else ""
    print(f"  {workload:6s} {name:22s} e2e {arrived / e2e:>10,.0f} rec/s, "
          f"{child['cpu_us_per_record']:.2f} µs CPU/record{dropped}", file=sys.stderr)
    return child


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (the rounds themselves kept in ``rounds``)."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(r[key] for r in runs)
    merged["rounds"] = runs
    return merged


def _throughput_table(workload: str, t: dict[str, Any]) -> list[str]:
    lines = [f"| {workload} dicts | records | post() rec/s | end-to-end rec/s | "
             "CPU µs/record | gen-2 GCs | context switches | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in t.items():
        switches = r["voluntary_switches"] + r["involuntary_switches"]
        lines.append(f"| {name} | {r['records']:,} | {r['post_rate']:,.0f} | "
                     f"{r['e2e_rate']:,.0f} | {r['cpu_us_per_record']:.2f} | {r['gen2']} | "
                     f"{switches:,} | {r['peak_rss']:.0f} |")
    for name, r in t.items():
        short = [x["not_sent"] for x in r.get("rounds", [r]) if x.get("not_sent")]
        if short:
            rounds = len(r.get("rounds", [r]))
            lines.append(f"\n{name}: in {len(short)} of {rounds} rounds the client dropped "
                         f"records for want of room ({', '.join(map(str, short))}); its "
                         "end-to-end rate counts those that arrived")
    split = [(name, r) for name, r in t.items() if "reader_us_per_record" in r]
    if split:
        lines += ["", f"| {workload} dicts: CPU µs/record by thread, until the last post() "
                  "returned | caller | reader | writer |", "|---|---:|---:|---:|"]
    for name, r in split:
        lines.append(f"| {name} | {r.get('caller_us_per_record', 0):.2f} | "
                     f"{r['reader_us_per_record']:.2f} | "
                     f"{r.get('writer_us_per_record', 0):.2f} |")
    ratios = []
    for name in ("buffered", "sync"):
        pure = name + PURE
        if pure in t and name in t:
            ratios.append(f"{name}: its packer / pure Python, end to end: "
                          f"{t[name]['e2e_rate'] / t[pure]['e2e_rate']:.2f}; CPU per record: "
                          f"{t[name]['cpu_us_per_record'] / t[pure]['cpu_us_per_record']:.2f}")
        if pure in t and "raw" in t:
            ratios.append(f"{pure} / raw loop, end to end: "
                          f"{t[pure]['e2e_rate'] / t['raw']['e2e_rate']:.2f}; CPU per record: "
                          f"{t[pure]['cpu_us_per_record'] / t['raw']['cpu_us_per_record']:.2f}")
    if "raw" in t and "buffered" in t:
        ratios.append(f"BufferedClient / raw loop, end to end: "
                      f"{t['buffered']['e2e_rate'] / t['raw']['e2e_rate']:.2f}; CPU per record: "
                      f"{t['buffered']['cpu_us_per_record'] / t['raw']['cpu_us_per_record']:.2f}")
    if "raw_naive" in t and "buffered" in t:
        ratios.append(f"BufferedClient / naive raw loop, end to end: "
                      f"{t['buffered']['e2e_rate'] / t['raw_naive']['e2e_rate']:.2f}")
    if "buffered_ack" in t and "buffered" in t:
        ratios.append(f"ack mode / plain: "
                      f"{t['buffered_ack']['e2e_rate'] / t['buffered']['e2e_rate']:.2f}")
    if "buffered_gzip" in t and "buffered" in t:
        ratios.append(f"gzip / plain: "
                      f"{t['buffered_gzip']['e2e_rate'] / t['buffered']['e2e_rate']:.2f}, CPU "
                      f"{t['buffered_gzip']['cpu_us_per_record']:.2f} against "
                      f"{t['buffered']['cpu_us_per_record']:.2f} µs/record")
    for other in ("fluent_logger_async", "fluent_logger_sync"):
        if other in t and "buffered" in t:
            ratios.append(f"BufferedClient / {other}: "
                          f"{t['buffered']['e2e_rate'] / t[other]['e2e_rate']:.1f}")
    for ours in ("sync", "sync_pure", "sync@baseline", "sync_pure@baseline"):
        for other, label in (("fluent_logger_sync", "fluent-logger's FluentSender"),
                             ("raw_sync", "raw one-frame-per-record loop")):
            if other in t and ours in t:
                ratios.append(f"{ours} / {label}: {_paired(t[ours], t[other])}")
    return [*lines, "", *[f"- {r}" for r in ratios], ""]


def _paired(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Our records/s over theirs and our CPU per record over theirs: the median of each
    round's ratio (two runs of the same round met the same machine), with the range."""
    pairs = list(zip(ours.get("rounds", [ours]), theirs.get("rounds", [theirs])))

    def ratio(key: str) -> str:
        values = sorted(a[key] / b[key] for a, b in pairs)
        middle = statistics.median(values)
        if len(values) == 1:
            return f"{middle:.2f}"
        return f"{middle:.2f} ({values[0]:.2f}-{values[-1]:.2f} over {len(values)} rounds)"

    return (f"end to end {ratio('e2e_rate')}, CPU per record {ratio('cpu_us_per_record')} "
            f"({ours['cpu_us_per_record']:.2f} against {theirs['cpu_us_per_record']:.2f} µs)")


def report(results: dict[str, Any]) -> str:
    lines: list[str] = [f"fluentclient's packer: {results.get('packer', 'unknown')}"
                        " (the *_pure rows: pure Python)", ""]
    for workload, table in results["throughput"].items():
        lines += _throughput_table(workload, table)
    if results["latency"]:
        lines += ["| post() latency | phase | calls | p50 µs | p99 µs | p99.9 µs | max µs | "
                  "gen-2 GCs | posted first |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in results["latency"].items():
        for phase in ("steady", "burst"):
            if phase not in r:
                continue
            m = r[phase]
            what = "1,000/s" if phase == "steady" else f"burst of {m['calls']:,}"
            lines.append(f"| {key} | {what} | {m['calls']:,} | {m['p50_us']:.1f} | "
                         f"{m['p99_us']:.1f} | {m['p999_us']:.1f} | {m['max_us']:,.0f} | "
                         f"{m['gen2']} | {r['fill']:,} in {r['fill_s']:.2f} s |")
    stalled = {key: r["burst"] for key, r in results["latency"].items()
               if "stalls_over_1ms" in r.get("burst", {})}
    if stalled:
        lines += ["", "| a second burst, each call also timed by the thread's CPU clock | "
                  "calls over 1 ms | longest µs | of it on CPU µs | most on CPU of those µs |",
                  "|---|---:|---:|---:|---:|"]
    for key, m in stalled.items():
        lines.append(f"| {key} | {m['stalls_over_1ms']:,} | {m['stall_max_us']:,.0f} | "
                     f"{m['stall_max_on_cpu_us']:,.0f} | {m['stalls_most_on_cpu_us']:,.0f} |")
    if results["memory"]:
        lines += ["", "| burst of " + f"{results['records']:,}" + " records | idle RSS MiB | "
                  "peak RSS MiB | growth MiB | buffer_limit MiB | dropped |",
                  "|---|---:|---:|---:|---:|---:|"]
    for state, r in results["memory"].items():
        lines.append(f"| server {state} | {r['idle_rss']:.1f} | {r['peak_rss']:.1f} | "
                     f"{r['peak_rss'] - r['idle_rss']:.1f} | {r['buffer_limit_mib']:.0f} | "
                     f"{r['dropped']:,} |")
    return "\n".join(lines)


# -- the chart: hand-written SVG, so the benchmark needs nothing new ------------------------

# Ours, the ceilings we measure against, and fluent-logger: one colour each.
_COLOURS = {"ours": "#2b6cb0", "raw": "#a0aec0", "other": "#dd6b20"}
_STATE_COLOURS = {"healthy": "#38a169", "stuck": "#d69e2e", "absent": "#c53030",
                  "flaky": "#805ad5"}


def _family(name: str) -> str:
    if name.startswith("raw"):
        return "raw"
    return "other" if name.startswith("fluent_logger") else "ours"


def _nice_max(value: float) -> float:
    """A round number at least ``value``, whose fifths are round too (for the grid)."""
    if not value > 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(value))
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * scale >= value:
            return m * scale
    return 10 * scale


def _text(x: float, y: float, label: str, anchor: str = "start", size: int = 12,
          bold: bool = False) -> str:
    weight = ' font-weight="bold"' if bold else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-family="sans-serif" '
            f'font-size="{size}"{weight}>{escape(label)}</text>')


def _axis(x0: float, width: float, top: float, bottom: float, top_value: float,
          unit: str) -> list[str]:
    """Vertical grid lines at fifths of ``top_value``, labelled under the plot."""
    out = []
    for i in range(6):
        x = x0 + width * i / 5
        value = top_value * i / 5
        out.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
                   'stroke="#e2e8f0"/>')
        out.append(_text(x, bottom + 14, f"{value:,.{0 if top_value >= 5 else 1}f}{unit}",
                         "middle"))
    return out


def chart(results: dict[str, Any]) -> str:
    """Two horizontal bar charts of one run: end-to-end records/s per contender, and
    post() p99 latency per client and server state."""
    width, label_w, plot_w = 760, 190, 480
    bar, gap = 18, 6
    parts: list[str] = []
    y = 30.0
    parts.append(_text(20, y, "End-to-end records/s, a fresh dict per record (until the sink "
                       "decoded every record)", bold=True))
    fresh = results["throughput"].get("fresh", {})
    throughput = [(name, r["e2e_rate"]) for name, r in fresh.items()
                  if r.get("e2e_rate") == r.get("e2e_rate")]  # NaN: the sink timed out
    top = _nice_max(max((rate for _, rate in throughput), default=0.0))
    y += 14
    plot_top = y
    rows = []
    for name, rate in throughput:
        w = plot_w * rate / top
        colour = _COLOURS[_family(name)]
        rows.append(_text(label_w - 8, y + bar - 5, name, "end"))
        rows.append(f'<rect x="{label_w}" y="{y:.1f}" width="{w:.1f}" height="{bar}" '
                    f'fill="{colour}"><title>{escape(name)}: {rate:,.0f} rec/s</title></rect>')
        rows.append(_text(label_w + w + 4, y + bar - 5, f"{rate:,.0f}"))
        y += bar + gap
    parts += _axis(label_w, plot_w, plot_top - 4, y, top, "")
    parts += rows
    y += 34
    legend = [("fluentclient", _COLOURS["ours"]), ("raw loop (no guarantees)", _COLOURS["raw"]),
              ("fluent-logger 0.11", _COLOURS["other"])]
    x = float(label_w)
    for label, colour in legend:
        parts.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="10" height="10" '
                     f'fill="{colour}"/>')
        parts.append(_text(x + 14, y, label))
        x += 24 + 7 * len(label)
    y += 34

    parts.append(_text(20, y, "post() p99 latency in µs at 1,000 posts/s, by server state",
                       bold=True))
    groups: dict[str, list[tuple[str, float]]] = {}
    for key, r in results["latency"].items():
        client, _, state = key.partition("/")
        groups.setdefault(client, []).append((state, r["steady"]["p99_us"]))
    top = _nice_max(max((v for g in groups.values() for _, v in g), default=0.0))
    y += 14
    plot_top = y
    rows = []
    small = 12
    for client, states in groups.items():
        rows.append(_text(label_w - 8, y + len(states) * small / 2 + 4, client, "end"))
        for state, p99 in states:
            w = plot_w * p99 / top
            rows.append(f'<rect x="{label_w}" y="{y:.1f}" width="{w:.1f}" height="{small - 2}" '
                        f'fill="{_STATE_COLOURS.get(state, "#718096")}"><title>'
                        f"{escape(client)}, server {escape(state)}: p99 {p99:.1f} µs"
                        "</title></rect>")
            rows.append(_text(label_w + w + 4, y + small - 3, f"{p99:.1f}", size=10))
            y += small
        y += gap * 2
    parts += _axis(label_w, plot_w, plot_top - 4, y, top, "")
    parts += rows
    y += 34
    x = float(label_w)
    for state, colour in _STATE_COLOURS.items():
        parts.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="10" height="10" '
                     f'fill="{colour}"/>')
        parts.append(_text(x + 14, y, f"server {state}"))
        x += 110
    height = int(y + 20)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">')
    body = [head, f'<rect width="{width}" height="{height}" fill="white"/>', *parts, "</svg>"]
    return "\n".join(body) + "\n"


if __name__ == "__main__":
    main()
