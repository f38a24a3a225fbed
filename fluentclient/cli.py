"""Command line: ``cat`` (records from stdin, like fluent-cat), ``serve`` and ``demo``.

Connection options default to the ``FLUENT_*`` environment variables (see
:mod:`fluentclient.config`); an option given on the command line wins.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import signal
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Union

from ._cat_input import BadInput, Item, json_lines, msgpack_objects, take_time
from ._progress import Console, Progress
from .client import BufferedClient, SyncClient
from .config import check_tag, options_from_env
from .errors import ConfigurationError, FluentError, InvalidTimeError
from .message import EventTime, TimeLike
from .server import ForwardServer, ReceivedEvent
from .stats import ShutdownReport

__all__ = ["main"]

DEMO_RECORD = {
    "message": "GET /api/v1/items/1234 HTTP/1.1 200 512 bytes in 12.5 ms",
    "level": "info",
    "host": "web-1",
    "latency_ms": 12.5,
    "request_id": "6f1c0a0e-1b9e-4c55-a7f3",
}

# Exit statuses of ``cat`` besides 0 (everything read was delivered) and 2 (usage).
EXIT_UNDELIVERED = 1  # a record was dropped, left unsent, possibly lost or refused
EXIT_BAD_INPUT = 3  # every record was delivered, but some lines were not records
EXIT_INTERRUPTED = 130

# cat sets the buffer limit itself so it knows when to wait for the server to catch up.
CAT_BUFFER_LIMIT = 8 * 1024 * 1024

Client = Union[BufferedClient, SyncClient]


class Interrupted(Exception):
    """SIGTERM, turned into an exception so cat stops reading and still reports."""


# -- serve -----------------------------------------------------------------------------------


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


def serve_security(args: argparse.Namespace) -> dict[str, Any]:
    """ForwardServer keyword arguments for the handshake and TLS options of ``serve``."""
    options: dict[str, Any] = {}
    if args.shared_key is not None:
        options["shared_key"] = args.shared_key
    if args.username is not None:
        if args.shared_key is None:
            raise ConfigurationError("--username needs --shared-key: the handshake carries both")
        options["users"] = {args.username: args.password or ""}
    if args.tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        options["ssl_context"] = context
    elif args.tls_key is not None:
        raise ConfigurationError("--tls-key needs --tls-cert")
    return options


def serve(args: argparse.Namespace) -> int:
    """Print each received event as one JSON line until interrupted."""
    lock = threading.Lock()

    def on_event(event: ReceivedEvent) -> None:
        line = event_json(event)
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    security = serve_security(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ForwardServer(args.host, args.port, unix_path=args.unix_path, on_event=on_event,
                       **security) as server:
        where = server.unix_path or f"{server.host}:{server.port}"
        print(f"listening on {where}", file=sys.stderr, flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    return 0


# -- demo ------------------------------------------------------------------------------------


def demo(args: argparse.Namespace) -> int:
    """Post ``--records`` records through BufferedClient and check every one arrived."""
    records = args.records
    console = Console(sys.stderr, live=sys.stderr.isatty())
    with ForwardServer() as server:
        client = BufferedClient(server.host, server.port, at_exit=False)
        with Progress(console, client.stats, enabled=_show_progress(args)):
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


def _show_progress(args: argparse.Namespace) -> bool:
    return bool(args.progress) or sys.stderr.isatty()


# -- cat -------------------------------------------------------------------------------------

# Options cat passes to the client under the same name.
_PASSED_THROUGH = (
    "shared_key", "username", "password", "tls", "tls_ca_file", "tls_cert_file",
    "tls_key_file", "tls_verify", "tls_server_name",
)


def client_options(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    """The environment's options, overridden by those given on the command line."""
    options = dict(env)
    if args.unix_path is not None:
        for key in ("servers", "host", "port"):
            options.pop(key, None)
        options["unix_path"] = args.unix_path
    elif args.host is not None or args.port is not None:
        # An address on the command line replaces the environment's whole destination.
        for key in ("servers", "unix_path"):
            options.pop(key, None)
        if args.host is not None:
            options["host"] = args.host
        if args.port is not None:
            options["port"] = args.port
    for name in _PASSED_THROUGH:
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.ack is not None:
        options["require_ack"] = args.ack
    if args.compress is not None:
        options["compress"] = None if args.compress == "none" else args.compress
    return options


