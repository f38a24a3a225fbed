"""Keeping a client's error reports from feeding on themselves.

A client reports a dropped record to ``on_error`` and, the first time for each reason,
as a warning on the "fluentclient" logger. Both can lead straight back into the same
client: an ``on_error`` that logs, with a log handler that posts to that client (a
FluentHandler on the root logger), posts a record that is dropped for the same reason
(the buffer is still full, the client still closed), whose report logs again, and so
on until Python's recursion limit, with a traceback on stderr at every turn.

So a client marks, per thread, the time it spends reporting, and a record posted on
that thread meanwhile is never reported again: if it is dropped, the drop is only
counted (``stats().dropped``). The first such silenced report is said once, as a
warning. On a caller's thread the record is otherwise taken as usual, if there is room.
On one of the client's own threads (a drop the reader found, a failure of the writer)
it is dropped at once (``reentrant``): queued, it would come back to the same thread,
perhaps to be dropped and reported again, a loop without recursion but without end.
So every chain stops within two reports.

A thread-local rather than a context variable: an asyncio task created inside
``on_error`` copies the context it was made in, and would then be muted for its whole
life; what must be caught is only the call chain that runs on this thread now.
"""

from __future__ import annotations

import threading
from types import TracebackType


class Reporting:
    """Whether the calling thread is inside one client's error reporting.

    Used as a context manager around the report (``with reporting: ...``); it nests.
    """

    __slots__ = ("_inside", "_lock", "silenced", "busy")

    def __init__(self) -> None:
        self._inside = threading.local()
        self._lock = threading.Lock()
        #: Reports left unsaid because they arose while reporting (each is still counted
        #: where it belongs, as a drop in stats()).
        self.silenced = 0
        #: How many threads are reporting now: post()'s fast path looks only at this.
        self.busy = 0

    def active(self) -> bool:
        """Whether this thread is reporting for the client now."""
        # ``busy`` first: it is 0 nearly always, and then no thread is reporting. Looking
        # into the thread-local costs far more (for a thread that never reported, Python
        # builds and discards an AttributeError), and every post() with a time asks this.
        return self.busy > 0 and getattr(self._inside, "depth", 0) > 0

    def silence(self) -> bool:
        """Count one report left unsaid; True only for the first (to be said once)."""
        with self._lock:
            self.silenced += 1
            return self.silenced == 1

    def after_fork(self) -> None:
        """In a forked child: only the forking thread exists here, and the lock may have
        been held by a thread that does not."""
        self._lock = threading.Lock()
        self.busy = 1 if self.active() else 0

    def __enter__(self) -> None:
        depth = getattr(self._inside, "depth", 0)
        # Counted busy before marked inside, and unmarked before uncounted (in __exit__):
        # so ``busy`` is never 0 while a thread is inside, even to a signal handler that
        # runs between the two steps, and active() may look at it first.
        if depth == 0:
            with self._lock:
                self.busy += 1
        self._inside.depth = depth + 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        depth = self._inside.depth - 1
        self._inside.depth = depth
        if depth == 0:
            with self._lock:
                self.busy -= 1
