"""The ledger: the one place that knows what became of every record a client took.

A record enters once, as *queued* (post() took it), as *buffered* (replayed from a spool
a previous process left), or straight as dropped (post() refused it). From then on it
moves, one counted step at a time, through the live states::

    queued -> buffered -> written -> sent
                 ^           |
                 +-----------+  (requeued: the connection failed before confirmation)

and from any live state to one of the ends: dropped (by reason), possibly_lost or unsent.
Each step is one method call that moves ``n`` records under one lock, so a snapshot read
under that lock always balances: posted + replayed == sent + dropped + unsent +
possibly_lost + live.

``report()`` freezes the ledger. A thread that shutdown gave up waiting for may still
finish its work afterwards; its steps are logged and ignored, so that the report and
every later ``stats()`` tell the same story. Records refused after that still count:
they are new posts, not late news about old ones.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
from enum import IntEnum
from typing import Callable

from ._words import count
from .stats import ServerStats, ShutdownReport, Stats

log = logging.getLogger("fluentclient")


class State(IntEnum):
    """The live states a record can leave for an end; each is its slot in the counts."""

    QUEUED = 0  # not a slot of its own: enqueued minus dequeued, see Ledger
    BUFFERED = 1
    WRITTEN = 2


# Slots of Ledger._c beside the live states: plain list items, so that updating one under
# the lock is a subscript, never a call.
_BUFFERED, _WRITTEN = State.BUFFERED.value, State.WRITTEN.value
_ENQUEUED = 3
_DEQUEUED = 4
_ENDED_AT_ONCE = 5
_REPLAYED = 6
_SENT = 7
_LOST = 8
_UNSENT = 9
_UNSENT_BYTES = 10
_RETRIED = 11
_FRAMES = 12
_BYTES = 13
_CONNECTS = 14
_CONNECT_FAILURES = 15
_CONNECTION_FAILURES = 16
_SPOOLED = 17
_HANDED_OVER = 18
_TAKEN = 19  # queued records taken off the queue (by the reader, an eviction, the sweep)
_SLOTS = 20
# Not a slot: the target of a drop, counted by reason in Ledger._dropped.
_DROPPED = -1


class Ledger:
    """Counts every record's state and the client's traffic, under ``lock``.

    ``lock`` guards nothing else and is never held while taking another lock, so any
    thread may step the ledger while holding the buffer's lock. Queued records are
    counted as enqueued minus dequeued, so that post() pays for one increment.
    ``posted`` is the enqueued ones plus those that went straight to an end (refused, or
    settled within their post() call).

    Queued records are also counted as they are taken off the queue (``take``), so that
    shutdown can tell the ones a thread holds (taken, not yet buffered or dropped: unsent)
    from the ones a post() still holds between counting and appending them: those stay
    queued until that post() settles them itself (see ``refuse_late``).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._frozen = False
        self._c = [0] * _SLOTS
        self._dropped: dict[str, int] = {}
        # post() counts on this without the lock: next() on a count is one C call, so two
        # threads can never lose an increment, and a post() never waits for a reader or
        # writer that holds the lock while the interpreter hands the GIL elsewhere (which
        # cost about 0.2 us per record, and a context switch per collision). Whoever holds
        # the lock reads it with next() too; those reads are counted and taken off.
        self._posts = itertools.count()
        self._post_reads = 0
        # enqueue() of one record as a single C call, for post().
        self.enqueue_one: Callable[[], int] = functools.partial(next, self._posts)
        # A SyncClient's records sent within their post(), and their bytes: counted
        # without the lock (see sent_at_once), read under it.
        self._sent_now = 0
        self._sent_now_bytes = 0

    # -- entering ------------------------------------------------------------------------

    def enqueue(self, n: int = 1) -> None:
        """post() took a record (or a parent process left ``n`` to this one). The hot
        path: one atomic increment, no lock."""
        if n == 1:
            self.enqueue_one()
            return
        with self.lock:
            self._c[_ENQUEUED] += n

    def _enqueued_locked(self) -> int:
        """All records ever enqueued; called with the lock held."""
        posts = next(self._posts) - self._post_reads
        self._post_reads += 1
        return self._c[_ENQUEUED] + posts

    def entered(self) -> int:
        """How many records have ever been queued: flush() waits for these to leave."""
        with self.lock:
            return self._enqueued_locked()

    def settling(self) -> tuple[int, int]:
        """Records written and not yet settled, and records settled (sent or possibly
        lost) so far: flush() waits, after the writes it asked for, for the first to be
        settled, so that stats() then counts them sent."""
        with self.lock:
            c = self._c
            return c[_WRITTEN], c[_SENT] + c[_LOST]

    def left_queue(self) -> int:
        """How many queued records have been buffered or dropped (or ended at shutdown).

        One read of a list item, atomic under the GIL: flush() polls it without the lock.
        """
        return self._c[_DEQUEUED]

    def take(self, n: int) -> None:
        """``n`` queued records were taken off the queue (negative: put back). They stay
        queued until buffered or dropped; this only tells who holds them."""
        with self.lock:
            self._c[_TAKEN] += n

    def refuse_late(self, reason: str) -> int:
        """A post() found the client closed after it had counted and queued its record,
        and took it back: queued becomes refused. Returns how many have been dropped for
        ``reason``.

        Applied even once frozen: shutdown left this record queued, to be settled here.
        """
        with self.lock:
            c = self._c
            c[_TAKEN] += 1
            c[_DEQUEUED] += 1
            total = self._dropped[reason] = (
                self._dropped[reason] + 1 if reason in self._dropped else 1)
        return total

    def refuse(self, reason: str, n: int = 1) -> int:
        """post() turned records away; returns how many have been dropped for ``reason``.

        Applied even once frozen: a post after shutdown is news, not a late step.
        """
        with self.lock:
            self._c[_ENDED_AT_ONCE] += n
            total = self._dropped[reason] = (
                self._dropped[reason] + n if reason in self._dropped else n)
        return total

    def replay(self, n: int) -> None:
        """Records a previous process left in the spool joined the buffer."""
        self._count(n, _REPLAYED, _BUFFERED, what="replay")

    # -- moving and ending ---------------------------------------------------------------

    def buffer(self, n: int) -> None:
        """The reader packed queued records into the buffer."""
        self._shift(State.QUEUED, _BUFFERED, n, "buffer")

    def write(self, n: int, *, frames: int, nbytes: int) -> None:
        """The writer put frames holding ``n`` buffered records on a connection."""
        self._shift(State.BUFFERED, _WRITTEN, n, "write", frames=frames, nbytes=nbytes)

    def requeue(self, n: int, *, retried: bool = True) -> None:
        """Written records go back to the buffer: to be sent again, or to be reported
        unsent with it (``retried=False``)."""
        self._shift(State.WRITTEN, _BUFFERED, n, "requeue", retried=retried)

    def send(self, n: int) -> None:
        """The server has the written records."""
        self._shift(State.WRITTEN, _SENT, n, "send")

    def lose(self, n: int) -> None:
        """Written records whose connection failed before the server was seen to take them."""
        self._shift(State.WRITTEN, _LOST, n, "lose")

    def drop(self, reason: str, n: int, state: State) -> int:
        """Live records given up; returns how many have been dropped for ``reason``."""
        return self._shift(state, _DROPPED, n, "drop", reason=reason)

    def _shift(
        self, source: State, target: int, n: int, what: str, *, reason: str = "",
        retried: bool = False, frames: int = 0, nbytes: int = 0,
    ) -> int:
        """Move ``n`` records from a live state to ``target``; returns, for a drop, how
        many have been dropped for ``reason`` so far.

        The locked part is kept short: the interpreter may hand the GIL to another thread
        at a call, and a thread waiting for the lock then waits a whole switch interval.
        post() never does (see ``_posts``).
        """
        queued = source == State.QUEUED
        slot = int(source)
        c = self._c
        total = 0
        with self.lock:
            frozen = self._frozen
            if not frozen:
                held = self._enqueued_locked() - c[_DEQUEUED] if queued else c[slot]
                moved = n if n <= held else held
                if queued:
                    c[_DEQUEUED] += moved
                    if c[_TAKEN] < c[_DEQUEUED]:
                        # Left the queue without a take(): it was taken, all the same.
                        c[_TAKEN] = c[_DEQUEUED]
                else:
                    c[slot] -= moved
                if target == _DROPPED:
                    total = self._dropped[reason] = (
                        self._dropped[reason] + moved if reason in self._dropped else moved)
                else:
                    c[target] += moved
                if retried:
                    c[_RETRIED] += moved
                c[_FRAMES] += frames
                c[_BYTES] += nbytes
        if frozen:
            log.debug("fluentclient: %s of %s after the shutdown report: ignored",
                      what, count(n, "record"))
        elif moved < n:
            # A thread stepped wrongly; the balance holds anyway, the error shows the bug.
            log.error("fluentclient: ledger asked to %s %d %s records, held %d",
                      what, n, source.name.lower(), held)
        return total

    def close(self, *, stranded: int, held: int, held_bytes: int) -> int:
        """Shutdown's count of what is left, once it took the queue (``stranded`` records)
        and the buffer (``held``): those are unsent. Anything live beyond them is in the
        hands of a thread shutdown stopped waiting for: unsent if it never left this
        process, possibly lost if it was written. Records counted by a post() that has not
        queued them yet stay queued: that post() settles them (``refuse_late``) or they
        were queued in time and are among ``stranded``. Returns how many became unsent."""
        found = stranded + held
        with self.lock:
            if self._frozen:
                return 0
            c = self._c
            # Taken off the queue (the sweep's ``stranded`` among them) and not yet
            # buffered or dropped.
            queued = c[_TAKEN] - c[_DEQUEUED]
            # Queued and buffered records never left this process: unsent, found or not.
            # Written ones are unsent as far as the buffer still held them (their
            # connection was reset); the rest went out, and nobody saw them arrive.
            never_left = queued + c[_BUFFERED]
            written = c[_WRITTEN]
            held_written = min(written, max(0, found - never_left))
            c[_DEQUEUED] += queued
            c[_BUFFERED] = c[_WRITTEN] = 0
            c[_UNSENT] += never_left + held_written
            c[_UNSENT_BYTES] += held_bytes
            c[_LOST] += written - held_written
        unsent = never_left + held_written
        if never_left + held_written != found or written != held_written:
            log.debug("fluentclient: at shutdown %s unsent (%d found) and %d "
                      "possibly lost, left with threads that did not stop in time",
                      count(never_left + held_written, "record"), found,
                      written - held_written)
        return unsent

    # -- traffic -------------------------------------------------------------------------

    def connected(self) -> None:
        self._count(1, _CONNECTS, what="connect")

    def connect_failed(self) -> None:
        self._count(1, _CONNECT_FAILURES, what="connect failure")

    def connection_failed(self) -> None:
        self._count(1, _CONNECTION_FAILURES, what="connection failure")

    def spooled(self, n: int) -> None:
        with self.lock:
            self._c[_SPOOLED] += n

    def handed_over(self, n: int) -> None:
        with self.lock:
            self._c[_HANDED_OVER] += n

    def _count(self, n: int, slot: int, other: int = _SLOTS, *, what: str) -> None:
        c = self._c
        with self.lock:
            frozen = self._frozen
            if not frozen:
                c[slot] += n
                if other != _SLOTS:
                    c[other] += n
        if frozen:
            log.debug("fluentclient: %s after the shutdown report: ignored", what)

    # -- a client that settles each record in the call that posts it --------------------

    def sent_at_once(self, nbytes: int) -> None:
        """One record posted and written as one frame within the same call.

        The caller makes these calls one at a time (a SyncClient holds its lock), so the
        counts need no lock of their own: this is the whole cost of a sent record, and
        the lock cost as much as the rest of the accounting. A reader takes the record
        count once, so a snapshot balances; its bytes may be a frame behind.
        """
        self._sent_now += 1
        self._sent_now_bytes += nbytes

    def lost_at_once(self) -> None:
        with self.lock:
            self._c[_ENDED_AT_ONCE] += 1
            self._c[_LOST] += 1

    # -- reading -------------------------------------------------------------------------

    def _counts(self) -> list[int]:
        """A copy of the counts, with the records sent at once; called with the lock held."""
        c = list(self._c)
        sent_now = self._sent_now  # read once: it counts in posted and in sent alike
        c[_ENDED_AT_ONCE] += sent_now
        c[_SENT] += sent_now
        c[_FRAMES] += sent_now
        c[_BYTES] += self._sent_now_bytes
        return c

    def snapshot(self, *, buffered_bytes: int, servers: tuple[ServerStats, ...] = ()) -> Stats:
        with self.lock:
            c = self._counts()
            c[_ENQUEUED] = self._enqueued_locked()
            dropped = dict(self._dropped)
        return Stats(
            posted=c[_ENQUEUED] + c[_ENDED_AT_ONCE],
            replayed=c[_REPLAYED],
            sent=c[_SENT],
            dropped=dropped,
            unsent=c[_UNSENT],
            possibly_lost=c[_LOST],
            buffered=c[_ENQUEUED] - c[_DEQUEUED] + c[_BUFFERED] + c[_WRITTEN],
            buffered_bytes=buffered_bytes,
            retried=c[_RETRIED],
            frames_sent=c[_FRAMES],
            bytes_sent=c[_BYTES],
            connects=c[_CONNECTS],
            connect_failures=c[_CONNECT_FAILURES],
            connection_failures=c[_CONNECTION_FAILURES],
            servers=servers,
        )

    def report(self, *, timed_out: bool, failure: str | None = None) -> ShutdownReport:
        """The shutdown report; from now on late steps of stopped threads are ignored."""
        with self.lock:
            self._frozen = True
            c = self._counts()
            dropped = dict(self._dropped)
        return ShutdownReport(
            sent=c[_SENT],
            unsent_records=c[_UNSENT],
            unsent_bytes=c[_UNSENT_BYTES],
            possibly_lost=c[_LOST],
            dropped=dropped,
            timed_out=timed_out,
            spooled=c[_SPOOLED],
            handed_over=c[_HANDED_OVER],
            failure=failure,
        )
