"""What the clients build from their settings: the transport they share, and the
packer and frame builder of the record rules.

The settings themselves are the public objects of options.py; this module only puts
them together, so each setting has one home.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from ._transport._opening import Security
from ._transport._pool import Link, Server, ServerSpec
from .backoff import Backoff
from .errors import ConfigurationError
from .framing import EntryPacker, FrameBuilder
from .guard import RecordGuard
from .options import Auth, RecordRules, Timeouts, Tls, TlsSetting

MiB = 1024 * 1024


def servers_from(
    host: str, port: int, unix_path: str | None, servers: Sequence[ServerSpec] | None
) -> tuple[Server, ...]:
    """The servers to send to: the ``servers`` list if given, else the one address."""
    if not servers:
        return (Server(host, port, unix_path=unix_path),)
    parsed = tuple(Server.parse(spec) for spec in servers)
    if all(server.standby for server in parsed):
        raise ValueError("at least one server must not be a standby")
    return parsed


def tls_from(tls: TlsSetting) -> Tls | None:
    """``tls=True`` is ``Tls()``; False and None mean plain TCP."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return Tls()
    if isinstance(tls, Tls):
        return tls
    raise ConfigurationError(f"must be True, False or a Tls, got {type(tls).__name__}",
                             variable="tls")


def security_from(tls: TlsSetting, auth: Auth) -> Security:
    """The TLS context and handshake settings every connection of a client uses."""
    if not isinstance(auth, Auth):
        raise ConfigurationError(f"must be an Auth, got {type(auth).__name__}",
                                 variable="auth")
    made = tls_from(tls)
    return Security(
        ssl_context=None if made is None else made.ssl_context(),
        server_hostname=None if made is None else made.server_name,
        shared_key=auth.shared_key,
        self_hostname=(auth.self_hostname if auth.self_hostname is not None
                       else socket.gethostname()),
        username=auth.username,
        password=auth.password,
    )


@dataclass(frozen=True)
class TransportOptions:
    """How a client reaches its servers: addresses, security, timeouts, acks, compression.

    The timeouts are read through properties: their one home is the Timeouts object.
    """

    servers: tuple[Server, ...] = (Server(),)
    security: Security = Security()
    timeouts: Timeouts = Timeouts()
    backoff: Backoff = Backoff()
    require_ack: bool = False
    compress: str | None = None
    compress_level: int = 6
    dns_refresh: bool = True

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("a client needs at least one server")
        if all(server.standby for server in self.servers):
            raise ValueError("at least one server must not be a standby")
        if not isinstance(self.timeouts, Timeouts):
            raise ConfigurationError(
                f"must be a Timeouts, got {type(self.timeouts).__name__}", variable="timeouts")
        # The frame builder owns the rules for the compression settings.
        FrameBuilder(compress=self.compress, level=self.compress_level)

    @property
    def connect_timeout(self) -> float:
        return self.timeouts.connect

    @property
    def write_timeout(self) -> float:
        return self.timeouts.write

    @property
    def ack_timeout(self) -> float:
        return self.timeouts.ack

    @property
    def ack_retry_limit(self) -> int:
        return self.timeouts.ack_retries

    @property
    def keepalive_timeout(self) -> float | None:
        return self.timeouts.idle

    def links(self) -> list[Link]:
        """A fresh view of every server, each with the configured backoff."""
        return [
            Link(server, self.backoff, self.security, dns_refresh=self.dns_refresh)
            for server in self.servers
        ]


def checked_rules(records: RecordRules) -> RecordRules:
    if not isinstance(records, RecordRules):
        raise ConfigurationError(
            f"must be a RecordRules, got {type(records).__name__}", variable="records")
    return records


def guard_for(rules: RecordRules) -> RecordGuard:
    return RecordGuard(
        max_depth=rules.max_depth, non_str_keys=rules.non_str_keys,
        non_finite_floats=rules.non_finite_floats, non_utf8_bytes=rules.non_utf8_bytes,
    )


def packer_for(rules: RecordRules) -> EntryPacker:
    return EntryPacker(default=rules.default, int_time=rules.int_time, guard=guard_for(rules))


def builder_for(
    rules: RecordRules, transport: TransportOptions, *, markers: bool = False
) -> FrameBuilder:
    """``markers``: a chunk id on every frame, acks or not (see the writer)."""
    return FrameBuilder(
        compress=transport.compress, level=transport.compress_level,
        chunks=transport.require_ack or markers, str_entries=rules.entries_as_str,
    )
