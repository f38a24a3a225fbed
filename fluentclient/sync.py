"""The :class:`SyncClient`: each post() writes its record on the caller's thread.

It shares the BufferedClient's packer, frames, connections and sender; what it adds is
the retry of a write on a reused connection and the wait for one ack, both bounded by the
caller's ``timeout``.
"""

from __future__ import annotations

import os
import sys
import threading
import time as _time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Literal, overload

from ._base import Client, not_a_mapping
from ._ledger import Ledger
from ._lifetime._mark import Mark, unforked_mark
from ._options import MiB, builder_for, packer_for
from ._transport._connection import Connection, SendError
from ._transport._pool import Link, ServerSpec
from ._transport._replies import ConnectionLost
from ._transport._sender import Sender
from .backoff import Backoff
from .errors import (
    AuthenticationError,
    ClientClosedError,
    FluentConnectionError,
    FluentError,
    FluentTimeoutError,
    RecordTooLargeError,
)
from .framing import one_entry_frame
from .message import TimeLike, time_to_ns
from .options import Auth, RecordRules, Timeouts, TlsSetting
from .stats import DROP_SEND_FAILED, ShutdownReport, Stats

__all__ = ["SyncClient"]

_time_ns = _time.time_ns
_monotonic = _time.monotonic
_INF = float("inf")
# Tags a client remembers: a client fed endless distinct tags must not grow without end.
_TAGS = 10_000

_live_sync_clients: weakref.WeakSet[SyncClient] = weakref.WeakSet()


