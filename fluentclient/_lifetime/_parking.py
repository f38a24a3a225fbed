"""Parking a buffered client's threads around a fork, so the child is forked from a
process that runs none of them.

Python 3.12+ warns at every ``os.fork()`` in a process with more than one thread, and
rightly: a thread of the parent that held a lock (the allocator's, a log handler's, the
resolver's) at the fork leaves it held forever in the child. A client's reader and writer
hold no lock across socket I/O and pause at the top of their loops, where everything they
own lives in their objects, not on their stacks. So before a fork the forking thread asks
them to return there (``requested``), waits for them a short while, and once the fork is
done restarts them on new threads in the parent; the child builds its own client state
from scratch anyway (BufferedClient._after_fork_in_child).

A thread that cannot stop in time (the writer in the middle of a send to a slow server,
or a connect) is not waited for further (nor at all, once its socket call has lasted
``STUCK_AFTER``): the fork goes ahead with it running, and
Python's warning is then honest. Whether it parked is decided under ``lock``, a lock of
its own that guards nothing else and is never held while waiting for anything, so that
the hook after the fork can always tell, without waiting for a lock a thread of the
program may hold across the fork, which threads left and must be restarted.

After the fork the parent's threads come back at once only if the client holds work for
them (records queued or buffered, frames written and not yet confirmed, a spool to
replay). Otherwise the client stays *dormant*, threadless as before its first use, until
something needs the reader: every caller that does (a post, a flush) sets its
:class:`WakeUp`, which restarts the threads first. So a process that forks again and
again (a pool, a preforking server) runs no thread of ours between its forks unless it
has something to send, and a fork costs the threads' wake-up, not a restart each time.
That matters on Python 3.13+, which counts the threads after the parent's at-fork hooks
have run: threads restarted at once are counted there, though the child was forked
without them.
"""

from __future__ import annotations

import threading
from typing import Callable

# How long the forking thread waits, per fork and for all clients together, for their
# threads to park. They are waiting on a condition or an event, or packing a batch, and
# park within milliseconds; only a writer in a socket call can take longer.
PARK_WAIT = 0.2
# A writer whose socket call (a send, a connect) began longer ago than this waits on a
# slow or stalled server, which may take its whole write_timeout: it is not waited for,
# so that a fork (and a pool's many forks) costs no more than the threads' wake-up.
STUCK_AFTER = 0.05

READER = "reader"
WRITER = "writer"


class Parking:
    """One client's request to park, and which of its threads did."""

    __slots__ = ("requested", "lock", "parked")

    def __init__(self) -> None:
        # Read without the lock on each turn of a thread's loop: one attribute read.
        self.requested = False
        self.lock = threading.Lock()
        self.parked: set[str] = set()

    def park_here(self, which: str) -> bool:
        """Called by a thread at the top of its loop: True if it must return now."""
        if not self.requested:
            return False
        with self.lock:
            if not self.requested:
                return False  # the fork is over already: carry on
            self.parked.add(which)
            return True

    def end(self, replace: Callable[[str], threading.Thread]) -> list[threading.Thread]:
        """The fork is over: no thread parks from here on. Those that did are replaced
        (``replace(which)`` makes the new thread and puts it where the old one was)
        before anyone can see the request withdrawn; the new threads, to start."""
        with self.lock:
            fresh = [replace(which) for which in sorted(self.parked)]
            self.parked = set()
            self.requested = False
        return fresh


class WakeUp(threading.Event):
    """The reader's wake-up call, which everyone who needs the reader sets.

    While its client is dormant after a fork, ``resume`` is set: the first ``set()``
    restarts the client's threads before it wakes the reader.
    """

    def __init__(self) -> None:
        super().__init__()
        self.resume: Callable[[], None] | None = None

    def set(self) -> None:
        resume = self.resume
        if resume is not None:
            self.resume = None
            resume()  # two callers may both get here: the second finds nothing parked
        super().set()
