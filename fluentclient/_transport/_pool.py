"""The servers a client sends to, and the writer's per-server state.

A :class:`Server` is what the user configures. A :class:`Link` is a client's view of
one server: its connection, the frames written to it and not yet confirmed, its own
backoff, and counters for ``stats()``. In a BufferedClient only the writer thread changes
a Link; in a SyncClient the posting thread does, holding the client's lock (as do its
close(), shutdown() and after-fork reset). ``stats()`` reads a Link from its own thread
without any lock: a value may be a moment old, and the state and the counters of one
server may be a moment apart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Union

from .._buffer import Frame
from ..backoff import Backoff
from ..errors import FluentConnectionError, FluentError
from ..stats import ServerStats
from ._connection import Address, Connection, describe
from ._opening import Security


@dataclass(frozen=True)
class Server:
    """One forward server: TCP ``host``/``port`` or a Unix socket ``unix_path``.

    Records are spread over the servers that are not ``standby`` in proportion to
    ``weight``; standbys take over only while every other server is failing.
    """

    host: str = "127.0.0.1"
    port: int = 24224
    unix_path: str | None = None
    weight: int = 60
    standby: bool = False

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError("a server's weight must be positive")

    @property
    def address(self) -> Address:
        return self.unix_path if self.unix_path is not None else (self.host, self.port)

    @classmethod
    def parse(cls, spec: ServerSpec) -> Server:
        """Accept a Server, ``"host"``, ``"host:port"``, ``"[v6addr]:port"``, a bare IPv6
        address (``"::1"``, on the default port: a port after one needs the brackets),
        ``"unix:///path"`` or ``(host, port)``; a ValueError for a bad port or bracket."""
        if isinstance(spec, Server):
            return spec
        if isinstance(spec, tuple):
            return cls(spec[0], _port(spec[1], spec))
        if spec.startswith("unix://"):
            return cls(unix_path=spec[len("unix://"):])
        if spec.startswith("["):
            host, bracket, rest = spec[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ValueError(f"server {spec!r} is not [v6addr] or [v6addr]:port")
            return cls(host, _port(rest[1:], spec)) if rest else cls(host)
        if spec.count(":") > 1:
            return cls(spec)  # a bare IPv6 address
        host, sep, port = spec.partition(":")
        return cls(host, _port(port, spec)) if sep else cls(spec)


def _port(port: object, spec: object) -> int:
    if isinstance(port, str) and port.isascii() and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"server {spec!r}: port {port!r} is not a number from 1 to 65535")
    return port


ServerSpec = Union[Server, str, tuple[str, int]]


class InFlight:
    """Frames written on a link's connection and not yet confirmed (by the peer's kernel,
    or by an ack), oldest first, each with the stream offset where it ends. The writer
    adds them; whatever confirms them, or ends the connection, takes them out."""

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames: deque[tuple[int, Frame]] = deque()

    def __bool__(self) -> bool:
        return bool(self._frames)

    def __len__(self) -> int:
        return len(self._frames)

    def __iter__(self) -> Iterator[tuple[int, Frame]]:
        return iter(self._frames)

    def add(self, end: int, frame: Frame) -> None:
        self._frames.append((end, frame))

    def head(self) -> Frame | None:
        """The oldest frame, the next one an ack is due for."""
        return self._frames[0][1] if self._frames else None

    def pop_head(self) -> Frame:
        return self._frames.popleft()[1]

    def pop_through(self, offset: int) -> list[tuple[int, Frame]]:
        """Take the frames that end at or before ``offset`` of the stream."""
        taken: list[tuple[int, Frame]] = []
        while self._frames and self._frames[0][0] <= offset:
            taken.append(self._frames.popleft())
        return taken

    def pop_through_chunk(self, chunk: str) -> list[Frame] | None:
        """Take the frame whose chunk id is ``chunk`` and every one before it; None (and
        nothing taken) if no such frame is here."""
        for i, (_, frame) in enumerate(self._frames):
            if frame.chunk == chunk:
                return [self._frames.popleft()[1] for _ in range(i + 1)]
        return None

    def take_all(self) -> list[tuple[int, Frame]]:
        taken = list(self._frames)
        self._frames.clear()
        return taken

    def records(self) -> int:
        return sum(frame.records for _, frame in self._frames)


class Retiring:
    """A failed connection (without acks) left to finish on its own.

    Its frames were written whole, and a server that merely paused may still read them and
    ack their markers. Closing the socket would make our kernel answer those acks with a
    reset, and the server's kernel would then discard the rest. So the socket stays open,
    half-closed for writing where the transport allows, and the writer keeps reading it.
    The frames the peer had not taken stay whole (``tail``, set aside from the buffer's
    limit): if the server resets the connection before its TCP acknowledges them, they
    provably never arrived and go out again. Of the rest only counts are kept.
    """

    __slots__ = ("conn", "unproven", "tail", "until", "half_closed", "eof_until")

    def __init__(
        self, conn: Connection, unproven: deque[tuple[int, int, str | None]],
        tail: deque[tuple[int, Frame]], until: float, *, half_closed: bool,
    ) -> None:
        self.conn = conn
        # The frames not yet proven read: (stream offset where each ends, its records,
        # its chunk id), oldest first.
        self.unproven = unproven
        # Of those, the ones the peer's kernel had not taken: (end offset, frame).
        self.tail = tail
        # When to stop waiting: what is still unproven then is possibly lost.
        self.until = until
        # Our FIN went after the last frame, so a FIN back proves the server read them all.
        self.half_closed = half_closed
        # Once the server has closed its side: how long to wait for the reset that proves
        # the tail never reached it (a closed socket answers our next bytes with one).
        self.eof_until: float | None = None

    @property
    def records(self) -> int:
        return sum(n for _, n, _ in self.unproven)


class Link:
    def __init__(
        self, server: Server, backoff: Backoff, security: Security, *, dns_refresh: bool
    ) -> None:
        self.server = server
        self.name = describe(server.address)
        self.backoff = backoff
        self.security = security
        self.dns_refresh = dns_refresh
        self.conn: Connection | None = None
        # True while ``conn`` is being opened (connect, TLS, handshake): not usable yet.
        self.connecting = False
        self.retry_at = 0.0
        # Bytes written per unit of weight: the least loaded primary goes next.
        self.load = 0.0
        # Frames written on this connection and not yet confirmed.
        self.unconfirmed = InFlight()
        # Without acks: what the peer's kernel took and the server has not yet said it
        # read, as (stream offset where the frame ends, its records, its chunk id).
        self.unsettled: deque[tuple[int, int, str | None]] = deque()
        # Whether the server acks the chunk ids of frames sent without acks: unknown until
        # it does, or until it let a wait for one run out.
        self.answers_markers: bool | None = None
        self.unsettled_since = 0.0
        # Failed connections still being read for the acks of their markers, oldest
        # first (without acks only; see Retiring). The writer keeps at most a few.
        self.retiring: deque[Retiring] = deque()
        self.confirmed = 0
        # Frames written on the current connection: a server that closes after one event
        # frame (keepalive off in its HELO) must never get a second.
        self.frames_on_conn = 0
        self.progress_at = 0.0
        self.used_at = 0.0
        self._resolved: list[tuple[Any, Any]] | None = None
        self.connects = 0
        self.failures = 0
        # Connect attempts failed in a row since the last success.
        self.connect_streak = 0
        self.frames_sent = 0
        self.acked_frames = 0
        self.last_error: str | None = None
        # The same failure as a typed exception, for stats().
        self.error: FluentError | None = None

    def available(self, now: float) -> bool:
        return self.conn is not None or now >= self.retry_at

    def new_connection(self) -> Connection:
        conn = Connection(
            self.server.address, self.security,
            resolved=None if self.dns_refresh else self._resolved,
        )
        self.conn = conn
        self.confirmed = 0
        self.frames_on_conn = 0
        return conn

    def connected(self) -> None:
        assert self.conn is not None
        if not self.dns_refresh and self.server.unix_path is None:
            self._resolved = self.conn.resolve()
        self.connects += 1
        self.connect_streak = 0
        # The backoff is NOT reset here: a server that accepts every connection and then
        # cuts it mid-frame would otherwise be retried every 50 ms, and a frame's
        # ack_retry_limit spent in half a second. Only proof that the server takes our
        # frames resets it (see progressed()).
        self.retry_at = 0.0
        self.last_error = None
        self.error = None
        self.progress_at = self.used_at = time.monotonic()

    def progressed(self) -> None:
        """The server proved it works: it acked a frame, or (without acks) its kernel took
        one. The next outage starts again from the first delay."""
        if self.backoff.attempts:
            self.backoff = self.backoff.reset()

    def failed(
        self, reason: str, *, backoff_to_max: bool = False, error: FluentError | None = None
    ) -> None:
        """Schedule the next attempt after this link's backoff delay.

        ``backoff_to_max`` waits the longest delay this time only: a refusal is not
        fixed by retrying at once, but the backoff keeps its own schedule, so the next
        proof of progress (an ack, or bytes the server's kernel took) resets it as usual.
        """
        self.failures += 1
        self.last_error = reason
        self.error = error if error is not None else FluentConnectionError(reason)
        delay = self.backoff.longest_delay() if backoff_to_max else self.backoff.delay()
        self.retry_at = time.monotonic() + delay
        self.backoff = self.backoff.next()

    def stats(self) -> ServerStats:
        now = time.monotonic()
        if self.conn is not None:
            state = "connecting" if self.connecting else "connected"
        elif now < self.retry_at:
            state = "backing_off"
        else:
            state = "idle"
        return ServerStats(
            address=self.name, state=state, standby=self.server.standby,
            connects=self.connects, failures=self.failures, frames_sent=self.frames_sent,
            acked_frames=self.acked_frames, last_error=self.last_error, error=self.error,
        )


def choose(links: list[Link], now: float) -> list[Link]:
    """The links to try for the next write, best first.

    Primaries that are connected or due a retry come first, least loaded first: load is
    bytes written divided by weight, so over time each server takes its share of bytes
    whatever the size of each write. Standbys follow, and only matter when every primary
    fails.
    """
    primaries = [link for link in links if not link.server.standby and link.available(now)]
    standbys = [link for link in links if link.server.standby and link.available(now)]
    primaries.sort(key=lambda link: link.load)
    return primaries + standbys


def level(link: Link, links: list[Link]) -> None:
    """Start a link that (re)joins at the others' load, so it is not flooded to catch up."""
    others = [other.load for other in links if other is not link and other.conn is not None]
    link.load = max(others, default=link.load)
