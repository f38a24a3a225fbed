"""What a failed connection costs: which of its frames go out again, which retire with
it, which count as possibly lost, and what is logged.

A connection ends once: nothing requeued here may also leave through the old socket. A
frame never wholly handed to it (``pending``) goes back: at most the head of one went
out, which no server decodes alone. A frame written whole goes out again with acks (up to
``ack_retry_limit`` attempts; the old socket is reset, so our kernel drops its copy).
Without acks it does only if the server reset the connection before its TCP acknowledged
the frame; otherwise nothing proves it will not arrive, so the connection retires (see
_retiring.py) or the frame counts as possibly lost. (Linux's SIOCOUTQNSD tells how much
of a live queue was never sent, but the kernel may send more between that reading and
our reset, so it cannot prove a byte will not arrive.)
"""

from __future__ import annotations

import logging

from .._buffer import Buffer, Frame
from .._ledger import Ledger
from .._lifecycle import Lifecycle
from .._transport._connection import Connection
from .._transport._pool import Link
from .._words import count
from ..errors import FluentError, PossiblyLostError
from ._ack_tracking import AckTracking
from ._connect_notes import ConnectNotes
from ._no_ack_proof import NoAckProof
from ._retiring import Retirement
from ._writer_common import Fault, resolve_futures

log = logging.getLogger("fluentclient")


