"""The one sender both clients use: choosing a server, connecting to it, and keeping each
Link's record of what happened there (its backoff, its counters, its last error).

The writer thread of a BufferedClient and the posting thread of a SyncClient differ in
what they do with frames (the writer tracks, retries and settles them; a SyncClient sends
one and waits for its ack), not in how a connection is made, reused or judged. That part
lives here, so both clients back off, fail over and count the same way.

A Sender touches only the Links it was given and the client's Ledger. It does socket
I/O and so holds no lock of its own; its caller keeps one thread at a time on a Link (the
writer thread, or a SyncClient's lock).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from .._ledger import Ledger
from .._options import TransportOptions
from ..errors import AuthenticationError, ConfigurationError, FluentError, TlsError
from ..message import short_repr
from ._connection import Connection
from ._pool import Link, choose, level
from ._replies import ConnectionLost


class Sender:
    def __init__(
        self, links: list[Link], ledger: Ledger, transport: TransportOptions
    ) -> None:
        self.links = links
        self._ledger = ledger
        self._transport = transport

    def candidates(self, now: float) -> list[Link]:
        """The links to try, best first; ``now=inf`` ignores every backoff."""
        return choose(self.links, now)

    def connect(self, link: Link, deadline: float) -> FluentError | None:
        """Open and handshake a new connection on the link; the error if that failed.

        A failure is not recorded here: the caller decides whether it was the server's
        (see :meth:`connect_failed`) or its own shutdown cutting the attempt short.
        """
        conn = link.new_connection()
        link.connecting = True
        try:
            conn.connect(deadline)
        except FluentError as exc:
            link.conn = None
            return exc
        finally:
            link.connecting = False
        link.connected()
        level(link, self.links)
        self._ledger.connected()
        return None

    def connect_failed(self, link: Link, exc: FluentError) -> None:
        """Back off after a failed connect. A refused key or certificate is a configuration
        error that retrying soon cannot fix: it waits the longest delay, this time only."""
        link.connect_streak += 1
        link.failed(str(exc), backoff_to_max=is_refusal(exc), error=exc)
        self._ledger.connect_failed()

    def wrote(self, link: Link, frames: int, *, proven: bool = True) -> None:
        """Frames went out on the link's connection. ``proven``: the server is known to
        have them (a SyncClient's write, acked if acks are on), so the backoff starts
        over; a writer that learns their fate later says so itself (Link.progressed).
        (The records, frames and bytes are the caller's to count: it knows their fate.)"""
        if proven:
            link.progressed()
        link.frames_sent += frames

    def drop(self, link: Link) -> Connection | None:
        """Take the connection off the link, closed; the caller decides what it cost."""
        conn, link.conn = link.conn, None
        if conn is not None:
            conn.close()
        return conn

    def refused(self, link: Link, exc: FluentError) -> None:
        """The server refused us on a connection that was up (an unasked HELO)."""
        self.drop(link)
        link.failed(str(exc), backoff_to_max=True, error=exc)

    def idle_too_long(self, link: Link, now: float) -> bool:
        """Whether ``keepalive_timeout`` says the link's connection must not be reused."""
        idle = self._transport.keepalive_timeout
        return idle is not None and now - link.used_at >= idle

    def stale(self, link: Link, conn: Connection) -> bool:
        """Whether the connection must be replaced before the next write; raises if the
        server turns out to want a handshake we do not do (its HELO made it readable)."""
        if self.idle_too_long(link, time.monotonic()):
            return True
        if not conn.peer_closed():
            return False
        if self._transport.security.shared_key is None and conn.can_read_whole():
            try:
                replies = conn.read_available()
            except ConnectionLost:
                return True  # garbage: a new connection, like any other end
            conn.replies.refuse_if_helo(replies)
        return True

    @staticmethod
    def replies(conn: Connection) -> list[object]:
        """What the server said since we last looked, without waiting; raises
        AuthenticationError for an unasked HELO, ConnectionLost for garbage."""
        return conn.replies.refuse_if_helo(conn.read_available())

    @staticmethod
    def await_ack(conn: Connection, chunk: str, deadline: float) -> None:
        """Wait for the ack of ``chunk``, the next reply due on this connection."""
        reply = conn.read_object(deadline)
        conn.replies.refuse_if_helo([reply])
        if not isinstance(reply, dict) or reply.get("ack") != chunk:
            raise ConnectionLost(f"expected the ack for {chunk!r}, got {short_repr(reply, 80)}")


def is_refusal(exc: FluentError) -> bool:
    """A failure of configuration (key, credentials, certificate), not of the network."""
    return isinstance(exc, (AuthenticationError, TlsError))


def is_unresolvable(exc: BaseException) -> bool:
    """The resolver answered that the host has no such name (not "try again later"): a
    typo or a name from another network, which waiting does not fix."""
    seen: BaseException | None = exc
    for _ in range(4):  # the error, its cause, theirs...: a short chain
        if seen is None:
            return False
        if isinstance(seen, socket.gaierror):
            return seen.errno in _NO_SUCH_NAME
        seen = seen.__cause__ or seen.__context__
    return False


def is_hopeless(exc: BaseException | None) -> bool:
    """A failure that no retry within a shutdown's deadline can mend: a refused key or
    certificate, a setting the client cannot use, a host that does not exist."""
    return exc is not None and (
        (isinstance(exc, FluentError) and is_refusal(exc))
        or isinstance(exc, ConfigurationError)
        or is_unresolvable(exc)
    )


_NO_SUCH_NAME = {socket.EAI_NONAME} | (
    {socket.EAI_NODATA} if hasattr(socket, "EAI_NODATA") else set())


def why_hopeless(links: Sequence[Link]) -> str | None:
    """Why none of these servers can take records before any deadline (a host that does
    not resolve, a refused key, a setting it cannot use), or None."""
    errors = [link.error for link in links]
    if not links or any(link.conn is not None for link in links) or not all(
            is_hopeless(e) for e in errors):
        return None
    first = errors[0]
    assert first is not None  # every one is hopeless, so none is missing
    if is_unresolvable(first):
        return f"the host does not resolve: {first}"
    return str(first)


def why_unreachable(links: Sequence[Link]) -> str | None:
    """Why none of these servers can take records now (the last error), or None if one
    may: read beside the writer, which owns the links, so a moment stale at worst."""
    if any(link.conn is not None for link in links):
        return None
    errors = [link.last_error for link in links]
    if not errors or any(e is None for e in errors):
        return None  # a server not tried yet, or whose last attempt worked
    return errors[0]
