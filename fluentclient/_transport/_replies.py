"""The reading side of a connection: what the server says (acks, the handshake), decoded,
and how the server ended the connection, if it did.

The socket stays the connection's: each read is handed it, so that the one thread that
drives the connection reads and writes the same socket, and a closed connection has none.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Any

from .._decoding import new_unpacker
from ..errors import AuthenticationError, FluentConnectionError, FluentTimeoutError

_READ_SIZE = 65536


class ConnectionLost(FluentConnectionError):
    """The server closed or reset the connection, or sent something unreadable."""


class Replies:
    """The server's replies on one connection, decoded; ``eof`` once it closed its side
    (``lost`` says how when it reset the connection rather than closing it)."""

    def __init__(self, where: str, *, tls: bool, unix: bool) -> None:
        self._where = where
        self._tls = tls
        self._unix = unix
        self._inbound = new_unpacker(max_buffer_size=1024 * 1024)
        # Whether the server ever sent us a byte: a reset from one that never did is what
        # a TLS server does to a plain client (see _read_failed).
        self._heard = False
        self._eof = False
        self._lost: str | None = None
        self._lost_error: OSError | None = None

    @property
    def eof(self) -> bool:
        """Whether the server closed or reset the connection (seen by a read)."""
        return self._eof

    @property
    def lost(self) -> str | None:
        """Why the connection ended, when it was not a plain close by the server."""
        return self._lost

    @property
    def lost_error(self) -> OSError | None:
        """The error of the read that found the connection reset."""
        return self._lost_error

    def end(self, reason: str) -> None:
        """Take the connection as ended by the server for ``reason`` (say, it refused us):
        nothing more is read from it."""
        self._eof, self._lost = True, reason

    def read_object(self, sock: socket.socket | None, deadline: float, written: int) -> Any:
        """The next msgpack object from the server, waiting until ``deadline``.

        ``written``: how many bytes we have sent on the connection (for the hint of a
        failed read)."""
        if sock is None:
            raise ConnectionLost("not connected")
        while True:
            for obj in self._decoded(1):
                return obj
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise FluentTimeoutError(f"{self._where} did not answer in time")
            sock.settimeout(remaining)
            try:
                data = sock.recv(_READ_SIZE)
            except socket.timeout as exc:
                raise FluentTimeoutError(f"{self._where} did not answer in time") from exc
            except OSError as exc:
                raise ConnectionLost(self._read_failed(exc, written)) from exc
            if not data:
                raise ConnectionLost(f"{self._where} closed the connection")
            self._feed(data)

    def read_available(self, sock: socket.socket | None, written: int) -> list[Any]:
        """Whatever objects the server has sent so far, without waiting.

        A server's close comes after its last acks: those are returned, and ``eof`` is set
        (with ``lost`` saying why when it was a reset rather than a FIN). Raises
        :class:`ConnectionLost` when the server sent something unreadable.
        """
        if sock is None:
            raise ConnectionLost("not connected")
        sock.settimeout(0.0)
        while True:
            try:
                data = sock.recv(_READ_SIZE)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError):
                break
            except OSError as exc:
                self._eof = True
                self._lost = self._read_failed(exc, written)
                self._lost_error = exc
                break
            if not data:
                self._eof = True
                break
            self._feed(data)
            if len(data) < _READ_SIZE:
                break
        return self._decoded()

    def read_to_end(self, sock: socket.socket, deadline: float, replies: list[Any]) -> bool:
        """Read until the server closes its side, adding what it says to ``replies``;
        whether it closed before ``deadline``. Raises OSError or :class:`ConnectionLost`
        when the read fails (``replies`` then holds what came before)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)
            data = sock.recv(_READ_SIZE)
            if not data:
                return True
            self._feed(data)
            replies += self._decoded()

    @staticmethod
    def wait_readable(sock: socket.socket | None, timeout: float) -> bool:
        """Wait up to ``timeout`` for something to read (a reply, or the server's close)."""
        if sock is None:
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            readable, _, _ = select.select([sock], [], [], max(0.0, timeout))
        except (OSError, ValueError):
            return True  # closed under us: the read that follows says how
        return bool(readable)

    def refuse_if_helo(self, replies: list[Any]) -> list[Any]:
        """Raise if the server sent HELO unasked: it wants a handshake we were not told to
        do, and discards our frames (fluentd, Fluent Bit with ``shared_key`` set)."""
        for reply in replies:
            if isinstance(reply, list) and reply[:1] == ["HELO"]:
                raise AuthenticationError(
                    f"{self._where} requires the forward handshake (it sent "
                    "HELO): set shared_key (and username and password if it has users)"
                )
        return replies

    def _decoded(self, limit: int | None = None) -> list[Any]:
        """The whole objects received so far (at most ``limit``)."""
        objs: list[Any] = []
        try:
            for obj in self._inbound:
                objs.append(obj)
                if len(objs) == limit:
                    break
        except Exception as exc:  # not msgpack, too deep, a key Python cannot hash...
            raise ConnectionLost(
                f"{self._where} sent something unreadable: {type(exc).__name__}"
            ) from exc
        return objs

    def _read_failed(self, exc: OSError, written: int) -> str:
        text = f"reading from {self._where}: {exc}"
        if (isinstance(exc, ConnectionResetError) and not self._heard and not self._tls
                and not self._unix and written):
            # A TLS server reads our first frame as a broken handshake and resets without
            # a word (fluentd, Fluent Bit and ForwardServer all do); the client cannot
            # tell that apart from a crash for sure, so this is a hint, not a verdict.
            text += ("; the server reset the connection without ever answering: if it "
                     "expects TLS, set tls=True (FLUENT_TLS=true)")
        return text

    def _feed(self, data: bytes) -> None:
        self._heard = True
        try:
            self._inbound.feed(data)
        except Exception as exc:  # msgpack's BufferFull: a server flooding us
            raise ConnectionLost(f"{self._where} sent too much: {exc}") from exc
