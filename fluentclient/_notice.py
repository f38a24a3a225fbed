"""The library's own failures reach a person even when its logger cannot take them.

A server that cannot be reached, a host that does not resolve, records not sent at exit:
each is logged on the ``fluentclient`` logger. But ``logging.config`` disables every
logger that exists when it runs (``disable_existing_loggers`` defaults to True, and the
FluentHandler it builds is what made ours), and a program may have set
``logging.lastResort = None``: then the warning reaches no one, and records vanish in
silence. So these few warnings go through :func:`warn`, which logs as usual and, only when
the logger would not put the record anywhere, writes the line to ``sys.stderr`` itself, once
per kind of failure, as ``logging.lastResort`` does for a logger without handlers. When
logging works nothing is written twice.

A level set on purpose (``fluentclient`` at ERROR, ``logging.disable()``) is the user's
choice and is respected: only a logger switched off wholesale or without any handler
counts as "no one".
"""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("fluentclient")

_told: set[str] = set()
_lock = threading.Lock()


def _after_fork() -> None:
    # A child is a process of its own, whose failures are said again; the lock may have
    # been held by a parent thread that does not exist here.
    global _lock
    _lock = threading.Lock()
    _told.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def warn(kind: str, msg: str, *args: object, level: int = logging.WARNING) -> None:
    """Log ``msg % args`` on the ``fluentclient`` logger; if that reaches no one, write it
    to stderr instead, the first time for ``kind``."""
    log.log(level, msg, *args)
    if not _unheard(level):
        return
    with _lock:
        if kind in _told:
            return
        _told.add(kind)
    try:
        text = msg % args if args else msg
        stream = sys.stderr
        if stream is not None:  # pythonw, or a daemon that closed it
            stream.write(text + "\n")
            stream.flush()
    except Exception:  # noqa: S110 - the last way out: nothing is left to tell
        pass


def _unheard(level: int) -> bool:
    """Whether a record of ``level`` on our logger would reach no handler that shows it."""
    if log.disabled:
        return True  # switched off wholesale, most often by logging.config by accident
    if log.manager.disable >= level or log.getEffectiveLevel() > level:
        return False  # a level the user set: their choice
    node: logging.Logger | None = log
    while node is not None:
        if not all(_passes_over(handler) for handler in node.handlers):
            return False
        if not node.propagate:
            break
        node = node.parent
    # Only FluentHandlers (which leave our records alone) or nothing at all: Python's last
    # resort shows the record then (FluentHandler's filter hands it on, see handler.py),
    # unless the program removed it or raised its level.
    last = logging.lastResort
    return last is None or level < last.level


def _passes_over(handler: logging.Handler) -> bool:
    """A handler that leaves fluentclient's own records alone (see FluentHandler.emit)."""
    # Looked up, not imported: no FluentHandler exists unless its module was loaded (and
    # it imports the client, which imports this).
    module = sys.modules.get(f"{__package__}.handler")
    if module is None:
        return False
    return bool(isinstance(handler, module.FluentHandler) or module._queues_to_fluent(handler))

