"""What the odd-record rules cost per record, packed with and without them.

    python benchmarks/odd_records.py              # 200,000 records per shape, 7 rounds
    python benchmarks/odd_records.py --records 50000 --rounds 3

Packs the same records with the client's entry packer (``default=str``) twice: with the
default rules (``max_depth=8``, ``non_str_keys="str"``, ``non_finite_floats="null"``) and
with none.
The rounds alternate, and the best of each is kept, so a busy machine skews both alike.
Shapes: the typical flat log record of 7 fields (one float among them), which takes the
fast path; the same with a NaN in it (made nil: the fast path gives up and the walk makes
a copy); one with a nested map and list (the walk runs, nothing changes); and one with a
``datetime`` that ``default=str`` converts (a str: the packed result is only checked
whole with distinct keys, as without the rules). Prints a Markdown table of ns per record.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print("| record | without the rules | with them | cost | ratio |")
    print("|---|---|---|---|---|")
    for name, make in SHAPES.items():
        messages = [Message("app.web", make(i), T + i) for i in range(args.records)]
        best = {"off": float("inf"), "on": float("inf")}
        for _ in range(args.rounds):
            off = EntryPacker(default=str)
            on = EntryPacker(default=str, guard=RecordGuard())
            best["off"] = min(best["off"], per_record(off, messages))
            best["on"] = min(best["on"], per_record(on, messages))
        off, on = best["off"], best["on"]
        print(f"| {name} | {off:.0f} ns | {on:.0f} ns | +{on - off:.0f} ns | {on / off:.2f} |")


if __name__ == "__main__":
    main()
