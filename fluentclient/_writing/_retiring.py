"""Retiring connections (without acks): a failed connection left to finish on its own.

Its frames were written whole and never go out again, unless the server resets it before
its TCP acknowledged them. Closed at once, most of them would be lost even if the server
resumes: it acks their markers, our kernel answers those acks to a closed socket with a
reset, and the server's kernel drops the rest. So it stays open, half-closed where the
transport allows, and read like a live one, until the server proves it read them, closes
or resets it, or its linger (``_MIN_LINGER`` or three write timeouts) or shutdown's
deadline runs out; what is not proven read then is possibly lost. At most
``_MAX_RETIRING`` per server. See docs/architecture.md, "When a connection fails".
"""

from __future__ import annotations

import logging
import time

from .._buffer import Buffer, Frame
from .._ledger import Ledger
from .._lifecycle import Lifecycle
from .._transport._connection import Connection
from .._transport._pool import Link, Retiring
from .._transport._replies import ConnectionLost
from .._transport._sender import Sender
from .._words import count
from ..errors import AuthenticationError
from ._connect_notes import ConnectNotes
from ._no_ack_proof import NoAckProof
from ._writer_common import cut_short

log = logging.getLogger("fluentclient")

# How long a failed connection is left to finish on its own: at least this, or three
# write timeouts if longer. A server that paused (a blocked input thread, a long garbage
# collection) and resumes within it still reads and acks what it holds.
_MIN_LINGER = 30.0
# After a server closed its side of a retiring connection, how long to wait for the reset
# that proves the frames its TCP had not acknowledged never reached it.
_RESET_WAIT = 2.0
# Failed connections kept retiring per server; past it the oldest is closed. A server
# that keeps stalling costs a few sockets, never one per failure.
_MAX_RETIRING = 2


