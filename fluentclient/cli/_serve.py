"""``fluentclient serve``: receive events and print each one as a line of JSON."""

from __future__ import annotations

import argparse
import base64
import json
import signal
import ssl
import sys
import threading
from typing import Any

from ..errors import ConfigurationError
from ..message import EventTime
from ..options import Auth
from ..server import ForwardServer, ReceivedEvent


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
