"""The shared state that tells a buffered client's threads when to stop."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._buffer import Buffer


class Lifecycle:
    """Changed only with the buffer's lock held, followed by a notify of every waiter.

    ``closing``: ``post()`` takes no new records. ``drain_deadline``: the writer writes
    everything it holds, whatever the thresholds, until that monotonic time.
    ``abandoned``: the deadline passed, or ``close()`` wants no drain; threads stop
    without starting new work. They still settle what they hold as they stop, and count it:
    the reader its batch in hand (drops), the writer its connections (sent, possibly lost,
    a failed connection, frames sent again or given up). So shutdown gives them a short
    grace before it reports, and a count may still move if one outlives that grace.
    ``reader_done``: nothing more will enter the buffer.
    ``failed``: why a thread died (a bug); the client then refuses records and fails
    flushes rather than claim success.
    """

    __slots__ = ("closing", "drain_deadline", "abandoned", "reader_done", "failed")

    def __init__(self) -> None:
        self.closing = False
        self.drain_deadline: float | None = None
        self.abandoned = False
        self.reader_done = False
        self.failed: str | None = None


def own_thread() -> bool:
    """Whether the caller is one of a client's threads (reader, writer)."""
    return threading.current_thread().name.startswith("fluentclient-")


def swallow(exc: BaseException) -> bool:
    """Whether an exception a user's callback raised may be logged and dropped here.

    Any ``Exception``; on our own threads anything but ``KeyboardInterrupt`` too (a
    ``SystemExit`` there would end the thread quietly), so that no callback can stop them.
    Elsewhere the caller's ``SystemExit`` and the like are the caller's.
    """
    if isinstance(exc, Exception):
        return True
    return own_thread() and not isinstance(exc, KeyboardInterrupt)


def thread_failed(buf: Buffer, life: Lifecycle, which: str, exc: BaseException) -> None:
    """Record that a client's thread died, and wake whoever waits on the buffer."""
    with buf.lock:
        if life.failed is None:
            life.failed = f"the {which} thread failed: {exc!r}"
        buf.changed.notify_all()
        buf.done.notify_all()
