"""The hand-over between the reader thread and the writer thread.

The reader appends serialized entries, grouped by tag; the writer takes whole frames and
later releases them (the peer took them) or puts them back (the connection failed before
the peer took them). Everything held here, taken frames included, counts against the
limit, so memory stays bounded whatever the server does. All state is guarded by
``lock``; ``changed`` wakes the writer and ``done`` wakes callers of ``flush()``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Callable, Protocol, TypeVar

from .framing import frame_overhead

# A busy stream is written at most about this often (see Buffer.due_in)...
GATHER_SECONDS = 0.002
# ...unless this much is waiting.
GATHER_BYTES = 256 * 1024


class Tagged(Protocol):
    """What the buffer needs of a record beside its packed entry."""

    @property
    def tag(self) -> str: ...

    @property
    def delivery(self) -> Future[None] | None: ...


_T = TypeVar("_T", bound=Tagged)


class Frame:
    """The entries of one tag, gathered until sealed, then written as one frame.

    The writer builds ``data`` (the wire bytes, maybe compressed, with a chunk id) outside
    the buffer's lock and keeps it for resends, so a chunk id never changes. The entries
    are emptied once built (``built`` tells which of the two holds the records);
    ``entry_bytes`` is what the frame counts against the limit.
    """

    __slots__ = (
        "tag", "entries", "data", "chunk", "records", "first_seq", "last_seq", "entry_bytes",
        "futures", "attempts", "limit", "left",
    )

    def __init__(self, tag: str, first_seq: int, limit: int) -> None:
        self.tag = tag
        self.entries = bytearray()
        # Empty until built: a built frame holds at least one record, so never empty then.
        self.data = b""
        self.chunk: str | None = None
        self.records = 0
        # The frame holds exactly the records of its tag numbered first_seq to last_seq,
        # which is how the spool names them.
        self.first_seq = first_seq
        self.last_seq = first_seq
        self.entry_bytes = 0
        # Delivery futures of records posted with ack=True; None while there are none.
        self.futures: list[Future[None]] | None = None
        # Connections this frame was written to that failed before it was acknowledged.
        self.attempts = 0
        self.limit = limit
        # Set by the writer before the frame's first byte goes to a socket, cleared if the
        # frame comes back not written whole (no server decodes half a frame). A frame
        # that has left may arrive, so it must never be reported unsent without acks.
        self.left = False

    @property
    def built(self) -> bool:
        return bool(self.data)


class Buffer:
    def __init__(
        self,
        *,
        limit: int,
        write_threshold: int,
        max_frame_size: int,
        on_release: Callable[[Sequence[Frame]], None] | None = None,
    ) -> None:
        self.lock = threading.Lock()
        # Told (outside the lock) of frames that leave for good: sent, acked or given up.
        self.on_release = on_release
        self.changed = threading.Condition(self.lock)
        self.done = threading.Condition(self.lock)
        self.limit = limit
        self.write_threshold = write_threshold
        self.gather_bytes = max(write_threshold, GATHER_BYTES)
        # When the writer last took frames (time.monotonic), for gathering (see due_in).
        self.last_take = float("-inf")
        # Set by the writer while no server can be written to (all down or backing off):
        # then the reader need not make way for it.
        self.no_server = False
        self.max_frame_size = max_frame_size
        self._gathering: dict[str, Frame] = {}
        self._ready: deque[Frame] = deque()
        self._taken: dict[int, Frame] = {}
        # Frames written to a failed connection that may still come back (set_aside): not
        # counted against the limit, but kept for the spool and for restore().
        self._aside: dict[int, Frame] = {}
        self._payload_limits: dict[str, int] = {}
        # Bytes and records not yet taken by the writer ("pending") and all held ("held").
        self.pending_bytes = 0
        self.pending_records = 0
        self.held_bytes = 0
        self.held_records = 0
        # Records get consecutive numbers as they enter, so flush() can wait for a prefix.
        self.next_seq = 0
        self.oldest_pending: float | None = None
        self.flush_until = -1
        # post() callers waiting for room (overflow="block"): the reader wakes them too.
        self.room_waiters = 0
        # Whether a frame that has left counts as possibly lost when shutdown finds it
        # here (without acks). With acks it is reported unsent and resent by the caller's
        # means, as at-least-once allows: the writer sets this from its mode.
        self.left_is_lost = True

    # -- reader side (lock held by the caller) -------------------------------------------

    def payload_limit(self, tag: str) -> int:
        limit = self._payload_limits.get(tag)
        if limit is None:
            limit = self.max_frame_size - frame_overhead(tag)
            if len(self._payload_limits) < 4096:
                self._payload_limits[tag] = limit
        return limit

    def add_run_locked(self, tag: str, data: bytes, records: int) -> bool:
        """Append a run of one tag's entries in one piece; False, with nothing done, when
        it does not fit whole (the limit, or the frame being gathered), and the caller goes
        record by record instead. The usual case, and one copy for the whole run."""
        size = len(data)
        if self.held_bytes + size > self.limit:
            return False
        frame = self._gathering.get(tag)
        if frame is None:
            limit = self.payload_limit(tag)
            if size > limit:
                return False
            frame = self._gathering[tag] = Frame(tag, self.next_seq, limit)
        elif frame.entry_bytes + size > frame.limit:
            return False
        seq = self.next_seq
        frame.entries += data
        frame.entry_bytes += size
        frame.records += records
        frame.last_seq = seq + records - 1
        self._grew(seq + records, records, size)
        return True

    def add_batch_locked(
        self, msgs: list[_T], entries: list[bytes], *, in_order: bool = False
    ) -> list[_T]:
        """Append the entries of a batch in order; returns the messages over the limit.

        ``in_order``: the rejected records will wait for room and be added later
        (overflow="block"), so the first record that does not fit stops the batch: every
        later one is rejected with it, even one small enough to fit, which would otherwise
        reach the server ahead of it. Without it a record that does not fit is dropped
        and a later, smaller one may still go in: nothing is reordered, only lost.

        The bookkeeping is kept in locals: this loop runs once per record on the reader
        thread, which holds the GIL meanwhile.
        """
        rejected: list[_T] = []
        held, limit, seq = self.held_bytes, self.limit, self.next_seq
        gathering = self._gathering
        added_bytes = added = 0
        tag: str | None = None
        frame: Frame | None = None
        for msg, entry in zip(msgs, entries):
            size = len(entry)
            if held + size > limit:
                if in_order:
                    # Nothing was rejected before this one, so ``added`` is its index.
                    rejected.extend(msgs[added:])
                    break
                rejected.append(msg)
                continue
            if msg.tag != tag or frame is None:
                tag = msg.tag
                frame = gathering.get(tag)
                if frame is None:
                    frame = gathering[tag] = Frame(tag, seq, self.payload_limit(tag))
            if frame.entry_bytes + size > frame.limit:
                self._ready.append(frame)
                frame = gathering[tag] = Frame(tag, seq, frame.limit)
            frame.entries += entry
            frame.entry_bytes += size
            frame.records += 1
            frame.last_seq = seq
            if msg.delivery is not None:
                if frame.futures is None:
                    frame.futures = []
                frame.futures.append(msg.delivery)
            seq += 1
            held += size
            added_bytes += size
            added += 1
        if added:
            self._grew(seq, added, added_bytes)
        return rejected

    def _grew(self, next_seq: int, records: int, nbytes: int) -> None:
        if self.oldest_pending is None:
            self.oldest_pending = time.monotonic()
        self.next_seq = next_seq
        self.held_bytes += nbytes
        self.held_records += records
        self.pending_bytes += nbytes
        self.pending_records += records

    # -- writer side ---------------------------------------------------------------------

    def due_in(self, now: float, flush_interval: float) -> float | None:
        """Seconds until a write is due (0: now), or None when nothing is pending.

        Past ``write_threshold`` a write is due at once, unless the writer wrote less than
        ``GATHER_SECONDS`` ago: then a busy stream gathers into fewer, larger writes (each
        costs the writer system calls and a turn of the GIL) until then or until
        ``gather_bytes`` wait. A record after a quiet spell, flush() and shutdown never wait
        for that.
        """
        if not self.pending_records:
            return None
        if self.flush_until >= 0:
            return 0.0
        if self.pending_bytes >= self.write_threshold:
            if self.pending_bytes >= self.gather_bytes:
                return 0.0
            return max(0.0, self.last_take + GATHER_SECONDS - now)
        assert self.oldest_pending is not None
        return max(0.0, self.oldest_pending + flush_interval - now)

    def became_due_locked(self, before: int) -> bool:
        """Whether growing from ``before`` pending bytes to now made a write due sooner:
        the writer needs waking only then, not on every batch."""
        after = self.pending_bytes
        return (
            before == 0
            or before < self.write_threshold <= after
            or before < self.gather_bytes <= after
        )

    def take_locked(self, max_bytes: int) -> list[Frame]:
        """Take sealed frames, then whole-tag gatherings, up to about ``max_bytes``."""
        frames: list[Frame] = []
        size = 0
        while self._ready and (not frames or size < max_bytes):
            frame = self._ready.popleft()
            frames.append(frame)
            size += frame.entry_bytes
        for tag in list(self._gathering):
            if frames and size >= max_bytes:
                break
            frame = self._gathering.pop(tag)
            frames.append(frame)
            size += frame.entry_bytes
        if frames:
            self.last_take = time.monotonic()
        for frame in frames:
            self._taken[id(frame)] = frame
            self.pending_bytes -= frame.entry_bytes
            self.pending_records -= frame.records
        if not self.pending_records:
            self.oldest_pending = None
        return frames

    def mark_left(self, frames: Sequence[Frame]) -> bool:
        """Mark frames as leaving, just before the writer hands them to a socket; False,
        marking none, if shutdown has already taken them back (drain_all) to report them
        unsent: then they must not leave. Under the lock, so the two never overlap."""
        with self.lock:
            if any(self._taken.get(id(frame)) is not frame for frame in frames):
                return False
            for frame in frames:
                frame.left = True
            return True

    def release(self, frames: Sequence[Frame]) -> None:
        """The writer is done with these frames: the peer took them, or they were given up."""
        with self.lock:
            for frame in frames:
                if self._taken.pop(id(frame), None) is not None:
                    self.held_bytes -= frame.entry_bytes
                    self.held_records -= frame.records
                else:
                    self._aside.pop(id(frame), None)
            self._after_progress()
        if self.on_release is not None and frames:
            self.on_release(frames)

    def set_aside(self, frames: Sequence[Frame]) -> None:
        """Stop counting frames the writer holds on a failed connection against the limit,
        without releasing them: they may yet come back (:meth:`restore`), so the spool
        keeps them until they are released."""
        with self.lock:
            for frame in frames:
                if self._taken.pop(id(frame), None) is not None:
                    self._aside[id(frame)] = frame
                    self.held_bytes -= frame.entry_bytes
                    self.held_records -= frame.records
            self._after_progress()

    def restore(self, frames: Sequence[Frame]) -> None:
        """Put frames set aside back, oldest first, to be sent again: they provably never
        reached the server."""
        with self.lock:
            for frame in reversed(frames):
                if self._aside.pop(id(frame), None) is not None:
                    frame.left = False
                    self._ready.appendleft(frame)
                    self.held_bytes += frame.entry_bytes
                    self.held_records += frame.records
                    self.pending_bytes += frame.entry_bytes
                    self.pending_records += frame.records
            self.oldest_pending = float("-inf")
            self._after_progress()

    def evict_locked(self, nbytes: int) -> list[Frame]:
        """Remove the oldest frames the writer has not taken, to free ``nbytes`` bytes.

        For the ``drop_oldest`` overflow policy; frames in flight are never evicted, so
        this may free less than asked.
        """
        evicted: list[Frame] = []
        freed = 0
        while freed < nbytes and (self._ready or self._gathering):
            if self._ready:
                frame = self._ready.popleft()
            else:
                tag = min(self._gathering, key=lambda t: self._gathering[t].first_seq)
                frame = self._gathering.pop(tag)
            evicted.append(frame)
            freed += frame.entry_bytes
            self.held_bytes -= frame.entry_bytes
            self.held_records -= frame.records
            self.pending_bytes -= frame.entry_bytes
            self.pending_records -= frame.records
        if not self.pending_records:
            self.oldest_pending = None
        if evicted:
            self._after_progress()
        return evicted

    def oldest_held_locked(self) -> int:
        """The lowest record number still held (``next_seq`` when nothing is)."""
        oldest = self.next_seq
        for frames in (self._taken.values(), self._aside.values(), self._ready,
                       self._gathering.values()):
            for frame in frames:
                if frame.first_seq < oldest:
                    oldest = frame.first_seq
        return oldest

    def requeue(self, frames: Sequence[Frame]) -> None:
        """Put frames back, oldest first, to be sent again whole on the next connection."""
        if not frames:
            return
        with self.lock:
            for frame in reversed(frames):
                if self._taken.pop(id(frame), None) is not None:
                    self._ready.appendleft(frame)
                    self.pending_bytes += frame.entry_bytes
                    self.pending_records += frame.records
            # Requeued frames are overdue already.
            self.oldest_pending = float("-inf")
            self._after_progress()

    def _after_progress(self) -> None:
        if self.flush_until >= 0 and not self._taken_before(self.flush_until):
            self.flush_until = -1
        self.done.notify_all()

    def _taken_before(self, seq: int) -> bool:
        """Whether any record numbered below ``seq`` is still held."""
        for frame in self._taken.values():
            if frame.first_seq < seq:
                return True
        for frame in self._ready:
            if frame.first_seq < seq:
                return True
        for frame in self._gathering.values():
            if frame.first_seq < seq:
                return True
        return False

    # -- flush and shutdown --------------------------------------------------------------

    def request_flush(self) -> int:
        """Ask the writer to write everything now; returns the sequence to wait for."""
        with self.lock:
            self.flush_until = max(self.flush_until, self.next_seq)
            self.changed.notify_all()
            return self.next_seq

    def wait_flushed(
        self, seq: int, deadline: float | None, failed: Callable[[], object] | None = None
    ) -> bool:
        """Wait until the records before ``seq`` are done with; False at the deadline, or
        once ``failed()`` is true (checked whenever ``done`` is notified)."""
        with self.lock:
            while self._taken_before(seq):
                if failed is not None and failed():
                    return False
                if deadline is None:
                    self.done.wait(1.0)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.done.wait(remaining)
            return True

    def wait_until(
        self, ready: Callable[[], object], deadline: float | None, *, step: float,
        poke: bool = False, for_room: bool = False,
    ) -> bool:
        """Wait until ``ready()`` (asked with the lock held, every ``step`` seconds and
        whenever ``done`` is notified); False at the deadline.

        ``poke``: wake the writer at each look, so that it reads answers now rather than
        at its next turn. ``for_room``: a post waiting for room, which the reader then
        wakes as it adds (see ``room_waiters``).
        """
        with self.lock:
            if for_room:
                self.room_waiters += 1
            try:
                while not ready():
                    remaining = step if deadline is None else min(
                        step, deadline - time.monotonic())
                    if remaining <= 0:
                        return False
                    if poke:
                        self.changed.notify_all()
                    self.done.wait(remaining)
                return True
            finally:
                if for_room:
                    self.room_waiters -= 1

    def drain_all(self) -> tuple[int, int, list[Frame]]:
        """Remove everything held (once the writer is gone or given up on): the records,
        bytes and frames that never left this process.

        Frames that left (a writer slow to stop may be writing them now) are dropped from
        the buffer but not returned: they may arrive, so they must not be handed to
        ``on_unsent`` or counted unsent; the ledger counts them possibly lost. With acks
        (``left_is_lost`` false) they are returned like the rest.
        """
        with self.lock:
            records, nbytes = self.held_records, self.held_bytes
            frames = [*self._taken.values(), *self._ready, *self._gathering.values()]
            if self.left_is_lost:
                gone = [f for f in frames if f.left]
                frames = [f for f in frames if not f.left]
                records -= sum(f.records for f in gone)
                nbytes -= sum(f.entry_bytes for f in gone)
            self._gathering.clear()
            self._ready.clear()
            self._taken.clear()
            self._aside.clear()
            self.pending_bytes = self.pending_records = 0
            self.held_bytes = self.held_records = 0
            self.oldest_pending = None
            self.flush_until = -1
            self.done.notify_all()
            return records, nbytes, frames
