"""Admission: whether a record may join what a BufferedClient holds, decided in one place.

The limits are ``Buffering.limit`` (bytes buffered plus an estimate for what still waits in
the queue) and the spool's own limit; the overflow policy says what happens when one is
reached. Both ``post()`` and the reader ask here, and get a :class:`Verdict` to act on:
this module decides, it never waits, evicts or counts anything itself.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Collection, Sized
from typing import NamedTuple, Protocol

from ._buffer import Buffer
from .errors import BufferFullError
from .stats import DROP_BUFFER_FULL, DROP_SPOOL_FULL


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
    """What admission needs of a spool: how full it is."""

    @property
    def size(self) -> int: ...

    @property
    def limit(self) -> int: ...


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
        own_threads: Collection[threading.Thread],
        *,
        queue_limit: int,
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
        # The client's own threads make the room: a post from one of them (a log handler
        # in a callback) must never wait for it.
        self._own_threads = own_threads
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

    def own_thread(self) -> bool:
        """Whether the caller is one of the client's own threads, which must never wait
        for room: they are the ones that make it."""
        return threading.current_thread() in self._own_threads

    def learn(self, mean: float) -> None:
        """The mean size of the entries in a batch the reader just packed."""
        self.mean_entry = 0.9 * self.mean_entry + 0.1 * mean

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

    # -- the reader's questions, for a batch already packed ------------------------------

    def excess_locked(self, incoming: int) -> int:
        """Bytes of the oldest frames to evict before ``incoming`` bytes join the buffer
        (drop_oldest only; otherwise the buffer refuses what does not fit). Called with
        the buffer's lock held."""
        if self.policy != "drop_oldest":
            return 0
        return max(0, self._buffer.held_bytes + incoming - self._buffer.limit)

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
