"""What callers on other threads wait for from the reader: the queue down to a batch
(posts that outrun packing), every record queued so far taken (flush), one record
buffered (``sync_append``). The reader signals the first; the others it never tells."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from typing import Callable

from .._buffer import Buffer
from .._ledger import Ledger
from .._lifecycle import NEW, RUNNING, Lifecycle
from .._lifetime._parking import WakeUp
from ..errors import ClientClosedError, FluentTimeoutError


class ReaderWaits:
    """The waits on one reader. ``alive`` and ``gone`` ask the reader about its thread:
    running now, and ended for good (not merely parked for a fork)."""

    def __init__(self, queue: deque[object], batch: int, wake: WakeUp, life: Lifecycle,
                 ledger: Ledger, buffer: Buffer, *, alive: Callable[[], bool],
                 gone: Callable[[], bool]) -> None:
        self._queue = queue
        self._batch = batch
        self._wake = wake
        self._life = life
        self._ledger = ledger
        self._buffer = buffer
        self._alive = alive
        self._gone = gone
        # post() callers waiting for the queue to drain. A lock of its own: a caller
        # interrupted there (a signal handler that shuts the client down) must not hold
        # up the lifecycle's lock.
        self._drained = threading.Condition(threading.Lock())
        self._drain_waiters = 0

    def took(self, queued: int) -> None:
        """The reader took a batch and left ``queued`` records: wake the drain waiters
        once that is down to a batch. Costs a batch nothing while nobody waits."""
        if self._drain_waiters and queued <= self._batch:
            with self._drained:
                self._drained.notify_all()

    def stopped(self) -> None:
        """The reader stopped for good: no drain waiter waits for it any longer."""
        with self._drained:
            self._drained.notify_all()

    def drained(self, timeout: float) -> None:
        """Let the reader take the queue down to one batch, for at most ``timeout`` s.

        post() calls this when posts outrun packing: the caller gives up the GIL to the
        reader rather than letting Python objects pile up in the queue. The reader is
        busy on the CPU, never on the server, so this waits for no I/O.
        """
        deadline = time.monotonic() + timeout
        # Bounded even to take the lock: a signal handler that posts while its own thread
        # holds it (waiting here) must not deadlock, only give up.
        if not self._drained.acquire(timeout=timeout):
            return
        self._drain_waiters += 1
        try:
            while len(self._queue) > self._batch and self._alive():
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._drained.wait(remaining)
        finally:
            self._drain_waiters -= 1
            self._drained.release()

    def taken(self, deadline: float | None) -> bool:
        """Wait until every record queued so far has left the queue (buffered or dropped),
        as the ledger counts them; False at the deadline. True as soon as the client stops
        running: flush() then waits for the shutdown's outcome instead."""
        ledger, life = self._ledger, self._life
        target = ledger.entered()
        if ledger.left_queue() >= target:
            return True
        self._wake.set()
        # The reader notifies nobody per batch (that would cost every batch a wake-up):
        # look again every few milliseconds.
        return self._buffer.wait_until(
            lambda: ledger.left_queue() >= target or life.phase is not RUNNING,
            deadline, step=0.005)

    def appended(self, waiter: Future[None], timeout: float | None) -> None:
        """post(sync_append=True): wait until the reader has buffered the record, or raise
        why not (see Message.waiter)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # In slices, so that a reader that is gone (it never should be) turns into an
            # error rather than a caller waiting forever.
            step = 0.5 if deadline is None else min(0.5, max(0.0, deadline - time.monotonic()))
            try:
                waiter.result(step)
                return
            except FuturesTimeout:
                pass
            if deadline is not None and time.monotonic() >= deadline:
                raise FluentTimeoutError(
                    f"the record did not reach the buffer within {timeout} s"
                ) from None
            if self._life.phase is not NEW and self._gone() and not waiter.done():
                raise ClientClosedError("the client's reader thread has stopped")
