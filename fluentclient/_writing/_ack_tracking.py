"""Ack tracking (``require_ack``): frames written and awaiting their ack, matched in order.

A frame is *sent* once the server's ``{"ack": id}`` for its chunk id comes. Acks come in
order, so anything else fails the connection, as does waiting longer than ``ack_timeout``.
A frame whose connection fails first goes out again whole, same chunk id, as
at-least-once allows; after ``ack_retry_limit`` attempts it is given up, counted possibly
lost (it was written, so the server may have it) and reported, never silently dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .._buffer import Buffer, Frame
from .._ledger import Ledger
from .._options import TransportOptions
from .._transport._pool import Link
from .._words import count
from ..errors import FluentError, PossiblyLostError
from ..message import short_repr
from ._writer_common import Fault, read_replies, resolve_futures

log = logging.getLogger("fluentclient")


class AckTracking:
    def __init__(
        self, ledger: Ledger, buf: Buffer, transport: TransportOptions,
        report: Callable[[FluentError], None],
    ) -> None:
        self._ledger = ledger
        self._buffer = buf
        self._ack_timeout = transport.ack_timeout
        self._retry_limit = transport.ack_retry_limit
        self._report = report

    def read(self, link: Link) -> Fault | None:
        """Match the acks that came against the frames awaiting them; the fault if the
        connection must end (a wrong ack, the server gone, no ack in time)."""
        conn = link.conn
        assert conn is not None
        replies = read_replies(conn)
        if isinstance(replies, Fault):
            return replies
        acked: list[Frame] = []
        for reply in replies:
            head = link.unconfirmed.head()
            # Acks come in order; anything else means this connection is out of step
            # (fluentd #4057) and must not be trusted with another frame.
            if head is None or not isinstance(reply, dict) or reply.get("ack") != head.chunk:
                self._acked(link, acked)
                return Fault(f"unexpected reply {short_repr(reply, 80)}")
            acked.append(link.unconfirmed.pop_head())
        self._acked(link, acked)
        if conn.replies.eof:
            return Fault(conn.replies.lost or "the server closed the connection")
        now = time.monotonic()
        if acked:
            link.progress_at = now
        elif link.unconfirmed and now - link.progress_at > self._ack_timeout:
            return Fault(f"no ack within {self._ack_timeout:g} s")
        return None

    def _acked(self, link: Link, acked: list[Frame]) -> None:
        if not acked:
            return
        link.progressed()
        link.acked_frames += len(acked)
        self._ledger.send(sum(f.records for f in acked))
        self._buffer.release(acked)
        for frame in acked:
            resolve_futures(frame)

    def past_retry_limit(self, frames: list[Frame]) -> tuple[list[Frame], list[Frame]]:
        """Of frames whose connection failed before their ack: those to send again, and
        those that have had their ``ack_retry_limit`` attempts."""
        again = [frame for frame in frames if frame.attempts <= self._retry_limit]
        given_up = [frame for frame in frames if frame.attempts > self._retry_limit]
        return again, given_up

    def give_up(self, frames: list[Frame]) -> None:
        """Frames whose connections kept failing before their ack. They were written,
        every time, so the server may hold them (a server whose acks are garbled holds
        each one several times): possibly lost, never dropped, which would say that they
        never left this process."""
        records = sum(f.records for f in frames)
        error = PossiblyLostError(
            f"{count(records, 'record')} not acknowledged after "
            f"{count(self._retry_limit, 'attempt')}; given up, possibly lost (they were "
            "written, so the server may have them)"
        )
        self._ledger.lose(records)
        self._buffer.release(frames)
        log.error("fluentclient: %s", error)
        for frame in frames:
            resolve_futures(frame, error)
        self._report(error)

    def leave_unacked(self, link: Link) -> None:
        """At the end: frames written and not acknowledged stay in the buffer (their bytes
        reset on the wire). Shutdown reports them unsent, spools them or hands them to
        on_unsent: at-least-once, so they may arrive as well."""
        if link.unconfirmed:
            self._ledger.requeue(link.unconfirmed.records(), retried=False)
        link.unconfirmed.take_all()