def make_client(args: argparse.Namespace, options: dict[str, Any]) -> Client:
    if args.sync:
        return SyncClient(**options)
    return BufferedClient(**options, buffer_limit=CAT_BUFFER_LIMIT, at_exit=False,
                          shutdown_timeout=args.timeout)


@dataclass
class Tally:
    """What cat did with its input, for the progress line, the summary and the exit status."""

    read: int = 0  # records read (bad input not included)
    bad: int = 0  # lines or objects that were not records
    failed: int = 0  # --sync: records the server did not take


class Backpressure:
    """Holds cat back while the client's buffer is over half full, so that a fast input is
    not dropped for want of room. Past ``timeout`` without room it stops waiting (records
    are then dropped and counted) until the buffer has drained by itself."""

    CHECK_EVERY = 64

    def __init__(self, client: BufferedClient, limit: int, timeout: float) -> None:
        self._client = client
        self._high = limit // 2
        self._timeout = timeout
        self._countdown = self.CHECK_EVERY
        self._bytes = 0
        self._gave_up = False

    def note(self, size: int) -> None:
        """Called before each post with the input size of its record."""
        self._countdown -= 1
        self._bytes += size
        # A few large records can fill the buffer well before CHECK_EVERY of them.
        if self._countdown > 0 and self._bytes < self._high // 8:
            return
        self._countdown, self._bytes = self.CHECK_EVERY, 0
        if self._client.stats().buffered_bytes <= self._high:
            self._gave_up = False
        elif not self._gave_up:
            self._gave_up = not self._wait_for_room()

    def _wait_for_room(self) -> bool:
        deadline = time.monotonic() + self._timeout
        while self._client.stats().buffered_bytes > self._high:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._client.flush(timeout=min(left, 0.5))
        return True


def post_records(
    client: Client,
    tag: str,
    items: Iterator[Item],
    args: argparse.Namespace,
    console: Console,
    tally: Tally,
) -> None:
    """Post every record; report bad input (and, with --sync, failures) and go on."""

    def skip(where: str, reason: str) -> None:
        tally.bad += 1
        console.say(f"cat: {where} skipped: {reason}")

    room = (Backpressure(client, CAT_BUFFER_LIMIT, args.timeout)
            if isinstance(client, BufferedClient) else None)
    for item in items:
        if isinstance(item, BadInput):
            skip(item.where, item.reason)
            continue
        try:
            when = record_time(item.record, args)
        except ValueError as exc:
            skip(item.where, f"bad time in {args.time_key!r}: {exc}")
            continue
        if room is not None:
            room.note(item.size)
        try:
            client.post(tag, item.record, time=when)
        except InvalidTimeError as exc:
            skip(item.where, f"bad time in {args.time_key!r}: {exc}")
            continue
        except FluentError as exc:
            tally.failed += 1
            console.say(f"cat: {item.where}: not delivered: {exc}")
        tally.read += 1


def record_time(record: dict[Any, Any], args: argparse.Namespace) -> TimeLike | None:
    if not args.time_key:
        return None
    return take_time(record, args.time_key, keep=args.keep_time_key)


def summary(tally: Tally, report: ShutdownReport, *, sync: bool) -> str:
    parts = [f"read {_count(tally.read, 'record')}"]
    if tally.bad:
        parts[0] += f" ({tally.bad:,} skipped as bad input)"
    parts.append(f"sent {report.sent:,}")
    if sync:
        parts.append(f"failed {tally.failed:,}")
    else:
        dropped = sum(report.dropped.values())
        parts.append(f"dropped {dropped:,}" + (f" {dict(report.dropped)}" if dropped else ""))
        parts.append(f"unsent {report.unsent_records:,}")
        parts.append(f"possibly lost {report.possibly_lost:,}")
    return "cat: " + "; ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def exit_status(tally: Tally, report: ShutdownReport, interrupted: bool) -> int:
    if interrupted:
        return EXIT_INTERRUPTED
    if tally.failed or not report.complete:
        return EXIT_UNDELIVERED
    return EXIT_BAD_INPUT if tally.bad else 0


def finish(client: Client, timeout: float, console: Console) -> ShutdownReport:
    """Shut the client down within ``timeout``; a second interrupt stops it at once."""
    try:
        return client.shutdown(timeout)
    except (KeyboardInterrupt, Interrupted):
        console.say("cat: interrupted again; what is still held is not sent")
        client.close()
        return client.shutdown(0)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted()


