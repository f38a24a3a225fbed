"""Which threads are a client's own, and what a user's callback may raise on one.

Kept apart from the client's life cycle so that the lowest layers (the packer calls a
user's ``default=`` hook) can ask without importing the buffer and its machinery.
"""

from __future__ import annotations

import signal
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


# Signals a thread can only cause itself (a fault in its own code): never blocked, or the
# process would hang on them rather than die.
_SYNCHRONOUS = frozenset(
    getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGABRT",
                                       "SIGTRAP", "SIGSYS")
    if hasattr(signal, name)
)


def leave_signals_to_others() -> None:
    """Block the process's asynchronous signals in the calling thread, one of ours.

    The kernel hands a signal sent to the process (SIGTERM from ``docker stop``, SIGINT,
    SIGHUP, ...) to any thread that does not block it, and Python runs its handler only
    on the main thread. Should it land on one of our threads while the main thread waits
    on a lock (``Event().wait(30)``), nothing wakes the main thread, and the handler runs
    when that wait ends. Blocked here, it goes to a thread that can take it.
    """
    if not hasattr(signal, "pthread_sigmask"):
        return  # Windows: no POSIX signals to steer
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNCHRONOUS)


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
