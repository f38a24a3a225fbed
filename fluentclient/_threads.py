"""Which threads are a client's own, and what a user's callback may raise on one.

Kept apart from the client's life cycle so that the lowest layers (the packer calls a
user's ``default=`` hook) can ask without importing the buffer and its machinery.
"""

from __future__ import annotations

import threading


def own_thread() -> bool:
    """Whether the caller is one of a client's threads (reader, writer)."""
    return threading.current_thread().name.startswith("fluentclient-")


def swallow(exc: BaseException) -> bool:
    """Whether an exception a user's callback raised may be logged and dropped here.

    Any ``Exception``; on our own threads anything but ``KeyboardInterrupt`` too (a
    ``SystemExit`` there would end the thread quietly), so that no callback can stop them.
    Elsewhere the caller's ``SystemExit`` and the like are the caller's.
    """
    if isinstance(exc, Exception):
        return True
    return own_thread() and not isinstance(exc, KeyboardInterrupt)
