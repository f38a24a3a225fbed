"""The clients' settings as frozen values, each checked once where it is made.

The keyword arguments of :class:`BufferedClient` and :class:`SyncClient` stay the public
API; their ``__init__`` only sorts those arguments into these objects. A bad value raises
a ValueError from the object that holds it, so both clients reject it with the same words.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from ._opening import Security
from ._pool import Link, Server, ServerSpec
from .backoff import Backoff
from .framing import Default, EntryPacker, FrameBuilder
from .guard import DEFAULT_MAX_DEPTH, RecordGuard

MiB = 1024 * 1024
OVERFLOW_POLICIES = ("drop_newest", "drop_oldest", "block", "raise")


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


def tls_context(
    ssl_context: ssl.SSLContext | None,
    tls: bool,
    ca_file: str | None,
    cert_file: str | None,
    key_file: str | None,
    verify: bool,
) -> ssl.SSLContext | None:
    """The caller's context, or one made from the simple options (verifying by default)."""
    if ssl_context is not None:
        return ssl_context
    if not (tls or ca_file or cert_file):
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


def security_from(
    *,
    shared_key: str | None,
    self_hostname: str | None,
    username: str,
    password: str,
    ssl_context: ssl.SSLContext | None,
    tls: bool,
    tls_ca_file: str | None,
    tls_cert_file: str | None,
    tls_key_file: str | None,
    tls_verify: bool,
    tls_server_name: str | None,
) -> Security:
    """The TLS and handshake settings from the clients' flat keyword arguments."""
    return Security(
        ssl_context=tls_context(ssl_context, tls, tls_ca_file, tls_cert_file, tls_key_file,
                                tls_verify),
        server_hostname=tls_server_name,
        shared_key=shared_key,
        self_hostname=self_hostname if self_hostname is not None else socket.gethostname(),
        username=username,
        password=password,
    )


@dataclass(frozen=True)
class TransportOptions:
    """How a client reaches its servers: addresses, security, timeouts, acks, compression."""

    servers: tuple[Server, ...] = (Server(),)
    security: Security = Security()
    connect_timeout: float = 5.0
    write_timeout: float = 5.0
    backoff: Backoff = Backoff()
    require_ack: bool = False
    ack_timeout: float = 60.0
    ack_retry_limit: int = 8
    compress: str | None = None
    compress_level: int = 6
    keepalive_timeout: float | None = None
    dns_refresh: bool = True

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("a client needs at least one server")
        if all(server.standby for server in self.servers):
            raise ValueError("at least one server must not be a standby")
        if self.connect_timeout <= 0 or self.write_timeout <= 0:
            raise ValueError("connect_timeout and write_timeout must be positive")
        if self.ack_timeout <= 0 or self.ack_retry_limit < 0:
            raise ValueError("ack_timeout must be positive, ack_retry_limit not negative")
        # The frame builder owns the rules for the compression settings.
        FrameBuilder(compress=self.compress, level=self.compress_level)

    def links(self) -> list[Link]:
        """A fresh view of every server, each with the configured backoff."""
        return [
            Link(server, self.backoff, self.security, dns_refresh=self.dns_refresh)
            for server in self.servers
        ]


@dataclass(frozen=True)
class RecordOptions:
    """How a record becomes bytes: the guard's policies, the time format, the entry form."""

    default: Default = None
    max_depth: int = DEFAULT_MAX_DEPTH
    non_str_keys: str = "str"
    non_finite_floats: str = "null"
    non_utf8_bytes: str = "str"
    int_time: bool = False
    entries_as_str: bool = False

    def __post_init__(self) -> None:
        self.guard()  # the guard owns the rules for its policies

    def guard(self) -> RecordGuard:
        return RecordGuard(
            max_depth=self.max_depth, non_str_keys=self.non_str_keys,
            non_finite_floats=self.non_finite_floats, non_utf8_bytes=self.non_utf8_bytes,
        )

    def packer(self) -> EntryPacker:
        return EntryPacker(default=self.default, int_time=self.int_time, guard=self.guard())

    def builder(self, transport: TransportOptions, *, markers: bool = False) -> FrameBuilder:
        """``markers``: a chunk id on every frame, acks or not (see the writer)."""
        return FrameBuilder(
            compress=transport.compress, level=transport.compress_level,
            chunks=transport.require_ack or markers, str_entries=self.entries_as_str,
        )


@dataclass(frozen=True)
class BufferOptions:
    """How much a BufferedClient holds, when it writes, and what it does when full.

    Two values are settled when the object is made: ``max_frame_size`` never exceeds
    ``buffer_limit`` (a frame cannot hold more than the buffer), and a ``spool_limit`` left
    as None becomes four times the buffer, at least 16 MiB.
    """

    buffer_limit: int = 8 * MiB
    write_threshold: int = 8 * 1024
    flush_interval: float = 0.1
    max_frame_size: int = MiB
    overflow: str = "drop_newest"
    overflow_timeout: float = 1.0
    spool_dir: str | None = None
    spool_limit: int | None = None
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.max_frame_size < 1024 or self.max_frame_size > 6_000_000:
            # fluent-bit drops connections carrying frames over 6,144,000 bytes.
            raise ValueError("max_frame_size must be between 1 KiB and 6,000,000 bytes")
        if self.buffer_limit < 1024:
            raise ValueError("buffer_limit must be at least 1 KiB")
        if self.write_threshold <= 0 or self.flush_interval <= 0:
            raise ValueError("write_threshold and flush_interval must be positive")
        if self.shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must not be negative")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        if self.overflow_timeout < 0:
            raise ValueError("overflow_timeout must not be negative")
        if self.spool_limit is not None and self.spool_limit < 2 * self.buffer_limit:
            raise ValueError("spool_limit must be at least twice buffer_limit")
        # Frozen, so the settled values are written the one way a dataclass allows.
        object.__setattr__(self, "max_frame_size", min(self.max_frame_size, self.buffer_limit))
        if self.spool_limit is None:
            object.__setattr__(self, "spool_limit", max(4 * self.buffer_limit, 16 * MiB))

    @property
    def spool_bytes(self) -> int:
        """``spool_limit`` as settled (never None once the object exists)."""
        assert self.spool_limit is not None
        return self.spool_limit
