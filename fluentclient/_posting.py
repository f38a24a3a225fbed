"""post()'s careful path: everything but the usual case, which client.py's post() (or
the compiled one) handles itself: a tag or time to check, a fork to notice, threads to
start, a limit reached, a record that is not a plain dict, or a caller who wants to hear
of the record. Every verdict on a record that is not the usual case comes from here.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Callable, Protocol

from ._admission import Admission
from ._base import TagChecker, not_a_mapping
from ._crew import Crew
from ._lifecycle import FAILED, NEW, RUNNING
from ._lifetime import _process, _sigterm
from ._lifetime._forgotten import Forgettable, forgotten
from ._reading._reader import Reader
from ._reporting import Reporter, Reporting
from .errors import ClientClosedError, FluentError
from .message import Message, TimeLike
from .stats import DROP_CLOSED, DROP_REENTRANT

log = logging.getLogger("fluentclient")

# The longest a post() waits for the reader to drain the queue (see _admission.Pace):
# the reader only packs (a batch in well under a millisecond), so it takes this long only
# if starved of the CPU; then the caller goes on, within the byte limits, rather than
# wait longer than the few milliseconds a post() may take.
DRAIN_WAIT = 0.004


class Posting(Forgettable, Protocol):
    """The parts of a client's state a post and the first start use."""

    _tags: TagChecker
    _queue: deque[object]
    _count_post: Callable[[], int]
    _reader: Reader
    _admission: Admission
    _reporter: Reporter
    _reporting: Reporting
    _crew: Crew
    _handoff: _process.Handoff | None
    _handle_sigterm: bool
    _fork_note: str | None

    def _check_fork(self) -> bool: ...


def start(client: Posting) -> None:
    """Start the threads, on first use (a post, or a spool left to replay)."""
    # Threads start on first use, so a client made at import time in a preforking
    # server (gunicorn --preload) has no threads when the fork happens.
    if client._pid != os.getpid():
        # Threads started on the parent's state would be orphaned by the pid check.
        client._check_fork()
    with client._crew.lock:
        if client._life.phase is not NEW or client._handoff is not None:
            return
        if sys.is_finalizing() or _process.main_thread_finished():
            # Threads started now would be killed unflushed a moment later.
            raise ClientClosedError("the interpreter is shutting down")
        if _process.in_uwsgi_master():
            # uWSGI's master forks its workers without holding the GIL: a worker
            # forked while one of our threads held it would wait for it forever.
            # So no threads here; what the master posts waits in the queue, and
            # the first worker to claim the handoff sends it.
            client._handoff = _process.Handoff()
            return
        client._crew.start()
    if client._handle_sigterm:
        _sigterm.offer()
    note, client._fork_note = client._fork_note, None
    if note is not None:
        log.error("fluentclient: %s", note)


def post_carefully(
    client: Posting, tag: str, record: Mapping[str, object], time: TimeLike | None,
    sync_append: bool, timeout: float | None, ack: bool,
) -> bool | Future[None]:
    """post() when anything is out of the ordinary: a tag or time to check, a fork
    to notice, threads to start, a limit reached, a record that is not a plain dict, or
    a caller who wants to hear of the record."""
    if not isinstance(record, Mapping):
        raise not_a_mapping(record)
    full_tag, time_ns = client._tags.stamp(tag, time)
    if client._pid != os.getpid():
        # Forked without Python's at-fork hooks (uWSGI's workers, a C extension): the
        # state here is the parent's, and its threads do not exist in this process.
        # Checked on every post, because nothing else runs in such a child to notice.
        client._check_fork()
    delivery: Future[None] | None = None
    if ack:
        if not client._transport.require_ack:
            raise ValueError("post(ack=True) needs a client made with require_ack=True")
        delivery = Future()
    # The ack kind answers with its future whatever became of the record, the plain
    # kind with whether it was queued.
    msg = Message(full_tag, record, time_ns, None, delivery)
    life, reporter = client._life, client._reporter
    if life.phase is not RUNNING and life.phase is not NEW:
        queued = reporter.refuse(DROP_CLOSED, _closed_error(client), msg, sync_append)
        return queued if delivery is None else delivery
    reporting = client._reporting
    # ``busy`` first, as in post(): nearly always 0, and then not even a call is due.
    if reporting.busy and reporting.active() and client._admission.own_thread():
        # Posted while our reader or writer reports an error (an on_error that logs
        # to a handler of this client): queued, it would come back to the same
        # thread, perhaps to be dropped and reported again, without end.
        err = FluentError("posted while the client's own thread was reporting an "
                          "error; it cannot carry a record about its own failure")
        queued = reporter.refuse(DROP_REENTRANT, err, msg, sync_append)
        return queued if delivery is None else delivery
    orphaned = False
    if life.phase is NEW:
        try:
            start(client)
        except (ClientClosedError, RuntimeError) as exc:
            # No new threads once the interpreter is finalizing.
            err = ClientClosedError(f"cannot start the client: {exc}")
            queued = reporter.refuse(DROP_CLOSED, err, msg, sync_append)
            return queued if delivery is None else delivery
        # Its client object was collected before this first post began (see
        # _forgotten.py): once the record is queued, stop as a forgotten client stops.
        orphaned = client.__dict__.pop("_orphaned", False)
    try:
        return _post_started(client, msg, delivery, sync_append, timeout)
    finally:
        if orphaned:
            forgotten(client)


def _post_started(client: Posting, msg: Message, delivery: Future[None] | None,
                  sync_append: bool, timeout: float | None) -> bool | Future[None]:
    """The rest of _post_carefully, once the client runs."""
    life, reader, admission = client._life, client._reader, client._admission
    if len(client._queue) >= admission.queue_limit and not admission.own_thread():
        # Posts are outrunning packing: let the reader catch up rather than let
        # objects pile up in the queue. It is busy on the CPU, never on I/O.
        reader.wait_drained(DRAIN_WAIT)
    admission.refresh()
    if admission.full() and not admission.admit(msg, sync_append, reader):
        return False if delivery is None else delivery
    client._count_post()
    if delivery is not None or sync_append:
        # Before the record is queued, so the reader that takes it knows to look.
        reader.awaited = True
    if not sync_append:
        client._queue.append(msg)
        if life.phase is not RUNNING and life.phase is not NEW:
            queued = queued_late(client, msg, False)
            return queued if delivery is None else delivery
        if reader.idle:
            reader.wake.set()
        return True if delivery is None else delivery
    waiter: Future[None] = Future()
    msg.waiter = waiter
    client._queue.append(msg)
    if life.phase is not RUNNING and life.phase is not NEW:
        queued_late(client, msg, True)  # raises if taken back
    reader.wake.set()
    reader.wait_appended(waiter, timeout)
    return True if delivery is None else delivery


def queued_late(client: Posting, msg: Message, raises: bool) -> bool:
    """post() queued ``msg`` and then found the client no longer running.

    A shutdown whose final sweep has not run yet finds the record (unless the reader
    packs it first) and hands it over with the rest. One whose sweep is done left it
    behind: it is taken back here and refused. Either way no record is left between
    the two: every True is sent or unsent, every False counted ``closed``.
    """
    if not client._reader.take_back(msg):
        return True
    err = _closed_error(client)
    client._reporter.refuse_late(DROP_CLOSED, err, msg)
    if raises:
        raise err
    return False


def _closed_error(client: Posting) -> ClientClosedError:
    life = client._life
    if life.phase is FAILED and life.failure is not None:
        return ClientClosedError(f"the client stopped working: {life.failure}")
    return ClientClosedError("the client is shut down")
