"""The :class:`BufferedClient`, which never blocks (:class:`SyncClient` lives in sync.py).

Threads of a BufferedClient and what each owns::

    caller threads   post(): look the tag up, build a Message, put it on the queue
          |          (a deque; the usual path takes no lock of ours: the ledger counts
          |          it with one atomic increment; see docs/architecture.md for the paths that
          |          take locks; the reader is woken only when it went idle). Past
          |          the client's queue limit (_admission.Pace) a caller waits on the
          |          reader's drained condition until it has packed them (bounded).
          v
    reader thread    owns the packer; packs a batch into runs of one tag, appends each
          |          run to the buffer under buffer.lock in one piece, and notifies
          |          buffer.changed only when that made a write due
          v
    writer thread    owns the connection; waits on buffer.changed (threshold reached,
                     and a busy stream gathered for a moment; flush interval passed,
                     flush() or shutdown), takes whole frames under the lock, writes
                     them with the lock released, then releases or requeues them
                     (buffer.done wakes flush() callers)

Shared by all three, each behind its own lock and changed by no one else:

    ledger      (_ledger.py) every record's fate; each thread reports the moves it makes
                (post: queued or refused; reader: buffered or dropped; writer: written,
                sent, requeued or possibly lost; shutdown: unsent), and stats() is one
                snapshot of it. After the shutdown report it is frozen.
    admission   (_admission.py) the one decision on limits and overflow, asked by post()
                and by the reader; the caller acts on its verdict.
    journal     (_journal.py) the spool, or a null one. Callers only queue "done" spans
                in memory; the reader does every file operation.

The client's one state (new, running, closing, closed, failed) is :class:`Lifecycle`'s
``phase``; post(), flush(), shutdown() and the process events all read it. Shutdown moves
it to closing, sets the drain deadline under buffer.lock plus a notify_all, and puts a
STOP marker on the queue for the reader; its final sweep takes the queue and moves the
phase to closed under the lifecycle's lock, which every removal from the queue takes.
Past the deadline the shutting-down thread aborts the writer's socket itself, so it never
waits on I/O.
That end of life, and where the unsent records go, is _shutdown.py; noticing forks and
the end of the process, whatever the host, is _process.py.

The threads and callbacks hold the client's core (see _core_of), never the client: a
client the program drops is collected, and its finalizer shuts the core down.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time as _time
import warnings
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import replace
from functools import partial
from typing import Callable, Literal, Optional, overload

from . import _parking, _process, _sigterm
from ._accel import fast_poster
from ._admission import Act, Admission, pace_for
from ._base import Client as _Client
from ._base import not_a_mapping as _not_a_mapping
from ._buffer import Buffer, Frame
from ._connection import describe
from ._journal import Journal, NullJournal, open_journal
from ._ledger import Ledger, State
from ._lifecycle import CLOSED, CLOSING, FAILED, NEW, RUNNING, Lifecycle
from ._options import MiB as _MiB
from ._options import builder_for, packer_for
from ._parking import READER, Parking
from ._pool import ServerSpec
from ._reader import Reader
from ._reporting import Reporting
from ._sender import Sender, is_hopeless, is_unresolvable
from ._shutdown import Ending, UnsentCallback
from ._threads import swallow
from ._words import count
from ._writer import Writer, resolve_futures
from .backoff import Backoff
from .errors import (
    BufferFullError,
    ClientClosedError,
    ConfigurationError,
    FluentError,
    FluentTimeoutError,
)
from .message import Message, TimeLike, settle_future
from .options import Auth, Buffering, RecordRules, Timeouts, TlsSetting
from .stats import (
    DROP_CLOSED,
    DROP_EVICTED,
    DROP_REENTRANT,
    ShutdownReport,
    Stats,
)
from .sync import SyncClient

__all__ = ["BufferedClient", "SyncClient"]

log = logging.getLogger("fluentclient")

ErrorCallback = Callable[[FluentError, Optional[Message]], None]

# The longest a post() waits for the reader to drain the queue (see _admission.Pace):
# the reader only packs (a batch in well under a millisecond), so it takes this long only
# if starved of the CPU; then the caller goes on, within the byte limits, rather than
# wait longer than the few milliseconds a post() may take.
_DRAIN_WAIT = 0.004
_getpid = os.getpid
_time_ns = _time.time_ns


def _call_on_error(
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


class BufferedClient(_Client):
    """Posts records without ever blocking; a reader and a writer thread do the rest.

    ``post()`` returns at once whatever the server does. Records are packed into
    PackedForward frames and written when enough bytes wait or a moment passed; memory is
    bounded, and past the limit new records are dropped and counted (see
    :class:`~fluentclient.options.Buffering`). Every record ends up counted in
    :meth:`stats` as sent, dropped, possibly lost or unsent.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 24224,
        *,
        unix_path: str | None = None,
        servers: Sequence[ServerSpec] | None = None,
        tag_prefix: str | None = None,
        require_ack: bool = False,
        tls: TlsSetting = False,
        auth: Auth = Auth(),
        timeouts: Timeouts = Timeouts(),
        buffering: Buffering = Buffering(),
        records: RecordRules = RecordRules(),
        backoff: Backoff = Backoff(),
        compress: str | None = None,
        compress_level: int = 6,
        dns_refresh: bool = True,
        on_error: ErrorCallback | None = None,
        on_unsent: UnsentCallback | None = None,
        shutdown_timeout: float = 5.0,
        at_exit: bool = True,
        handle_sigterm: bool = True,
    ) -> None:
        super().__init__(
            host, port, unix_path=unix_path, servers=servers, tag_prefix=tag_prefix,
            require_ack=require_ack, tls=tls, auth=auth, timeouts=timeouts, records=records,
            backoff=backoff, compress=compress, compress_level=compress_level,
            dns_refresh=dns_refresh,
        )
        if not isinstance(buffering, Buffering):
            raise ConfigurationError(
                f"must be a Buffering, got {type(buffering).__name__}", variable="buffering")
        if shutdown_timeout < 0:
            raise ConfigurationError("must not be negative", variable="shutdown_timeout")
        self._buffer_options = buffering
        # post()'s first look: a tag seen before, already checked and prefixed.
        self._known_tag = self._tags.known.get
        # What the client's threads and callbacks hold instead of the client, so that a
        # client the program drops is collected (see _core_of).
        self._core = _core_of(self)
        self._on_unsent = on_unsent
        self._journal: Journal = NullJournal()
        self._on_error = on_error
        # Marks the threads inside this client's error reporting, whose own drops are
        # then only counted (see _reporting.py). Kept across a fork (a child forked from
        # inside on_error is still inside it), with a fresh lock.
        self._reporting = Reporting()
        self.shutdown_timeout = shutdown_timeout
        # The setting that bounds the drain at exit, as the user knows it (a FluentHandler
        # hands its close_timeout down as shutdown_timeout).
        self._exit_setting = "shutdown_timeout"
        # Who the client is in the summary at exit (a logging integration names itself).
        self._owner = "BufferedClient"
        self._exit_order = 0  # set when registered for the end of the process
        self._shutdown_lock = threading.Lock()
        # What went wrong in the at-fork hook, which must not log: logged by _start().
        self._fork_note: str | None = None
        # post()'s usual path compiled, where the compiled packer runs (see _accel.py):
        # the same steps in C, and this class's Python for anything else. As an attribute
        # of the instance it takes the place of the method. It holds the core, never the
        # client, and is bound afresh to each state _fresh() makes.
        core = self._core
        self._poster = fast_poster(Message, self._tags.known, core._post_carefully,
                                   core._queued_late, RUNNING, _time_ns, _getpid)
        if self._poster is not None:
            self.__dict__["post"] = self._poster.post
        self._fresh()
        # Dropped without shutdown() or close(): stopped when collected (see _forgotten).
        # At exit the at-exit hook drains the clients still alive, not this; and a client
        # made while the interpreter finalizes never starts threads (nor could a
        # finalizer be made then: it imports).
        if not sys.is_finalizing():
            finalizer = weakref.finalize(self, _forgotten, self._core)
            # Not at exit: the at-exit hook drains what is alive then. (A property at run
            # time; the type stubs for Python 3.9 do not list it, hence setattr.)
            setattr(finalizer, "atexit", False)  # noqa: B010
        _process.live_clients.add(self)
        # Whether this client may install the SIGTERM handler (see _sigterm.py); one
        # that is not drained at exit has no business with the end of the process.
        self._handle_sigterm = at_exit and handle_sigterm
        if at_exit:
            _process.register_at_exit(self)
            _sigterm.offer(self)
        if self._journal.has_orphans():
            # What a previous process left is sent now, not at the first post().
            self._start()

    def _fresh(self, *, closed: bool = False) -> None:
        """Build the queue, buffer and threads (not started): at init and after fork.

        ``closed``: a child of a process that had stopped this client; it stays stopped
        (closed: nothing of this process's is live), and opens no spool.
        """
        o, t = self._buffer_options, self._transport
        # The threads call back into the core, never into the client itself.
        core = self._core
        # The client's one state: post(), flush(), shutdown() and the process events
        # all read it (see _lifecycle.py).
        self._life = Lifecycle(CLOSED if closed else NEW)
        self._ledger = Ledger()
        self._count_post = self._ledger.enqueue_one
        self._queue: deque[object] = deque()
        frame_size = o.frame_limit
        if t.compress:
            # Deflate can grow incompressible input a little (stored blocks, gzip header
            # and trailer): leave room so a compressed frame still fits.
            frame_size -= frame_size // 500 + 64
        if not closed:
            spool_dir = None if o.spool_dir is None else os.fspath(o.spool_dir)
            self._journal = open_journal(spool_dir, limit=o.spool_bytes)
        self._buffer = Buffer(
            limit=o.limit,
            write_threshold=o.write_threshold,
            max_frame_size=frame_size,
            on_release=core._released if self._journal.recording else None,
        )
        # Filled once the threads exist: admission needs to know them, they need it.
        # Refilled when they are restarted after a fork (see _resume).
        own_threads: list[threading.Thread] = []
        self._own_threads = own_threads
        pace = pace_for(spooled=self._journal.recording)
        self._admission = Admission(
            o.overflow, o.overflow_timeout, self._buffer, self._queue,
            self._journal if self._journal.recording else None,
            own_threads, queue_limit=pace.queue_limit,
        )
        # Stopping the threads around a fork, so that the child is forked from a process
        # that runs none of them (see _parking.py).
        self._parking = Parking()
        self._reader = Reader(
            self._queue, self._buffer, self._life, packer_for(self._records), core._fail,
            admission=self._admission, batch=pace.batch, ledger=self._ledger,
            evicted=core._evicted,
            fail_spooled=core._fail_spooled, journal=self._journal, parking=self._parking,
        )
        self._writer = Writer(
            Sender(t.links(), self._ledger, t),
            self._buffer,
            self._life,
            self._ledger,
            builder_for(self._records, t, markers=True),
            flush_interval=o.flush_interval,
            max_write=max(o.frame_limit, _MiB),
            transport=t,
            report=lambda err: core._tell(err, None),
            parking=self._parking,
        )
        own_threads += (self._reader.thread, self._writer.thread)
        # Re-entrant: a signal handler that shuts down while its thread starts the threads
        # must not deadlock (see _end).
        self._start_lock = threading.RLock()
        self._handoff: _process.Handoff | None = None
        self._pid = os.getpid()
        if self._poster is not None:
            self._poster.bind(self._queue, self._life, self._admission, self._reporting,
                              self._reader, self._count_post, self._pid)

    def _start(self) -> None:
        # Threads start on first use, so a client made at import time in a preforking
        # server (gunicorn --preload) has no threads when the fork happens.
        if self._pid != _getpid():
            # Threads started on the parent's state would be orphaned by the pid check.
            self._check_fork()
        with self._start_lock:
            if self._life.phase is not NEW or self._handoff is not None:
                return
            if sys.is_finalizing() or _process.main_thread_finished():
                # Threads started now would be killed unflushed a moment later.
                raise ClientClosedError("the interpreter is shutting down")
            if _process.in_uwsgi_master():
                # uWSGI's master forks its workers without holding the GIL: a worker
                # forked while one of our threads held it would wait for it forever.
                # So no threads here; what the master posts waits in the queue, and
                # the first worker to claim the handoff sends it.
                self._handoff = _process.Handoff()
                return
            self._reader.thread.start()
            self._writer.thread.start()
            self._life.start()
        if self._handle_sigterm:
            _sigterm.offer(self)
        note, self._fork_note = self._fork_note, None
        if note is not None:
            log.error("fluentclient: %s", note)

    # -- posting -------------------------------------------------------------------------

    @overload
    def post(
        self,
        tag: str,
        record: Mapping[str, object],
        *,
        time: TimeLike | None = None,
        sync_append: bool = False,
        timeout: float | None = None,
        ack: Literal[False] = False,
    ) -> bool: ...

    @overload
    def post(
        self,
        tag: str,
        record: Mapping[str, object],
        *,
        time: TimeLike | None = None,
        sync_append: bool = False,
        timeout: float | None = None,
        ack: Literal[True],
    ) -> Future[None]: ...

    def post(
        self,
        tag: str,
        record: Mapping[str, object],
        *,
        time: TimeLike | None = None,
        sync_append: bool = False,
        timeout: float | None = None,
        ack: bool = False,
    ) -> bool | Future[None]:
        """Queue one record; True if it was taken, False if it was dropped (and counted).

        True means queued, not delivered: the record is packed later, on the client's
        reader thread, and sent by its writer. It can still be dropped: as
        ``unserializable`` (a value msgpack cannot pack and ``default=`` does not turn
        into one: a ``Decimal``, an ``object()``; a ``datetime`` is sent as ISO 8601
        text), ``unsafe``, ``too_large``, ``buffer_full``, ``spool_full`` or
        ``evicted`` (``overflow="drop_oldest"``); or it can end ``possibly_lost`` (it
        was written, and its connection failed, or its acks never came within
        ``ack_retry_limit`` attempts, before the server proved it read it) or
        ``unsent`` (still held at shutdown, never written).
        Every such record is counted in :meth:`stats` (``dropped`` by reason,
        ``possibly_lost``, ``unsent``). A drop also goes to ``on_error`` (with the
        record, where one is at hand), and the first drop for each reason is logged as a
        warning on the ``fluentclient`` logger naming the record's tag and, for one that
        cannot be packed, where in it the bad value is and its type. What is unsent at
        shutdown is in its report and goes to the spool or ``on_unsent``. To learn a
        record's fate at the call, use ``sync_append=True`` (raises if it cannot be
        buffered) or ``ack=True`` (a future settled by the server's ack).

        False means it was refused at once and nothing more happens to it: the client
        is shut down (``closed``), or the buffer or spool is full (``buffer_full``,
        ``spool_full``, as ``overflow`` says); counted and reported the same way.

        With ``ack=True`` (which needs ``require_ack=True``) it returns instead a
        :class:`concurrent.futures.Future` that resolves once the server acknowledged the
        frame holding the record, or fails with the reason it never will be; use
        ``asyncio.wrap_future`` to await it.

        With ``sync_append=True`` the call returns only once the record is in the buffer,
        and raises the reason when it cannot be: :class:`SerializationError`,
        :class:`BufferFullError`, :class:`RecordTooLargeError`, :class:`ClientClosedError`,
        or :class:`FluentTimeoutError` after ``timeout`` seconds (the record may still be
        buffered later). An invalid tag or time, or a record that is not a mapping
        (:class:`SerializationError`), always raises at once.
        """
        try:
            full_tag = self._known_tag(tag)
        except TypeError:  # unhashable, so no tag: the careful path says so
            full_tag = None
        queue, life = self._queue, self._life
        if (
            full_tag is None or type(record) is not dict
            or time is not None or ack or sync_append
            or len(queue) >= self._admission.room
            or life.phase is not RUNNING
            or self._pid != _getpid() or self._reporting.busy
        ):
            return self._post_carefully(tag, record, time, sync_append, timeout, ack)
        # The usual case: a known tag, the time now, room to spare, and nobody waiting to
        # hear of this record. Counted before the reader can see it, so its steps never
        # run ahead of ours.
        self._count_post()
        msg = Message(full_tag, record, _time_ns())
        queue.append(msg)
        if life.phase is not RUNNING:
            # A shutdown began since the look above: the record may have missed its sweep.
            return self._queued_late(msg, False)
        if self._reader.idle:
            self._reader.wake.set()
        return True

    def _post_carefully(
        self, tag: str, record: Mapping[str, object], time: TimeLike | None,
        sync_append: bool, timeout: float | None, ack: bool,
    ) -> bool | Future[None]:
        """post() when anything is out of the ordinary: a tag or time to check, a fork
        to notice, threads to start, a limit reached, a record that is not a plain dict, or
        a caller who wants to hear of the record."""
        if not isinstance(record, Mapping):
            raise _not_a_mapping(record)
        full_tag, time_ns = self._tags.stamp(tag, time)
        if self._pid != _getpid():
            # Forked without Python's at-fork hooks (uWSGI's workers, a C extension): the
            # state here is the parent's, and its threads do not exist in this process.
            # Checked on every post, because nothing else runs in such a child to notice.
            self._check_fork()
        delivery: Future[None] | None = None
        if ack:
            if not self._transport.require_ack:
                raise ValueError("post(ack=True) needs a client made with require_ack=True")
            delivery = Future()
        # The ack kind answers with its future whatever became of the record, the plain
        # kind with whether it was queued.
        msg = Message(full_tag, record, time_ns, None, delivery)
        life = self._life
        if life.phase is not RUNNING and life.phase is not NEW:
            queued = self._refuse(DROP_CLOSED, self._closed_error(), msg, sync_append)
            return queued if delivery is None else delivery
        reporting = self._reporting
        # ``busy`` first, as in post(): nearly always 0, and then not even a call is due.
        if reporting.busy and reporting.active() and self._admission.own_thread():
            # Posted while our reader or writer reports an error (an on_error that logs
            # to a handler of this client): queued, it would come back to the same
            # thread, perhaps to be dropped and reported again, without end.
            err = FluentError("posted while the client's own thread was reporting an "
                              "error; it cannot carry a record about its own failure")
            queued = self._refuse(DROP_REENTRANT, err, msg, sync_append)
            return queued if delivery is None else delivery
        orphaned = False
        if life.phase is NEW:
            try:
                self._start()
            except (ClientClosedError, RuntimeError) as exc:
                # No new threads once the interpreter is finalizing.
                err = ClientClosedError(f"cannot start the client: {exc}")
                queued = self._refuse(DROP_CLOSED, err, msg, sync_append)
                return queued if delivery is None else delivery
            # Its client object was collected before this first post began (see
            # _forgotten): once the record is queued, stop as a forgotten client stops.
            orphaned = self.__dict__.pop("_orphaned", False)
        try:
            return self._post_started(msg, delivery, sync_append, timeout)
        finally:
            if orphaned:
                _forgotten(self)

    def _post_started(self, msg: Message, delivery: Future[None] | None,
                      sync_append: bool, timeout: float | None) -> bool | Future[None]:
        """The rest of _post_carefully, once the client runs."""
        life = self._life
        reader = self._reader
        if len(self._queue) >= self._admission.queue_limit and not self._admission.own_thread():
            # Posts are outrunning packing: let the reader catch up rather than let
            # objects pile up in the queue. It is busy on the CPU, never on I/O.
            reader.wait_drained(_DRAIN_WAIT)
        self._admission.refresh()
        if self._admission.full() and not self._admit(msg, sync_append):
            return False if delivery is None else delivery
        self._count_post()
        if not sync_append:
            self._queue.append(msg)
            if life.phase is not RUNNING and life.phase is not NEW:
                queued = self._queued_late(msg, False)
                return queued if delivery is None else delivery
            if reader.idle:
                reader.wake.set()
            return True if delivery is None else delivery
        waiter: Future[None] = Future()
        msg.waiter = waiter
        self._queue.append(msg)
        if life.phase is not RUNNING and life.phase is not NEW:
            self._queued_late(msg, True)  # raises if taken back
        reader.wake.set()
        self._wait_appended(waiter, timeout)
        return True if delivery is None else delivery

    def _admit(self, msg: Message, sync_append: bool) -> bool:
        """A limit is reached: act on admission's verdicts until it admits or refuses."""
        if self._journal.pending():
            # The reader deletes finished segments: a full spool may have room then.
            self._reader.wake.set()
        verdict = self._admission.judge()
        while verdict.act is not Act.ADMIT:
            if verdict.act is Act.EVICT:
                self._evict_for(verdict.nbytes)
            elif verdict.act is Act.WAIT:
                # A record posted while we report an error (a log line of on_error) is
                # refused at once rather than stall the report: it is counted quietly.
                if not self._reporting.active():
                    self._wait_for_room(verdict.deadline)
            else:
                assert verdict.error is not None
                # overflow="raise" would raise into our own reporting, and each refusal
                # would print a traceback (a log handler's handleError): not there.
                raises = verdict.raises and not self._reporting.active()
                return self._refuse(
                    verdict.reason, verdict.error, msg, sync_append or raises)
            verdict = self._admission.judge(after=verdict.act)
        return True

    def _queued_late(self, msg: Message, raises: bool) -> bool:
        """post() queued ``msg`` and then found the client no longer running.

        A shutdown whose final sweep has not run yet finds the record (unless the reader
        packs it first) and hands it over with the rest. One whose sweep is done left it
        behind: it is taken back here and refused. Either way no record is left between
        the two: every True is sent or unsent, every False counted ``closed``.
        """
        if not self._reader.take_back(msg):
            return True
        err = self._closed_error()
        # Counted before anyone waiting on the record is woken, as in _refuse.
        self._told(DROP_CLOSED, err, msg, self._ledger.refuse_late(DROP_CLOSED))
        for future in (msg.waiter, msg.delivery):
            settle_future(future, err)
        if raises:
            raise err
        return False

    def _closed_error(self) -> ClientClosedError:
        life = self._life
        if life.phase is FAILED and life.failure is not None:
            return ClientClosedError(f"the client stopped working: {life.failure}")
        return ClientClosedError("the client is shut down")

    def _evict_for(self, nbytes: float) -> None:
        buf, mean = self._buffer, self._admission.mean_entry
        with buf.lock:
            over = buf.held_bytes + len(self._queue) * mean + nbytes - buf.limit
            evicted = buf.evict_locked(int(over) + 1) if over > 0 else []
            over -= sum(frame.entry_bytes for frame in evicted)
        if evicted:
            self._evicted(evicted)
        if over > 0:
            # Next oldest: what still waits for the reader, which owns the queue's head.
            self._reader.evict_queued(over, mean)

    def _wait_for_room(self, deadline: float) -> None:
        buf = self._buffer
        with buf.lock:
            buf.room_waiters += 1
            try:
                while self._admission.full() and self._life.phase is RUNNING:
                    remaining = deadline - _time.monotonic()
                    if remaining <= 0:
                        return
                    # Woken by every release and by the reader while we wait; the cap
                    # covers room made by a spool cleanup.
                    buf.done.wait(min(remaining, 0.05))
            finally:
                buf.room_waiters -= 1

    def _evicted(self, frames: list[Frame]) -> None:
        """Frames removed by the drop_oldest policy: count them and tell their futures."""
        records = sum(frame.records for frame in frames)
        err = BufferFullError(
            f"evicted to make room for newer records ({count(records, 'record')})")
        # Counted before the futures and on_error hear of it (see _fail).
        first = self._ledger.drop(DROP_EVICTED, records, State.BUFFERED) == records
        for frame in frames:
            resolve_futures(frame, err)
        if first:
            self._tell(err, None, "fluentclient: dropping the oldest records to make "
                                    "room: %s", err)
        else:
            self._tell(err, None)
        self._released(frames)

    def _released(self, frames: Sequence[Frame]) -> None:
        """Frames gone for good: the spool need not replay them.

        Called on the writer's thread and, through eviction, on callers': the journal
        only queues the spans, and the reader writes them on its next turn.
        """
        journal = self._journal
        if not journal.recording:
            return
        journal.done([(f.tag, f.first_seq, f.last_seq) for f in frames])
        if self._reader.idle:
            self._reader.wake.set()

    def _wait_appended(self, waiter: Future[None], timeout: float | None) -> None:
        deadline = None if timeout is None else _time.monotonic() + timeout
        while True:
            # In slices, so that a reader that is gone (it never should be) turns into an
            # error rather than a caller waiting forever.
            step = 0.5 if deadline is None else min(0.5, max(0.0, deadline - _time.monotonic()))
            try:
                waiter.result(step)
                return
            except FuturesTimeout:
                pass
            if deadline is not None and _time.monotonic() >= deadline:
                raise FluentTimeoutError(
                    f"the record did not reach the buffer within {timeout} s"
                ) from None
            if self._life.phase is not NEW and self._reader_gone() and not waiter.done():
                raise ClientClosedError("the client's reader thread has stopped")

    def _reader_gone(self) -> bool:
        """Whether the reader thread ran and ended (not merely parked for a fork)."""
        thread = self._reader.thread
        if thread.ident is None or thread.is_alive():
            return False
        # Parked, or restarted since (_resume puts the new thread in place before it
        # withdraws the request): not gone.
        return not self._parking.requested and self._reader.thread is thread

    def _refuse(self, reason: str, err: FluentError, msg: Message, raises: bool) -> bool:
        """A record post() turned away before it reached the queue: False, or ``err``
        raised if ``raises``."""
        # Counted (and reported) before anyone waiting on the record is woken, so that
        # whoever learns of the drop finds it in stats() already.
        self._told(reason, err, msg, self._ledger.refuse(reason))
        settle_future(msg.delivery, err)
        if raises:
            raise err
        return False

    def _fail(self, reason: str, err: FluentError, msg: Message) -> None:
        """A queued record that never reached the buffer."""
        # Counted first, as in _refuse: a sync_append caller woken by the error must see
        # the drop in stats(), and on_error must not run ahead of the count.
        self._told(reason, err, msg, self._ledger.drop(reason, 1, State.QUEUED))
        for future in (msg.waiter, msg.delivery):
            settle_future(future, err)

    def _fail_spooled(self, reason: str, err: FluentError, records: int) -> None:
        """Records a previous process left in the spool that cannot be sent: taken over,
        and dropped at once. No Message exists for them, so on_error gets None."""
        self._ledger.replay(records)
        self._told(reason, err, None, self._ledger.drop(reason, records, State.BUFFERED))

    def _told(self, reason: str, err: FluentError, msg: Message | None, total: int) -> None:
        # The warning comes once per reason, so a flood of drops cannot flood the log;
        # stats() and on_error see every one. The tag says which part of the program to
        # look at.
        if total != 1:
            self._tell(err, msg)
        elif msg is None:
            self._tell(err, msg, "fluentclient: dropping records (%s): %s", reason, err)
        else:
            self._tell(err, msg, "fluentclient: dropping records (%s): %s (the first: "
                         "tag %r; stats().dropped counts them all)", reason, err, msg.tag)

    def _tell(self, err: FluentError, msg: Message | None, *warning: object) -> None:
        """Tell on_error (and log ``warning``, if given) of a drop or a failure, with this
        thread marked as reporting for this client.

        A report that arises while this thread is already reporting for this client
        (on_error logs, a log handler posts to us, and that record is dropped too) is
        left unsaid, or each report would make the next one: it is counted where it
        belongs (stats().dropped), and the first one is said once.
        """
        reporting = self._reporting
        if reporting.active():
            if reporting.silence():
                log.warning(
                    "fluentclient: a record posted while this client was reporting a "
                    "drop (from on_error, or a log handler reached by its warnings) was "
                    "dropped too: %s; such drops are counted in stats().dropped but not "
                    "reported, so that no report can set off another", err)
            return
        with reporting:
            if warning:
                log.warning(*warning)
            _call_on_error(self._on_error, err, msg)

    # -- flushing and stopping -----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything posted before this call; True once it is.

        True means every record posted before the call was written (the server's host
        has taken its bytes, where the OS can tell; with ``require_ack`` the server
        acknowledged it) or was dropped, as counted in :meth:`stats` and told to
        ``on_error``. :meth:`stats` called after a True agrees: those records count as
        ``sent`` (or dropped), none as ``buffered``. Without ``require_ack``, "sent"
        means the server answered the chunk id the frame carries, which fluentd and
        Fluent Bit do once they read it; flush() waits for that answer too, within
        ``timeout``. With a server that never answers chunk ids (found out within 2 s of
        its first frame) it cannot: then ``stats()`` shows the records ``buffered`` until
        the writer settles them otherwise (see docs/guarantees.md), though flush() returned
        True. False means that is not known to be so: ``timeout`` ran out, a
        thread of the client failed, or a shutdown left records unsent (to the spool, to
        ``on_unsent`` or only to the count) or timed out. A flush during a shutdown waits
        for its outcome; one after it returns at once, True only if it sent everything.
        """
        self._check_fork()
        life = self._life
        if life.phase is NEW:
            return True  # nothing was taken that threads could write
        if self._reader.wake.resume is not None:
            self._reader.wake.set()  # dormant since a fork: the threads come back first
        deadline = None if timeout is None else _time.monotonic() + timeout
        if life.phase is RUNNING and not self._settle_queued(deadline):
            return False
        if life.phase is RUNNING:
            seq = self._buffer.request_flush()
            written = self._buffer.wait_flushed(
                seq, deadline, lambda: life.phase is not RUNNING)
            if written and life.phase is RUNNING:
                self._await_settled(deadline)
            if life.phase is RUNNING:
                return written
        # A shutdown is under way or done (or a thread failed): only its end can tell
        # whether what this call waits for was sent.
        return life.wait_closed(deadline)

    def _await_settled(self, deadline: float | None) -> None:
        """After flush()'s writes: wait for the server's answers that let stats() count
        them sent, while one may come. It changes nothing flush() returns: the records
        were written, and the writer would settle them anyway a moment later; this only
        keeps stats() from saying "buffered" about records flush() said were written.

        Counts, not record numbers: records posted after the flush may be written and
        waited for too, which only costs this wait a little more."""
        ledger, life, buffer = self._ledger, self._life, self._buffer
        unsettled, settled_before = ledger.settling()
        if not unsettled:
            return
        with buffer.lock:
            while life.phase is RUNNING and self._writer.settling():
                written, settled = ledger.settling()
                if not written or settled - settled_before >= unsettled:
                    return
                remaining = 0.005 if deadline is None else min(0.005, deadline - _time.monotonic())
                if remaining <= 0:
                    return
                # Wake the writer to read the answers now, rather than at its next look
                # (_MARKER_POLL); it reads them without this lock.
                buffer.changed.notify_all()
                buffer.done.wait(remaining)

    def _settle_queued(self, deadline: float | None) -> bool:
        """Wait until every record queued so far has left the queue (buffered or dropped),
        as the ledger counts them; False at the deadline. Stops early, True, if the client
        stops running: flush() then waits for the shutdown's outcome instead."""
        ledger, life = self._ledger, self._life
        target = ledger.entered()
        if ledger.left_queue() >= target:
            return True
        self._reader.wake.set()
        with self._buffer.lock:
            while ledger.left_queue() < target and life.phase is RUNNING:
                # The reader notifies nobody per batch (that would cost every batch a
                # wake-up): look again every few milliseconds.
                remaining = 0.005 if deadline is None else min(0.005, deadline - _time.monotonic())
                if remaining <= 0:
                    return False
                self._buffer.done.wait(remaining)
        return True

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Stop taking records, send what is held until the deadline, and report.

        Returns on time even if the server is stuck: at the deadline the writer's socket is
        aborted and whatever was not sent is counted in the report. Idempotent.
        """
        self._check_fork()
        with self._shutdown_lock:
            report = self._life.report
            if report is None:
                timeout = self.shutdown_timeout if timeout is None else timeout
                report = self._end(_time.monotonic() + max(0.0, timeout), drain=True)
            return report

    def close(self) -> None:
        """Stop at once without sending what is still held; it is counted as unsent."""
        self._check_fork()
        with self._shutdown_lock:
            if self._life.report is None:
                self._end(_time.monotonic(), drain=False)

    def _end(self, deadline: float, *, drain: bool, quiet: bool = False) -> ShutdownReport:
        """Called once, under the shutdown lock: post() refuses from here on."""
        with self._start_lock:  # threads are started, or never will be
            # Parked for a fork under way on another thread: running again first, so
            # that they drain (the fork's own hook then finds nothing parked).
            self._resume()
            before = self._life.begin_closing()
        ending = Ending(
            queue=self._queue, buffer=self._buffer, ledger=self._ledger, life=self._life,
            reader=self._reader, writer=self._writer, journal=self._journal,
            on_unsent=self._on_unsent, packer=partial(packer_for, self._records),
        )
        # CLOSING already: an earlier shutdown was cut short (an exception); stop the
        # threads it may have left running, if there were any.
        started = before in (RUNNING, FAILED) or (
            before is CLOSING and self._reader.thread.ident is not None)
        report = ending.run(deadline, drain=drain, started=started, quiet=quiet)
        self._life.report = report
        _process.live_clients.discard(self)
        return report

    # -- observing -----------------------------------------------------------------------

    def stats(self) -> Stats:
        self._check_fork()
        snapshot = self._ledger.snapshot(
            buffered_bytes=self._buffer.held_bytes,
            servers=tuple(link.stats() for link in self._writer.links),
        )
        health = self._journal.health()
        return snapshot if health is None else replace(snapshot, journal=health)

    # -- process events ------------------------------------------------------------------

    def _park(self, deadline: float) -> list[threading.Thread]:
        """Before a fork in this process: ask the running threads to park (see
        _parking.py); the threads to wait for, until ``deadline``.

        Every lock here is taken with the deadline: a thread of the program may hold one
        across the fork. A writer long in a socket call is asked but not waited for: a
        fork does not wait out a slow server, and a pool forking many times does not wait
        for it at each fork.
        """
        if not self._start_lock.acquire(timeout=max(0.0, deadline - _time.monotonic())):
            return []
        try:
            if (self._life.phase is not RUNNING or self._pid != _getpid()
                    or self._admission.own_thread()):
                # Not running, or forked from a thread of ours (a callback): nothing to
                # stop that could be waited for.
                return []
            if self._reader.wake.resume is not None:
                # Dormant since an earlier fork: parked already (setting the wake-up
                # would restart them). Only a thread that had not parked yet is waited for.
                return [t for t in (self._reader.thread, self._writer.thread)
                        if t.is_alive()]
            self._parking.requested = True
            self._reader.wake.set()
            buf = self._buffer
            if buf.lock.acquire(timeout=max(0.0, deadline - _time.monotonic())):
                try:
                    buf.changed.notify_all()  # the writer, waiting for work or a retry
                finally:
                    buf.lock.release()
            waits = [self._reader.thread]
            since = self._writer.in_socket_call_since
            if since is None or _time.monotonic() - since < _parking.STUCK_AFTER:
                waits.append(self._writer.thread)
            return waits
        finally:
            self._start_lock.release()

    def _resume_after_fork(self) -> None:
        """In the parent, once the fork is done: restart the threads now if they have
        work, else leave the client dormant until its next use (see _parking.py)."""
        with self._start_lock:
            if not self._parking.requested:
                return  # resumed already (a shutdown during the fork)
            if not self._has_work():
                reader = self._reader
                # From here a post that queues a record finds the reader idle and sets
                # its wake-up, which restarts the threads; one queued before is seen below.
                reader.idle = True
                reader.wake.resume = self._core._resume_dormant
                if not self._has_work():
                    return
                reader.wake.resume = None
            self._resume()

    def _has_work(self) -> bool:
        return (bool(self._queue) or self._buffer.held_records > 0
                or self._reader.has_work() or self._writer.has_work())

    def _resume_dormant(self) -> None:
        """Called by the reader's wake-up, on whatever thread needs the reader first."""
        with self._start_lock:
            self._resume()

    def _resume(self) -> None:
        """Restart the threads that parked for a fork (``_start_lock`` held)."""
        if not self._parking.requested:
            return
        self._reader.wake.resume = None

        def replace(which: str) -> threading.Thread:
            part = self._reader if which == READER else self._writer
            if part is self._reader:
                # The new reader starts by looking at the queue: posts need not wake it.
                self._reader.idle = False
            part.thread = part.new_thread()
            self._own_threads[:] = [self._reader.thread, self._writer.thread]
            return part.thread

        for thread in self._parking.end(replace):
            try:
                thread.start()
            except RuntimeError as exc:  # no new threads: out of resources, or finalizing
                self._life.fail(f"cannot restart the {thread.name} thread after a fork: {exc}")

    def _check_fork(self) -> bool:
        """True (after starting afresh) if this process was forked without the at-fork
        hooks running, as in uWSGI's workers or when a C extension calls fork(): the
        fallback to them.

        Every post() checks first, so whatever waits in the queue here was posted by the
        parent, whose own reader sends it: the child starts empty, as after a hooked fork.
        """
        pid = _getpid()
        if self._pid == pid:
            return False
        # Two threads of the child may notice at once; one starts afresh. The lock is
        # made in this process, so no thread of the parent can have held it at the fork.
        with _process.fork_lock(pid):
            if self._pid != pid:
                self._after_fork_in_child()
        return True

    def _after_fork_in_child(self) -> None:
        # The parent still owns and sends what it buffered; the child starts empty, with
        # fresh locks (a lock held by a parent thread at fork time would never be freed).
        # Except for what a parent without threads (uWSGI's master) left to its children:
        # the one child that claims it sends it.
        handoff, self._handoff = self._handoff, None
        held = [m for m in self._queue if isinstance(m, Message)] if handoff else []
        self._shutdown_lock = threading.Lock()
        self._reporting.after_fork()
        # A client shut down or closed in the parent stays so here (its shutdown may still
        # be under way in a parent thread): it refuses every post, and a shutdown here
        # reports this process's counts, which start from zero.
        closed = self._life.phase in (CLOSING, CLOSED)
        stopped = self._life.report is not None
        self._forget_in_child()
        if closed:
            if handoff is not None:
                handoff.claim()  # only closes our end: the parent sent what it could
            self._fresh(closed=True)
            if stopped:
                self._life.report = self._ledger.report(timed_out=False)
            return
        try:
            self._fresh()
        except OSError as exc:
            # Only the spool can fail here; the child goes on without one. Said when the
            # child first posts: logging here, in the at-fork hook, could wait forever
            # for a handler's lock that a thread of the parent held at the fork.
            self._fork_note = f"cannot open the spool after fork: {exc}"
            self._buffer_options = replace(self._buffer_options, spool_dir=None)
            self._fresh()
        if handoff is not None and handoff.claim() and held:
            # Posted in the parent, whose ledger stayed there: this one takes them over.
            self._ledger.enqueue(len(held))
            self._queue.extend(held)
            try:
                self._start()
            except (ClientClosedError, RuntimeError) as exc:
                log.warning("fluentclient: cannot send what the parent process left: %s", exc)
                return
            self._reader.wake.set()

    def _forget_in_child(self) -> None:
        """Close this process's copies of the parent's spool files and sockets.

        Only closes descriptors: no lock is taken (a thread of the parent may have held
        any of them at the fork) and nothing is sent or deleted, since the parent goes on
        using them.
        """
        self._journal.forget()
        self._journal = NullJournal()
        for link in self._writer.links:
            # Closed now, not when the old writer is collected, so that the server sees
            # the parent's own close when it comes. A close, never a shutdown: that would
            # cut the parent's connection too.
            conn, link.conn = link.conn, None
            if conn is not None:
                conn.close()
            # The parent's failed connections still finishing (see Writer._retire) too.
            while link.retiring:
                link.retiring.popleft().conn.close()

    # -- the end of the process (see _exit.py) --------------------------------------------

    def _exit_pending(self) -> bool:
        """Whether the end of the process has something to drain here: threads that ran
        (a child of a stopped client starts closed, and has none), or spool files."""
        self._check_fork()
        life = self._life
        if life.report is not None or self._shutdown_lock.locked():
            # Stopped, or being stopped by another thread, whose shutdown keeps its own
            # deadline and says itself what it could not send (a signal that came while
            # the program was in shutdown(), say).
            return False
        ran = life.phase is RUNNING or life.phase is FAILED or life.phase is CLOSING
        return ran or self._journal.owns_files

    def _drain_for_exit(self, deadline: float) -> ShutdownReport | None:
        """shutdown() until ``deadline``, quietly: the end of the process says what was
        not sent, for every client at once. None if this thread could not take the
        shutdown in time (another thread is inside shutdown(): its report is its own)."""
        if not self._shutdown_lock.acquire(timeout=max(0.0, deadline - _time.monotonic())):
            return None
        try:
            report = self._life.report
            if report is None:
                report = self._end(deadline, drain=True, quiet=True)
            return report
        finally:
            self._shutdown_lock.release()

    def _abandon(self) -> None:
        """Cut a drain under way short: the threads stop without new work and the socket is
        aborted, so the shutdown finishes at once and counts what was held as unsent."""
        life, buf = self._life, self._buffer
        if life.phase is not CLOSING:
            return
        with buf.lock:
            life.abandoned = True
            buf.changed.notify_all()
            buf.done.notify_all()
        self._writer.abort()

    def _hopeless(self) -> str | None:
        """Why no server of this client can take records before any deadline (a host that
        does not resolve, a refused key, a setting it cannot use), or None."""
        if self._life.phase is NEW:
            return None
        links = self._writer.links
        errors = [link.error for link in links]
        if not links or any(link.conn is not None for link in links) or not all(
                is_hopeless(e) for e in errors):
            return None
        first = errors[0]
        assert first is not None  # every one is hopeless, so none is missing
        if is_unresolvable(first):
            return f"the host does not resolve: {first}"
        return str(first)

    def _held(self) -> int:
        """Records posted and neither sent nor settled otherwise (as the books say)."""
        return self._ledger.snapshot(buffered_bytes=0).buffered

    def _exit_name(self) -> str:
        """The client as a person at a terminal tells it from others: who made it, where to."""
        servers = ", ".join(describe(s.address) for s in self._transport.servers)
        return f"{self._owner} to {servers}"

    def _unreachable(self) -> str | None:
        """Why no server can take records now (the last error), or None if one may.

        Read beside the writer, which owns the links: a moment stale at worst.
        """
        links = self._writer.links
        if self._life.phase is NEW or any(link.conn is not None for link in links):
            return None
        errors = [link.last_error for link in links]
        if not errors or any(e is None for e in errors):
            return None  # a server not tried yet, or whose last attempt worked
        return errors[0]

    def _explain_wait(self, timeout: float, setting: str) -> None:
        """Before an end of process that waits for servers known to be down: one line
        saying what it waits for, and which setting bounds it."""
        if self._life.report is not None or timeout <= 0:
            return
        why = self._unreachable()
        if why is None:
            # Not tried yet: the writer's first failure, if it comes, says how long the
            # drain goes on (see Writer._connected_link).
            return
        held = self._ledger.snapshot(buffered_bytes=0).buffered
        if held:
            log.warning("fluentclient: waiting up to %g s (%s) to send %s held; "
                        "no server reachable: %s", timeout, setting, count(held, "record"),
                        why)