class LinkFailure:
    def __init__(
        self, buf: Buffer, ledger: Ledger, life: Lifecycle, *, require_ack: bool,
        acks: AckTracking, proof: NoAckProof, retirement: Retirement, notes: ConnectNotes,
    ) -> None:
        self._buffer = buf
        self._ledger = ledger
        self._life = life
        self._require_ack = require_ack
        self._acks = acks
        self._proof = proof
        self._retirement = retirement
        self._notes = notes

    def handle(self, link: Link, fault: Fault) -> None:
        """End the link's connection for ``fault``."""
        if fault.refusal is not None:
            self.refused(link, fault.refusal)
        else:
            self.link_failed(link, fault.reason)

    def refused(
        self, link: Link, exc: FluentError, pending: list[Frame] | None = None
    ) -> None:
        """The server refused us on a connection that was up: an unasked HELO. Reported
        like a refused handshake: once until the reason changes, then the longest backoff."""
        news = link.last_error != str(exc)
        self.link_failed(link, str(exc), pending, refusal=exc)
        self._notes.refused(exc, news)

    def link_failed(
        self, link: Link, reason: str, pending: list[Frame] | None = None,
        *, refusal: FluentError | None = None,
    ) -> None:
        """Drop the link's connection; ``pending`` (never wholly handed to it) goes back.

        A ``refusal`` (the server will not take our frames until the configuration
        changes) always backs off, the longest delay, even with nothing in flight.
        """
        if refusal is None and self._refused_meanwhile(link, pending):
            return
        conn, link.conn = link.conn, None
        resend, retiring = False, 0
        if conn is not None:
            resend = self._reset_by_server(link, conn)
            retiring = self._end_connection(
                link, conn, may_retire=refusal is None and not resend)
        if pending:
            self._buffer.requeue(pending)
        if refusal is not None:
            link.failed(reason, backoff_to_max=True, error=refusal)
        if retiring:
            self._left_retiring(link, reason, retiring)
        elif not link.unconfirmed and not self._proof.holds_unsettled(link) and not pending:
            # A server closing an idle connection owes us nothing: reconnect when needed,
            # without counting a failure or backing off. A connection that failed while
            # its first frame was going out was not idle: a server too stuck to take one
            # frame whole must not be reconnected to at every write_timeout, uncounted.
            log.debug("fluentclient: %s closed an idle connection: %s", link.name, reason)
        else:
            self._count_failure(link, reason, resend=resend,
                                failed_already=refusal is not None)

    def lose_unconfirmed(self, link: Link) -> int:
        """The link's written, unconfirmed frames are possibly lost; how many records."""
        frames = [frame for _, frame in link.unconfirmed.take_all()]
        if not frames:
            return 0
        records = sum(f.records for f in frames)
        self._ledger.lose(records)
        self._buffer.release(frames)
        error = PossiblyLostError(
            f"{count(records, 'record')} written to {link.name}, whose connection ended "
            "before the server confirmed them; possibly lost")
        for frame in frames:
            resolve_futures(frame, error)
        return records

    # -- the steps ---------------------------------------------------------------------

    def _refused_meanwhile(self, link: Link, pending: list[Frame] | None) -> bool:
        """Without acks, whether the replies that came before the failure hold an unasked
        HELO: then the server refused us, and that is what ends the connection."""
        if link.conn is None or self._require_ack:
            return False
        helo = self._proof.take_late_markers(link, link.conn)
        if helo is None:
            return False
        self.refused(link, helo, pending)
        return True

    def _reset_by_server(self, link: Link, conn: Connection) -> bool:
        """Without acks: settle what the server proved it read or its TCP took, and say
        whether it reset the connection: then what its TCP never acknowledged can never
        arrive, and goes out again."""
        if self._require_ack:
            return False
        self._proof.take_late_markers(link, conn)
        self._proof.take_acked(link, conn)
        return conn.dead_offset() is not None

    def _end_connection(self, link: Link, conn: Connection, *, may_retire: bool) -> int:
        """Reset, retire or close the failed connection; the records left retiring."""
        if self._require_ack and link.unconfirmed:
            # Those frames go out again on the next connection: reset, so that our
            # kernel drops what it holds of them instead of delivering a second copy.
            conn.reset()
            return 0
        # Nothing wholly written is sent again: the connection is left to finish on its
        # own if it holds frames not proven read; otherwise a plain close.
        retired = self._retirement.retire(link, conn) if may_retire else 0
        if not retired:
            conn.close()
        return retired

    def _left_retiring(self, link: Link, reason: str, records: int) -> None:
        link.failed(reason)
        self._ledger.connection_failed()
        log.warning(
            "fluentclient: connection to %s failed: %s; %s written to it are "
            "left to the server there for up to %g s (possibly lost if it never "
            "reads them)", link.name, reason, count(records, "record"),
            self._retirement.linger,
        )

    def _count_failure(
        self, link: Link, reason: str, *, resend: bool, failed_already: bool
    ) -> None:
        """Settle the fate of the frames the failed connection held, count the failure
        (unless a refusal did already) and say what it cost."""
        written_lost = 0
        if (not self._require_ack and not resend) or (
                link.server.unix_path and self._life.abandoned):
            written_lost = self.lose_unconfirmed(link)
        lost = self._proof.drop_unsettled(link)
        again, given_up = self._to_send_again(link, resend=resend)
        if not failed_already:
            link.failed(reason)
        retried = sum(f.records for f in again)
        # Stepped before the frames are back in the buffer, where the next write may take
        # them at once.
        self._ledger.connection_failed()
        if lost:
            self._ledger.lose(lost)
        if retried:
            self._ledger.requeue(retried)
        self._buffer.requeue(again)
        log.warning(
            "fluentclient: connection to %s failed: %s; %s will be sent again, "
            "%d may be lost", link.name, reason, count(retried, "record"),
            lost + written_lost,
        )
        if given_up:
            self._acks.give_up(given_up)

    def _to_send_again(self, link: Link, *, resend: bool) -> tuple[list[Frame], list[Frame]]:
        """Take the frames still unconfirmed: those to send again, and those given up."""
        frames = [frame for _, frame in link.unconfirmed.take_all()]
        for frame in frames:
            frame.attempts += 1
            if resend:
                frame.left = False  # it never arrived: unsent if it goes no further
        if not self._require_ack:
            return frames, []
        return self._acks.past_retry_limit(frames)
