"""Does the report match what the server stored? Against the real servers.

For each server (fluentd v1.14.4, Fluent Bit v4.2.8, and our embedded server closing the
way fluentd does), each client and mode, stream records and compare the client's report
with what the server actually stored:

* healthy: the stream runs through, then ``shutdown()``;
* restarts: the server is restarted gracefully (SIGTERM, then started again on the same
  port) ``--restarts`` times while the stream runs;
* kill: the same with SIGKILL. fluentd buffers on disk here, so what it acked survives.
  Fluent Bit (this build has no filesystem storage) holds what it took in memory, and a
  kill loses that whatever the client did: acked or not, it is the server's loss.

``lost`` is what was posted and never stored; the report must count every loss
(``possibly_lost >= lost``) without crying wolf (``possibly_lost - lost`` small).

    python benchmarks/accounting.py [--records 60000] [--restarts 3] [--rate 20000]
    python benchmarks/accounting.py --quick     # the embedded server, 300 records, 1 fault

Needs the real servers of ``../shared/peers`` (see tests/real_servers.py), except with
``--servers embedded`` or ``--quick``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fluentclient import Backoff, BufferedClient  # noqa: E402
from fluentclient.server import ForwardServer  # noqa: E402
from tests.real_servers import FluentBit, Fluentd, RealServer  # noqa: E402


class Embedded:
    """Our embedded server, closing with an RST as fluentd does, behind the same face."""

    name = "embedded (RST)"

    def __init__(self) -> None:
        self.server = ForwardServer(close_with_reset=True).start()
        self.port = self.server.port

    def restart(self) -> None:
        self.server.stop()
        self.server.restart()

    def kill(self) -> None:
        self.restart()

    def start(self) -> None:
        pass

    def records(self, tag: str) -> list[dict[str, Any]]:
        return [e.record for e in self.server.events if e.tag == tag]

    def close(self) -> None:
        self.server.close()


def run(server: Any, *, records: int, faults: int, kind: str, rate: float,
        require_ack: bool, settle: float = 30.0) -> dict[str, Any]:
    tag = f"acct.{kind}.{'ack' if require_ack else 'plain'}.{time.monotonic_ns()}"
    client = BufferedClient("127.0.0.1", server.port, require_ack=require_ack,
                            backoff=Backoff(initial=0.05, maximum=0.5), at_exit=False)
    every = records // (faults + 1) if faults else records + 1

    def fault() -> None:
        if kind == "kill":
            server.kill()
            server.start()
        else:
            server.restart()

    faulter: threading.Thread | None = None
    start = time.monotonic()
    for i in range(records):
        client.post(tag, {"i": i, "pad": "x" * 100})
        if faults and i and i % every == 0 and i // every <= faults:
            if faulter is not None:
                faulter.join()
            faulter = threading.Thread(target=fault)
            faulter.start()
        ahead = (i + 1) / rate - (time.monotonic() - start)
        if ahead > 0.002:
            time.sleep(ahead)
    if faulter is not None:
        faulter.join()
    report = client.shutdown(timeout=30)
    # Wait for the server to store what it took: up to ``settle`` seconds when some
    # records never come (lost, and so never stored).
    deadline = time.monotonic() + settle
    seen: Counter[int] = Counter()
    previous = -1
    while time.monotonic() < deadline:
        seen = Counter(r["i"] for r in server.records(tag))
        if len(seen) >= records - report.unsent_records - sum(report.dropped.values()):
            break
        if len(seen) == previous:
            time.sleep(0.5)  # stored nothing more in the last half second: settle a moment
        previous = len(seen)
        time.sleep(0.3)
    arrived = len(seen)
    lost = records - arrived - report.unsent_records - sum(report.dropped.values())
    return dict(posted=records, arrived=arrived, duplicates=sum(seen.values()) - arrived,
                sent=report.sent, possibly_lost=report.possibly_lost,
                unsent=report.unsent_records, lost=lost,
                over=report.possibly_lost - lost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=60000)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20000.0)
    parser.add_argument("--servers", default="fluentd,fluent-bit,embedded")
    parser.add_argument("--settle", type=float, default=30.0,
                        help="seconds to wait for the server to store records that may be lost")
    parser.add_argument("--quick", action="store_true",
                        help="does it run? the embedded server, 300 records, one fault, "
                             "1 s to settle")
    args = parser.parse_args()
    if args.quick:
        args.servers, args.records, args.restarts, args.settle = "embedded", 300, 1, 1.0
    cols = ["posted", "arrived", "duplicates", "sent", "possibly_lost", "unsent", "lost",
            "over"]
    print("| server | mode | faults | " + " | ".join(cols) + " |")
    print("|---|---|---|" + "---:|" * len(cols))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.servers.split(","):
            server: RealServer | Embedded
            if name == "fluentd":
                server = Fluentd(Path(tmp) / "fluentd", durable=True).start()
            elif name == "fluent-bit":
                server = FluentBit(Path(tmp) / "fluent-bit").start()
            else:
                server = Embedded()
            try:
                for require_ack in (False, True):
                    for kind, faults in (("healthy", 0), ("restart", args.restarts),
                                         ("kill", args.restarts)):
                        row = run(server, records=args.records, faults=faults, kind=kind,
                                  rate=args.rate, require_ack=require_ack,
                                  settle=args.settle)
                        mode = "require_ack" if require_ack else "plain"
                        print(f"| {getattr(server, 'name', name)} | {mode} | {kind} x{faults} | "
                              + " | ".join(f"{row[c]:,}" for c in cols) + " |", flush=True)
            finally:
                if isinstance(server, Embedded):
                    server.close()
                else:
                    server.kill()


if __name__ == "__main__":
    main()
