"""The ``fluentclient`` command's arguments: its commands, their options and help texts."""

from __future__ import annotations

import argparse
from typing import Any

from .. import __version__
from .._accel import REASON
from ..config import VARIABLES
from ._cat import cat
from ._demo import demo_command
from ._serve import serve

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
    p.set_defaults(run=demo_command)


def version_line() -> str:
    """``fluentclient 0.1.0 (compiled)``, or ``(pure Python ...)`` with the reason."""
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
