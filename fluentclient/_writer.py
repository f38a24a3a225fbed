"""The writer thread: takes whole frames from the buffer and writes them to the servers.

A written frame stays *unconfirmed* (bytes held, counted against the buffer limit) until
the server confirms it. A connection ends once: a frame goes back to the buffer only if
the old socket cannot deliver it too. A frame cut by a failed write goes back (no server
decodes half a frame); what happens to one written whole depends on the mode, as does what
confirms it:

* with acks (``require_ack``), the server's ``{"ack": id}``, matched in order. The frame is
  then *sent*. If its connection fails first it is sent again whole, with the same chunk
  id, on the next connection (the old one is reset), as at-least-once allows. A frame
  whose connections keep failing before its ack is given up after ``ack_retry_limit``
  attempts, spaced by a backoff that only an ack resets, and counted ``possibly_lost``
  (it was written) and reported, never silently dropped.
* without acks, the peer's kernel taking the bytes (``Connection.confirmed_offset``). A
  frame written whole is sent again only if the server reset the connection before its
  TCP acknowledged the frame (``Connection.dead_offset``): nothing more can arrive then.
  Otherwise, if the connection fails before the peer took it, it may still be in flight,
  so it counts as ``possibly_lost``. Once taken, only the record count is kept
  (*unsettled*): a server that stops reading can still sit on such bytes, so if the
  connection fails now they count as ``possibly_lost`` too. They become *sent* once the
  server has read them. What proves that: every frame carries a chunk id even without
  acks, as a marker, and an ack for it (both real servers answer one) settles that frame
  and all before it. Nothing else waits on those acks: a frame
  is never sent again for want of one. For a server that never acks, two weaker proofs
  remain: more bytes than any receive buffer holds taken after a frame, or the server
  answering our closing FIN with its own.

  A failed connection holding frames not yet proven read is not closed but *retired*
  (:class:`~._pool.Retiring`): half-closed where the transport allows (not TLS), kept
  open and read by this thread like a live one, so that a server that merely paused
  still reads them and its marker acks settle them as sent. Closing it would lose most
  of them: our kernel answers the resumed server's first ack with a reset, and the
  server's kernel discards what it had not read. Its records stay written (live) while
  it retires, held as counts only, except the frames the peer had not taken, kept whole
  to be sent again if the server resets it; what it has not proven read when the server
  closes it, when it fails, when its linger (``_MIN_LINGER`` or three write timeouts,
  whichever is longer) runs out, or at shutdown's deadline counts as ``possibly_lost``. At most
  ``_MAX_RETIRING`` per server: past it the oldest ends early. So what a failed
  connection counts as possibly lost is what the server had taken but not yet said it
  read by then: against a server that acks, the frames of the last moments before it
  went away.

The loop fits on a screen: tend the links (read acks, confirm, settle, close idle ones),
wait for work on the buffer's Condition, write. Socket I/O never happens with the lock
held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from . import _notice
from ._buffer import Buffer, Frame
from ._connection import Connection, ConnectionLost, SendError
from ._ledger import Ledger
from ._lifecycle import Lifecycle, thread_failed
from ._options import TransportOptions
from ._parking import WRITER, Parking
from ._pool import Link, Retiring
from ._sender import Sender, is_refusal, is_unresolvable
from ._words import count
from .errors import AuthenticationError, FluentError, PossiblyLostError
from .framing import FrameBuilder
from .message import settle_future, short_repr

log = logging.getLogger("fluentclient")

# How long to wait for confirmations or acks before looking again.
_POLL = 0.005
# Before closing, how long to wait for the acks of markers from a server not yet known to
# answer them. One that never does costs this once per server, then never again.
_FIRST_MARKER_WAIT = 2.0
# How often an idle writer reads the acks of markers still due.
_MARKER_POLL = 0.05
# How long a failed connection is left to finish on its own (see Retiring): at least this,
# or three write timeouts if longer. A server that paused (a blocked input thread, a long
# garbage collection) and resumes within it still reads and acks what it holds.
_MIN_LINGER = 30.0
# After a server closed its side of a retiring connection, how long to wait for the reset
# that proves the frames its TCP had not acknowledged never reached it.
_RESET_WAIT = 2.0
# Failed connections kept retiring per server; past it the oldest is closed. A server
# that keeps stalling costs a few sockets, never one per failure.
_MAX_RETIRING = 2
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
_R = TypeVar("_R")
# What _wait_for_work returns when the thread is to park for a fork.
_PARK: list[Frame] = []


def resolve_futures(frame: Frame, error: BaseException | None = None) -> None:
    """Complete the delivery futures of a frame's records (a cancelled one is skipped)."""
    for future in frame.futures or ():
        settle_future(future, error)
    frame.futures = None


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
        self._ack_timeout = transport.ack_timeout
        self._ack_retry_limit = transport.ack_retry_limit
        self._keepalive_timeout = transport.keepalive_timeout
        self._report = report
        self._settle_distance = _PEER_WINDOW
        self._linger = max(_MIN_LINGER, 3 * self._write_timeout)
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
        return any(link.unconfirmed or link.retiring for link in self.links)

    def new_thread(self) -> threading.Thread:
        """A thread to run (or, after parking for a fork, resume) this writer's loop."""
        return threading.Thread(target=self._run, name="fluentclient-writer", daemon=True)

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
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
                awaiting = any(self._awaits_markers(link, now) for link in self.links)
                retiring = any(link.retiring for link in self.links)
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

    def settling(self) -> bool:
        """Whether a server that answers chunk ids (or is not yet known not to) still owes
        the answers that settle records written to it. Read by flush() on its own thread:
        a snapshot of plain attributes, good enough to decide whether waiting can help."""
        return any(
            link.conn is not None and link.answers_markers is not False
            and bool(link.unsettled or link.unconfirmed)
            for link in self.links
        )

    def _awaits_markers(self, link: Link, now: float) -> bool:
        """Whether acks of this link's markers are still to be read."""
        if link.conn is None or not link.unsettled or link.answers_markers is False:
            return False
        if link.answers_markers is None and now - link.unsettled_since > _FIRST_MARKER_WAIT:
            link.answers_markers = False
            log.debug("fluentclient: %s does not ack chunk ids", link.name)
            return False
        return True

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
            self._in_socket_call(conn.send, data, self._deadline(self._write_timeout))
        except SendError as exc:
            # Frames wholly written are tracked like any other; the cut one goes back.
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
            self._link_failed(link, str(exc), pending=cut + rest)
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
            link.unconfirmed.append((offset, frame))

    def _connected_link(self) -> Link | None:
        """A link with a live connection, connecting one if need be."""
        for link in self._sender.candidates(time.monotonic()):
            if link.conn is not None:
                if not self._require_ack:
                    # A frame written onto a connection the server has closed is lost
                    # without an error: look first.
                    self._read_markers(link)
                if link.conn is not None:
                    return link
                if not link.available(time.monotonic()):
                    continue
            if self._life.abandoned:
                return None
            streak = link.connect_streak
            exc = self._in_socket_call(
                self._sender.connect, link, self._deadline(self._connect_timeout))
            if exc is not None:
                if self._cut_short():
                    # Our own shutdown ended the attempt: not the server's failure, and
                    # its last error stays the reason it gave (a refused key, say).
                    return None
                # A refused key or certificate: say it loudly, but once per outage (or
                # when the reason changes), not on every retry of a client that may run
                # like this for days.
                news = streak == 0 or link.last_error != str(exc)
                self._sender.connect_failed(link, exc)
                if is_refusal(exc) and news:
                    self._tell_refusal(exc, news)
                elif is_refusal(exc):
                    log.debug("fluentclient: %s (attempt %d)", exc, link.connect_streak)
                elif link.connect_streak == 1:
                    # Once per outage: the backoff retries many times a minute, and
                    # stats() counts every attempt.
                    # Through _notice: it must reach a person even when logging
                    # was set up so that ours reaches no one.
                    kind = "unresolvable" if is_unresolvable(exc) else "connect"
                    drain = self._life.drain_deadline
                    if drain is None and kind == "unresolvable":
                        # Most likely a wrong host setting, so said at error level, like
                        # a refusal; but a name can appear later (a service still
                        # starting), so the backoff goes on at its usual pace.
                        _notice.warn(kind, "fluentclient: %s; retrying with backoff, in "
                                     "case the name appears later", exc, level=logging.ERROR)
                    elif drain is None:
                        _notice.warn(kind, "fluentclient: %s; retrying with backoff", exc)
                    elif kind == "unresolvable":
                        # The end of the process does not wait for that (see _exit.py).
                        _notice.warn(kind, "fluentclient: %s", exc)
                    else:
                        # Found while the process ends: say what the exit waits for.
                        _notice.warn(kind, "fluentclient: %s; retrying until the shutdown "
                                     "deadline, %.1f s from now", exc,
                                     max(0.0, drain - time.monotonic()))
                else:
                    log.debug("fluentclient: %s (attempt %d)", exc, link.connect_streak)
                continue
            if streak:
                log.info("fluentclient: connected to %s after %s", link.name,
                         count(streak, "failed attempt"))
            else:
                log.debug("fluentclient: connected to %s", link.name)
            return link
        return None

    def _cut_short(self) -> bool:
        """True once shutdown's deadline has passed or it abandoned the drain."""
        drain = self._life.drain_deadline
        return self._life.abandoned or (drain is not None and time.monotonic() >= drain)

    def _deadline(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        drain = self._life.drain_deadline
        return deadline if drain is None else min(deadline, drain)

    def _pause(self) -> None:
        """Wait until some link may be tried again; shutdown cuts it short."""
        now = time.monotonic()
        retry = min((link.retry_at for link in self.links), default=now)
        deadline = min(self._deadline(max(0.0, retry - now)), self._deadline(1.0))
        with self._buffer.changed:
            # A fork cuts it short too: the thread parks, and tries again once resumed.
            while not self._life.abandoned and not self._parking.requested:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._buffer.changed.wait(remaining)

    # -- confirmation and failure --------------------------------------------------------

    def _tend(self, link: Link) -> None:
        if link.retiring:
            self._tend_retiring(link)
        conn = link.conn
        if conn is None:
            return
        if self._require_ack:
            self._read_acks(link)
        else:
            self._read_markers(link)
            if link.conn is not None and link.unconfirmed:
                self._confirm(link)
        if link.conn is None:
            return
        if not self._require_ack:
            self._settle(link)
        now = time.monotonic()
        idle = not link.unconfirmed and (
            not conn.keepalive or self._sender.idle_too_long(link, now)
        )
        if idle:
            # Closed now and reopened when needed, so a middlebox that silently drops idle
            # connections cannot eat the next frame.
            self._close(link)

    def _replies(self, link: Link, conn: Connection) -> list[object] | None:
        """What the server said since we last looked; None if that failed the link."""
        try:
            return self._sender.replies(conn)
        except AuthenticationError as exc:
            self._refused_after_connect(link, exc)
        except ConnectionLost as exc:
            self._link_failed(link, str(exc))
        return None

    def _read_acks(self, link: Link) -> None:
        conn = link.conn
        assert conn is not None
        replies = self._replies(link, conn)
        if replies is None:
            return
        acked: list[Frame] = []
        for reply in replies:
            head = link.unconfirmed[0][1] if link.unconfirmed else None
            # Acks come in order; anything else means this connection is out of step
            # (fluentd #4057) and must not be trusted with another frame.
            if head is None or not isinstance(reply, dict) or reply.get("ack") != head.chunk:
                self._finish_acks(link, acked)
                self._link_failed(link, f"unexpected reply {short_repr(reply, 80)}")
                return
            link.unconfirmed.popleft()
            acked.append(head)
        self._finish_acks(link, acked)
        if conn.eof:
            self._link_failed(link, conn.lost or "the server closed the connection")
            return
        now = time.monotonic()
        if acked:
            link.progress_at = now
        elif link.unconfirmed and now - link.progress_at > self._ack_timeout:
            self._link_failed(link, f"no ack within {self._ack_timeout:g} s")

    def _finish_acks(self, link: Link, acked: list[Frame]) -> None:
        if not acked:
            return
        link.progressed()
        link.acked_frames += len(acked)
        self._ledger.send(sum(f.records for f in acked))
        self._buffer.release(acked)
        for frame in acked:
            resolve_futures(frame)

    def _confirm(self, link: Link) -> None:
        """Release the frames the peer's kernel took."""
        conn = link.conn
        assert conn is not None
        offset = conn.confirmed_offset() if conn.can_confirm else conn.bytes_written
        if offset is None:
            # No longer established (reset, or closed with frames in flight): requeue them
            # now rather than after a write timeout spent waiting for progress that cannot
            # come.
            self._link_failed(link, conn.lost or "the connection is no longer open")
            return
        now = time.monotonic()
        if offset > link.confirmed:
            link.confirmed = offset
            link.progress_at = now
        if self._taken_up_to(link, link.confirmed):
            link.progressed()
        elif now - link.progress_at > self._write_timeout:
            self._link_failed(link, f"the server took nothing for {self._write_timeout:g} s")

    def _take_late_markers(self, link: Link, conn: Connection) -> AuthenticationError | None:
        """Acks of markers that came before the connection failed still prove delivery.

        Returns the refusal if the server sent HELO unasked meanwhile: it wants the
        handshake, and that must be said, not lost with the connection.
        """
        try:
            replies = (conn.refuse_if_helo(conn.read_available())
                       if conn.sock is not None else [])
        except AuthenticationError as exc:
            return exc
        except ConnectionLost:
            return None
        for reply in replies:
            if not self._marker_acked(link, reply):
                return None
        return None

    def _take_acked(self, link: Link, conn: Connection) -> None:
        """Frames the peer's TCP acknowledged before the connection died are not sent
        again (that would duplicate them); they count as possibly lost instead."""
        acked = conn.acked_offset()
        if acked is not None:
            self._taken_up_to(link, acked)

    def _taken_up_to(self, link: Link, offset: int) -> bool:
        """The peer took the stream up to ``offset``: the frames written before it leave
        the buffer and wait to be settled. Whether there were any."""
        taken: list[Frame] = []
        if not link.unsettled:
            link.unsettled_since = time.monotonic()
        while link.unconfirmed and link.unconfirmed[0][0] <= offset:
            end, frame = link.unconfirmed.popleft()
            taken.append(frame)
            link.unsettled.append((end, frame.records, frame.chunk))
        if taken:
            self._buffer.release(taken)
        return bool(taken)

    def _settle(self, link: Link) -> None:
        settled = 0
        limit = link.confirmed - (0 if link.server.unix_path else self._settle_distance)
        while link.unsettled and link.unsettled[0][0] <= limit:
            settled += link.unsettled.popleft()[1]
        self._count_sent(settled)

    def _count_sent(self, records: int) -> None:
        if records:
            self._ledger.send(records)

    def _read_markers(self, link: Link) -> None:
        """Without acks: settle what the server's acks of our markers prove it read."""
        conn = link.conn
        assert conn is not None
        replies = self._replies(link, conn)
        if replies is None:
            return
        for reply in replies:
            if not self._marker_acked(link, reply):
                self._link_failed(link, f"unexpected reply {short_repr(reply, 80)}")
                return
        if conn.eof:
            self._link_failed(link, conn.lost or "the server closed the connection")

    def _marker_acked(self, link: Link, reply: object) -> bool:
        """The server read every frame up to the one whose chunk id it acks: all are sent.

        Acks come in order, so the frame is at or near the front, either still waiting for
        the kernel's confirmation or already taken. False for anything but such an ack.
        """
        chunk = reply.get("ack") if isinstance(reply, dict) else None
        if not isinstance(chunk, str):
            return False
        link.answers_markers = True
        link.progressed()
        for i, (_, _, marker) in enumerate(link.unsettled):
            if marker == chunk:
                self._count_sent(sum(link.unsettled.popleft()[1] for _ in range(i + 1)))
                return True
        for i, (_, frame) in enumerate(link.unconfirmed):
            if frame.chunk == chunk:
                taken = [link.unconfirmed.popleft()[1] for _ in range(i + 1)]
                settled = sum(n for _, n, _ in link.unsettled) + sum(f.records for f in taken)
                link.unsettled.clear()
                link.progress_at = time.monotonic()
                # Counted before the release wakes flush(): whoever it wakes finds them.
                self._count_sent(settled)
                self._buffer.release(taken)
                return True
        return False

    def _link_failed(
        self, link: Link, reason: str, pending: list[Frame] | None = None,
        *, refusal: FluentError | None = None,
    ) -> None:
        """Drop the link's connection; ``pending`` (never wholly handed to it) goes back.

        A connection ends once: nothing requeued here may also leave through the old
        socket. ``pending`` never can: at most the head of its first frame went out, and
        a server cannot decode half a frame whose rest never follows. The frames wholly
        written differ by mode. Without acks, once the server has reset the connection,
        those its TCP never acknowledged provably never arrived (``dead_offset``): they
        are sent again. Otherwise nothing can prove that the server will not get them
        (they may be in flight, or in its queue, however we close the socket), so they are
        not sent again: the connection retires (see _retire) until the server proves it
        read them, resets it, or they count as possibly lost. (Linux's SIOCOUTQNSD tells
        how much of a live queue was never sent, but the kernel may send more between that
        reading and our reset, so it cannot prove a byte will not arrive.) With acks they
        are sent again, as at-least-once allows, up to ``ack_retry_limit`` attempts.

        A ``refusal`` (the server will not take our frames until the configuration
        changes) always backs off, the longest delay, even with nothing in flight.
        """
        if link.conn is not None and not self._require_ack and refusal is None:
            helo = self._take_late_markers(link, link.conn)
            if helo is not None:
                self._refused_after_connect(link, helo, pending)
                return
        conn, link.conn = link.conn, None
        retired = 0
        resend = False
        if conn is not None:
            if not self._require_ack:
                self._take_late_markers(link, conn)
                self._take_acked(link, conn)
                # Reset by the server: what its TCP never acknowledged can never arrive.
                resend = conn.dead_offset() is not None
            if self._require_ack and link.unconfirmed:
                # Those frames go out again on the next connection: reset, so that our
                # kernel drops what it holds of them instead of delivering a second copy.
                conn.reset()
            else:
                # Without acks nothing wholly written is sent again, and of ``pending``
                # at most the head of one frame went out, which no server can decode
                # alone. The connection is left to finish on its own if it holds frames
                # not proven read; otherwise a plain close.
                if refusal is None and not resend:
                    retired = self._retire(link, conn)
                if not retired:
                    conn.close()
        if pending:
            self._buffer.requeue(pending)
        if refusal is not None:
            link.failed(reason, backoff_to_max=True, error=refusal)
        if retired:
            link.failed(reason)
            self._ledger.connection_failed()
            log.warning(
                "fluentclient: connection to %s failed: %s; %s written to it are "
                "left to the server there for up to %g s (possibly lost if it never "
                "reads them)", link.name, reason, count(retired, "record"), self._linger,
            )
            return
        if not link.unconfirmed and not link.unsettled and not pending:
            # A server closing an idle connection owes us nothing: reconnect when needed,
            # without counting a failure or backing off. A connection that failed while
            # its first frame was going out was not idle: a server too stuck to take one
            # frame whole must not be reconnected to at every write_timeout, uncounted.
            log.debug("fluentclient: %s closed an idle connection: %s", link.name, reason)
            return
        written_lost = 0
        if (not self._require_ack and not resend) or (
                link.server.unix_path and self._life.abandoned):
            written_lost = self._lose_unconfirmed(link)
        lost = sum(n for _, n, _ in link.unsettled)
        link.unsettled.clear()
        again: list[Frame] = []
        given_up: list[Frame] = []
        for _, frame in link.unconfirmed:
            frame.attempts += 1
            if resend:
                frame.left = False  # it never arrived: unsent if it goes no further
            if self._require_ack and frame.attempts > self._ack_retry_limit:
                given_up.append(frame)
            else:
                again.append(frame)
        link.unconfirmed.clear()
        if refusal is None:
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
            self._give_up(given_up)

    def _refused_after_connect(
        self, link: Link, exc: FluentError, pending: list[Frame] | None = None
    ) -> None:
        """The server refused us on a connection that was up: an unasked HELO. Reported
        like a refused handshake: once until the reason changes, then the longest backoff."""
        news = link.last_error != str(exc)
        self._link_failed(link, str(exc), pending, refusal=exc)
        self._tell_refusal(exc, news)

    def _tell_refusal(self, exc: FluentError, news: bool) -> None:
        if news:
            _notice.warn("refused", "fluentclient: %s; retrying with backoff (logged again "
                         "only if the reason changes)", exc, level=logging.ERROR)
            self._report(exc)

    def _give_up(self, frames: list[Frame]) -> None:
        """Frames whose connections kept failing before their ack. They were written,
        every time, so the server may hold them (a server whose acks are garbled holds
        each one several times): possibly lost, never dropped, which would say that they
        never left this process."""
        records = sum(f.records for f in frames)
        error = PossiblyLostError(
            f"{count(records, 'record')} not acknowledged after "
            f"{count(self._ack_retry_limit, 'attempt')}; given up, possibly lost (they were "
            "written, so the server may have them)"
        )
        self._ledger.lose(records)
        self._buffer.release(frames)
        log.error("fluentclient: %s", error)
        for frame in frames:
            resolve_futures(frame, error)
        self._report(error)

    def _await_markers(self, link: Link) -> None:
        """Before our FIN, let the server ack the frames it has read.

        fluentd resets the connection the moment it reads our FIN, and the reset discards
        any ack it had not yet sent: without this wait the last frames of every plain
        stream to fluentd would count as possibly lost.
        """
        if self._require_ack or link.answers_markers is False:
            return
        wait = self._write_timeout if link.answers_markers else _FIRST_MARKER_WAIT
        deadline = self._deadline(wait)
        while link.unsettled and link.conn is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if link.answers_markers is None:
                    link.answers_markers = False
                    log.debug("fluentclient: %s does not ack chunk ids", link.name)
                return
            link.conn.wait_readable(min(remaining, 0.1))
            self._read_markers(link)

    def _close(self, link: Link) -> None:
        """Close a connection with nothing unconfirmed, settling what it can."""
        # It may wait for the server (its last marker acks, its FIN) for a write_timeout.
        self._in_socket_call(self._close_now, link)

    def _close_now(self, link: Link) -> None:
        if not self._life.abandoned and not link.unconfirmed:
            self._await_markers(link)
        conn, link.conn = link.conn, None
        if conn is None:
            return
        clean = False
        if link.unconfirmed or self._life.abandoned:
            if not self._require_ack:
                self._take_late_markers(link, conn)
            if link.unconfirmed:
                # With acks: those frames stay in the buffer and are reported unsent:
                # reset, so that our kernel drops what it holds of them.
                conn.reset()
            else:
                conn.close()
        else:
            clean, replies = conn.close_gracefully(self._deadline(self._write_timeout))
            if not self._require_ack:
                for reply in replies:
                    if not self._marker_acked(link, reply):
                        break
        count = sum(n for _, n, _ in link.unsettled)
        link.unsettled.clear()
        if count and clean:
            self._ledger.send(count)
        elif count:
            self._ledger.lose(count)

    def _finish(self) -> None:
        for link in self.links:
            # Shutdown's deadline has come (or it gave up): what a retiring connection
            # has not proven read by now is possibly lost, never unsent.
            self._tend_retiring(link)
            while link.retiring:
                self._end_retiring(link, link.retiring[0], "the client is shutting down")
            if not self._require_ack and link.conn is not None:
                # Acks of markers already here prove some of them read: sent, not lost.
                self._read_markers(link)
            if not self._require_ack or (link.server.unix_path and link.conn is not None):
                # Wholly written and not proven read: the server may still get them (from
                # a Unix socket's queue, from bytes in flight), so they are possibly lost,
                # never reported unsent nor handed to on_unsent.
                self._lose_unconfirmed(link)
            self._close(link)
            # With acks: written, not acknowledged, left in the buffer and reset on the
            # wire. Shutdown reports them unsent (and spools them, or hands them to
            # on_unsent): at-least-once, so they may arrive as well.
            if link.unconfirmed:
                self._ledger.requeue(sum(f.records for _, f in link.unconfirmed), retried=False)
            link.unconfirmed.clear()

    # -- retiring connections (without acks) ------------------------------------------

    def _retire(self, link: Link, conn: Connection) -> int:
        """Leave a failed connection to finish on its own; the records it holds (0: it
        holds none, or cannot finish, and the caller closes it).

        Its frames not proven read are written whole and never go out again. Closed now,
        they would mostly be lost even if the server resumes: it acks their markers, our
        kernel answers those acks to a closed socket with a reset, and the server's kernel
        then drops the rest. Left open and read (see _tend_retiring) they settle as on a
        live connection. Only their counts are kept: their bytes leave the buffer, so a
        server that stalls does not eat the buffer's limit twice.
        """
        closed = conn.eof
        if conn.sock is None or self._cut_short() or (closed and not (
                link.unconfirmed and conn.can_confirm and not link.server.unix_path)):
            # A server that closed its side proves nothing more by staying connected,
            # unless a reset may yet follow that proves the tail never reached it.
            return 0
        unproven: deque[tuple[int, int, str | None]] = deque(link.unsettled)
        unproven.extend((end, frame.records, frame.chunk) for end, frame in link.unconfirmed)
        if not unproven:
            return 0
        tail = deque(link.unconfirmed)
        link.unsettled.clear()
        link.unconfirmed.clear()
        self._buffer.set_aside([frame for _, frame in tail])
        while len(link.retiring) >= _MAX_RETIRING:
            self._end_retiring(link, link.retiring[0], "too many failed connections")
        # Our FIN after the last frame: a server that reads everything answers with its
        # own, which proves it did. TLS cannot half-close; there we only stop writing.
        # After the server's own FIN ours proves nothing, but it hurries the end.
        half = conn.half_close() and not closed
        now = time.monotonic()
        until = now + self._linger
        drain = self._life.drain_deadline
        if drain is not None:
            until = min(until, drain)
        old = Retiring(conn, unproven, tail, until, half_closed=half)
        link.retiring.append(old)
        if closed:
            old.eof_until = now + _RESET_WAIT
        return sum(n for _, n, _ in unproven)

    def _tend_retiring(self, link: Link) -> None:
        """Read the retiring connections; end those done, failed or out of time."""
        now = time.monotonic()
        for old in list(link.retiring):
            self._read_retiring(link, old)
            conn = old.conn
            if not old.unproven:
                self._end_retiring(link, old, "")
            elif conn.eof:
                # A FIN answering ours comes only after the server read all before it; a
                # reset, or a FIN before ours, proves nothing of what was in flight, but
                # once reset the connection can deliver nothing past what the server's TCP
                # acknowledged: that tail goes out again. A FIN before ours is followed by
                # such a reset when our unacknowledged bytes reach a socket that is gone.
                clean = old.half_closed and conn.lost is None
                dead = conn.dead_offset()
                if old.eof_until is None:
                    old.eof_until = now + _RESET_WAIT
                if dead is None and not clean and old.tail and now < old.eof_until:
                    continue
                self._end_retiring(link, old, conn.lost or "the server closed it",
                                   read_all=clean and dead is None, dead=dead)
            elif now >= old.until:
                drain = self._life.drain_deadline
                why = ("shutdown's deadline came" if drain is not None and now >= drain
                       else f"not read within {self._linger:g} s")
                self._end_retiring(link, old, why)

    def _read_retiring(self, link: Link, old: Retiring) -> None:
        """Settle the frames whose markers the server acked (each ack proves all before)."""
        conn = old.conn
        if conn.sock is None or conn.eof:
            return
        try:
            replies = self._sender.replies(conn)
        except AuthenticationError as exc:
            # An unasked HELO: the server discards our frames until we do the handshake.
            conn.eof, conn.lost = True, str(exc)
            news = link.last_error != str(exc)
            link.failed(str(exc), backoff_to_max=True, error=exc)
            self._tell_refusal(exc, news)
            return
        except ConnectionLost as exc:
            conn.eof, conn.lost = True, str(exc)
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
            link.answers_markers = True
            link.progressed()
            self._ledger.send(settled)

    def _end_retiring(
        self, link: Link, old: Retiring, reason: str, *, read_all: bool = False,
        dead: int | None = None,
    ) -> None:
        """Close a retiring connection; what it did not prove read is possibly lost
        (sent if ``read_all``), but frames past ``dead``, where the server's TCP stopped
        acknowledging a connection that can deliver nothing more, go out again. A plain
        close: the kernel may still deliver the rest."""
        self._read_retiring(link, old)
        link.retiring.remove(old)
        if dead is None:
            dead = old.conn.dead_offset()
        old.conn.close()
        again = [frame for end, frame in old.tail if dead is not None and end > dead]
        if again:
            assert dead is not None
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

    def _lose_unconfirmed(self, link: Link) -> int:
        """The link's written, unconfirmed frames are possibly lost; how many records."""
        frames = [frame for _, frame in link.unconfirmed]
        link.unconfirmed.clear()
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

