"""``fluentclient cat``: post records read from stdin, then report what became of them.

Connection options default to the ``FLUENT_*`` environment variables (see
:mod:`fluentclient.config`); an option given on the command line wins.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Union

from .._words import count
from ..client import BufferedClient, SyncClient
from ..config import check_tag, options_from_env
from ..errors import FluentError, InvalidTimeError
from ..message import TimeLike
from ..options import Auth, Buffering, Tls
from ..stats import ShutdownReport
from ._cat_input import BadInput, Item, json_lines, msgpack_objects, take_time
from ._cat_wait import Backpressure, WaitNotice
from ._progress import Console, Progress, SendRate, show_progress

EXIT_UNDELIVERED = 1  # a record was dropped, left unsent, possibly lost or refused
EXIT_BAD_INPUT = 3  # every record was delivered, but some lines were not records
EXIT_INTERRUPTED = 130

# cat sets the buffer limit itself so it knows when to wait for the server to catch up.
CAT_BUFFER_LIMIT = 8 * 1024 * 1024

Client = Union[BufferedClient, SyncClient]


class Interrupted(Exception):
    """SIGTERM, turned into an exception so cat stops reading and still reports."""


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
                      enabled=show_progress(args)):
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
