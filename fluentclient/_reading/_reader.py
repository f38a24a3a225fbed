"""The reader thread: moves posted messages from the queue into the buffer.

It owns the packer, so serialization never needs a lock; the buffer's lock is taken once
per batch, only to append bytes that are already packed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from itertools import repeat, starmap
from operator import attrgetter
from typing import Callable, TypeVar

from .._accel import fast_take
from .._admission import Admission, oldest_to_cut
from .._buffer import Buffer, Frame, Tagged
from .._journal import Journal, NullJournal
from .._ledger import Ledger
from .._lifecycle import CLOSED, RUNNING, Lifecycle, thread_failed
from .._lifetime._parking import READER, Parking, WakeUp
from .._reporting import Reporter
from .._threads import leave_signals_to_others
from ..errors import (
    BufferFullError,
    RecordTooLargeError,
    SerializationError,
    UnsafeRecordError,
)
from ..framing import EntryPacker, PackedRun
from ..message import Message, settle_future
from ..stats import (
    DROP_BUFFER_FULL,
    DROP_EVICTED,
    DROP_TOO_LARGE,
    DROP_UNSAFE,
    DROP_UNSERIALIZABLE,
)
from ._reader_waits import ReaderWaits
from ._replay import Replay, Spooled
from ._spooling import Spooling

log = logging.getLogger("fluentclient")

STOP = object()
# How often a busy reader looks at the queue without being woken.
POLL = 0.005
# How long the reader leaves the GIL to the writer when a large write is due.
WRITER_TURN = 0.0002


def _sleep0() -> None:
    time.sleep(0)


def take_python(q: deque[object], size: int, marker: object) -> tuple[list[object], bool]:
    """Up to ``size`` items from the left of ``q``, and whether ``marker`` (None: no
    marker to look for) was among them, left out of the list. Everything that takes from
    the queue holds one lock and posts only append, so the items counted are all there
    to take, in one C loop. The compiled ``take`` does the same in one C pass."""
    batch = list(starmap(q.popleft, repeat((), min(size, len(q)))))
    if marker is not None and marker in batch:
        return [item for item in batch if item is not marker], True
    return batch, False


# Hands the GIL to another thread for a moment. sched_yield() releases the GIL and the
# CPU without a timer; sleep(0) would cost the timer slack (about 50 us on Linux).
yield_gil: Callable[[], None] = getattr(os, "sched_yield", _sleep0)

_T = TypeVar("_T", bound=Tagged)
_WAITER = attrgetter("waiter")


class Reader:
    """Drains the queue in batches, polling while records flow.

    Waking a sleeping thread costs the poster a system call, so ``post()`` wakes the
    reader only when it went idle (see ``idle``) or when a caller waits
    (``sync_append``). While records keep coming the reader looks again every ``POLL``
    seconds by itself.

    Each batch is also appended to the journal once it is in the buffer (``Spooling``),
    and records a previous process left in the spool are fed in between batches as room
    allows (``Replay``). The journal's file work is done here, never on a caller's thread:
    the spans that others mark done are written on this thread's next turn. What callers
    wait for from this thread is ``ReaderWaits``'s.
    """

    def __init__(
        self,
        q: deque[object],
        buf: Buffer,
        life: Lifecycle,
        packer: EntryPacker,
        reporter: Reporter,
        *,
        admission: Admission,
        batch: int,
        ledger: Ledger,
        journal: Journal | None = None,
        parking: Parking | None = None,
    ) -> None:
        self._queue = q
        self._buffer = buf
        self._life = life
        self._packer = packer
        # Where every record this reader drops is counted and told.
        self._reporter = reporter
        self._fail = reporter.fail
        self._admission = admission
        # Records taken from the queue at a time (see _admission.Pace): enough to amortise
        # the lock and the hand-off after a full batch, few enough that one batch takes
        # well under a millisecond of GIL time, so a posting thread never waits long.
        self._batch = batch
        self._ledger = ledger
        # Asked per batch whether it records and has spans to write; what to write there
        # is Spooling's.
        self._journal: Journal = journal or NullJournal()
        self._spooling = Spooling(self._journal, buf, admission, reporter)
        # overflow="block": records that find the buffer full wait here for room rather
        # than being dropped, holding up the queue behind them.
        self._carry: list[tuple[Message, bytes]] = []
        self.wake = WakeUp()
        # True while the reader waits for post() to wake it rather than polling.
        self.idle = False
        # The head of the queue is this reader's: every record leaves it under this lock
        # (the lifecycle's), here, through evict_queued() or take_back(), or in shutdown's
        # final sweep (take_all_locked), and is counted in the ledger as it leaves.
        self.pop_lock = life.lock
        self._parking = parking or Parking()
        # What previous processes left in the spool, fed in between batches.
        self._replay = Replay(self._journal, buf, life, reporter, admission, batch,
                              self._add_spooled)
        self._waits = ReaderWaits(q, batch, self.wake, life, ledger, buf,
                                  alive=self._alive, gone=self.gone)
        self.thread = self.new_thread()

    @property
    def left_in_spool(self) -> int:
        """Records previous processes left in the spool that this reader did not take
        over and left there for a later process: counted as it stops, for the report."""
        return self._replay.left_in_spool

    def has_work(self) -> bool:
        """Whether anything but the queue waits for this reader (read while it is parked):
        records waiting for room, spans to write to the spool, a spool to replay."""
        return bool(self._carry) or self._replay.active or self._journal.pending()

    def new_thread(self) -> threading.Thread:
        """A thread to run (or, after parking for a fork, resume) this reader's loop."""
        return threading.Thread(target=self._run, name="fluentclient-reader", daemon=True)

    def _run(self) -> None:
        leave_signals_to_others()
        parked = False
        try:
            parked = self._loop()
        except BaseException as exc:  # a bug; never die silently
            log.exception("fluentclient reader thread failed")
            thread_failed(self._buffer, self._life, "reader", exc)
        finally:
            if not parked:
                self._stopped()

    def _loop(self) -> bool:
        """Pack until told to stop (False) or to park for a fork (True).

        Parks only at the top of the loop, where every record is in the queue, the
        buffer or ``_carry``, so that a new thread can take over from there.
        """
        q, take = self._queue, fast_take() or take_python
        size = self._batch
        stopping = False
        parking, journal, waits = self._parking, self._journal, self._waits
        while True:
            if parking.requested and parking.park_here(READER):
                return True
            if journal.pending():
                self._spooling.maintain()
            if self._carry and not self._retry_carry():
                # No room yet (overflow="block"): what waits in the queue stays
                # there, so post() sees the buffer full and waits too.
                if self._life.abandoned:
                    break
                self.wake.wait(POLL)
                self.wake.clear()
                continue
            with self.pop_lock:
                if self._life.phase is CLOSED:
                    break  # the queue is shutdown's now (a reader that outlived it)
                # Shutdown queues STOP only after the phase left RUNNING, which it
                # changes under this lock: only then is the batch worth a look for it.
                batch, stop = take(q, size, STOP if self._life.phase is not RUNNING
                                   else None)
                if stop:
                    stopping = True
                if batch:
                    self._ledger.take(len(batch))
            waits.took(len(q))
            replaying = (self._replay.active and not self._replay.cut()
                         and self._replay.step())
            if batch:
                self._append(batch)  # type: ignore[arg-type]
                buf = self._buffer
                if buf.pending_bytes >= buf.gather_bytes and not buf.no_server:
                    # Posts and packing can keep the GIL between them for as long
                    # as posts come, and the writer would only get it back every
                    # switch interval, a partial send at a time, while the buffer
                    # fills towards drops. A moment off the GIL lets it write.
                    time.sleep(WRITER_TURN)
                elif len(batch) == size or replaying:
                    # More is waiting: let a posting thread have the GIL first.
                    yield_gil()
                continue
            if self._life.abandoned:
                break
            if stopping:
                # Replay is part of the drain: the backlog a previous process left
                # is sent like any record held, until done or the deadline. What is
                # still on disk then is counted (see Replay.stop).
                if not self._replay.active or self._replay.cut():
                    break
                if not replaying:
                    # Waiting for room; the writer frees it without waking us.
                    self.wake.wait(POLL)
                    self.wake.clear()
                continue
            if replaying:
                yield_gil()
                continue
            if not self.wake.wait(POLL):
                # A quiet poll: go idle until post() wakes us. ``idle`` is published
                # before the queue is looked at again, so a racing post() is either
                # seen here or sees ``idle`` and sets ``wake``. A pending replay
                # waiting for room keeps polling instead.
                self.idle = True
                if not q and not self._replay.active and not journal.pending():
                    self.wake.wait(1.0)
                self.idle = False
            self.wake.clear()
        return False

    def _stopped(self) -> None:
        """The loop ended for good: settle what it held."""
        try:
            self._replay.stop()
        except Exception as exc:
            log.exception("fluentclient reader thread failed")
            thread_failed(self._buffer, self._life, "reader", exc)
        # Records still waiting for room go back to the queue, where shutdown counts
        # them and hands them over with the rest (unless its sweep is done: then they
        # are counted unsent as held by this thread).
        with self.pop_lock:
            if self._carry and self._life.phase is not CLOSED:
                for msg, _ in reversed(self._carry):
                    self._queue.appendleft(msg)
                self._ledger.take(-len(self._carry))
        self._waits.stopped()
        self._carry = []
        with self._buffer.lock:
            self._life.reader_done = True
            self._buffer.changed.notify_all()

    # -- the queue -----------------------------------------------------------------------

    def evict_queued(self, nbytes: float, mean: float) -> list[Message]:
        """overflow="drop_oldest": take the oldest queued records, about ``nbytes`` worth
        (``mean`` bytes each, as packed), out of the queue, counted as gone from it; the
        caller drops them. Runs on the posting thread."""
        evicted: list[Message] = []
        with self.pop_lock:
            q = self._queue
            while nbytes > 0 and q and self._life.phase is not CLOSED:
                item = q.popleft()
                if not isinstance(item, Message):
                    q.appendleft(item)  # the stop marker stays first
                    break
                evicted.append(item)
                nbytes -= mean
            if evicted:
                self._ledger.take(len(evicted))
        return evicted

    def take_back(self, msg: Message) -> bool:
        """Remove ``msg``, queued after shutdown's final sweep, from the queue; False if it
        was queued in time (the sweep or this reader took it, or the sweep has not run yet)."""
        with self.pop_lock:
            if self._life.phase is not CLOSED:
                return False
            q = self._queue
            for i, item in enumerate(q):
                if item is msg:
                    del q[i]
                    return True
            return False

    def take_all_locked(self) -> list[Message]:
        """Shutdown's final sweep (``pop_lock`` held): every record still queued."""
        q = self._queue
        stranded = [item for item in q if isinstance(item, Message)]
        q.clear()
        self._ledger.take(len(stranded))
        return stranded

    def wait_taken(self, deadline: float | None) -> bool:
        """flush(): see ReaderWaits.taken."""
        return self._waits.taken(deadline)

    def wait_appended(self, waiter: Future[None], timeout: float | None) -> None:
        """post(sync_append=True): see ReaderWaits.appended."""
        self._waits.appended(waiter, timeout)

    def wait_drained(self, timeout: float) -> None:
        """post() outrunning packing: see ReaderWaits.drained."""
        self._waits.drained(timeout)

    def _alive(self) -> bool:
        return self.thread.is_alive()

    def gone(self) -> bool:
        """Whether the thread ran and ended (not merely parked for a fork)."""
        thread = self.thread
        if thread.ident is None or thread.is_alive():
            return False
        # Parked, or restarted since (the crew puts the new thread in place before it
        # withdraws the request): not gone.
        return not self._parking.requested and self.thread is thread

    def released(self, frames: Sequence[Frame]) -> None:
        """Frames gone for good: the spool need not replay them (see Spooling.release)."""
        if self._spooling.release(frames) and self.idle:
            self.wake.set()

    def _append(self, batch: list[Message]) -> None:
        if not batch:
            return
        for run in self._packer.pack_runs(batch, self._unpackable):
            self._drop_too_large(run)
            if self._journal.recording:
                self._spooling.trim(run)
            if not run.messages:
                continue
            if self._carry:
                # overflow="block" and an earlier run found no room: this one waits behind
                # it, in order.
                self._carry += zip(run.messages, run.entries())
                continue
            rejected = self._add(run.messages, run)
            if run.waiters:
                self._settle_waiters(run.messages, rejected)
            if rejected and self._admission.keeps_rejected:
                refused = set(map(id, rejected))
                self._carry = [(m, e) for m, e in zip(run.messages, run.entries())
                               if id(m) in refused]
            elif rejected:
                err = self._admission.buffer_full()
                for msg in rejected:
                    self._fail(DROP_BUFFER_FULL, err, msg)

    def _unpackable(self, msg: Message, exc: SerializationError) -> None:
        if isinstance(exc, UnsafeRecordError):
            self._fail(DROP_UNSAFE, exc, msg)
        else:
            self._fail(DROP_UNSERIALIZABLE, exc, msg)

    def _drop_too_large(self, run: PackedRun) -> None:
        limit = self._buffer.payload_limit(run.tag)
        if run.largest <= limit:
            return
        entries = run.entries()
        msgs, run.messages = run.messages, []
        for msg, entry in zip(msgs, entries):
            if len(entry) > limit:
                self._fail(DROP_TOO_LARGE, RecordTooLargeError(
                    f"a {len(entry)}-byte record does not fit in a frame of "
                    f"{self._buffer.max_frame_size} bytes"), msg)
                continue
            run.messages.append(msg)
            run.pieces.append(entry)
        run.seal()

    @staticmethod
    def _settle_waiters(msgs: list[Message], rejected: list[Message]) -> None:
        if not any(map(_WAITER, msgs)):
            return
        refused = set(map(id, rejected))
        for msg in msgs:
            if msg.waiter is not None and id(msg) not in refused:
                settle_future(msg.waiter)

    def _retry_carry(self) -> bool:
        """Try again to buffer the records that found it full; True once all are in."""
        msgs = [m for m, _ in self._carry]
        rejected = self._add(msgs, [e for _, e in self._carry])
        self._settle_waiters(msgs, rejected)
        refused = set(map(id, rejected))
        self._carry = [(m, e) for m, e in self._carry if id(m) in refused]
        return not self._carry

    def _add(
        self, kept: list[_T], packed: PackedRun | list[bytes], *, spooled: bool = False
    ) -> list[_T]:
        """Put packed entries in the buffer (and the spool); returns those that did not fit.

        ``packed``: the entries of ``kept``, as one run (one tag) or one by one.
        ``spooled``: replayed records, which enter the ledger here rather than in post().
        """
        buf = self._buffer
        if isinstance(packed, PackedRun):
            run: PackedRun | None = packed
            size = len(packed.data)
        else:
            run, size = None, sum(map(len, packed))
        oldest: list[_T] = []
        with buf.lock:
            before = buf.pending_bytes
            evicted = self._admission.make_room_locked(size)
            over = 0 if spooled else self._admission.over_room_locked(size)
            if over:
                # The batch alone is more than the room left: the oldest of its own
                # records go too, rather than the newest being refused.
                every = packed.entries() if isinstance(packed, PackedRun) else packed
                cut, dropped = oldest_to_cut(every, over)
                oldest, kept, packed = kept[:cut], kept[cut:], every[cut:]
                run, size = None, size - dropped
            # A run whose records nobody awaits an ack for can go in whole (the packer
            # noted whether any does).
            whole = run if run is not None and not run.deliveries else None
            first_seq = buf.next_seq
            if whole is not None and buf.add_run_locked(whole.tag, whole.data, len(kept)):
                rejected: list[_T] = []
            else:
                entries = run.entries() if run is not None else packed
                # Records that will wait for room hold back every later one: a smaller
                # record must not slip past a larger one into the buffer.
                rejected = buf.add_batch_locked(
                    kept, entries, in_order=self._admission.keeps_rejected,  # type: ignore[arg-type]
                )
            # Under the buffer's lock, so the writer cannot take a record the ledger
            # does not show as buffered yet.
            if spooled:
                self._ledger.replay(len(kept) - len(rejected))
            else:
                self._ledger.buffer(len(kept) - len(rejected))
            if buf.became_due_locked(before):
                buf.changed.notify()
            if buf.room_waiters:
                buf.done.notify_all()
        if kept:
            self._admission.learn(size / len(kept))
        self._admission.refresh()
        if evicted:
            self._admission.evicted(evicted)
            self.released(evicted)
        if oldest:
            err = BufferFullError("evicted to make room for newer records")
            for msg in oldest:
                self._fail(DROP_EVICTED, err, msg)  # type: ignore[arg-type]
        if self._journal.recording:
            self._spooling.record(first_seq, kept, packed, rejected)
        return rejected

    def _add_spooled(self, records: list[Spooled], entries: list[bytes]) -> list[Spooled]:
        return self._add(records, entries, spooled=True)