class SyncClient(Client):
    """Sends each record on the caller's thread and raises when it cannot.

    Uses the same :class:`Message`, packer, frames and connections as
    :class:`BufferedClient`; each ``post()`` writes one frame and, with
    ``require_ack=True``, waits for its ack. A failed connection is replaced on the next
    call; a write that fails on a reused connection is tried once more on a new one, since
    a server that went away is only noticed when writing. With several ``servers`` each
    call tries them in turn until one takes the frame. Calls from several threads are
    serialized, so their frames never interleave on the wire.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 24224,
        *,
        unix_path: str | None = None,
        servers: Sequence[ServerSpec] | None = None,
        tag_prefix: str | None = None,
        require_ack: bool = False,
        tls: TlsSetting = False,
        auth: Auth = Auth(),
        timeouts: Timeouts = Timeouts(),
        records: RecordRules = RecordRules(),
        compress: str | None = None,
        compress_level: int = 6,
        dns_refresh: bool = True,
        max_frame_size: int = MiB,
    ) -> None:
        super().__init__(
            host, port, unix_path=unix_path, servers=servers, tag_prefix=tag_prefix,
            require_ack=require_ack, tls=tls, auth=auth, timeouts=timeouts, records=records,
            backoff=Backoff(), compress=compress, compress_level=compress_level,
            dns_refresh=dns_refresh,
        )
        t = self._transport
        # Each tag seen (up to _TAGS of them): its full tag, the largest entry a frame of
        # it can hold, and the head of its frame when the frame is the plain one (see
        # _learn). One lookup per call, where the tag, its packed form and the frame limit
        # were three.
        self._tag_rooms: dict[str, tuple[str, int, bytes | None]] = {}
        self._known_tag = self._tag_rooms.get
        self._entry = packer_for(self._records).entry
        self._builder = builder_for(self._records, t)
        b = self._builder
        # Frames with nothing but the size in their options: made in one join.
        self._plain_frames = not (b.chunks or b.compress or b.str_entries)
        self._links = t.links()
        # With one server, the usual case, there is nothing to choose: each call tries it.
        self._single = self._links if len(self._links) == 1 else None
        # The link whose connection a call tries first, at the least cost (see
        # post()): the one server, when no ack and no idle limit need a look.
        self._lane = (
            self._links[0]
            if self._single and not require_ack and timeouts.idle is None else None
        )
        self._max_frame_size = max_frame_size
        # Read on every call: plain attributes, not a look through the options.
        self._require_ack = require_ack
        self._idle_limit = timeouts.idle
        self._lock = threading.Lock()
        self._ledger = Ledger()
        self._sender = Sender(self._links, self._ledger, t)
        self._closed = False
        self._pid = os.getpid()
        # post()'s fork check: true until this process forks (see _lifetime/_mark.py).
        self._unforked: Mark = unforked_mark()
        # Whether the record being sent may have reached a server (see _send).
        self._maybe_delivered = False
        _live_sync_clients.add(self)
        # Dropped with a connection open: closed when collected (holds the links, never
        # the client). Those still alive at exit are left to the process's end, as is
        # one made while the interpreter finalizes (a finalizer cannot be made then).
        if not sys.is_finalizing():
            finalizer = weakref.finalize(self, _forgotten, self._links)
            # Not at exit, as said above. (A property at run time; the type stubs for
            # Python 3.9 do not list it, hence setattr.)
            setattr(finalizer, "atexit", False)  # noqa: B010

    def _after_fork_in_child(self) -> None:
        # The parent's connections are the parent's: writing on them would interleave
        # frames and steal its acks. Closing our copy of the descriptor sends nothing.
        self._lock = threading.Lock()
        self._ledger = Ledger()
        self._sender = Sender(self._links, self._ledger, self._transport)
        self._pid = os.getpid()
        self._unforked = unforked_mark()
        for link in self._links:
            self._sender.drop(link)

    @overload
    def post(
        self,
        tag: str,
        record: Mapping[str, object],
        *,
        time: TimeLike | None = None,
        sync_append: bool = False,
        timeout: float | None = None,
        ack: Literal[False] = False,
    ) -> bool: ...

    @overload
    def post(
        self,
        tag: str,
        record: Mapping[str, object],
        *,
        time: TimeLike | None = None,
        sync_append: bool = False,
        timeout: float | None = None,
        ack: Literal[True],
    ) -> Future[None]: ...

    def post(
        self,
        tag: str,
        record: Mapping[str, object],
        *,
        time: TimeLike | None = None,
        sync_append: bool = False,
        timeout: float | None = None,
        ack: bool = False,
    ) -> bool | Future[None]:
        """Send one record now; raises a :class:`FluentError` if it cannot be sent.

        ``timeout`` caps the whole call. ``sync_append`` is accepted for symmetry with the
        buffered client (this call is synchronous anyway). ``ack=True`` (with
        ``require_ack=True``) returns an already resolved Future, for code written for both
        clients. A record that is not a mapping raises :class:`SerializationError`, as
        in :class:`BufferedClient`.
        """
        if type(record) is not dict and not isinstance(record, Mapping):
            raise not_a_mapping(record)
        try:
            known = self._known_tag(tag)
        except TypeError:  # unhashable, so no tag: _learn() says so
            known = None
        full_tag, room, head = self._learn(tag) if known is None else known
        time_ns = _time_ns() if time is None else time_to_ns(time)
        if ack and not self._require_ack:
            raise ValueError("post(ack=True) needs a client made with require_ack=True")
        # Without a timeout the clock is read only if the call has to wait (see _write).
        start = 0.0 if timeout is None else _monotonic()
        if not self._unforked[0]:
            # Forked without the at-fork hooks (a C extension calling fork()): a memory
            # read, where a pid check was a system call on every call.
            self._check_fork()
        with self._lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            entry = self._entry(record, time_ns)
            if len(entry) > room:
                raise RecordTooLargeError(
                    f"a {len(entry)}-byte record does not fit in a frame of "
                    f"{self._max_frame_size} bytes"
                )
            if head is not None:
                data, chunk = one_entry_frame(head, entry), None
            else:
                data, chunk = self._builder.build(full_tag, entry, 1)
            self._maybe_delivered = False
            try:
                # The usual call: the frame goes on the connection the last call used,
                # which the server has not closed since, in one poll(2) and one send(2).
                # Anything else (no lane, no connection, a word from the server, a full
                # socket buffer) takes _send, which does it all, with every look and retry.
                link = self._lane
                if link is None or link.conn is None or (
                        timeout is not None and _monotonic() - start >= timeout):
                    self._send(data, chunk, start, timeout)
                else:
                    sent = link.conn.send_if_quiet(data)
                    if sent == len(data):
                        # What Sender.wrote does, less its backoff reset: that was done
                        # by the first write on this connection, which took the whole path.
                        link.frames_sent += 1
                    elif sent < 0:
                        self._send(data, chunk, start, timeout)
                    else:
                        self._write_rest(data, sent, start, timeout)
            except BaseException:
                # Posted and settled at once: nothing is ever buffered here.
                if self._maybe_delivered:
                    self._ledger.lost_at_once()
                else:
                    self._ledger.refuse(DROP_SEND_FAILED)
                raise
            # Counted under our lock: the ledger needs no lock of its own for this.
            self._ledger.sent_at_once(len(data))
        if ack:
            done: Future[None] = Future()
            done.set_result(None)
            return done
        return True

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            self._after_fork_in_child()
        else:
            # A mark that reads as forked in the process that made it: the pid settles
            # it, and a new mark spares the next call the system call.
            self._unforked = unforked_mark()

    def _learn(self, tag: str) -> tuple[str, int, bytes | None]:
        """The full tag of ``tag``, the largest entry its frame holds, and the head of
        its frame if plain; raises InvalidTagError for a bad tag."""
        full_tag, _ = self._tags.stamp(tag, None)
        builder = self._builder
        head = builder.head(full_tag) if self._plain_frames else None
        known = full_tag, self._max_frame_size - builder.overhead(full_tag), head
        if len(self._tag_rooms) < _TAGS:
            self._tag_rooms[tag] = known
        return known

    def _deadline(self, start: float, step: float, timeout: float | None) -> float:
        deadline = _monotonic() + step
        return deadline if timeout is None else min(deadline, start + timeout)

    def _write_rest(self, data: bytes, sent: int, start: float, timeout: float | None) -> None:
        """The kernel took the head of the frame on the lane: the rest follows on the
        same connection, or the frame is possibly lost, never written again anywhere."""
        link = self._lane
        assert link is not None and link.conn is not None
        try:
            link.conn.send(
                data, self._deadline(start, self._transport.write_timeout, timeout),
                start=sent)
        except SendError as exc:
            self._maybe_delivered = True
            self._sender.drop(link)
            self._ledger.connection_failed()
            link.failed(str(exc), error=exc)
            raise
        link.frames_sent += 1

    def _send(self, data: bytes, chunk: str | None, start: float, timeout: float | None) -> None:
        t, sender = self._transport, self._sender
        error: FluentError | None = None  # made when there is one to raise
        # A caller wants an answer now: every server is tried, whatever its backoff.
        for link in self._single or sender.candidates(_INF):
            for attempt in (0, 1):
                conn = link.conn
                # A server that closed since the last call must not be sent this frame:
                # it would be lost, and counted sent. The usual answer, "it said
                # nothing", costs one poll(2); anything else gets the whole look.
                if conn is not None and (self._idle_limit is not None or not conn.quiet()):
                    try:
                        if sender.stale(link, conn):
                            sender.drop(link)
                            conn = None
                    except AuthenticationError as exc:
                        sender.refused(link, exc)
                        raise
                reused = conn is not None
                if conn is None:
                    deadline = self._deadline(start, t.connect_timeout, timeout)
                    failure = sender.connect(link, deadline)
                    if failure is not None:
                        sender.connect_failed(link, failure)
                        error = failure
                        break
                    conn = link.conn
                    assert conn is not None
                written = False
                try:
                    self._write(conn, data, start, timeout)
                    written = True
                    if chunk is not None:
                        sender.await_ack(conn, chunk, self._deadline(start, t.ack_timeout, timeout))
                except AuthenticationError as exc:
                    sender.refused(link, exc)
                    raise
                except (SendError, ConnectionLost, FluentTimeoutError) as exc:
                    partial = isinstance(exc, SendError) and exc.written > 0
                    if written or partial:
                        # The server may have the frame, or part of it.
                        self._maybe_delivered = True
                    sender.drop(link)
                    self._ledger.connection_failed()
                    error = exc
                    # A reused connection may have died while idle: one more try on a
                    # new one, unless part of the frame already went out on it.
                    if reused and attempt == 0 and not partial:
                        continue
                    link.failed(str(exc), error=exc)
                    break
                sender.wrote(link, 1)
                if self._single is None:
                    # Bytes per unit of weight: the least loaded server takes the next
                    # call, so that over time each gets its weight's share.
                    link.load += len(data) / link.server.weight
                if self._idle_limit is not None:
                    link.used_at = _monotonic()
                if chunk is not None:
                    link.acked_frames += 1
                if not conn.keepalive:
                    sender.drop(link)
                return
        raise error if error is not None else FluentConnectionError("no server to send to")

    def _write(self, conn: Connection, data: bytes, start: float, timeout: float | None) -> None:
        """Write the whole frame, or raise :class:`SendError` saying how much went.

        What the kernel takes at once goes without a clock or a deadline; only the rest
        (its send buffer was full) waits, until the write deadline. A call whose
        ``timeout`` has run out by now writes nothing.
        """
        sent = 0
        if timeout is None or _monotonic() - start < timeout:
            sent = conn.send_at_once(data)
            if sent == len(data):
                return
        conn.send(data, self._deadline(start, self._transport.write_timeout, timeout),
                  start=sent)

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing is ever held: every post() has already been written."""
        return True

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        deadline = _time.monotonic() + (5.0 if timeout is None else timeout)
        with self._lock:
            self._closed = True
            for link in self._links:
                conn, link.conn = link.conn, None
                if conn is not None:
                    conn.close_gracefully(deadline)
        return self._ledger.report(timed_out=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for link in self._links:
                self._sender.drop(link)

    def stats(self) -> Stats:
        """Every record counts once its post() has returned or raised: sent, or, if the
        call raised, ``dropped["send_failed"]`` (nothing of it was written) or
        ``possibly_lost`` (written, not seen taken). ``buffered`` is always 0."""
        return self._ledger.snapshot(
            buffered_bytes=0,
            servers=tuple(link.stats() for link in self._links),
        )


def _forgotten(links: list[Link]) -> None:
    """A SyncClient collected with a connection open: close it, and say so, as Python
    does for a file left open. Nothing is held, so nothing else is lost."""
    open_links = [link for link in links if link.conn is not None]
    if not open_links:
        return
    for link in open_links:
        conn, link.conn = link.conn, None
        if conn is not None:
            conn.close()
    servers = ", ".join(link.name for link in open_links)
    warnings.warn(f"unclosed <SyncClient to {servers}>: call close() when done with a client",
                  ResourceWarning, stacklevel=2)


def _reinit_in_child() -> None:
    for client in list(_live_sync_clients):
        client._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_in_child)
