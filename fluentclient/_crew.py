"""A buffered client's reader and writer threads: started on first use, parked around a
fork and restarted after it (see _parking.py for why and how they park)."""

from __future__ import annotations

import threading
import time
from collections import deque

from ._buffer import Buffer
from ._lifecycle import RUNNING, Lifecycle
from ._lifetime import _parking
from ._lifetime._parking import READER, Parking
from ._reading._reader import Reader
from ._threads import OwnThreads
from ._writing._writer import Writer


class Crew:
    """The two threads of one client's state, and the lock under which they change."""

    def __init__(self, reader: Reader, writer: Writer, life: Lifecycle, parking: Parking,
                 queue: deque[object], buffer: Buffer, own: OwnThreads) -> None:
        # Re-entrant: a signal handler that shuts down while its thread starts the threads
        # must not deadlock (see BufferedClient._end).
        self.lock = threading.RLock()
        self._reader = reader
        self._writer = writer
        self._life = life
        self._parking = parking
        self._queue = queue
        self._buffer = buffer
        self._own = own
        own.enlist(reader.thread, writer.thread)

    def start(self) -> None:
        """Start both threads (``lock`` held): the client runs from here."""
        self._reader.thread.start()
        self._writer.thread.start()
        self._life.start()

    def started(self) -> bool:
        return self._reader.thread.ident is not None

    def park(self, deadline: float) -> list[threading.Thread]:
        """Before a fork in this process: ask the running threads to park; the threads to
        wait for, until ``deadline``.

        Every lock here is taken with the deadline: a thread of the program may hold one
        across the fork. A writer long in a socket call is asked but not waited for: a
        fork does not wait out a slow server, and a pool forking many times does not wait
        for it at each fork.
        """
        if not self.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return []
        try:
            if self._life.phase is not RUNNING or self._own.includes_caller():
                # Not running, or forked from a thread of ours (a callback): nothing to
                # stop that could be waited for.
                return []
            reader, writer = self._reader, self._writer
            if reader.wake.resume is not None:
                # Dormant since an earlier fork: parked already (setting the wake-up
                # would restart them). Only a thread that had not parked yet is waited for.
                return [t for t in (reader.thread, writer.thread) if t.is_alive()]
            self._parking.requested = True
            reader.wake.set()
            buf = self._buffer
            if buf.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    buf.changed.notify_all()  # the writer, waiting for work or a retry
                finally:
                    buf.lock.release()
            waits = [reader.thread]
            since = writer.in_socket_call_since
            if since is None or time.monotonic() - since < _parking.STUCK_AFTER:
                waits.append(writer.thread)
            return waits
        finally:
            self.lock.release()

    def resume_after_fork(self) -> None:
        """In the parent, once the fork is done: restart the threads now if they have
        work, else leave the client dormant until its next use (see _parking.py)."""
        with self.lock:
            if not self._parking.requested:
                return  # resumed already (a shutdown during the fork)
            if not self.has_work():
                reader = self._reader
                # From here a post that queues a record finds the reader idle and sets
                # its wake-up, which restarts the threads; one queued before is seen below.
                reader.idle = True
                reader.wake.resume = self._resume_dormant
                if not self.has_work():
                    return
                reader.wake.resume = None
            self.resume()

    def has_work(self) -> bool:
        return (bool(self._queue) or self._buffer.held_records > 0
                or self._reader.has_work() or self._writer.has_work())

    def _resume_dormant(self) -> None:
        """Called by the reader's wake-up, on whatever thread needs the reader first."""
        with self.lock:
            self.resume()

    def resume(self) -> None:
        """Restart the threads that parked for a fork (``lock`` held)."""
        if not self._parking.requested:
            return
        reader, writer = self._reader, self._writer
        reader.wake.resume = None

        def replace(which: str) -> threading.Thread:
            if which == READER:
                # The new reader starts by looking at the queue: posts need not wake it.
                reader.idle = False
                reader.thread = reader.new_thread()
            else:
                writer.thread = writer.new_thread()
            self._own.enlist(reader.thread, writer.thread)
            return reader.thread if which == READER else writer.thread

        for thread in self._parking.end(replace):
            try:
                thread.start()
            except RuntimeError as exc:  # no new threads: out of resources, or finalizing
                self._life.fail(f"cannot restart the {thread.name} thread after a fork: {exc}")