def cat(args: argparse.Namespace) -> int:
    """Read records from stdin and post each to ``args.tag``; see the ``cat`` help."""
    tag = check_tag(args.tag, "TAG")
    client = make_client(args, client_options(args, options_from_env()))
    console = Console(sys.stderr, live=sys.stderr.isatty())
    stdin = sys.stdin.buffer
    items = msgpack_objects(stdin) if args.format == "msgpack" else json_lines(stdin)
    tally = Tally()
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        with Progress(console, client.stats, read=lambda: tally.read,
                      enabled=_show_progress(args)):
            try:
                post_records(client, tag, items, args, console, tally)
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
                console.say("cat: interrupted; sending what was read")
            report = finish(client, args.timeout, console)
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.say(summary(tally, report, sync=args.sync))
    return exit_status(tally, report, interrupted)


# -- the parser ------------------------------------------------------------------------------


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action="store_true", default=None,
                        help="show progress on stderr even when it is not a terminal")


def _add_cat(sub: Any) -> None:
    p = sub.add_parser(
        "cat", help="post records read from stdin (JSON lines or msgpack) to TAG",
        description="Read records from stdin and post each one to TAG, like fluent-cat. "
        "Options default to the FLUENT_* environment variables. Bad lines are reported on "
        "stderr and skipped. Exit status: 0 all delivered, 1 something not delivered, "
        "3 some input skipped as bad, 2 usage or configuration error, 130 interrupted.",
    )
    p.add_argument("tag", metavar="TAG")
    p.add_argument("--format", choices=("json", "msgpack"), default="json",
                   help="JSON object per line (default) or a stream of msgpack maps")
    p.add_argument("--time-key", metavar="KEY",
                   help="take the event time from this field (seconds, or ISO 8601 text)")
    p.add_argument("--keep-time-key", action="store_true",
                   help="leave the --time-key field in the record")
    p.add_argument("--sync", action="store_true",
                   help="send each record before reading the next (SyncClient)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the server at the end, and for buffer room "
                   "(default 30)")
    _add_progress(p)
    where = p.add_argument_group("server (default: FLUENT_HOST, FLUENT_PORT, FLUENT_SERVERS)")
    where.add_argument("--host")
    where.add_argument("--port", type=int)
    where.add_argument("--unix-path", metavar="PATH")
    sec = p.add_argument_group("delivery and security")
    sec.add_argument("--ack", action=argparse.BooleanOptionalAction, default=None,
                     help="require an ack for every frame (at least once)")
    sec.add_argument("--compress", choices=("gzip", "none"))
    sec.add_argument("--shared-key", metavar="KEY")
    sec.add_argument("--username")
    sec.add_argument("--password", help="better given as FLUENT_PASSWORD")
    sec.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None)
    sec.add_argument("--tls-ca-file", metavar="PEM")
    sec.add_argument("--tls-cert-file", metavar="PEM", help="client certificate (mutual TLS)")
    sec.add_argument("--tls-key-file", metavar="PEM")
    sec.add_argument("--tls-verify", action=argparse.BooleanOptionalAction, default=None,
                     help="check the server's certificate (default: on)")
    sec.add_argument("--tls-server-name", metavar="NAME")
    p.set_defaults(run=cat)


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="receive events and print them as JSON lines")
    p.add_argument("--host", default=None, help="default: FLUENT_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None,
                   help="default: FLUENT_PORT or 24224; 0 picks a free port")
    p.add_argument("--unix-path", default=None)
    p.add_argument("--shared-key", help="require the forward handshake with this key")
    p.add_argument("--username", help="require this user (needs --shared-key)")
    p.add_argument("--password")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="its key, if not in the certificate file")
    p.set_defaults(run=serve)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="post records to an embedded server and check them")
    p.add_argument("--records", type=int, default=100_000)
    _add_progress(p)
    p.set_defaults(run=demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluentclient", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the client does")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_cat(sub)
    _add_serve(sub)
    _add_demo(sub)
    return parser


def serve_defaults(args: argparse.Namespace, env: dict[str, Any]) -> None:
    """``serve`` listens where ``cat`` would send, with the same key and user."""
    if args.unix_path is None and args.host is None and args.port is None:
        args.unix_path = env.get("unix_path")
    for name, default in (("host", "127.0.0.1"), ("port", 24224), ("shared_key", None),
                          ("username", None), ("password", None)):
        if getattr(args, name) is None:
            setattr(args, name, env.get(name, default))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if run is serve:
            serve_defaults(args, options_from_env())
        return run(args)
    except (ConfigurationError, ssl.SSLError, OSError) as exc:
        print(f"fluentclient {args.command}: {exc}", file=sys.stderr)
        return 2
