"""Admission: whether a record may join what a BufferedClient holds, and what happens
when it may not: the one unit that knows the overflow policies.

The limits are ``Buffering.limit`` (bytes buffered plus an estimate for what still waits in
the queue) and the spool's own limit; the overflow policy says what happens when one is
reached. :meth:`Admission.judge` decides, as a :class:`Verdict`; :meth:`Admission.admit`
acts on the verdicts for post() (evicts, waits for room or refuses, and reports it). The
reader asks the same object about a batch it packed. The queue's head stays the
reader's: admission asks it to give up its oldest records (:class:`QueueHead`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence, Sized
from typing import Callable, NamedTuple, Protocol

from ._buffer import Buffer, Frame
from ._ledger import Ledger, State
from ._lifecycle import RUNNING, Lifecycle
from ._reporting import Reporter
from ._words import count
from ._writing._writer import resolve_futures
from .errors import BufferFullError
from .message import Message
from .stats import DROP_BUFFER_FULL, DROP_EVICTED, DROP_SPOOL_FULL


class Pace(NamedTuple):
    """How many records the reader packs at a time, and how many may wait for it."""

    # The most records the reader takes from the queue for one batch.
    batch: int
    # Records past which post() waits for the reader to pack what is queued, whatever the
    # bytes: few Python objects waiting means short garbage collections and little memory.
    queue_limit: int


# With a spool, what is queued or in the batch being packed is not on disk yet: a
# kill -9 loses it, so these two bound that loss (queue_limit plus a batch at most, as
# docs/guarantees.md says).
SPOOLED_PACE = Pace(batch=128, queue_limit=256)
# Without one, a kill -9 loses everything held in memory whatever these are, so they only
# trade CPU against latency: a larger batch spends the reader's fixed cost per batch (the
# lock, the GIL hand-off after a full batch) over more records, and a longer queue makes
# post() wait for the reader less often. Still one batch takes well under a millisecond.
MEMORY_PACE = Pace(batch=256, queue_limit=512)


def pace_for(spooled: bool) -> Pace:
    """The one place that decides a client's batch and queue limit."""
    return SPOOLED_PACE if spooled else MEMORY_PACE


class SpoolLimit(Protocol):
    """What admission needs of a spool: how full it is, and whether it has finished
    segments to delete (room, once the reader has done so)."""

    @property
    def size(self) -> int: ...

    @property
    def limit(self) -> int: ...

    def pending(self) -> bool: ...


class Wakeable(Protocol):
    def set(self) -> None: ...


class QueueHead(Protocol):
    """What admission asks of the queue's owner (the reader) for post()."""

    @property
    def wake(self) -> Wakeable: ...

    def evict_queued(self, nbytes: float, mean: float) -> list[Message]: ...

    def released(self, frames: Sequence[Frame]) -> None: ...


class Act(enum.Enum):
    ADMIT = "admit"
    # Remove the oldest buffered (or queued) records, ``nbytes`` worth, then ask again.
    EVICT = "evict"
    # Wait until ``deadline`` (time.monotonic) for room, then ask again.
    WAIT = "wait"
    REFUSE = "refuse"


class Verdict(NamedTuple):
    act: Act
    nbytes: float = 0.0
    deadline: float = 0.0
    reason: str = ""
    error: BufferFullError | None = None
    # overflow="raise": the caller hears of a refusal as an exception.
    raises: bool = False


_ADMIT = Verdict(Act.ADMIT)


