"""The writer thread: takes whole frames from the buffer and writes them to the server.

A written frame moves through three states, so that no record is ever lost unseen:

* *unconfirmed*: written into our socket, bytes still held (they count against the
  buffer limit). If the connection fails now, the frame is sent again whole on the next
  connection.
* *unsettled*: the peer's kernel took it (``Connection.confirmed_offset``); only its
  record count is kept. A server that stops reading can still sit on such bytes, so if the
  connection fails now its records count as ``possibly_lost``.
* *sent*: the server must have read it, because it went on taking more bytes than any
  receive buffer holds after it, or it closed its side after reading our FIN.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from .backoff import Backoff
from .buffer import Buffer, Frame
from .connection import Address, Connection, SendError, describe
from .errors import FluentError
from .lifecycle import Lifecycle
from .stats import Counters

log = logging.getLogger("fluentclient")

# How long to wait for the peer's kernel to take written bytes before looking again.
_CONFIRM_POLL = 0.005
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


class Writer:
    def __init__(
        self,
        address: Address,
        buf: Buffer,
        life: Lifecycle,
        counters: Counters,
        *,
        flush_interval: float,
        connect_timeout: float,
        write_timeout: float,
        backoff: Backoff,
        max_write: int,
    ) -> None:
        self._address = address
        self._buffer = buf
        self._life = life
        self._counters = counters
        self._flush_interval = flush_interval
        self._connect_timeout = connect_timeout
        self._write_timeout = write_timeout
        self._backoff = backoff
        self._max_write = max_write
        self.conn: Connection | None = None
        # On a Unix socket the kernel counts bytes as taken only once the server read them.
        self._settle_distance = 0 if isinstance(address, str) else _peer_window()
        self._unconfirmed: deque[tuple[int, Frame]] = deque()
        self._unsettled: deque[tuple[int, int]] = deque()
        self._confirmed = 0
        self._progress_at = 0.0
        self.thread = threading.Thread(target=self._run, name="fluentclient-writer", daemon=True)

    # -- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                self._confirm()
                frames = self._wait_for_work()
                if frames is None:
                    break
                if frames:
                    self._write(frames)
            self._finish()
        except BaseException:  # pragma: no cover - a bug; never die silently
            log.exception("fluentclient writer thread failed")

    def _wait_for_work(self) -> list[Frame] | None:
        """Wait until frames are due; None means stop, [] means look at confirmations."""
        buf, life = self._buffer, self._life
        with buf.changed:
            while True:
                if life.abandoned:
                    return None
                now = time.monotonic()
                due = buf.due_in(now, self._flush_interval)
                if life.drain_deadline is not None:
                    if now >= life.drain_deadline:
                        return None
                    if due is not None:
                        due = 0.0
                    elif life.reader_done and not self._unconfirmed:
                        return None
                if due == 0.0:
                    return buf.take_locked(self._max_write)
                if self._unconfirmed:
                    if now - self._progress_at > self._write_timeout:
                        return []
                    wait = _CONFIRM_POLL if due is None else min(due, _CONFIRM_POLL)
                    buf.changed.wait(wait)
                    return []
                buf.changed.wait(1.0 if due is None else due)

    # -- writing -------------------------------------------------------------------------

    def _write(self, frames: list[Frame]) -> None:
        conn = self.conn
        if conn is not None and conn.peer_closed():
            self._connection_failed("the server closed the connection")
            conn = None
        if conn is None:
            conn = self._connect()
            if conn is None:
                self._buffer.requeue(frames)
                self._pause()
                return
        data = frames[0].data if len(frames) == 1 else b"".join(f.data for f in frames)
        start = conn.bytes_written
        try:
            conn.send(data, self._deadline(self._write_timeout))
        except SendError as exc:
            end = start
            written: list[Frame] = []
            for frame in frames:
                if end + len(frame.data) > start + exc.written:
                    break
                end += len(frame.data)
                written.append(frame)
            self._track(written, start)
            self._buffer.requeue(frames[len(written):])
            self._connection_failed(str(exc))
            self._pause()
            return
        self._track(frames, start)
        self._backoff = self._backoff.reset()
        with self._counters.lock:
            self._counters.frames_sent += len(frames)
            self._counters.bytes_sent += len(data)

    def _track(self, frames: list[Frame], offset: int) -> None:
        if frames and not self._unconfirmed:
            self._progress_at = time.monotonic()
        for frame in frames:
            offset += len(frame.data)
            self._unconfirmed.append((offset, frame))

    def _connect(self) -> Connection | None:
        conn = Connection(self._address)
        self.conn = conn
        if self._life.abandoned:
            return None
        try:
            conn.connect(self._deadline(self._connect_timeout))
        except FluentError as exc:
            self.conn = None
            with self._counters.lock:
                self._counters.connect_failures += 1
            log.warning("fluentclient: %s", exc)
            return None
        self._confirmed = 0
        with self._counters.lock:
            self._counters.connects += 1
        log.debug("fluentclient: connected to %s", describe(self._address))
        return conn

    def _deadline(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        drain = self._life.drain_deadline
        return deadline if drain is None else min(deadline, drain)

    def _pause(self) -> None:
        """Wait out the backoff delay; shutdown cuts it short."""
        delay = self._backoff.delay()
        self._backoff = self._backoff.next()
        deadline = self._deadline(delay)
        with self._buffer.changed:
            while not self._life.abandoned:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._buffer.changed.wait(remaining)

    # -- confirmation and failure --------------------------------------------------------

    def _confirm(self) -> None:
        """Release frames the peer took, settle records it must have read."""
        conn = self.conn
        if conn is None:
            return
        if self._unconfirmed:
            offset = conn.confirmed_offset() if conn.can_confirm else conn.bytes_written
            if offset is None and conn.peer_closed():
                # Reset or closed with frames in flight: requeue them now rather than
                # after a write timeout spent waiting for progress that cannot come.
                self._connection_failed("the server closed the connection")
                return
            if offset is not None and offset > self._confirmed:
                self._confirmed = offset
                self._progress_at = time.monotonic()
            taken: list[Frame] = []
            while self._unconfirmed and self._unconfirmed[0][0] <= self._confirmed:
                end, frame = self._unconfirmed.popleft()
                taken.append(frame)
                self._unsettled.append((end, frame.records))
            if taken:
                self._buffer.release(taken)
            elif time.monotonic() - self._progress_at > self._write_timeout:
                self._connection_failed(
                    f"the server took nothing for {self._write_timeout:g} s (stuck?)"
                )
                return
        settled = 0
        limit = self._confirmed - self._settle_distance
        while self._unsettled and self._unsettled[0][0] <= limit:
            settled += self._unsettled.popleft()[1]
        if settled:
            with self._counters.lock:
                self._counters.sent += settled

    def _connection_failed(self, reason: str) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        lost = sum(n for _, n in self._unsettled)
        self._unsettled.clear()
        again = [frame for _, frame in self._unconfirmed]
        self._unconfirmed.clear()
        self._buffer.requeue(again)
        retried = sum(f.records for f in again)
        with self._counters.lock:
            self._counters.connection_failures += 1
            self._counters.possibly_lost += lost
            self._counters.retried += retried
        log.warning(
            "fluentclient: connection to %s failed: %s; %d records will be sent again, "
            "%d may be lost",
            describe(self._address), reason, retried, lost,
        )

    def _finish(self) -> None:
        """Close the connection, turning unsettled records into sent ones if we can."""
        conn, self.conn = self.conn, None
        clean = False
        if conn is not None:
            if self._life.abandoned or self._unconfirmed:
                conn.close()
            else:
                clean = conn.close_gracefully(self._deadline(self._write_timeout))
        # Frames never confirmed stay in the buffer and are reported as unsent.
        count = sum(n for _, n in self._unsettled)
        self._unsettled.clear()
        with self._counters.lock:
            if clean:
                self._counters.sent += count
            else:
                self._counters.possibly_lost += count

    def abort(self) -> None:
        conn = self.conn
        if conn is not None:
            conn.abort()

