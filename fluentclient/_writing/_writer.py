"""The writer thread: takes whole frames from the buffer and writes them to the servers.

This module holds the scheduling: the thread's loop waits for work on the buffer's
Condition, shares frames among the links, writes them, pauses while every server backs
off, and closes idle connections. A written frame stays *unconfirmed* (bytes held,
counted against the buffer limit) until the server confirms it; what confirms it, and
what a failed connection costs, are other units' jobs:

* _ack_tracking.py: with acks, matching the server's acks, timeouts and retries;
* _no_ack_proof.py: without acks, what proves a frame arrived (markers, the peer's
  kernel), and _retiring.py, a failed connection left to finish on its own;
* _link_failure.py: which frames of a failed connection go out again, retire, or count
  as possibly lost; _connect_notes.py: what is said about connecting.

The loop fits on a screen: tend the links (read acks, confirm, settle, close idle ones),
wait for work, write. Socket I/O never happens with the buffer's lock held, and no frame
is taken from the buffer before a connection is up to write it on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .._buffer import Buffer, Frame
from .._ledger import Ledger
from .._lifecycle import Lifecycle, thread_failed
from .._lifetime._parking import WRITER, Parking
from .._options import TransportOptions
from .._threads import leave_signals_to_others
from .._transport._connection import SendError
from .._transport._pool import Link
from .._transport._sender import Sender
from ..errors import FluentError
from ..framing import FrameBuilder
from ._ack_tracking import AckTracking
from ._connect_notes import ConnectNotes
from ._link_failure import LinkFailure
from ._no_ack_proof import NoAckProof
from ._retiring import Retirement
from ._writer_common import Fault, cut_short, deadline_within, resolve_futures

__all__ = ["Writer", "resolve_futures"]

log = logging.getLogger("fluentclient")

# How long to wait for confirmations or acks before looking again.
_POLL = 0.005
# How often an idle writer reads the acks of markers still due.
_MARKER_POLL = 0.05
_R = TypeVar("_R")
# What _wait_for_work returns when the thread is to park for a fork.
_PARK: list[Frame] = []
# What it returns when frames are due and the best server has no connection yet.
_CONNECT: list[Frame] = []


class Writer:
    def __init__(
        self,
        sender: Sender,
        buf: Buffer,
        life: Lifecycle,
        ledger: Ledger,
        builder: FrameBuilder,
        *,
        flush_interval: float,
        max_write: int,
        transport: TransportOptions,
        report: Callable[[FluentError], None],
        parking: Parking | None = None,
    ) -> None:
        self._sender = sender
        self.links = sender.links
        self._buffer = buf
        self._life = life
        self._ledger = ledger
        self._builder = builder
        self._flush_interval = flush_interval
        self._connect_timeout = transport.connect_timeout
        self._write_timeout = transport.write_timeout
        self._max_write = max_write
        self._require_ack = transport.require_ack
        self._keepalive_timeout = transport.keepalive_timeout
        self._notes = ConnectNotes(life, report)
        self._acks = AckTracking(ledger, buf, transport, report)
        self._proof = NoAckProof(ledger, buf, life, transport.write_timeout)
        self._retirement = Retirement(
            ledger, buf, life, self._proof, self._notes, transport.write_timeout)
        self._failure = LinkFailure(
            buf, ledger, life, require_ack=self._require_ack, acks=self._acks,
            proof=self._proof, retirement=self._retirement, notes=self._notes)
        # Set when shutdown's deadline stopped this thread with work left: the drain timed
        # out, even if the thread is gone (and the buffer empty) by the time shutdown looks.
        self.cut_short = False
        # Without acks a frame that has left may arrive: if shutdown gives up on this
        # thread, such a frame is possibly lost, never unsent (see Buffer.drain_all).
        buf.left_is_lost = not self._require_ack
        self._parking = parking or Parking()
        # When the socket call this thread is in (a connect or a send) began, else None:
        # a fork does not wait for a writer stuck in one for long (see _parking.py).
        self.in_socket_call_since: float | None = None
        self.thread = self.new_thread()

    def has_work(self) -> bool:
        """Whether a link holds frames not yet confirmed, or a failed connection still
        finishing (read while this writer is parked). Frames confirmed and only waiting
        for the marker ack that settles them are not work: their bytes are the server's."""
        return any(link.unconfirmed or self._retirement.active(link) for link in self.links)

    def new_thread(self) -> threading.Thread:
        """A thread to run (or, after parking for a fork, resume) this writer's loop."""
        return threading.Thread(target=self._run, name="fluentclient-writer", daemon=True)

    def settling(self) -> bool:
        """Whether a server that answers chunk ids (or is not yet known not to) still owes
        the answers that settle records written to it. Read by flush() on its own thread:
        a snapshot of plain attributes, good enough to decide whether waiting can help."""
        return any(self._proof.owes_answers(link) for link in self.links)

    def abort(self) -> None:
        """Break a connect or write stuck past shutdown's deadline (from its thread).

        With acks, frames written and not acknowledged stay in the buffer, to be reported
        unsent: our kernel discards what it still holds of them. Without acks every frame
        wholly written counts as possibly lost, so the kernel may as well deliver it.
        """
        for link in self.links:
            conn = link.conn
            if conn is not None:
                conn.abort(discard=self._require_ack)

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        leave_signals_to_others()
        try:
            while True:
                for link in self.links:
                    self._tend(link)
                frames = self._wait_for_work()
                if frames is None:
                    break
                if frames is _PARK:
                    # Parked for a fork: what this thread holds lives in this object
                    # and its links, where a new thread takes over after the fork.
                    return
                if frames is _CONNECT:
                    frames = self._connect_then_take()
                if frames:
                    self._write(frames)
            self._finish()
        except BaseException as exc:  # a bug; never die silently
            log.exception("fluentclient writer thread failed")
            thread_failed(self._buffer, self._life, "writer", exc)

    def _wait_for_work(self) -> list[Frame] | None:
        """Wait until frames are due; None means stop, [] means tend the links again, and
        ``_PARK`` return for a fork (frames not taken yet stay in the buffer)."""
        buf, life, parking = self._buffer, self._life, self._parking
        with buf.changed:
            while True:
                if life.abandoned:
                    return None
                if parking.requested and parking.park_here(WRITER):
                    return _PARK
                now = time.monotonic()
                due = buf.due_in(now, self._flush_interval)
                in_flight = any(link.unconfirmed for link in self.links)
                awaiting = any(self._proof.awaits_markers(link, now) for link in self.links)
                retiring = any(self._retirement.active(link) for link in self.links)
                if life.drain_deadline is not None:
                    if now >= life.drain_deadline:
                        self.cut_short = bool(
                            in_flight or retiring or due is not None or buf.held_records
                            or not life.reader_done)
                        return None
                    if due is not None:
                        due = 0.0
                    elif life.reader_done and not in_flight and not retiring:
                        return None
                if due == 0.0:
                    best = next(iter(self._sender.candidates(now)), None)
                    if best is None or best.conn is None:
                        return _CONNECT  # see _connect_then_take
                    return buf.take_locked(self._max_write)
                if in_flight or awaiting or retiring:
                    # Look at the links again soon: for confirmations, or to read the
                    # acks of markers (an idle writer would otherwise never read them).
                    poll = _POLL if in_flight else _MARKER_POLL
                    buf.changed.wait(poll if due is None else min(due, poll))
                    return []
                wait = 1.0 if due is None else due
                idle_close = self._next_idle_close(now)
                if idle_close is not None:
                    if idle_close <= 0:
                        return []
                    wait = min(wait, idle_close)
                buf.changed.wait(wait)

    def _connect_then_take(self) -> list[Frame]:
        """Connect, then take the frames due. A connect may last its whole timeout (a host
        that does not answer): the frames wait in the buffer meanwhile, where drop_oldest
        can still evict them for newer records, not in this thread's hands."""
        link = self._connected_link()
        self._buffer.no_server = link is None
        if link is None:
            self._pause()
            return []
        with self._buffer.lock:
            return self._buffer.take_locked(self._max_write)

    def _next_idle_close(self, now: float) -> float | None:
        if self._keepalive_timeout is None:
            return None
        times = [link.used_at + self._keepalive_timeout - now
                 for link in self.links if link.conn is not None]
        return min(times) if times else None

    # -- writing -------------------------------------------------------------------------

    def _write(self, frames: list[Frame]) -> None:
        for frame in frames:
            if not frame.built:
                frame.data, frame.chunk = self._builder.build(
                    frame.tag, frame.entries, frame.records
                )
                frame.entries = bytearray()
        while frames:
            link = self._connected_link()
            self._buffer.no_server = link is None
            if link is None:
                self._buffer.requeue(frames)
                self._pause()
                return
            if link.conn is not None and not link.conn.keepalive and link.frames_on_conn:
                # Its one frame is out and the server will close it: the rest wait for a
                # new connection, made once that frame is confirmed (even if its ack came
                # already: the server closes, with a reset, on a second frame).
                self._buffer.requeue(frames)
                return
            share = self._share(link, frames)
            frames = frames[len(share):]
            if not self._send(link, share, frames):
                return

    def _share(self, link: Link, frames: list[Frame]) -> list[Frame]:
        """The frames for this link: as many as keep it no more loaded than the next one."""
        conn = link.conn
        assert conn is not None
        if not conn.keepalive:
            # The server closes after one event frame: one frame per connection.
            return frames[:1]
        now = time.monotonic()
        others = [other.load for other in self.links if other is not link
                  and not other.server.standby and other.available(now)]
        if link.server.standby or not others:
            return frames
        room = (min(others) - link.load) * link.server.weight
        size = 0
        for n, frame in enumerate(frames):
            size += len(frame.data)
            if size > room and n:
                return frames[:n]
        return frames

    def _send(self, link: Link, frames: list[Frame], rest: list[Frame]) -> bool:
        """Write frames on the link's connection; False if it failed.

        On failure the frames not written go back to the buffer, followed by ``rest`` (the
        frames of this batch not yet handed to any link), so every tag keeps its order.
        """
        conn = link.conn
        assert conn is not None
        data = b"".join(f.data for f in frames)
        start = conn.bytes_written
        link.load += len(data) / link.server.weight
        # Counted written and marked before the first byte goes: a shutdown that gives up
        # on this thread stuck in the send finds them possibly lost, not unsent. If it
        # took them back first, they are reported unsent and must not go (the ledger,
        # finding them held, counts them unsent).
        self._ledger.write(sum(f.records for f in frames), frames=0, nbytes=0)
        if not self._buffer.mark_left(frames):
            return False
        try:
            self._in_socket_call(
                conn.send, data, deadline_within(self._life, self._write_timeout))
        except SendError as exc:
            self._send_failed(link, frames, rest, start, exc)
            return False
        self._track(link, frames, start)
        # Written is not delivered: the backoff starts over only once the server proves
        # it took them (an ack, or its kernel's confirmation), so that a server cutting
        # every connection cannot spend a frame's retries in a burst of quick reconnects.
        self._sender.wrote(link, len(frames), proven=False)
        # The records were counted above; the frames and bytes only now the write is whole.
        self._ledger.write(0, frames=len(frames), nbytes=len(data))
        # A server that closes after one frame (keepalive off) is left to _tend, which
        # closes the connection once the frame is confirmed: closing now would cut it.
        return True

    def _send_failed(self, link: Link, frames: list[Frame], rest: list[Frame], start: int,
                     exc: SendError) -> None:
        """Frames wholly written are tracked like any other; the cut one goes back."""
        written: list[Frame] = []
        end = start
        for frame in frames:
            end += len(frame.data)
            if end > start + exc.written:
                break
            written.append(frame)
        self._track(link, written, start)
        # The rest never left whole: at most the head of one, which no server decodes.
        cut = frames[len(written):]
        for frame in cut:
            frame.left = False
        self._ledger.requeue(sum(f.records for f in cut), retried=False)
        self._failure.link_failed(link, str(exc), pending=cut + rest)

    def _in_socket_call(self, call: Callable[..., _R], *args: object) -> _R:
        """``call(*args)``, marked as a socket call a fork need not wait out."""
        self.in_socket_call_since = time.monotonic()
        try:
            return call(*args)
        finally:
            self.in_socket_call_since = None

    def _track(self, link: Link, frames: list[Frame], offset: int) -> None:
        now = time.monotonic()
        if frames and not link.unconfirmed:
            link.progress_at = now
        link.used_at = now
        link.frames_on_conn += len(frames)
        for frame in frames:
            offset += len(frame.data)
            link.unconfirmed.add(offset, frame)

    def _connected_link(self) -> Link | None:
        """A link with a live connection, connecting one if need be."""
        for link in self._sender.candidates(time.monotonic()):
            if link.conn is not None:
                if not self._require_ack:
                    # A frame written onto a connection the server has closed is lost
                    # without an error: look first.
                    self._end_if(link, self._proof.read_markers(link))
                if link.conn is not None:
                    return link
                if not link.available(time.monotonic()):
                    continue
            if self._life.abandoned:
                return None
            streak = link.connect_streak
            exc = self._in_socket_call(
                self._sender.connect, link, deadline_within(self._life, self._connect_timeout))
            if exc is None:
                self._notes.connected(link, streak)
                return link
            if cut_short(self._life):
                # Our own shutdown ended the attempt: not the server's failure, and its
                # last error stays the reason it gave (a refused key, say).
                return None
            # A refused key or certificate is said once per outage (or when the reason
            # changes), not on every retry of a client that may run like this for days.
            news = streak == 0 or link.last_error != str(exc)
            self._sender.connect_failed(link, exc)
            self._notes.connect_failed(link, exc, news)
        return None

    def _pause(self) -> None:
        """Wait until some link may be tried again; shutdown cuts it short."""
        now = time.monotonic()
        retry = min((link.retry_at for link in self.links), default=now)
        deadline = min(deadline_within(self._life, max(0.0, retry - now)),
                       deadline_within(self._life, 1.0))
        with self._buffer.changed:
            # A fork cuts it short too: the thread parks, and tries again once resumed.
            while not self._life.abandoned and not self._parking.requested:
                # A shutdown that began during the pause sets a deadline of its own.
                remaining = deadline_within(self._life, deadline - time.monotonic()) \
                    - time.monotonic()
                if remaining <= 0:
                    break
                self._buffer.changed.wait(remaining)

    # -- tending the links ---------------------------------------------------------------

    def _tend(self, link: Link) -> None:
        self._retirement.tend(link)
        conn = link.conn
        if conn is None:
            return
        fault = self._acks.read(link) if self._require_ack else self._proof.check(link)
        if self._end_if(link, fault):
            return
        if not self._require_ack:
            self._proof.settle(link)
        now = time.monotonic()
        idle = not link.unconfirmed and (
            not conn.keepalive or self._sender.idle_too_long(link, now)
        )
        if idle:
            # Closed now and reopened when needed, so a middlebox that silently drops idle
            # connections cannot eat the next frame.
            self._close(link)

    def _end_if(self, link: Link, fault: Fault | None) -> bool:
        """End the link's connection if reading it found a fault; whether it did."""
        if fault is None:
            return False
        self._failure.handle(link, fault)
        return True

    def _close(self, link: Link) -> None:
        """Close a connection with nothing unconfirmed, settling what it can."""
        # It may wait for the server (its last marker acks, its FIN) for a write_timeout.
        self._in_socket_call(self._close_now, link)

    def _close_now(self, link: Link) -> None:
        if (not self._require_ack and not self._life.abandoned and not link.unconfirmed
                and self._end_if(link, self._proof.await_markers(link))):
            return
        conn, link.conn = link.conn, None
        if conn is None:
            return
        clean = False
        if link.unconfirmed or self._life.abandoned:
            if not self._require_ack:
                self._proof.take_late_markers(link, conn)
            if link.unconfirmed:
                # With acks: those frames stay in the buffer and are reported unsent:
                # reset, so that our kernel drops what it holds of them.
                conn.reset()
            else:
                conn.close()
        else:
            clean, replies = conn.close_gracefully(
                deadline_within(self._life, self._write_timeout))
            if not self._require_ack:
                self._proof.take_replies(link, replies)
        self._proof.settle_at_close(link, read_all=clean)

    def _finish(self) -> None:
        for link in self.links:
            # Shutdown's deadline has come (or it gave up): what a retiring connection
            # has not proven read by now is possibly lost, never unsent.
            self._retirement.end_all(link, "the client is shutting down")
            if not self._require_ack and link.conn is not None:
                # Acks of markers already here prove some of them read: sent, not lost.
                self._end_if(link, self._proof.read_markers(link))
            if not self._require_ack or (link.server.unix_path and link.conn is not None):
                # Wholly written and not proven read: the server may still get them (from
                # a Unix socket's queue, from bytes in flight), so they are possibly lost,
                # never reported unsent nor handed to on_unsent.
                self._failure.lose_unconfirmed(link)
            self._close(link)
            self._acks.leave_unacked(link)
