"""What a client costs each os.fork() of its process (the threads are parked around it).

Each case runs in a process of its own (every fork parks every live client of the process,
so cases cannot share one), which forks ``--forks`` times and times the ``os.fork()`` call
in the parent: the at-fork hooks before and after included, the child's life not. Cases:

    none      no client in the process: what a fork costs anyway
    dormant   a client that has sent and holds nothing: its threads parked at an earlier
              fork and stay parked until its next post
    running   posts and flushes before each fork: the reader and writer run, hold nothing,
              and are parked (woken, joined) at the fork
    held      posts before each fork with a long flush_interval: the threads are parked,
              and restarted at once after the fork to send what they hold

Rounds are interleaved (each round runs every case once); the table gives each case's
median over all forks of all rounds, and its ratio to ``none`` within the same run.

    python benchmarks/fork_cost.py [--forks N] [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

CASES = ("none", "dormant", "running", "held")

CHILD = textwrap.dedent("""
    import json, os, sys, time
    from fluentclient import BufferedClient, Buffering

    case, port, forks = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = None
    if case != "none":
        client = BufferedClient("127.0.0.1", port,
                                buffering=Buffering(
                                    flush_interval=60.0 if case == "held" else 0.1))
        client.post("bench.fork", {"i": -1})
        assert client.flush(10)
    times = []
    for i in range(forks):
        if case == "running":
            client.post("bench.fork", {"i": i})
            assert client.flush(10)
        elif case == "held":
            client.post("bench.fork", {"i": i})
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        times.append(time.perf_counter() - start)
        os.waitpid(pid, 0)
    if client is not None:
        client.shutdown(10)
    print(json.dumps(times))
""")


def run_case(case: str, port: int, forks: int) -> list[float]:
    # The package of this checkout, whatever is installed.
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(port), str(forks)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": path},
    )
    if out.returncode != 0:
        raise SystemExit(f"{case}: exit {out.returncode}\n{out.stderr}")
    return [float(t) for t in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=100, help="forks per case per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args()

    from fluentclient.server import ForwardServer

    times: dict[str, list[float]] = {case: [] for case in CASES}
    with ForwardServer() as server:
        for _ in range(args.rounds):
            for case in CASES:
                times[case] += run_case(case, server.port, args.forks)
    medians = {case: statistics.median(t) for case, t in times.items()}
    print(f"os.fork() in the parent, {args.forks} forks x {args.rounds} interleaved rounds, "
          f"Python {sys.version.split()[0]}\n")
    print("| case | median (us) | 90th percentile (us) | / none |")
    print("|---|---:|---:|---:|")
    for case in CASES:
        p90 = statistics.quantiles(times[case], n=10)[-1] if len(times[case]) > 1 else 0.0
        print(f"| {case} | {medians[case] * 1e6:.0f} | {p90 * 1e6:.0f} | "
              f"{medians[case] / medians['none']:.1f} |")
    if args.json:
        print(json.dumps({"medians_us": {c: m * 1e6 for c, m in medians.items()},
                          "forks": args.forks, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
