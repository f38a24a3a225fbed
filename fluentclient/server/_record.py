"""What the embedded server received: events, frames, errors and counters, behind one lock."""

from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple

from .._decoding import DecodedFrame, Time


class ReceivedEvent(NamedTuple):
    """One event as the server decoded it; ``time`` is an EventTime or an int as received."""

    tag: str
    time: Time
    record: Any


class Recorder:
    """The server's record of what arrived. The I/O thread writes it; any thread reads it.

    The condition's lock is reentrant because a :meth:`wait_for` predicate may read the
    server's properties, which take the same lock again.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._events: list[ReceivedEvent] = []
        self._frames: list[DecodedFrame] = []
        self._errors: list[str] = []
        self._bytes_received = 0
        self._bytes_unread = 0
        self._connections_accepted = 0
        self._open_connections = 0
        self._acks_sent = 0
        self._handshakes = 0
        self._auth_failures = 0
        # The server closed or its thread ended: nothing more will arrive.
        self._ended = False

    # -- reading ------------------------------------------------------------------------

    @property
    def events(self) -> list[ReceivedEvent]:
        with self._cond:
            return list(self._events)

    @property
    def frames(self) -> list[DecodedFrame]:
        with self._cond:
            return list(self._frames)

    @property
    def errors(self) -> list[str]:
        with self._cond:
            return list(self._errors)

    @property
    def event_count(self) -> int:
        with self._cond:
            return len(self._events)

    @property
    def bytes_received(self) -> int:
        with self._cond:
            return self._bytes_received

    @property
    def bytes_unread(self) -> int:
        with self._cond:
            return self._bytes_unread

    @property
    def connections_accepted(self) -> int:
        with self._cond:
            return self._connections_accepted

    @property
    def open_connections(self) -> int:
        with self._cond:
            return self._open_connections

    @property
    def acks_sent(self) -> int:
        with self._cond:
            return self._acks_sent

    @property
    def handshakes(self) -> int:
        with self._cond:
            return self._handshakes

    @property
    def auth_failures(self) -> int:
        with self._cond:
            return self._auth_failures

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended

    def clear(self) -> None:
        """Forget what was recorded; open connections are a state, not a record, and stay."""
        with self._cond:
            self._events.clear()
            self._frames.clear()
            self._errors.clear()
            self._bytes_received = 0
            self._bytes_unread = 0
            self._connections_accepted = 0
            self._acks_sent = 0
            self._handshakes = 0
            self._auth_failures = 0
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], Any], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, the server ends, or ``timeout`` passes."""
        with self._cond:
            self._cond.wait_for(lambda: bool(predicate()) or self._ended, timeout)
            return bool(predicate())

    # -- writing ------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake the waiters: something they may be waiting for (listening, say) changed."""
        with self._cond:
            self._cond.notify_all()

    def end(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def received(
        self,
        nbytes: int,
        frames: list[DecodedFrame],
        events: list[ReceivedEvent],
        acks: int,
        error: str | None,
    ) -> None:
        """One read: its size, the frames and events decoded, the acks sent at once."""
        with self._cond:
            self._bytes_received += nbytes
            if frames:
                self._frames.extend(frames)
                self._events.extend(events)
                self._acks_sent += acks
            if error is not None:
                self._errors.append(error)
            self._cond.notify_all()

    def error(self, message: str) -> None:
        with self._cond:
            self._errors.append(message)
            self._cond.notify_all()

    def acks_written(self, count: int) -> None:
        with self._cond:
            self._acks_sent += count
            self._cond.notify_all()

    def handshake(self, ok: bool) -> None:
        with self._cond:
            if ok:
                self._handshakes += 1
            else:
                self._auth_failures += 1
            self._cond.notify_all()

    def connection_opened(self) -> None:
        with self._cond:
            self._connections_accepted += 1
            self._open_connections += 1
            self._cond.notify_all()

    def connection_closed(self, unread: int = 0) -> None:
        with self._cond:
            self._open_connections -= 1
            self._bytes_unread += unread
            self._cond.notify_all()
