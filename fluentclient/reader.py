"""The reader thread: moves posted messages from the queue into the buffer.

It owns the packer, so serialization never needs a lock; the buffer's lock is taken once
per batch, only to append bytes that are already packed.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
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

Failure = Callable[[str, FluentError, Message], None]


class Reader:
    def __init__(
        self,
        q: queue.SimpleQueue[object],
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
        # Messages taken from the queue; only this thread writes it.
        self.taken = 0
        # A running mean of entry sizes, so post() can charge what still waits in the
        # queue against the buffer limit without serializing anything itself.
        self.mean_entry = 256.0
        self.thread = threading.Thread(target=self._run, name="fluentclient-reader", daemon=True)

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        stopping = False
        try:
            while not stopping:
                try:
                    first = get(timeout=1.0)
                except queue.Empty:
                    if self._life.abandoned:
                        break
                    continue
                batch: list[object] = [first]
                try:
                    while len(batch) < BATCH:
                        batch.append(get_nowait())
                except queue.Empty:
                    pass
                if batch[-1] is STOP or STOP in batch:
                    stopping = True
                    batch = [m for m in batch if m is not STOP]
                self._append(batch)  # type: ignore[arg-type]
                if not stopping and len(batch) == BATCH:
                    # More is waiting: let a posting thread have the GIL first.
                    time.sleep(0)
        except BaseException:  # pragma: no cover - a bug; never die silently
            log.exception("fluentclient reader thread failed")
        finally:
            with self._buffer.lock:
                self._life.reader_done = True
                self._buffer.changed.notify_all()

    def _append(self, batch: list[Message]) -> None:
        if not batch:
            return
        pack = self._packer.pack
        packed: list[tuple[Message, bytes]] = []
        total = 0
        for msg in batch:
            try:
                entry = pack(msg)
            except SerializationError as exc:
                self._fail(DROP_UNSERIALIZABLE, exc, msg)
                continue
            if len(entry) > self._buffer.payload_limit(msg.tag):
                self._fail(
                    DROP_TOO_LARGE,
                    RecordTooLargeError(
                        f"a {len(entry)}-byte record does not fit in a frame of "
                        f"{self._buffer.max_frame_size} bytes"
                    ),
                    msg,
                )
                continue
            packed.append((msg, entry))
            total += len(entry)
        rejected: list[Message] | None = None
        buf = self._buffer
        with buf.lock:
            was_idle = buf.pending_records == 0
            add = buf.add_locked
            for msg, entry in packed:
                if not add(msg.tag, entry):
                    if rejected is None:
                        rejected = []
                    rejected.append(msg)
            if was_idle or buf.pending_bytes >= buf.write_threshold:
                buf.changed.notify()
        self.taken += len(batch)
        if packed:
            self.mean_entry = 0.9 * self.mean_entry + 0.1 * (total / len(packed))
        for msg, _ in packed:
            if msg.waiter is not None and (rejected is None or msg not in rejected):
                msg.waiter.set_result(None)
        if rejected:
            err = BufferFullError(f"buffer_limit of {buf.limit} bytes reached")
            for msg in rejected:
                self._fail(DROP_BUFFER_FULL, err, msg)