class Retirement:
    """Owns each link's retiring connections (``Link.retiring``)."""

    def __init__(
        self, ledger: Ledger, buf: Buffer, life: Lifecycle, proof: NoAckProof,
        notes: ConnectNotes, write_timeout: float,
    ) -> None:
        self._ledger = ledger
        self._buffer = buf
        self._life = life
        self._proof = proof
        self._notes = notes
        # How long a retiring connection may take to prove its frames read.
        self.linger = max(_MIN_LINGER, 3 * write_timeout)

    @staticmethod
    def active(link: Link) -> bool:
        """Whether the link has a failed connection still finishing."""
        return bool(link.retiring)

    def retire(self, link: Link, conn: Connection) -> int:
        """Leave a failed connection to finish on its own; the records it holds (0: it
        holds none, or cannot finish, and the caller closes it).

        Only counts are kept of its frames, and the bytes of those the peer had not
        taken leave the buffer's limit, so a server that stalls does not eat the limit
        twice.
        """
        closed = conn.replies.eof
        if conn.sock is None or cut_short(self._life) or (closed and not (
                link.unconfirmed and conn.can_confirm and not link.server.unix_path)):
            # A server that closed its side proves nothing more by staying connected,
            # unless a reset may yet follow that proves the tail never reached it.
            return 0
        unproven, tail = self._proof.hand_over(link)
        if not unproven:
            return 0
        self._buffer.set_aside([frame for _, frame in tail])
        while len(link.retiring) >= _MAX_RETIRING:
            self._end(link, link.retiring[0], "too many failed connections")
        # Our FIN after the last frame: a server that reads everything answers with its
        # own, which proves it did. TLS cannot half-close; there we only stop writing.
        # After the server's own FIN ours proves nothing, but it hurries the end.
        half = conn.half_close() and not closed
        now = time.monotonic()
        until = now + self.linger
        drain = self._life.drain_deadline
        if drain is not None:
            until = min(until, drain)
        old = Retiring(conn, unproven, tail, until, half_closed=half)
        link.retiring.append(old)
        if closed:
            old.eof_until = now + _RESET_WAIT
        return sum(n for _, n, _ in unproven)

    def tend(self, link: Link) -> None:
        """Read the retiring connections; end those done, failed or out of time."""
        if not link.retiring:
            return
        now = time.monotonic()
        for old in list(link.retiring):
            self._read(link, old)
            conn = old.conn
            if not old.unproven:
                self._end(link, old, "")
            elif conn.replies.eof:
                self._closed_by_server(link, old, now)
            elif now >= old.until:
                drain = self._life.drain_deadline
                why = ("shutdown's deadline came" if drain is not None and now >= drain
                       else f"not read within {self.linger:g} s")
                self._end(link, old, why)

    def end_all(self, link: Link, reason: str) -> None:
        """Shutdown's end: what a retiring connection has not proven read by now is
        possibly lost, never unsent."""
        self.tend(link)
        while link.retiring:
            self._end(link, link.retiring[0], reason)

    def _closed_by_server(self, link: Link, old: Retiring, now: float) -> None:
        # A FIN answering ours comes only after the server read all before it; a reset, or
        # a FIN before ours, proves nothing of what was in flight, but once reset the
        # connection can deliver nothing past what the server's TCP acknowledged: that
        # tail goes out again. A FIN before ours is followed by such a reset when our
        # unacknowledged bytes reach a socket that is gone.
        conn = old.conn
        clean = old.half_closed and conn.replies.lost is None
        dead = conn.dead_offset()
        if old.eof_until is None:
            old.eof_until = now + _RESET_WAIT
        if dead is None and not clean and old.tail and now < old.eof_until:
            return
        self._end(link, old, conn.replies.lost or "the server closed it",
                  read_all=clean and dead is None, dead=dead)

    def _read(self, link: Link, old: Retiring) -> None:
        """Settle the frames whose markers the server acked (each ack proves all before)."""
        conn = old.conn
        if conn.sock is None or conn.replies.eof:
            return
        try:
            replies = Sender.replies(conn)
        except AuthenticationError as exc:
            # An unasked HELO: the server discards our frames until we do the handshake.
            conn.replies.end(str(exc))
            news = link.last_error != str(exc)
            link.failed(str(exc), backoff_to_max=True, error=exc)
            self._notes.refused(exc, news)
            return
        except ConnectionLost as exc:
            conn.replies.end(str(exc))
            return
        settled = 0
        read_to = -1
        for reply in replies:
            chunk = reply.get("ack") if isinstance(reply, dict) else None
            if not isinstance(chunk, str):
                continue
            for i, (end, _, marker) in enumerate(old.unproven):
                if marker == chunk:
                    settled += sum(old.unproven.popleft()[1] for _ in range(i + 1))
                    read_to = end
                    break
        done: list[Frame] = []
        while old.tail and old.tail[0][0] <= read_to:
            done.append(old.tail.popleft()[1])
        self._buffer.release(done)
        if settled:
            # The server reads again: the next outage starts from the first delay.
            self._proof.answered(link)
            self._ledger.send(settled)

    def _end(
        self, link: Link, old: Retiring, reason: str, *, read_all: bool = False,
        dead: int | None = None,
    ) -> None:
        """Close a retiring connection; what it did not prove read is possibly lost
        (sent if ``read_all``), but frames past ``dead``, where the server's TCP stopped
        acknowledging a connection that can deliver nothing more, go out again. A plain
        close: the kernel may still deliver the rest."""
        self._read(link, old)
        link.retiring.remove(old)
        if dead is None:
            dead = old.conn.dead_offset()
        old.conn.close()
        if dead is not None:
            self._send_again_past(link, old, dead, reason)
        self._buffer.release([frame for end, frame in old.tail
                              if dead is None or end <= dead])
        old.tail.clear()
        records = old.records
        old.unproven.clear()
        if not records:
            return
        if read_all:
            self._ledger.send(records)
            return
        self._ledger.lose(records)
        log.warning("fluentclient: %s written to %s before its connection failed "
                    "not proven read (%s); possibly lost", count(records, "record"), link.name,
                    reason)

    def _send_again_past(self, link: Link, old: Retiring, dead: int, reason: str) -> None:
        """The frames past ``dead`` never reached the server: back to the buffer."""
        again = [frame for end, frame in old.tail if end > dead]
        if not again:
            return
        kept = [entry for entry in old.unproven if entry[0] <= dead]
        old.unproven.clear()
        old.unproven.extend(kept)
        retried = sum(f.records for f in again)
        # Counted before the frames are back, where the next write may take them.
        self._ledger.requeue(retried)
        self._buffer.restore(again)
        log.warning("fluentclient: %s written to %s before its connection "
                    "failed never reached it (%s); sent again",
                    count(retried, "record"), link.name, reason)
