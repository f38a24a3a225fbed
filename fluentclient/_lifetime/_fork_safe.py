"""A lock that a forked child always finds free.

A fork copies only the thread that called it. A lock another thread held at that moment
stays held in the child, by a thread that does not exist there: the first ``with`` on it
waits forever. The clients renew their own locks in the child (_forks.py); this covers
the few module-wide and per-object locks beside them (the SIGTERM decision, the at-exit
drain, the log handlers' close, the metrics registry), each held only for a few lines
and never across I/O, so the child loses nothing by getting it anew.

Renewed by Python's at-fork hook. A fork made without it (a C extension's ``fork()``)
keeps the old lock, as every ``threading.Lock`` does: such a child's first post()
renews the client's own state, not these.
"""

from __future__ import annotations

import os
import threading
import weakref
from types import TracebackType

__all__ = ["ForkSafeLock"]

_every: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


class ForkSafeLock:
    """A ``threading.Lock`` for ``with`` blocks, made anew (free) in every forked child."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        _every.add(self)

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release()


def _renew_in_child() -> None:
    # The child runs one thread: nothing can take or release these meanwhile.
    for lock in list(_every):
        lock._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_in_child)
