"""What the odd-record rules cost per record, packed with and without them.

    python benchmarks/odd_records.py              # 200,000 records per shape, 7 rounds
    python benchmarks/odd_records.py --records 50000 --rounds 3
    python benchmarks/odd_records.py --paths      # the compiled packer against pure Python

Packs the same records with the client's entry packer (``default=str``) twice: with the
default rules (``max_depth=8``, ``non_str_keys="str"``, ``non_finite_floats="null"``) and
with none.
The rounds alternate, and the best of each is kept, so a busy machine skews both alike.
Shapes: the typical flat log record of 7 fields (one float among them), which takes the
fast path; the same with a NaN in it (made nil: the fast path gives up and the walk makes
a copy); one with a nested map and list (the walk runs, nothing changes); and one with a
``datetime``, which the packer turns into its ISO 8601 text before ``default=`` is asked
(a str: the packed result is only checked whole with distinct keys, as without the
rules). Prints a Markdown table of ns per record.

``--paths`` packs the same shapes with the default rules on both paths instead: the
compiled packer (where it is built) and pure Python, each in batches of 128 as the reader
packs them (``pack_runs``) and one at a time as SyncClient does (``pack``).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluentclient import _accel  # noqa: E402
from fluentclient.framing import EntryPacker  # noqa: E402
from fluentclient.guard import RecordGuard  # noqa: E402
from fluentclient.message import Message  # noqa: E402

T = 1_700_000_000 * 10**9


def flat(i: int) -> dict[str, Any]:
    return {
        "level": "info",
        "msg": f"GET /api/v1/orders/{i} returned 200",
        "path": f"/api/v1/orders/{i}",
        "status": 200,
        "latency_ms": 12.5 + i % 100,
        "user_id": 100_000 + i,
        "host": "web-1.internal",
    }


def with_nan(i: int) -> dict[str, Any]:
    record = flat(i)
    record["latency_ms"] = float("nan")
    return record


def nested(i: int) -> dict[str, Any]:
    record = flat(i)
    record["http"] = {"method": "GET", "headers": {"accept": "json"}, "sizes": [12, 340]}
    return record


def with_datetime(i: int) -> dict[str, Any]:
    record = flat(i)
    record["at"] = datetime.datetime(2024, 1, 2, 3, 4, 5, i % 1000)
    return record


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "flat, 7 fields": flat,
    "flat, 7 fields, one NaN": with_nan,
    "nested (3 levels)": nested,
    "flat + a datetime, default=str": with_datetime,
}


def per_record(packer: EntryPacker, messages: list[Message]) -> float:
    pack = packer.pack
    start = time.perf_counter()
    for msg in messages:
        pack(msg)
    return (time.perf_counter() - start) / len(messages) * 1e9


def per_record_runs(packer: EntryPacker, messages: list[Message]) -> float:
    """ns per record packed by pack_runs in the reader's batches of 128."""
    batches = [messages[i:i + 128] for i in range(0, len(messages), 128)]
    failed: list[Any] = []
    pack_runs = packer.pack_runs
    start = time.perf_counter()
    for batch in batches:
        pack_runs(batch, lambda m, e: failed.append(e))
    elapsed = time.perf_counter() - start
    assert not failed, failed[:1]
    return elapsed / len(messages) * 1e9


def both_paths(records: int, rounds: int) -> None:
    """Pure Python against the compiled packer, the default rules on, alternating rounds."""
    compiled = _accel.fast_packer(RecordGuard().max_depth) is not None
    print(f"compiled packer: {_accel.REASON}")
    print("| record | pack_runs, pure Python | compiled | ratio "
          "| pack, pure Python | compiled | ratio |")
    print("|---|---|---|---|---|---|---|")
    for name, make in SHAPES.items():
        messages = [Message("app.web", make(i), T + i) for i in range(records)]
        best: dict[str, float] = {}
        for _ in range(rounds):
            for path in ("pure", "compiled") if compiled else ("pure",):
                packer = EntryPacker(default=str, guard=RecordGuard())
                if path == "pure":
                    packer._fast = None
                for how, measure in (("runs", per_record_runs), ("pack", per_record)):
                    key = f"{how} {path}"
                    best[key] = min(best.get(key, float("inf")), measure(packer, messages))
        cells = [name]
        for how in ("runs", "pack"):
            pure = best[f"{how} pure"]
            fast = best.get(f"{how} compiled", float("nan"))
            cells += [f"{pure:.0f} ns", f"{fast:.0f} ns", f"{pure / fast:.1f}"]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--paths", action="store_true",
                        help="compare the compiled packer with pure Python instead")
    args = parser.parse_args()
    if args.paths:
        both_paths(args.records, args.rounds)
        return
    print("| record | without the rules | with them | cost | ratio |")
    print("|---|---|---|---|---|")
    for name, make in SHAPES.items():
        messages = [Message("app.web", make(i), T + i) for i in range(args.records)]
        best = {"off": float("inf"), "on": float("inf")}
        for _ in range(args.rounds):
            # What the rules cost on the path that runs in this process.
            off = EntryPacker(default=str)
            on = EntryPacker(default=str, guard=RecordGuard())
            best["off"] = min(best["off"], per_record(off, messages))
            best["on"] = min(best["on"], per_record(on, messages))
        off, on = best["off"], best["on"]
        print(f"| {name} | {off:.0f} ns | {on:.0f} ns | +{on - off:.0f} ns | {on / off:.2f} |")


if __name__ == "__main__":
    main()
