"""The one state of a buffered client's life, and what its threads need to stop."""

from __future__ import annotations

import enum
import threading
import time
from typing import Protocol

from .stats import ShutdownReport


class Phase(enum.Enum):
    """Where a client is in its life; it only ever moves forward (FAILED may still close).

    NEW: no threads yet (they start on first use). RUNNING: post() takes records.
    CLOSING: shutdown() or close() is under way; post() refuses. CLOSED: shutdown took
    what was left in the queue and the buffer and counted it; nothing is live any more.
    FAILED: a thread died (a bug); post() refuses and flush() fails until shutdown.
    """

    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"
    FAILED = "failed"


NEW, RUNNING, CLOSING, CLOSED, FAILED = (
    Phase.NEW, Phase.RUNNING, Phase.CLOSING, Phase.CLOSED, Phase.FAILED)


class Lifecycle:
    """A client's phase, and the details of its end that its threads read.

    ``phase`` is read without a lock (one attribute read, so post() stays cheap) and
    changed only under ``lock``, which also guards the head of the queue: the reader pops
    under it while the client lives, and shutdown's final sweep takes the queue under it
    as the phase becomes CLOSED. So whoever holds ``lock`` and sees CLOSED knows that
    anything still in the queue was put there after the sweep (see Reader.take_back).
    ``changed`` is notified at every change of phase.

    The end's details, changed with the buffer's lock held and followed by a notify of
    the buffer's waiters: ``drain_deadline``: the writer writes everything it holds,
    whatever the thresholds, until that monotonic time. ``abandoned``: the deadline
    passed, or ``close()`` wants no drain; threads stop without starting new work. They
    still settle what they hold as they stop, and count it: the reader its batch in hand
    (drops), the writer its connections (sent, possibly lost, a failed connection, frames
    sent again or given up). So shutdown gives them a short grace before it reports, and a
    count may still move if one outlives that grace. ``reader_done``: nothing more will
    enter the buffer.

    Set once: ``failure``, why a thread died; ``clean``, at CLOSED, whether the end left
    nothing unsent (no timeout, no failure); ``report``, the shutdown report.
    """

    __slots__ = ("phase", "lock", "changed", "drain_deadline", "abandoned", "reader_done",
                 "failure", "clean", "report")

    def __init__(self, phase: Phase = NEW) -> None:
        self.phase = phase
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.drain_deadline: float | None = None
        self.abandoned = False
        self.reader_done = False
        self.failure: str | None = None
        self.clean = True
        self.report: ShutdownReport | None = None

    def start(self) -> None:
        """The threads are started."""
        self._move({NEW}, RUNNING)

    def begin_closing(self) -> Phase:
        """shutdown() or close() begins; returns the phase it began from."""
        with self.lock:
            before = self.phase
            if before is not CLOSED:
                self.phase = CLOSING
                self.changed.notify_all()
            return before

    def closed_locked(self, *, clean: bool) -> None:
        """The final sweep is done (``lock`` held): nothing is live any more."""
        self.clean = clean
        self.phase = CLOSED
        self.changed.notify_all()

    def fail(self, why: str) -> None:
        """A thread died: the first reason is kept."""
        with self.lock:
            if self.failure is None:
                self.failure = why
            if self.phase is RUNNING:
                self.phase = FAILED
            self.changed.notify_all()

    def wait_closed(self, deadline: float | None) -> bool:
        """Wait (until ``deadline``) for the end's sweep; its verdict, False if none came."""
        with self.lock:
            while self.phase is not CLOSED:
                if self.phase is not CLOSING:
                    return False  # FAILED: no shutdown under way to wait for
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
            return self.clean

    def _move(self, sources: set[Phase], target: Phase) -> None:
        with self.lock:
            if self.phase in sources:
                self.phase = target
                self.changed.notify_all()


class Waiters(Protocol):
    """Where the threads wait (the buffer's lock and its two conditions): every change
    of the end's details is made under that lock and notified there."""

    @property
    def lock(self) -> threading.Lock: ...

    @property
    def changed(self) -> threading.Condition: ...

    @property
    def done(self) -> threading.Condition: ...


def thread_failed(buf: Waiters, life: Lifecycle, which: str, exc: BaseException) -> None:
    """Record that a client's thread died, and wake whoever waits on the buffer."""
    # Not nested: the buffer's lock may be taken while holding the lifecycle's, never
    # the other way round.
    life.fail(f"the {which} thread failed: {exc!r}")
    with buf.lock:
        buf.changed.notify_all()
        buf.done.notify_all()


def abandon(buf: Waiters, life: Lifecycle) -> None:
    """Cut the drain short: the threads stop without new work (see ``abandoned``)."""
    with buf.lock:
        life.abandoned = True
        buf.changed.notify_all()
        buf.done.notify_all()
