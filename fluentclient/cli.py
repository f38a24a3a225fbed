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
from dataclasses import dataclass, replace
from typing import Any, Callable, Union

from ._accel import REASON
from ._cat_input import BadInput, Item, json_lines, msgpack_objects, take_time
from ._demo import demo as run_demo
from ._progress import Console, Progress, SendRate
from ._words import count
from .client import BufferedClient, SyncClient
from .config import VARIABLES, check_tag, options_from_env
from .errors import ConfigurationError, FluentError, InvalidTimeError
from .message import EventTime, TimeLike
from .options import Auth, Buffering, Tls
from .server import ForwardServer, ReceivedEvent
from .stats import ShutdownReport, Stats

__all__ = ["main"]

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
    """Post ``--records`` records to a server in another process, which checks each one."""
    if args.records < 1:
        raise ConfigurationError("--records needs at least 1 record")
    return run_demo(args.records, progress=_show_progress(args))


def _show_progress(args: argparse.Namespace) -> bool:
    return bool(args.progress) or sys.stderr.isatty()


# -- cat -------------------------------------------------------------------------------------

# Flags of cat that set a field of the client's Auth or Tls object: flag -> field.
_AUTH_FLAGS = {"shared_key": "shared_key", "username": "username", "password": "password"}
_TLS_FLAGS = {
    "tls_ca_file": "ca_file", "tls_cert_file": "cert_file", "tls_key_file": "key_file",
    "tls_verify": "verify", "tls_server_name": "server_name",
}


def _flags(args: argparse.Namespace, flags: dict[str, str]) -> dict[str, Any]:
    return {field: getattr(args, flag) for flag, field in flags.items()
            if getattr(args, flag) is not None}


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
    # A flag changes one field of what the environment gave, the rest stays.
    auth = _flags(args, _AUTH_FLAGS)
    if auth:
        options["auth"] = replace(options.get("auth", Auth()), **auth)
    _tls_options(args, options)
    if args.ack is not None:
        options["require_ack"] = args.ack
    if args.compress is not None:
        options["compress"] = None if args.compress == "none" else args.compress
    return options


def _tls_options(args: argparse.Namespace, options: dict[str, Any]) -> None:
    given = options.get("tls")
    fields = _flags(args, _TLS_FLAGS)
    tls = replace(given if isinstance(given, Tls) else Tls(), **fields)
    wanted = bool(given) if args.tls is None else args.tls
    # As for a client: a CA or a certificate turns TLS on, whatever the flag says.
    if wanted or tls.ca_file is not None or tls.cert_file is not None:
        options["tls"] = tls
    elif given is not None or args.tls is not None:
        options["tls"] = False


def make_client(args: argparse.Namespace, options: dict[str, Any]) -> Client:
    if args.sync:
        return SyncClient(**options)
    return BufferedClient(**options, buffering=Buffering(limit=CAT_BUFFER_LIMIT),
                          at_exit=False, shutdown_timeout=args.timeout)


@dataclass
class Tally:
    """What cat did with its input, for the progress line, the summary and the exit status."""

    read: int = 0  # records read (bad input not included)
    bad: int = 0  # lines or objects that were not records
    failed: int = 0  # --sync: records the server did not take


class WaitNotice:
    """Says once on stderr what cat is waiting for, for how long at most, and how to change
    that, so that a missing server is not a silent 30 s. Only a wait that lasts
    ``QUIET_FOR`` seconds (a quarter of a shorter deadline), or one whose cause is already
    known (a failed connect), is worth a line: a healthy run says nothing."""

    QUIET_FOR = 2.0

    def __init__(self, console: Console) -> None:
        self._console = console
        self._said: set[str] = set()

    def check(self, stats: Stats, purpose: str, started: float, deadline: float) -> None:
        """During a wait that started at ``started``: say ``purpose`` and why, if due."""
        if purpose in self._said or not stats.buffered:
            return
        now = time.monotonic()
        failing = any(s.last_error and s.state != "connected" for s in stats.servers)
        # A short deadline still gets its line before it runs out.
        quiet = min(self.QUIET_FOR, (deadline - started) / 4)
        if not failing and now - started < quiet:
            return
        self._said.add(purpose)
        self._console.say(
            f"cat: waiting up to {_seconds(deadline - now)} s "
            f"{purpose.format(records=count(stats.buffered, 'record'))}: "
            f"{waiting_for(stats)}; --timeout SECONDS changes this limit"
        )

    def watch(self, client: BufferedClient, purpose: str, timeout: float) -> _Watch:
        """A thread checking during a wait the caller cannot break into (shutdown)."""
        return _Watch(self, client, purpose, timeout)


