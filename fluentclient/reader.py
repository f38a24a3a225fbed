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
from typing import Callable

from .buffer import Buffer
from .errors import BufferFullError, FluentError, RecordTooLargeError, SerializationError
from .framing import EntryPacker
from .lifecycle import Lifecycle
from .message import Message
from .stats import DROP_BUFFER_FULL, DROP_TOO_LARGE, DROP_UNSERIALIZABLE

log = logging.getLogger("fluentclient")

STOP = object()
# Enough to amortise the lock, few enough that one batch takes well under a millisecond of
# GIL time: a thread posting meanwhile must not wait a whole switch interval.
BATCH = 128
# How often a busy reader looks at the queue without being woken.
POLL = 0.005



def _sleep0() -> None:
    time.sleep(0)


# Hands the GIL to another thread for a moment. sched_yield() releases the GIL and the
# CPU without a timer; sleep(0) would cost the timer slack (about 50 us on Linux).
yield_gil: Callable[[], None] = getattr(os, "sched_yield", _sleep0)

Failure = Callable[[str, FluentError, Message], None]


class Reader:
    """Drains the queue in batches, polling while records flow.

    Waking a sleeping thread costs the poster a system call, so ``post()`` wakes the
    reader only when it went idle (see ``idle``) or when a caller waits
    (``sync_append``). While records keep coming the reader looks again every ``POLL``
    seconds by itself.
    """

    def __init__(
        self,
        q: deque[object],
        buf: Buffer,
        life: Lifecycle,
        packer: EntryPacker,
        fail: Failure,
    ) -> None:
        self._queue = q
        self._buffer = buf
        self._life = life
        self._packer = packer
        self._fail = fail
        self.wake = threading.Event()
        # True while the reader waits for post() to wake it rather than polling.
        self.idle = False
        # Messages taken from the queue; only this thread writes it.
        self.taken = 0
        # A running mean of entry sizes, so post() can charge what still waits in the
        # queue against the buffer limit without serializing anything itself.
        self.mean_entry = 256.0
        self.thread = threading.Thread(target=self._run, name="fluentclient-reader", daemon=True)

    def _run(self) -> None:
        q, popleft = self._queue, self._queue.popleft
        stopping = False
        try:
            while True:
                batch: list[object] = []
                try:
                    while len(batch) < BATCH:
                        batch.append(popleft())
                except IndexError:
                    pass
                if batch:
                    if STOP in batch:
                        stopping = True
                        batch = [m for m in batch if m is not STOP]
                    self._append(batch)  # type: ignore[arg-type]
                    if len(batch) == BATCH:
                        # More is waiting: let a posting thread have the GIL first.
                        yield_gil()
                    continue
                if stopping or self._life.abandoned:
                    break
                if not self.wake.wait(POLL):
                    # A quiet poll: go idle until post() wakes us. ``idle`` is published
                    # before the queue is looked at again, so a racing post() is either
                    # seen here or sees ``idle`` and sets ``wake``.
                    self.idle = True
                    if not q:
                        self.wake.wait(1.0)
                    self.idle = False
                self.wake.clear()
        except BaseException:  # pragma: no cover - a bug; never die silently
            log.exception("fluentclient reader thread failed")
        finally:
            with self._buffer.lock:
                self._life.reader_done = True
                self._buffer.changed.notify_all()

    def _append(self, batch: list[Message]) -> None:
        if not batch:
            return
        buf = self._buffer
        pack = self._packer.pack
        limit_of = buf.payload_limit
        kept: list[Message] = []
        entries: list[bytes] = []
        for msg in batch:
            try:
                entry = pack(msg)
            except SerializationError as exc:
                self._fail(DROP_UNSERIALIZABLE, exc, msg)
                continue
            if len(entry) > limit_of(msg.tag):
                self._fail(
                    DROP_TOO_LARGE,
                    RecordTooLargeError(
                        f"a {len(entry)}-byte record does not fit in a frame of "
                        f"{buf.max_frame_size} bytes"
                    ),
                    msg,
                )
                continue
            kept.append(msg)
            entries.append(entry)
        with buf.lock:
            was_idle = buf.pending_records == 0
            rejected = buf.add_batch_locked(kept, entries)
            if was_idle or buf.pending_bytes >= buf.write_threshold:
                buf.changed.notify()
        self.taken += len(batch)
        if entries:
            mean = sum(map(len, entries)) / len(entries)
            self.mean_entry = 0.9 * self.mean_entry + 0.1 * mean
        for msg in kept:
            if msg.waiter is not None and (not rejected or msg not in rejected):
                msg.waiter.set_result(None)
        if rejected:
            err = BufferFullError(f"buffer_limit of {buf.limit} bytes reached")
            for msg in rejected:
                self._fail(DROP_BUFFER_FULL, err, msg)
