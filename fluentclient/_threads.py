"""Which threads are a client's own, and what a user's callback may raise on one.

Kept apart from the client's life cycle so that the lowest layers (the packer calls a
user's ``default=`` hook) can ask without importing the buffer and its machinery.
"""

from __future__ import annotations

import threading
import weakref

# Every thread a client runs to do its work (its reader and writer), in this process:
# the one meaning of "own thread". Each client enlists its own (see OwnThreads).
_crews: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class OwnThreads:
    """The threads one client runs: never made to wait for room, since they make it."""

    __slots__ = ("_threads",)

    def __init__(self) -> None:
        self._threads: tuple[threading.Thread, ...] = ()

    def enlist(self, *threads: threading.Thread) -> None:
        """These are the client's threads now (replacing those before a fork)."""
        self._threads = threads
        _crews.update(threads)

    def includes_caller(self) -> bool:
        return threading.current_thread() in self._threads


def own_thread() -> bool:
    """Whether the caller is a thread some client runs (a reader or a writer)."""
    return threading.current_thread() in _crews


def swallow(exc: BaseException) -> bool:
    """Whether an exception a user's callback raised may be logged and dropped here.

    Any ``Exception``; on our own threads anything but ``KeyboardInterrupt`` too (a
    ``SystemExit`` there would end the thread quietly), so that no callback can stop them.
    Elsewhere the caller's ``SystemExit`` and the like are the caller's.
    """
    if isinstance(exc, Exception):
        return True
    return own_thread() and not isinstance(exc, KeyboardInterrupt)
