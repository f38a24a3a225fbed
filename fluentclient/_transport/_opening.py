"""The steps of opening a connection that hold no state of their own: the server's
addresses, a socket set up for the forward protocol, TLS around it, and the forward
handshake (HELO, PING, PONG) over the connection's own read and send.

The connection runs them in order and keeps what they return; see ``_handshake`` for the
messages themselves.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import AuthenticationError, FluentConnectionError
from . import _handshake as handshake
from ._replies import ConnectionLost


@dataclass(frozen=True)
class Security:
    """TLS and forward-handshake settings, the same for every connection of a client."""

    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    shared_key: str | None = None
    self_hostname: str = ""
    username: str = ""
    password: str = ""


NO_SECURITY = Security()


def addresses(host: str, port: int) -> list[tuple[Any, Any]]:
    """Every (family, socket address) of the host, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if not infos:
        raise FluentConnectionError(f"{host} has no address")
    return [(info[0], info[4]) for info in infos]


def stream_socket(family: int, *, tcp: bool) -> socket.socket:
    """A new stream socket; over TCP, each frame goes out at once and a dead peer is
    noticed even while we have nothing to send."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    if tcp:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    return sock


def wrap_tls(sock: socket.socket, security: Security, host: str | None) -> ssl.SSLSocket:
    """``sock`` wrapped in the client's TLS context, its TLS handshake not yet done (the
    caller does it, with its deadline). ``host``: the server's, None for a Unix socket."""
    context = security.ssl_context
    assert context is not None
    name = security.server_hostname if security.server_hostname is not None else host
    return context.wrap_socket(
        sock, server_hostname=name if context.check_hostname or name else None,
        do_handshake_on_connect=False,
    )


def shake_hands(
    security: Security,
    read: Callable[[float], Any],
    send: Callable[[bytes, float], None],
    deadline: float,
) -> tuple[bool, str]:
    """The forward handshake: whether the server keeps the connection open after a frame
    (its HELO's keepalive), and the hostname its PONG gave."""
    assert security.shared_key is not None
    helo = handshake.parse_helo(read(deadline))
    salt = handshake.new_salt()
    ping = handshake.build_ping(
        helo, self_hostname=security.self_hostname, shared_key=security.shared_key,
        salt=salt, username=security.username, password=security.password,
    )
    # fluent-bit needs the whole PING in one read: one send of one buffer.
    send(ping, deadline)
    try:
        pong = read(deadline)
    except ConnectionLost as exc:
        # Fluent Bit's answer to a wrong shared key (or a PING it cannot parse) is to
        # close without a PONG. A server going away at this very moment looks the
        # same, but that is rare; a wrong key repeats on every attempt.
        raise AuthenticationError(
            "closed the connection after our PING without a PONG: "
            "the shared key is probably wrong"
        ) from exc
    hostname = handshake.check_pong(
        pong, helo=helo, salt=salt, shared_key=security.shared_key,
        self_hostname=security.self_hostname,
    )
    return helo.keepalive, hostname
