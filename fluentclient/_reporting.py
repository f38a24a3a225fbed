"""Telling the user of dropped records (:class:`Reporter`), and keeping those reports
from feeding on themselves (:class:`Reporting`).

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

import logging
import threading
from types import TracebackType
from typing import Callable, Optional

from ._ledger import Ledger, State
from ._threads import swallow
from .errors import FluentError
from .message import Message, settle_future

log = logging.getLogger("fluentclient")

ErrorCallback = Callable[[FluentError, Optional[Message]], None]


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


class Reporter:
    """Tells the user of records a client drops: counted first, then ``on_error`` and a
    warning the first time per reason, with the thread marked as reporting.

    Every unit that drops a record (post(), the reader, admission, the writer) reports
    here; none of them calls back into the client.
    """

    __slots__ = ("_ledger", "marks", "_on_error")

    def __init__(self, ledger: Ledger, marks: Reporting, on_error: ErrorCallback | None) -> None:
        self._ledger = ledger
        self.marks = marks
        self._on_error = on_error

    def refuse(self, reason: str, err: FluentError, msg: Message, raises: bool) -> bool:
        """A record post() turned away before it reached the queue: False, or ``err``
        raised if ``raises``."""
        # Counted (and reported) before anyone waiting on the record is woken, so that
        # whoever learns of the drop finds it in stats() already.
        self.told(reason, err, msg, self._ledger.refuse(reason))
        settle_future(msg.delivery, err)
        if raises:
            raise err
        return False

    def refuse_late(self, reason: str, err: FluentError, msg: Message) -> None:
        """A record queued after shutdown's final sweep, taken back: refused."""
        # Counted before anyone waiting on the record is woken, as in refuse().
        self.told(reason, err, msg, self._ledger.refuse_late(reason))
        for future in (msg.waiter, msg.delivery):
            settle_future(future, err)

    def fail(self, reason: str, err: FluentError, msg: Message) -> None:
        """A queued record that never reached the buffer."""
        # Counted first, as in refuse(): a sync_append caller woken by the error must see
        # the drop in stats(), and on_error must not run ahead of the count.
        self.told(reason, err, msg, self._ledger.drop(reason, 1, State.QUEUED))
        for future in (msg.waiter, msg.delivery):
            settle_future(future, err)

    def fail_spooled(self, reason: str, err: FluentError, records: int) -> None:
        """Records a previous process left in the spool that cannot be sent: taken over,
        and dropped at once. No Message exists for them, so on_error gets None."""
        self._ledger.replay(records)
        self.told(reason, err, None, self._ledger.drop(reason, records, State.BUFFERED))

    def told(self, reason: str, err: FluentError, msg: Message | None, total: int) -> None:
        """Report a drop already counted, ``total`` the count for its reason so far."""
        # The warning comes once per reason, so a flood of drops cannot flood the log;
        # stats() and on_error see every one. The tag says which part of the program to
        # look at.
        if total != 1:
            self.tell(err, msg)
        elif msg is None:
            self.tell(err, msg, "fluentclient: dropping records (%s): %s", reason, err)
        else:
            self.tell(err, msg, "fluentclient: dropping records (%s): %s (the first: "
                      "tag %r; stats().dropped counts them all)", reason, err, msg.tag)

    def failure(self, err: FluentError) -> None:
        """A failure that concerns no one record (the writer's)."""
        self.tell(err, None)

    def tell(self, err: FluentError, msg: Message | None, *warning: object) -> None:
        """Tell on_error (and log ``warning``, if given), this thread marked as reporting.

        A report that arises while this thread is already reporting for this client is
        left unsaid (see the module's docstring); the first one is said once.
        """
        marks = self.marks
        if marks.active():
            if marks.silence():
                log.warning(
                    "fluentclient: a record posted while this client was reporting a "
                    "drop (from on_error, or a log handler reached by its warnings) was "
                    "dropped too: %s; such drops are counted in stats().dropped but not "
                    "reported, so that no report can set off another", err)
            return
        with marks:
            if warning:
                log.warning(*warning)
            call_on_error(self._on_error, err, msg)


def call_on_error(
    callback: ErrorCallback | None, err: FluentError, msg: Message | None
) -> None:
    """Call the user's on_error; the caller marks it as the client's reporting."""
    if callback is None:
        return
    try:
        callback(err, msg)
    except BaseException as exc:
        if not swallow(exc):
            raise
        log.exception("fluentclient: the on_error callback raised")
