"""Replaying what previous processes left in the spool: on the reader's thread, between
its batches, as the buffer has room (see _spool.py for the files, docs/guarantees.md for
what a restart recovers)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Callable, NamedTuple

from .._admission import Admission
from .._buffer import Buffer
from .._journal import Claim, Journal, Replayed
from .._lifecycle import Lifecycle
from .._reporting import Reporter
from .._spool import Span
from ..errors import RecordTooLargeError
from ..stats import DROP_BUFFER_FULL, DROP_TOO_LARGE

log = logging.getLogger("fluentclient")


class Spooled(NamedTuple):
    """A record replayed from the spool: packed already, and no caller waits on it."""

    tag: str
    delivery: Future[None] | None = None


class Replay:
    """The owners a previous process left in the spool, and the one being replayed."""

    def __init__(self, journal: Journal, buffer: Buffer, life: Lifecycle,
                 reporter: Reporter, admission: Admission, batch: int,
                 add: Callable[[list[Spooled], list[bytes]], list[Spooled]]) -> None:
        self._buffer = buffer
        self._life = life
        self._reporter = reporter
        self._admission = admission
        self._batch = batch
        # The reader's way into the buffer (and the spool): returns what did not fit.
        self._add = add
        self._orphans: Iterator[Claim] | None = journal.orphans()
        self._orphan: Claim | None = None
        self._replay: Iterator[Replayed] | None = None
        self._replay_next: Replayed | None = None
        self._replay_taken: list[Span] = []
        # Records previous processes left in the spool that this reader did not take over
        # and leaves there for a later process: counted as it stops, for the report.
        self.left_in_spool = 0

    @property
    def active(self) -> bool:
        """Whether owners are left to replay (or to count as left, when stopping)."""
        return self._orphans is not None

    def step(self) -> bool:
        """Feed one batch of orphaned records if the buffer has room; False if it did not."""
        if self._replay is None and not self._next_orphan():
            return False
        assert self._replay is not None
        buf = self._buffer
        room = buf.limit - buf.held_bytes
        msgs: list[Spooled] = []
        entries: list[bytes] = []
        while len(msgs) < self._batch:
            item = self._replay_next or next(self._replay, None)
            self._replay_next = None
            if item is None:
                break
            tag, entry, seq = item
            if len(entry) > buf.payload_limit(tag):
                # Spooled under a larger max_frame_size: taken over, and counted as dropped.
                self._note_taken(tag, seq)
                self._reporter.fail_spooled(DROP_TOO_LARGE, RecordTooLargeError(
                    f"a spooled {len(entry)}-byte record does not fit in a frame of "
                    f"{buf.max_frame_size} bytes"), 1)
                continue
            if len(entry) > room:
                self._replay_next = item
                break
            room -= len(entry)
            msgs.append(Spooled(tag))
            entries.append(entry)
            self._note_taken(tag, seq)
        if msgs:
            rejected = self._add(msgs, entries)
            if rejected:
                # Room was there when measured; eviction can still take it.
                self._reporter.fail_spooled(
                    DROP_BUFFER_FULL, self._admission.buffer_full(), len(rejected))
        elif self._replay_next is not None:
            return False  # waiting for room
        else:
            # This owner is done: its records are ours now.
            assert self._orphan is not None
            self._orphan.finish()
            self._orphan = self._replay = None
            self._replay_taken = []
            return self._orphans is not None
        return True

    def _next_orphan(self) -> bool:
        assert self._orphans is not None
        self._orphan = next(self._orphans, None)
        if self._orphan is None:
            self._orphans = None
            return False
        log.info("fluentclient: replaying records left in the spool by %s", self._orphan.owner)
        self._replay = self._orphan.records()
        return True

    def _note_taken(self, tag: str, seq: int) -> None:
        taken = self._replay_taken
        if taken and taken[-1][0] == tag and taken[-1][2] == seq - 1:
            taken[-1] = (tag, taken[-1][1], seq)
        else:
            taken.append((tag, seq, seq))

    def cut(self) -> bool:
        """Whether replay must stop: close(), or shutdown's deadline has passed."""
        life = self._life
        drain = life.drain_deadline
        return life.abandoned or (drain is not None and time.monotonic() >= drain)

    def stop(self) -> None:
        """Leave what replay did not take to a later process, and count it.

        The owners not reached yet are claimed only for as long as it takes to count
        their records from the blocks' counts, then left as they were.
        """
        left = 0
        if self._orphan is not None:
            taken = sum(last - first + 1 for _, first, last in self._replay_taken)
            left += max(0, self._orphan.pending() - taken)
            self._orphan.abandon(self._replay_taken)
            self._orphan = self._replay = None
        orphans, self._orphans = self._orphans, None
        if orphans is not None:
            for claim in orphans:
                left += claim.pending()
                claim.abandon(())
        self.left_in_spool = left