class _Watch:
    """WaitNotice.check every 0.1 s in a thread of its own, for as long as it is entered."""

    def __init__(self, notice: WaitNotice, client: BufferedClient, purpose: str,
                 timeout: float) -> None:
        self._notice = notice
        self._client = client
        self._purpose = purpose
        self._timeout = timeout
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluentclient-cat-wait",
                                        daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        started = time.monotonic()
        deadline = started + self._timeout
        while not self._done.wait(0.1):
            self._notice.check(self._client.stats(), self._purpose, started, deadline)


def waiting_for(stats: Stats) -> str:
    """What holds the records back, server by server, in words."""
    servers = [s for s in stats.servers if not s.standby] or list(stats.servers)
    parts = []
    for server in servers[:3]:
        if server.state == "connected":
            parts.append(f"connected to {server.address}, waiting for it to read and "
                         "confirm them")
        elif server.last_error:
            # The connect error repeats the address already named.
            reason = server.last_error.removeprefix(f"cannot connect to {server.address}: ")
            parts.append(f"connecting to {server.address} (last failure: {reason})")
        else:
            parts.append(f"connecting to {server.address}")
    if len(servers) > 3:
        parts.append(f"and {len(servers) - 3} more servers")
    return "; ".join(parts) or "the client"


def _seconds(value: float) -> str:
    value = max(value, 0.0)
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


class Backpressure:
    """Holds cat back while the client's buffer is over half full, so that a fast input is
    not dropped for want of room. Past ``timeout`` without room it stops waiting (records
    are then dropped and counted) until the buffer has drained by itself."""

    CHECK_EVERY = 64

    def __init__(self, client: BufferedClient, limit: int, timeout: float,
                 notice: WaitNotice) -> None:
        self._client = client
        self._notice = notice
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
        started = time.monotonic()
        deadline = started + self._timeout
        while True:
            stats = self._client.stats()
            if stats.buffered_bytes <= self._high:
                return True
            self._notice.check(stats, "for room in the buffer ({records} held)", started, deadline)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._client.flush(timeout=min(left, 0.5))


