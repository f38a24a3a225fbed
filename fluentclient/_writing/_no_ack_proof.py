"""The no-ack proof: without acks, what proves that a written frame arrived.

A frame written whole leaves the buffer once the peer's kernel took its bytes
(``Connection.confirmed_offset``); only its record count is kept then, *unsettled*, since
a server that stops reading can still sit on it. It is *sent* once the server proves it
read it. Every frame carries a chunk id as a marker, and an ack for one (fluentd, Fluent
Bit and ForwardServer answer them) settles that frame and all before it. For a server
that never answers (known after ``_FIRST_MARKER_WAIT``), more bytes taken after the frame
than any receive buffer holds (``_PEER_WINDOW``), or its FIN answering ours at a close,
prove it instead. Nothing is ever sent again for want of a marker's ack.

What a failed connection had not proven read is left to finish on its own
(_retiring.py). docs/architecture.md ("When a connection fails") tells the whole story.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Optional

from .._buffer import Buffer, Frame
from .._ledger import Ledger
from .._lifecycle import Lifecycle
from .._transport._connection import Connection
from .._transport._pool import Link
from .._transport._replies import ConnectionLost
from ..errors import AuthenticationError
from ..message import short_repr
from ._writer_common import Fault, deadline_within, read_replies

log = logging.getLogger("fluentclient")

# Before closing, how long to wait for the acks of markers from a server not yet known to
# answer them. One that never does costs this once per server, then never again.
_FIRST_MARKER_WAIT = 2.0
# What a TCP receiver may hold unread when its own settings are unknown (Linux's default
# maximum receive buffer).
_DEFAULT_PEER_WINDOW = 6 * 1024 * 1024


def _peer_window() -> int:
    """An upper bound on the bytes a TCP server can have taken but not yet read."""
    try:
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            return max(_DEFAULT_PEER_WINDOW, int(f.read().split()[2]))
    except (OSError, ValueError, IndexError):
        return _DEFAULT_PEER_WINDOW


# Read once at import: a client may be made while the interpreter is finishing, when
# builtins such as open() are gone already.
_PEER_WINDOW = _peer_window()

# A frame not yet proven read: (stream offset where it ends, its records, its chunk id).
Unproven = deque[tuple[int, int, Optional[str]]]


class NoAckProof:
    """Owns, on each link, what was taken and not yet proven read (``unsettled``) and
    whether the server answers markers (``answers_markers``)."""

    def __init__(self, ledger: Ledger, buf: Buffer, life: Lifecycle,
                 write_timeout: float) -> None:
        self._ledger = ledger
        self._buffer = buf
        self._life = life
        self._write_timeout = write_timeout
        self._settle_distance = _PEER_WINDOW

    # -- what the scheduler asks -----------------------------------------------------------

    def awaits_markers(self, link: Link, now: float) -> bool:
        """Whether acks of this link's markers are still to be read."""
        if link.conn is None or not link.unsettled or link.answers_markers is False:
            return False
        if link.answers_markers is None and now - link.unsettled_since > _FIRST_MARKER_WAIT:
            link.answers_markers = False
            log.debug("fluentclient: %s does not ack chunk ids", link.name)
            return False
        return True

    def owes_answers(self, link: Link) -> bool:
        """Whether a server that answers markers (or is not yet known not to) still owes
        the answers that settle records written to it."""
        return (link.conn is not None and link.answers_markers is not False
                and bool(link.unsettled or link.unconfirmed))

    def check(self, link: Link) -> Fault | None:
        """Read the markers' acks, then what the peer's kernel took; the fault if the
        connection must end."""
        fault = self.read_markers(link)
        if fault is None and link.unconfirmed:
            fault = self._confirm(link)
        return fault

    def read_markers(self, link: Link) -> Fault | None:
        """Settle what the server's acks of our markers prove it read."""
        conn = link.conn
        assert conn is not None
        replies = read_replies(conn)
        if isinstance(replies, Fault):
            return replies
        for reply in replies:
            if not self._marker_acked(link, reply):
                return Fault(f"unexpected reply {short_repr(reply, 80)}")
        if conn.replies.eof:
            return Fault(conn.replies.lost or "the server closed the connection")
        return None

    def settle(self, link: Link) -> None:
        """Count sent what more than a receive buffer's worth of later bytes proves read."""
        settled = 0
        limit = link.confirmed - (0 if link.server.unix_path else self._settle_distance)
        while link.unsettled and link.unsettled[0][0] <= limit:
            settled += link.unsettled.popleft()[1]
        self._count_sent(settled)

    def answered(self, link: Link) -> None:
        """The server acked a marker: it reads, and the next outage starts from the
        first delay."""
        link.answers_markers = True
        link.progressed()

    # -- closing and failing ---------------------------------------------------------------

    def await_markers(self, link: Link) -> Fault | None:
        """Before our FIN, let the server ack the frames it has read; the fault if the
        connection failed meanwhile.

        fluentd resets the connection the moment it reads our FIN, and the reset discards
        any ack it had not yet sent: without this wait the last frames of every plain
        stream to fluentd would count as possibly lost.
        """
        if link.answers_markers is False:
            return None
        wait = self._write_timeout if link.answers_markers else _FIRST_MARKER_WAIT
        deadline = deadline_within(self._life, wait)
        while link.unsettled and link.conn is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if link.answers_markers is None:
                    # Logged here, not in a helper: a test holds this thread at this line.
                    link.answers_markers = False
                    log.debug("fluentclient: %s does not ack chunk ids", link.name)
                return None
            link.conn.wait_readable(min(remaining, 0.1))
            fault = self.read_markers(link)
            if fault is not None:
                return fault
        return None

    def take_replies(self, link: Link, replies: list[object]) -> None:
        """Settle what the acks among the last replies of a closing connection prove."""
        for reply in replies:
            if not self._marker_acked(link, reply):
                break

    def settle_at_close(self, link: Link, *, read_all: bool) -> None:
        """The connection closed: what it had not proven read is sent if the server's FIN
        answered ours (``read_all``), else possibly lost."""
        records = self.drop_unsettled(link)
        if records and read_all:
            self._ledger.send(records)
        elif records:
            self._ledger.lose(records)

    @staticmethod
    def holds_unsettled(link: Link) -> bool:
        """Whether the link's connection took frames it has not proven read."""
        return bool(link.unsettled)

    def drop_unsettled(self, link: Link) -> int:
        """Forget what the link's connection took and did not prove read; how many records
        (the caller counts them)."""
        records = sum(n for _, n, _ in link.unsettled)
        link.unsettled.clear()
        return records

    def take_late_markers(self, link: Link, conn: Connection) -> AuthenticationError | None:
        """Acks of markers that came before the connection failed still prove delivery.

        Returns the refusal if the server sent HELO unasked meanwhile: it wants the
        handshake, and that must be said, not lost with the connection.
        """
        try:
            replies = (conn.replies.refuse_if_helo(conn.read_available())
                       if conn.sock is not None else [])
        except AuthenticationError as exc:
            return exc
        except ConnectionLost:
            return None
        self.take_replies(link, replies)
        return None

    def take_acked(self, link: Link, conn: Connection) -> None:
        """Frames the peer's TCP acknowledged before the connection died are not sent
        again (that would duplicate them); they count as possibly lost instead."""
        acked = conn.acked_offset()
        if acked is not None:
            self._taken_up_to(link, acked)

    def hand_over(self, link: Link) -> tuple[Unproven, deque[tuple[int, Frame]]]:
        """Take what the link's failed connection has not proven read, for it to finish
        retiring: every such frame, and those of them the peer had not taken, whole."""
        tail = deque(link.unconfirmed.take_all())
        unproven: Unproven = deque(link.unsettled)
        unproven.extend((end, frame.records, frame.chunk) for end, frame in tail)
        link.unsettled.clear()
        return unproven, tail

    # -- inside ----------------------------------------------------------------------------

    def _confirm(self, link: Link) -> Fault | None:
        """Release the frames the peer's kernel took."""
        conn = link.conn
        assert conn is not None
        offset = conn.confirmed_offset() if conn.can_confirm else conn.bytes_written
        if offset is None:
            # No longer established (reset, or closed with frames in flight): requeue them
            # now rather than after a write timeout spent waiting for progress that cannot
            # come.
            return Fault(conn.replies.lost or "the connection is no longer open")
        now = time.monotonic()
        if offset > link.confirmed:
            link.confirmed = offset
            link.progress_at = now
        if self._taken_up_to(link, link.confirmed):
            link.progressed()
        elif now - link.progress_at > self._write_timeout:
            return Fault(f"the server took nothing for {self._write_timeout:g} s")
        return None

    def _taken_up_to(self, link: Link, offset: int) -> bool:
        """The peer took the stream up to ``offset``: the frames written before it leave
        the buffer and wait to be settled. Whether there were any."""
        if not link.unsettled:
            link.unsettled_since = time.monotonic()
        taken = link.unconfirmed.pop_through(offset)
        link.unsettled.extend((end, frame.records, frame.chunk) for end, frame in taken)
        if taken:
            self._buffer.release([frame for _, frame in taken])
        return bool(taken)

    def _marker_acked(self, link: Link, reply: object) -> bool:
        """The server read every frame up to the one whose chunk id it acks: all are sent.

        Acks come in order, so the frame is at or near the front, either still waiting for
        the kernel's confirmation or already taken. False for anything but such an ack.
        """
        chunk = reply.get("ack") if isinstance(reply, dict) else None
        if not isinstance(chunk, str):
            return False
        self.answered(link)
        for i, (_, _, marker) in enumerate(link.unsettled):
            if marker == chunk:
                self._count_sent(sum(link.unsettled.popleft()[1] for _ in range(i + 1)))
                return True
        taken = link.unconfirmed.pop_through_chunk(chunk)
        if taken is None:
            return False
        settled = sum(n for _, n, _ in link.unsettled) + sum(f.records for f in taken)
        link.unsettled.clear()
        link.progress_at = time.monotonic()
        # Counted before the release wakes flush(): whoever it wakes finds them.
        self._count_sent(settled)
        self._buffer.release(taken)
        return True

    def _count_sent(self, records: int) -> None:
        if records:
            self._ledger.send(records)
