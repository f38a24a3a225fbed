"""Command line: ``demo`` (the client against the embedded server) and ``serve``."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .client import BufferedClient
from .message import EventTime
from .server import ForwardServer, ReceivedEvent

DEMO_RECORD = {
    "message": "GET /api/v1/items/1234 HTTP/1.1 200 512 bytes in 12.5 ms",
    "level": "info",
    "host": "web-1",
    "latency_ms": 12.5,
    "request_id": "6f1c0a0e-1b9e-4c55-a7f3",
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"$bin": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def event_json(event: ReceivedEvent) -> str:
    t = event.time
    seconds, nanos = (t.seconds, t.nanoseconds) if isinstance(t, EventTime) else (t, 0)
    return json.dumps(
        {"tag": event.tag, "time": seconds, "nanoseconds": nanos,
         "record": _jsonable(event.record)},
        ensure_ascii=False,
    )


def demo(records: int) -> int:
    """Post ``records`` records through BufferedClient and check every one arrived."""
    with ForwardServer() as server:
        client = BufferedClient(server.host, server.port, at_exit=False)
        start = time.perf_counter()
        for i in range(records):
            client.post("demo.access", {**DEMO_RECORD, "seq": i})
        posted = time.perf_counter()
        report = client.shutdown(30)
        done = time.perf_counter()
        arrived = server.wait_for_events(records, timeout=30)
        seqs = [e.record.get("seq") for e in server.events]
    ok = arrived and seqs == list(range(records)) and report.complete
    print(f"posted {records:,} records in {posted - start:.3f} s "
          f"({records / (posted - start):,.0f} records/s caller-side)")
    print(f"all sent and received in {done - start:.3f} s "
          f"({records / (done - start):,.0f} records/s end to end)")
    print(f"server received {len(seqs):,} records, in order: {seqs == list(range(records))}; "
          f"report: sent={report.sent:,} unsent={report.unsent_records} "
          f"possibly_lost={report.possibly_lost} dropped={dict(report.dropped)}")
    print("OK" if ok else "FAILED: not every record arrived exactly once")
    return 0 if ok else 1


def serve(host: str, port: int, unix_path: str | None) -> int:
    """Print each received event as one JSON line until interrupted."""
    lock = threading.Lock()

    def on_event(event: ReceivedEvent) -> None:
        line = event_json(event)
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ForwardServer(host, port, unix_path=unix_path, on_event=on_event) as server:
        where = server.unix_path or f"{server.host}:{server.port}"
        print(f"listening on {where}", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fluentclient", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the client does")
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="post records to an embedded server and check them")
    p_demo.add_argument("--records", type=int, default=100_000)
    p_serve = sub.add_parser("serve", help="receive events and print them as JSON lines")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=24224)
    p_serve.add_argument("--unix-path", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "demo":
        return demo(args.records)
    return serve(args.host, args.port, args.unix_path)
