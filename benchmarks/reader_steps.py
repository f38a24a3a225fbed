"""What each step of the reader's batch costs per record, on one thread, without a server.

    python benchmarks/reader_steps.py [--batches 400] [--batch 256]

The reader takes up to a batch of posted messages off its queue, packs them into runs
of one tag, looks at each run (its largest entry, and whether any record awaits an
append or an ack), and lets the batch go. This times each step over the same batches,
the way today's reader does it and the way it did before (a Python loop to take, and
three scans of every run after packing), on the compiled path when it is built and in
pure Python. Both ways pack with today's packer, which notes what the runs hold as it
goes. The garbage collector is off while it runs, so that a collection does not land in
one step's time; each figure is nanoseconds per record over all batches.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections import deque
from operator import attrgetter
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluentclient import _accel  # noqa: E402
from fluentclient._options import packer_for  # noqa: E402
from fluentclient._reading._reader import take_python  # noqa: E402
from fluentclient.message import Message  # noqa: E402
from fluentclient.options import RecordRules  # noqa: E402

TAG = "bench.access"
STOP = object()
_WAITER, _DELIVERY = attrgetter("waiter"), attrgetter("delivery")


def fresh_record(i: int) -> dict[str, Any]:
    """The record compare.py posts: a new dict per record, an access log line."""
    return {"level": "info", "msg": "request served", "path": f"/api/v1/items/{i}",
            "status": 200, "latency_ms": 12.5, "user_id": 1000 + i % 5000, "host": "web-1"}


def take_by_loop(q: deque[Any], size: int, marker: object) -> tuple[list[Any], bool]:
    """How the reader took a batch before: a Python loop, then a search for the marker."""
    batch: list[Any] = []
    popleft = q.popleft
    try:
        while len(batch) < size:
            batch.append(popleft())
    except IndexError:
        pass
    if marker in batch:
        return [m for m in batch if m is not marker], True
    return batch, False


def scans(runs: list[Any]) -> None:
    """How the reader looked at each run before: three passes over it."""
    for run in runs:
        max(run.sizes)
        any(map(_DELIVERY, run.messages))
        any(map(_WAITER, run.messages))


def notes(runs: list[Any]) -> None:
    """How it looks now: what the packer noted."""
    for run in runs:
        run.largest, run.deliveries, run.waiters  # noqa: B018


def measure(take: Callable[..., tuple[list[Any], bool]], look: Callable[[list[Any]], None],
            batches: int, size: int) -> dict[str, float]:
    packer = packer_for(RecordRules())
    clock = time.perf_counter_ns
    spent = {"take": 0, "pack": 0, "look": 0, "free": 0}
    q: deque[Any] = deque()
    for b in range(batches):
        q.extend(Message(TAG, fresh_record(b * size + i), time.time_ns())
                 for i in range(size))
        t0 = clock()
        batch, _ = take(q, size, STOP)
        t1 = clock()
        runs = packer.pack_runs(batch, lambda msg, exc: None)
        t2 = clock()
        look(runs)
        t3 = clock()
        del batch, runs
        t4 = clock()
        for step, (a, z) in zip(spent, ((t0, t1), (t1, t2), (t2, t3), (t3, t4))):
            spent[step] += z - a
    return {step: ns / (batches * size) for step, ns in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    fast_take = _accel.fast_take()
    ways = {"before (Python loop, three scans)": (take_by_loop, scans),
            "today": (fast_take or take_python, notes)}
    gc.disable()
    print(f"packer: {_accel.REASON}; {args.batches} batches of {args.batch}, "
          "ns per record\n")
    print("| reader | take | pack | look at the runs | free | all |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (take, look) in ways.items():
        r = measure(take, look, args.batches, args.batch)
        print(f"| {name} | {r['take']:.0f} | {r['pack']:.0f} | {r['look']:.1f} | "
              f"{r['free']:.0f} | {sum(r.values()):.0f} |")


if __name__ == "__main__":
    main()