def post_records(
    client: Client,
    tag: str,
    items: Iterator[Item],
    args: argparse.Namespace,
    console: Console,
    tally: Tally,
    notice: WaitNotice,
) -> None:
    """Post every record; report bad input (and, with --sync, failures) and go on."""

    def skip(where: str, reason: str) -> None:
        tally.bad += 1
        console.say(f"cat: {where} skipped: {reason}")

    room = (Backpressure(client, CAT_BUFFER_LIMIT, args.timeout, notice)
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
    parts = [f"read {count(tally.read, 'record')}"]
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


def exit_status(tally: Tally, report: ShutdownReport, interrupted: bool) -> int:
    if interrupted:
        return EXIT_INTERRUPTED
    if tally.failed or not report.complete:
        return EXIT_UNDELIVERED
    return EXIT_BAD_INPUT if tally.bad else 0


def finish(client: Client, timeout: float, console: Console,
           notice: WaitNotice) -> ShutdownReport:
    """Shut the client down within ``timeout``; a second interrupt stops it at once."""
    try:
        if isinstance(client, BufferedClient):
            with notice.watch(client, "to deliver {records}", timeout):
                return client.shutdown(timeout)
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
    notice = WaitNotice(console)
    interrupted = False
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        with Progress(console, SendRate(client.stats, read=lambda: tally.read),
                      enabled=_show_progress(args)):
            try:
                post_records(client, tag, items, args, console, tally, notice)
            except (KeyboardInterrupt, Interrupted):
                interrupted = True
                console.say("cat: interrupted; sending what was read")
            report = finish(client, args.timeout, console, notice)
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.say(summary(tally, report, sync=args.sync))
    return exit_status(tally, report, interrupted)


# -- the parser ------------------------------------------------------------------------------

# Help texts written for a terminal: argparse prints them as they are (line breaks kept),
# so they are kept under 76 columns here. The docstrings are for the API docs.

MAIN_DESCRIPTION = """\
Send structured records to Fluentd or Fluent Bit over the forward protocol,
or try the client without either."""

MAIN_EPILOG = """\
examples:
  fluentclient demo                       check it works, and how fast
  echo '{"user": 42}' | fluentclient cat app.audit --host fluentd.internal
  fluentclient serve --port 24224         print what clients send

Connection settings default to the FLUENT_* environment variables
(FLUENT_HOST, FLUENT_PORT, ...): "fluentclient cat --help" lists them.
"fluentclient COMMAND --help" describes each command."""

CAT_DESCRIPTION = """\
Read records from stdin and post each one to TAG, like fluentd's fluent-cat.
Input is one JSON object per line, or with --format msgpack a stream of
msgpack maps. A line that is not a record is reported on stderr with its
number and skipped; the rest is still sent.

Input faster than the server is held back rather than dropped. At the end
cat waits up to --timeout seconds for the server to take everything, says
so on stderr if it has to wait, and prints one summary line."""

CAT_EXIT = """\
exit status:
  0    everything read was delivered
  1    something was not delivered (dropped, unsent, possibly lost, refused)
  2    usage or configuration error
  3    everything was delivered, but some input was skipped as bad
  130  interrupted (Ctrl-C or SIGTERM); what was read is still sent"""

CAT_EXAMPLES = """\
examples:
  echo '{"user": 42, "action": "login"}' | fluentclient cat app.audit
  tail -F app.jsonl | fluentclient cat app.log --ack --time-key ts
  fluentclient cat app.x --port 24225 --timeout 5 < records.jsonl"""

# What each variable sets, where the option is not simply named after it.
_VARIABLE_NOTES = {
    "SERVERS": "host:port[,host:port...], instead of host and port",
    "TAG_PREFIX": "prefix put before TAG (no option)",
    "REQUIRE_ACK": "--ack",
}

SERVE_DESCRIPTION = """\
Receive events over the forward protocol and print each one on stdout as a
line of JSON: {"tag", "time", "nanoseconds", "record"}, bytes given as
{"$bin": base64}. The address is announced on stderr. Runs until Ctrl-C or
SIGTERM."""

SERVE_EPILOG = """\
examples:
  fluentclient serve                      listen on 127.0.0.1:24224
  fluentclient serve --port 0             any free port (see stderr)
  fluentclient serve --shared-key K --tls-cert server.pem

environment: the address, key and user default to FLUENT_HOST, FLUENT_PORT,
FLUENT_UNIX_PATH, FLUENT_SHARED_KEY, FLUENT_USERNAME and FLUENT_PASSWORD,
so serve listens where cat sends."""

DEMO_DESCRIPTION = """\
Start a forward server in a separate process, post records to it through
BufferedClient, and check on arrival that every record came once, in
order, with its fields and its time exact to the nanosecond.

It prints how long posting and delivery took and the client's CPU time per
record. The server runs apart so that these figures are the client's own;
they depend on the machine and on what else runs on it. The client uses
overflow="block": if the server falls behind, post() waits rather than
drops."""

DEMO_EPILOG = """\
examples:
  fluentclient demo
  fluentclient demo --records 1000000 --progress

exit status: 0 if every check passed, 1 if one failed, 130 if interrupted."""


def cat_epilog() -> str:
    """The exit statuses, examples and the environment variables, from the list read."""
    rows = []
    for suffix in VARIABLES:
        note = _VARIABLE_NOTES.get(suffix, "--" + suffix.lower().replace("_", "-"))
        rows.append(f"  FLUENT_{suffix:<16} {note}")
    return "\n\n".join([
        CAT_EXIT,
        CAT_EXAMPLES,
        "environment (an option given on the command line wins):\n" + "\n".join(rows)
        + "\nPrefer FLUENT_PASSWORD and FLUENT_SHARED_KEY to the options: other users\n"
        "can see a process's arguments.",
    ])


def _subparser(sub: Any, name: str, help: str, description: str, epilog: str) -> Any:
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--progress", action="store_true", default=None,
                        help="show progress on stderr even when it is not a terminal")