class Admission:
    """The limits and the overflow policy of one client."""

    def __init__(
        self,
        policy: str,
        timeout: float,
        buffer: Buffer,
        queue: Sized,
        spool: SpoolLimit | None,
        own_thread: Callable[[], bool],
        *,
        queue_limit: int,
        life: Lifecycle,
        ledger: Ledger,
        reporter: Reporter,
    ) -> None:
        # One of options.OVERFLOW_POLICIES: the Buffering object checked it.
        self.policy = policy
        self._timeout = timeout
        self._buffer = buffer
        self._queue = queue
        self._spool = spool
        # A running mean of packed entry sizes, which the reader teaches us: what a
        # record still in the queue is charged against the buffer limit, so that post()
        # never serializes anything itself.
        self.mean_entry = 256.0
        self._batches = 0
        # The client's own threads make the room: a post from one of them (a log handler
        # in a callback) must never wait for it.
        self.own_thread = own_thread
        self._life = life
        self._ledger = ledger
        self._reporter = reporter
        # Records past which post() waits for the reader (see Pace).
        self.queue_limit = queue_limit
        # How long the queue may grow before post() must ask (see refresh()).
        self.room = 0
        self.refresh()

    def refresh(self) -> None:
        """Work out how many records may be queued before one would pass a limit.

        post() compares the queue's length with ``room`` and asks :meth:`judge` only when
        it is reached, so the usual post() pays for one comparison. Only the reader adds
        to the buffer and the spool, and it refreshes this after each batch: in between
        the figure can only be too small (the writer freed room), never too large.
        """
        buf, spool = self._buffer, self._spool
        if spool is not None and spool.size >= spool.limit:
            self.room = 0
            return
        free = (buf.limit - buf.held_bytes) / self.mean_entry
        self.room = max(0, min(self.queue_limit, int(free)))

    def learn(self, mean: float) -> None:
        """The mean size of the entries in a batch the reader just packed.

        The first batches count as much as each other (a plain average), so that the
        guess of 256 bytes is gone after the first: a guess too large refuses or evicts
        records that would have fit. Then each batch counts a tenth, following a change.
        """
        self._batches += 1
        weight = max(0.1, 1.0 / self._batches)
        self.mean_entry += weight * (mean - self.mean_entry)

    @property
    def keeps_rejected(self) -> bool:
        """Whether records the reader finds no room for wait for it (policy "block")."""
        return self.policy == "block"

    def full(self) -> bool:
        """Whether one more record would pass a limit. Cheap: post() asks every time."""
        buf, spool = self._buffer, self._spool
        return (
            buf.held_bytes + len(self._queue) * self.mean_entry >= buf.limit
            or (spool is not None and spool.size >= spool.limit)
        )

    def judge(self, after: Act | None = None) -> Verdict:
        """What post() does with a record, ``after`` acting on an earlier verdict."""
        if not self.full():
            return _ADMIT
        if after is None:
            if self.policy == "drop_oldest":
                return Verdict(Act.EVICT, nbytes=self.mean_entry)
            if self.policy == "block" and not self.own_thread():
                return Verdict(Act.WAIT, deadline=time.monotonic() + self._timeout)
        reason, error = self.refusal()
        return Verdict(Act.REFUSE, reason=reason, error=error, raises=self.policy == "raise")

    def refusal(self) -> tuple[str, BufferFullError]:
        """The drop reason and the error for a record refused now: which limit it met."""
        spool = self._spool
        if spool is not None and spool.size >= spool.limit:
            return DROP_SPOOL_FULL, self.spool_full()
        return DROP_BUFFER_FULL, self.buffer_full()

    def buffer_full(self) -> BufferFullError:
        return BufferFullError(f"Buffering.limit of {self._buffer.limit} bytes reached")

    def spool_full(self) -> BufferFullError:
        assert self._spool is not None
        return BufferFullError(f"spool_limit of {self._spool.limit} bytes reached")

    # -- acting on the verdicts, for post() -----------------------------------------------

    def admit(self, msg: Message, sync_append: bool, head: QueueHead) -> bool:
        """A limit is reached: act on the verdicts until one admits (True) or refuses
        (False, or the refusal raised, as the policy and ``sync_append`` say)."""
        spool = self._spool
        if spool is not None and spool.pending():
            # The reader deletes finished segments: a full spool may have room then.
            head.wake.set()
        reporting = self._reporter.marks
        verdict = self.judge()
        while verdict.act is not Act.ADMIT:
            if verdict.act is Act.EVICT:
                if self._evict_for(verdict.nbytes, head):
                    # The room is this record's, even if something took it since:
                    # a record posted by on_error as it heard of the eviction, or a batch
                    # the reader had in hand (in neither the queue nor the buffer, so not
                    # counted). The reader evicts for those in turn, the oldest first.
                    return True
            elif verdict.act is Act.WAIT:
                # A record posted while we report an error (a log line of on_error) is
                # refused at once rather than stall the report: it is counted quietly.
                if not reporting.active():
                    self._wait_for_room(verdict.deadline)
            else:
                assert verdict.error is not None
                # overflow="raise" would raise into our own reporting, and each refusal
                # would print a traceback (a log handler's handleError): not there.
                raises = verdict.raises and not reporting.active()
                return self._reporter.refuse(
                    verdict.reason, verdict.error, msg, sync_append or raises)
            verdict = self.judge(after=verdict.act)
        return True

    def _evict_for(self, nbytes: float, head: QueueHead) -> bool:
        """Evict the oldest records, buffered then queued, about ``nbytes`` and whatever
        is over the limit; whether the record has room now (made, or found: the reader
        took the queue into its hands, or the writer freed some, since post() looked)."""
        buf, mean = self._buffer, self.mean_entry
        with buf.lock:
            over = buf.held_bytes + len(self._queue) * mean + nbytes - buf.limit
            if over <= 0:
                return True
            evicted = buf.evict_locked(int(over) + 1)
            over -= sum(frame.entry_bytes for frame in evicted)
        if evicted:
            self.evicted(evicted)
            head.released(evicted)
        if over > 0:
            # Next oldest: what still waits for the reader, which owns the queue's head.
            queued = head.evict_queued(over, mean)
            if queued:
                err = BufferFullError("evicted to make room for newer records")
                for msg in queued:
                    self._reporter.fail(DROP_EVICTED, err, msg)
                return True
        # Nothing left to evict: the reader has the queue in hand, where it evicts for
        # its batch itself; only frames on the wire filling the buffer leave no room.
        return bool(evicted) or buf.held_bytes - buf.pending_bytes + nbytes <= buf.limit

    def _wait_for_room(self, deadline: float) -> None:
        # Woken by every release and by the reader while we wait; the step covers room
        # made by a spool cleanup.
        life = self._life
        self._buffer.wait_until(
            lambda: not self.full() or life.phase is not RUNNING, deadline, step=0.05,
            for_room=True)

    def evicted(self, frames: list[Frame]) -> None:
        """Frames removed by the drop_oldest policy: count them and tell their futures.
        The caller then releases them (see Reader.released)."""
        records = sum(frame.records for frame in frames)
        err = BufferFullError(
            f"evicted to make room for newer records ({count(records, 'record')})")
        # Counted before the futures and on_error hear of it (see Reporter.fail).
        first = self._ledger.drop(DROP_EVICTED, records, State.BUFFERED) == records
        for frame in frames:
            resolve_futures(frame, err)
        if first:
            self._reporter.tell(err, None, "fluentclient: dropping the oldest records to "
                                "make room: %s", err)
        else:
            self._reporter.tell(err, None)

    # -- the reader's questions, for a batch already packed ------------------------------

    def over_room_locked(self, incoming: int) -> int:
        """drop_oldest: the bytes of an incoming batch beyond the room the buffer has left
        once :meth:`make_room_locked` evicted what it could; those of its own oldest
        records go too. 0 under any other policy, whose buffer refuses what does not fit."""
        if self.policy != "drop_oldest":
            return 0
        return max(0, incoming - (self._buffer.limit - self._buffer.held_bytes))

    def make_room_locked(self, incoming: int) -> list[Frame]:
        """The oldest frames evicted so that ``incoming`` bytes can join the buffer
        (drop_oldest only; otherwise the buffer refuses what does not fit). Called with
        the buffer's lock held; the caller reports them (:meth:`evicted`) once it is not."""
        if self.policy != "drop_oldest":
            return []
        over = self._buffer.held_bytes + incoming - self._buffer.limit
        return self._buffer.evict_locked(over) if over > 0 else []

    def spool_fits(self, sizes: list[int], overhead: int) -> int:
        """How many of these entries, in order, the spool still has room for."""
        spool = self._spool
        if spool is None:
            return len(sizes)
        room = spool.limit - spool.size - overhead
        if room >= sum(sizes):
            return len(sizes)
        fits = 0
        while fits < len(sizes) and room >= sizes[fits]:
            room -= sizes[fits]
            fits += 1
        return fits


def oldest_to_cut(entries: Sequence[bytes], over: int) -> tuple[int, int]:
    """How many of the first (oldest) entries to drop so that ``over`` bytes fewer remain,
    and their bytes: drop_oldest, for a batch bigger than the room the buffer has left."""
    cut = dropped = 0
    while cut < len(entries) and dropped < over:
        dropped += len(entries[cut])
        cut += 1
    return cut, dropped