# -- a client the program forgot ---------------------------------------------------------


def _core_of(client: BufferedClient) -> BufferedClient:
    """A second BufferedClient object sharing ``client``'s attributes (the same
    ``__dict__``), which the threads and callbacks hold instead of ``client``.

    Every method then works on either, and the state they change is one; but a program
    that drops its last reference to the client lets it be collected, though its threads
    still run: nothing of ours refers to the client object itself. Its finalizer then
    stops them through the core (see _forgotten).
    """
    core: BufferedClient = object.__new__(type(client))
    # A plain dict, set on both. Reading ``client.__dict__`` would hand both objects the
    # split dict CPython (3.11) makes from an instance's inline attributes, which its
    # attribute cache cannot serve: every ``self._x`` in post() would then take the slow
    # generic lookup, about a fifth of a record's cost on the posting thread.
    shared = dict(client.__dict__)
    client.__dict__ = shared
    core.__dict__ = shared
    return core


def _forgotten(core: BufferedClient) -> None:
    """The client was collected without shutdown() or close(): do what shutdown() would,
    on a thread of its own, and say so, as Python does for a file left open.

    Called by the garbage collector on whatever thread dropped the last reference. That
    thread is not held up: the drain (bounded by ``shutdown_timeout``) runs on a new
    thread, which is not a daemon, so an exit that comes first still waits for it.
    """
    life = core._life
    if life.phase is CLOSING or life.phase is CLOSED:
        return  # shut down or closed: nothing left open
    if core._pid != _getpid():
        # Forked without the hooks and never used here: the parent's threads are not ours
        # to stop, and its records are its own. Only our copies of its files are.
        core._forget_in_child()
        return
    if life.phase is NEW and not core._journal.owns_files:
        # No thread, socket or file was ever opened. But the compiled post() holds the
        # core, not the client, so in ``BufferedClient(...).post(...)`` the client is
        # collected before its first post runs: that post starts the client, and then
        # comes back here (see _post_carefully).
        core.__dict__["_orphaned"] = True
        return
    # Until drained: a child forked meanwhile closes its copies of the files and sockets.
    _process.forgotten.add(core)
    try:
        threading.Thread(target=_drain_forgotten, args=(core,), name="fluentclient-forgotten",
                         daemon=False).start()
    except RuntimeError:
        # No new threads (the interpreter is going away): stop without sending.
        _drain_forgotten(core, timeout=0.0)
    servers = ", ".join(describe(s.address) for s in core._transport.servers)
    warnings.warn(
        f"unclosed <BufferedClient to {servers}>: call shutdown() when done with a client "
        f"(what it held is sent now, within shutdown_timeout)",
        ResourceWarning, source=core, stacklevel=2,
    )


def _drain_forgotten(core: BufferedClient, timeout: float | None = None) -> None:
    try:
        core.shutdown(timeout)  # it logs what it could not send
    except Exception:
        log.exception("fluentclient: stopping a client that was not shut down failed")
    finally:
        _process.forgotten.discard(core)