def _add_cat(sub: Any) -> None:
    p = _subparser(sub, "cat", "post records read from stdin (JSON lines or msgpack) to TAG",
                   CAT_DESCRIPTION, cat_epilog())
    p.add_argument("tag", metavar="TAG", help="tag of every record, such as app.audit")
    p.add_argument("--format", choices=("json", "msgpack"), default="json",
                   help="JSON object per line (default) or a stream of msgpack maps")
    p.add_argument("--time-key", metavar="KEY",
                   help="take the event time from this field (seconds, or ISO 8601 text)")
    p.add_argument("--keep-time-key", action="store_true",
                   help="leave the --time-key field in the record")
    p.add_argument("--sync", action="store_true",
                   help="send each record before reading the next")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long to wait for the server at the end, and for buffer room "
                   "(default 30)")
    _add_progress(p)
    where = p.add_argument_group("server (default: FLUENT_HOST, FLUENT_PORT, FLUENT_SERVERS)")
    where.add_argument("--host", help="default 127.0.0.1")
    where.add_argument("--port", type=int, help="default 24224")
    where.add_argument("--unix-path", metavar="PATH", help="a Unix socket instead")
    sec = p.add_argument_group("delivery and security")
    sec.add_argument("--ack", action=argparse.BooleanOptionalAction, default=None,
                     help="require an ack for every frame (at least once)")
    sec.add_argument("--compress", choices=("gzip", "none"))
    sec.add_argument("--shared-key", metavar="KEY", help="better given as FLUENT_SHARED_KEY")
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
    p = _subparser(sub, "serve", "receive events and print them as JSON lines",
                   SERVE_DESCRIPTION, SERVE_EPILOG)
    p.add_argument("--host", default=None, help="default: FLUENT_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None,
                   help="default: FLUENT_PORT or 24224; 0 picks a free port")
    p.add_argument("--unix-path", default=None, metavar="PATH",
                   help="listen on a Unix socket instead")
    p.add_argument("--shared-key", metavar="KEY",
                   help="require the forward handshake with this key")
    p.add_argument("--username", help="require this user (needs --shared-key)")
    p.add_argument("--password")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="its key, if not in the certificate file")
    p.set_defaults(run=serve)


def _add_demo(sub: Any) -> None:
    p = _subparser(sub, "demo", "post records to a server in another process and check them",
                   DEMO_DESCRIPTION, DEMO_EPILOG)
    p.add_argument("--records", type=int, default=100_000, metavar="N",
                   help="how many records to post (default 100,000)")
    _add_progress(p)
    p.set_defaults(run=demo)


def version_line() -> str:
    """``fluentclient 0.1.0 (compiled)``, or ``(pure Python ...)`` with the reason."""
    from . import __version__

    return f"fluentclient {__version__} ({REASON})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluentclient", description=MAIN_DESCRIPTION, epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what the client does, with times")
    parser.add_argument("--version", action="version", version=version_line(),
                        help="show the version and whether the compiled packer runs")
    sub = parser.add_subparsers(dest="command", required=True, title="commands",
                                metavar="COMMAND")
    _add_cat(sub)
    _add_serve(sub)
    _add_demo(sub)
    return parser


def serve_defaults(args: argparse.Namespace, env: dict[str, Any]) -> None:
    """``serve`` listens where ``cat`` would send, with the same key and user."""
    if args.unix_path is None and args.host is None and args.port is None:
        args.unix_path = env.get("unix_path")
    for name, default in (("host", "127.0.0.1"), ("port", 24224)):
        if getattr(args, name) is None:
            setattr(args, name, env.get(name, default))
    auth = env.get("auth", Auth())
    for name in ("shared_key", "username", "password"):
        if getattr(args, name) is None:
            # An empty user name or password is no setting at all.
            setattr(args, name, getattr(auth, name) or None)


class _Named(logging.Formatter):
    """A warning as the terminal shows it: the message after the logger's name. Most of
    the client's messages already begin with "fluentclient:"; a second is noise."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if text.startswith("fluentclient") else f"{record.name}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(_Named())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if run is serve:
            serve_defaults(args, options_from_env())
        return run(args)
    except (ConfigurationError, ssl.SSLError, OSError) as exc:
        print(f"fluentclient {args.command}: {exc}", file=sys.stderr)
        return 2
