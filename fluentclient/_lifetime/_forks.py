"""What a fork means for a buffered client's own state, in the child.

The parent goes on owning and sending what it held; the child starts afresh, with a
state of its own (the client's ``_fresh``), and closes its copies of the parent's files
and sockets. Noticing the fork is _process.py's (or, where the hooks did not run, every
post()'s pid check); parking the parent's threads around it is _crew.py's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from dataclasses import replace
from typing import Protocol

from .._journal import Journal, NullJournal
from .._ledger import Ledger
from .._lifecycle import CLOSED, CLOSING, Lifecycle
from .._reading._reader import Reader
from .._reporting import Reporting
from .._writing._writer import Writer
from ..errors import ClientClosedError
from ..message import Message
from ..options import Buffering
from . import _process

log = logging.getLogger("fluentclient")


class Forkable(Protocol):
    """The parts of a client's state a fork renews or closes."""

    _pid: int
    _handoff: _process.Handoff | None
    _queue: deque[object]
    _shutdown_lock: threading.Lock
    _reporting: Reporting
    _life: Lifecycle
    _ledger: Ledger
    _journal: Journal
    _reader: Reader
    _writer: Writer
    _fork_note: str | None
    _buffer_options: Buffering

    def _fresh(self, *, closed: bool = False) -> None: ...

    def _start(self) -> None: ...


def check_fork(client: Forkable) -> bool:
    """True (after starting afresh) if this process was forked without the at-fork
    hooks running, as in uWSGI's workers or when a C extension calls fork(): the
    fallback to them.

    Every post() checks first, so whatever waits in the queue here was posted by the
    parent, whose own reader sends it: the child starts empty, as after a hooked fork.
    """
    pid = os.getpid()
    if client._pid == pid:
        return False
    # Two threads of the child may notice at once; one starts afresh. The lock is
    # made in this process, so no thread of the parent can have held it at the fork.
    with _process.fork_lock(pid):
        if client._pid != pid:
            after_fork_in_child(client)
    return True


def after_fork_in_child(client: Forkable) -> None:
    """Start afresh in a forked child: empty, with fresh locks (a lock held by a parent
    thread at fork time would never be freed)."""
    # The parent still owns and sends what it buffered. Except for what a parent without
    # threads (uWSGI's master) left to its children: the one child that claims it sends it.
    handoff, client._handoff = client._handoff, None
    held = [m for m in client._queue if isinstance(m, Message)] if handoff else []
    client._shutdown_lock = threading.Lock()
    client._reporting.after_fork()
    # A client shut down or closed in the parent stays so here (its shutdown may still
    # be under way in a parent thread): it refuses every post, and a shutdown here
    # reports this process's counts, which start from zero.
    closed = client._life.phase in (CLOSING, CLOSED)
    stopped = client._life.report is not None
    forget_in_child(client)
    if closed:
        if handoff is not None:
            handoff.claim()  # only closes our end: the parent sent what it could
        client._fresh(closed=True)
        if stopped:
            client._life.report = client._ledger.report(timed_out=False)
        return
    try:
        client._fresh()
    except OSError as exc:
        # Only the spool can fail here; the child goes on without one. Said when the
        # child first posts: logging here, in the at-fork hook, could wait forever
        # for a handler's lock that a thread of the parent held at the fork.
        client._fork_note = f"cannot open the spool after fork: {exc}"
        client._buffer_options = replace(client._buffer_options, spool_dir=None)
        client._fresh()
    if handoff is not None and handoff.claim() and held:
        # Posted in the parent, whose ledger stayed there: this one takes them over.
        client._ledger.enqueue(len(held))
        # Some may be records a caller waits on: the fresh reader must look for those.
        client._reader.awaited = True
        client._queue.extend(held)
        try:
            client._start()
        except (ClientClosedError, RuntimeError) as exc:
            log.warning("fluentclient: cannot send what the parent process left: %s", exc)
            return
        client._reader.wake.set()


def forget_in_child(client: Forkable) -> None:
    """Close this process's copies of the parent's spool files and sockets.

    Only closes descriptors: no lock is taken (a thread of the parent may have held
    any of them at the fork) and nothing is sent or deleted, since the parent goes on
    using them.
    """
    client._journal.forget()
    client._journal = NullJournal()
    for link in client._writer.links:
        # Closed now, not when the old writer is collected, so that the server sees
        # the parent's own close when it comes. A close, never a shutdown: that would
        # cut the parent's connection too.
        conn, link.conn = link.conn, None
        if conn is not None:
            conn.close()
        # The parent's failed connections still finishing (see Writer._retire) too.
        while link.retiring:
            link.retiring.popleft().conn.close()
