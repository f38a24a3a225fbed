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

import logging
import threading
from enum import IntEnum

from .stats import ServerStats, ShutdownReport, Stats

log = logging.getLogger("fluentclient")


class State(IntEnum):
    """The live states a record can leave for an end; each indexes ``Ledger._live``."""

    QUEUED = 0
    BUFFERED = 1
    WRITTEN = 2


class Ledger:
    """Counts every record's state and the client's traffic, under ``lock``.

    ``lock`` guards nothing else and is never held while taking another lock, so any
    thread may step the ledger while holding the buffer's lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._frozen = False
        self._posted = 0
        self._replayed = 0
        self._live = [0, 0, 0]
        self._sent = 0
        self._dropped: dict[str, int] = {}
        self._unsent = 0
        self._unsent_bytes = 0
        self._possibly_lost = 0
        self._retried = 0
        self._frames_sent = 0
        self._bytes_sent = 0
        self._connects = 0
        self._connect_failures = 0
        self._connection_failures = 0
        self._spooled = 0
        self._handed_over = 0

    # -- entering ------------------------------------------------------------------------

    def enqueue(self) -> None:
        """post() took one record. The hot path: one increment each, nothing more."""
        with self.lock:
            self._posted += 1
            self._live[0] += 1  # State.QUEUED, without the enum's lookup

    def refuse(self, reason: str, n: int = 1) -> int:
        """post() turned records away; returns how many have been dropped for ``reason``.

        Applied even once frozen: a post after shutdown is news, not a late step.
        """
        with self.lock:
            self._posted += n
            total = self._dropped[reason] = self._dropped.get(reason, 0) + n
            return total

    def replay(self, n: int) -> None:
        """Records a previous process left in the spool joined the buffer."""
        with self.lock:
            if self._ignored("replay", n):
                return
            self._replayed += n
            self._live[State.BUFFERED] += n

    # -- moving --------------------------------------------------------------------------

    def buffer(self, n: int) -> None:
        """The reader packed queued records into the buffer."""
        self._move(State.QUEUED, State.BUFFERED, n, "buffer")

    def write(self, n: int, *, frames: int, nbytes: int) -> None:
        """The writer put frames holding ``n`` buffered records on a connection."""
        with self.lock:
            if self._ignored("write", n):
                return
            self._live[State.WRITTEN] += self._step(State.BUFFERED, n)
            self._frames_sent += frames
            self._bytes_sent += nbytes

    def requeue(self, n: int, *, retried: bool = True) -> None:
        """Written records go back to the buffer: to be sent again, or to be reported
        unsent with it (``retried=False``)."""
        with self.lock:
            if self._ignored("requeue", n):
                return
            n = self._step(State.WRITTEN, n)
            self._live[State.BUFFERED] += n
            if retried:
                self._retried += n

    # -- ending --------------------------------------------------------------------------

    def send(self, n: int) -> None:
        """The server has the written records."""
        with self.lock:
            if self._ignored("send", n):
                return
            self._sent += self._step(State.WRITTEN, n)

    def lose(self, n: int) -> None:
        """Written records whose connection failed before the server was seen to take them."""
        with self.lock:
            if self._ignored("lose", n):
                return
            self._possibly_lost += self._step(State.WRITTEN, n)

    def drop(self, reason: str, n: int, state: State) -> int:
        """Live records given up; returns how many have been dropped for ``reason``."""
        with self.lock:
            if self._ignored(f"drop {reason}", n):
                return 0
            n = self._step(state, n)
            total = self._dropped[reason] = self._dropped.get(reason, 0) + n
            return total

    def close(self, *, stranded: int, held: int, held_bytes: int) -> None:
        """Shutdown's count of what is left: ``stranded`` records still queued and
        ``held`` in the buffer are unsent. Anything live beyond those is in the hands of a
        thread shutdown stopped waiting for: unsent if it never left this process,
        possibly lost if it was written."""
        with self.lock:
            if self._ignored("close", stranded + held):
                return
            live = self._live
            from_queue = min(stranded, live[State.QUEUED])
            live[State.QUEUED] -= from_queue
            rest = stranded - from_queue + held
            for state in (State.BUFFERED, State.WRITTEN, State.QUEUED):
                step = min(rest, live[state])
                live[state] -= step
                rest -= step
            self._unsent += stranded + held - rest
            self._unsent_bytes += held_bytes
            never_left = live[State.QUEUED] + live[State.BUFFERED]
            if never_left or live[State.WRITTEN]:
                log.debug(
                    "fluentclient: %d records unsent and %d possibly lost in the hands of "
                    "a stopped thread", never_left, live[State.WRITTEN])
            self._unsent += never_left
            self._possibly_lost += live[State.WRITTEN]
            live[:] = [0, 0, 0]

    # -- traffic -------------------------------------------------------------------------

    def connected(self) -> None:
        with self.lock:
            if not self._ignored("connect", 0):
                self._connects += 1

    def connect_failed(self) -> None:
        with self.lock:
            if not self._ignored("connect failure", 0):
                self._connect_failures += 1

    def connection_failed(self) -> None:
        with self.lock:
            if not self._ignored("connection failure", 0):
                self._connection_failures += 1

    def spooled(self, n: int) -> None:
        with self.lock:
            self._spooled += n

    def handed_over(self, n: int) -> None:
        with self.lock:
            self._handed_over += n

    # -- a client that settles each record in the call that posts it --------------------

    def sent_at_once(self, nbytes: int) -> None:
        """One record posted and written as one frame within the same call."""
        with self.lock:
            self._posted += 1
            self._sent += 1
            self._frames_sent += 1
            self._bytes_sent += nbytes

    def lost_at_once(self) -> None:
        with self.lock:
            self._posted += 1
            self._possibly_lost += 1

    # -- reading -------------------------------------------------------------------------

    def snapshot(self, *, buffered_bytes: int, servers: tuple[ServerStats, ...] = ()) -> Stats:
        with self.lock:
            return Stats(
                posted=self._posted,
                replayed=self._replayed,
                sent=self._sent,
                dropped=dict(self._dropped),
                unsent=self._unsent,
                possibly_lost=self._possibly_lost,
                buffered=sum(self._live),
                buffered_bytes=buffered_bytes,
                retried=self._retried,
                frames_sent=self._frames_sent,
                bytes_sent=self._bytes_sent,
                connects=self._connects,
                connect_failures=self._connect_failures,
                connection_failures=self._connection_failures,
                servers=servers,
            )

    def report(self, *, timed_out: bool, failure: str | None = None) -> ShutdownReport:
        """The shutdown report; from now on late steps of stopped threads are ignored."""
        with self.lock:
            self._frozen = True
            return ShutdownReport(
                sent=self._sent,
                unsent_records=self._unsent,
                unsent_bytes=self._unsent_bytes,
                possibly_lost=self._possibly_lost,
                dropped=dict(self._dropped),
                timed_out=timed_out,
                spooled=self._spooled,
                handed_over=self._handed_over,
                failure=failure,
            )

    # -- inside the lock -----------------------------------------------------------------

    def _move(self, source: State, target: State, n: int, what: str) -> None:
        with self.lock:
            if self._ignored(what, n):
                return
            self._live[target] += self._step(source, n)

    def _step(self, state: State, n: int) -> int:
        """Take ``n`` records out of ``state``; returns how many it held of them."""
        # Never below zero, and never more out than in, so that the balance holds even
        # if a thread steps wrongly; the error makes such a bug visible.
        have = self._live[state]
        if n > have:
            log.error("fluentclient: ledger asked to move %d %s records, holds %d",
                      n, state.name.lower(), have)
            n = have
        self._live[state] = have - n
        return n

    def _ignored(self, what: str, n: int) -> bool:
        if self._frozen:
            log.debug("fluentclient: %s of %d records after the shutdown report: ignored",
                      what, n)
        return self._frozen
