"""The :class:`BufferedClient`, which never blocks (:class:`SyncClient` lives in sync.py).

A caller's post() puts a Message on a queue; the client's reader thread packs it into
the buffer, and its writer thread sends whole frames to the server. Each piece of state
has one owner, asked through its own methods: the queue's head is the reader's, the
connections the writer's; the ledger (every record's fate), admission (limits and
overflow), the reporter (drops told to on_error) and the lifecycle (the client's one
phase) are shared by all three. This module only wires them and answers the public calls.
docs/architecture.md draws the threads and says which locks each path takes.
"""

from __future__ import annotations

import os
import sys
import threading
import time as _time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import replace
from functools import partial
from typing import Literal, overload

from . import _posting
from ._accel import fast_poster
from ._admission import Admission, pace_for
from ._base import Client as _Client
from ._buffer import Buffer
from ._crew import Crew
from ._flush import flush
from ._journal import Journal, NullJournal, open_journal
from ._ledger import Ledger
from ._lifecycle import CLOSED, CLOSING, FAILED, NEW, RUNNING, Lifecycle
from ._lifetime import _clients, _draining, _forks, _process, _sigterm
from ._lifetime._forgotten import core_of, forgotten
from ._lifetime._mark import Mark, unforked_mark
from ._lifetime._parking import Parking
from ._options import MiB as _MiB
from ._options import builder_for, packer_for
from ._reading._reader import Reader
from ._reporting import ErrorCallback, Reporter, Reporting
from ._shutdown import Ending, UnsentCallback
from ._threads import OwnThreads
from ._transport._pool import ServerSpec
from ._transport._sender import Sender
from ._writing._writer import Writer
from .backoff import Backoff
from .errors import ConfigurationError
from .message import Message, TimeLike
from .options import Auth, Buffering, RecordRules, Timeouts, TlsSetting
from .stats import ShutdownReport, Stats
from .sync import SyncClient

__all__ = ["BufferedClient", "SyncClient"]


_getpid = os.getpid
_time_ns = _time.time_ns


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
        # client the program drops is collected (see _forgotten.py).
        self._core = core_of(self)
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
        # Dropped without shutdown() or close(): stopped when collected (see _forgotten.py).
        # At exit the at-exit hook drains the clients still alive, not this; and a client
        # made while the interpreter finalizes never starts threads (nor could a
        # finalizer be made then: it imports).
        if not sys.is_finalizing():
            finalizer = weakref.finalize(self, forgotten, self._core)
            # Not at exit: the at-exit hook drains what is alive then. (A property at run
            # time; the type stubs for Python 3.9 do not list it, hence setattr.)
            setattr(finalizer, "atexit", False)  # noqa: B010
        _clients.live.add(self)
        # Whether this client may install the SIGTERM handler (see _sigterm.py); one
        # that is not drained at exit has no business with the end of the process.
        self._handle_sigterm = at_exit and handle_sigterm
        if at_exit:
            _process.register_at_exit(self)
            _sigterm.offer(self._handle_sigterm)
        if self._journal.has_orphans():
            # What a previous process left is sent now, not at the first post().
            self._start()

    def _fresh(self, *, closed: bool = False) -> None:
        """Build the queue, buffer and threads (not started): at init and after fork.

        ``closed``: a child of a process that had stopped this client; it stays stopped
        (closed: nothing of this process's is live), and opens no spool.
        """
        o, t = self._buffer_options, self._transport
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
        )
        # Every drop, whoever finds it, is counted and told here.
        self._reporter = Reporter(self._ledger, self._reporting, self._on_error)
        # The reader and writer, once made; admission must know them, they need it.
        own = OwnThreads()
        pace = pace_for(spooled=self._journal.recording)
        self._admission = Admission(
            o.overflow, o.overflow_timeout, self._buffer, self._queue,
            self._journal if self._journal.recording else None,
            own.includes_caller, queue_limit=pace.queue_limit,
            life=self._life, ledger=self._ledger, reporter=self._reporter,
        )
        # Stopping the threads around a fork, so that the child is forked from a process
        # that runs none of them (see _parking.py).
        self._parking = Parking()
        self._reader = Reader(
            self._queue, self._buffer, self._life, packer_for(self._records), self._reporter,
            admission=self._admission, batch=pace.batch, ledger=self._ledger,
            journal=self._journal, parking=self._parking,
        )
        if self._journal.recording:
            self._buffer.on_release = self._reader.released
        self._writer = Writer(
            Sender(t.links(), self._ledger, t),
            self._buffer,
            self._life,
            self._ledger,
            builder_for(self._records, t, markers=True),
            flush_interval=o.flush_interval,
            max_write=max(o.frame_limit, _MiB),
            transport=t,
            report=self._reporter.failure,
            parking=self._parking,
        )
        self._crew = Crew(self._reader, self._writer, self._life, self._parking,
                          self._queue, self._buffer, own)
        self._handoff: _process.Handoff | None = None
        self._pid = os.getpid()
        # post()'s fork check: true until this process forks (see _mark.py).
        self._unforked: Mark = unforked_mark()
        if self._poster is not None:
            self._poster.bind(self._queue, self._life, self._admission, self._reporting,
                              self._reader, self._count_post, self._pid)

    _start = _posting.start

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

        True means queued, not delivered: the reader packs it later and the writer sends
        it, and it may still be dropped. False means refused at once: the client is shut
        down, or the buffer or spool is full (as ``overflow`` says). Either way every
        record ends up in :meth:`stats` (sent, dropped by reason, possibly lost or
        unsent), and a drop is told to ``on_error``.

        ``ack=True`` (with ``require_ack=True``) returns a Future the server's ack
        settles; ``sync_append=True`` returns once the record is buffered and raises why
        it cannot be (within ``timeout``). A bad tag or time, or a record that is not a
        mapping, raises :class:`SerializationError` at once. docs/architecture.md says
        where a record can end, and why.
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
            or not self._unforked[0] or self._reporting.busy
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

    # What the usual path leaves to the careful one (see _posting.py); the compiled
    # post() calls these two too.
    _post_carefully = _posting.post_carefully
    _queued_late = _posting.queued_late

    # -- flushing and stopping -----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything posted before this call; True once it is.

        True: every record posted before the call was written (with ``require_ack``,
        acknowledged) or dropped, and :meth:`stats` says so. False: not known to be so
        (``timeout`` ran out, a thread failed, or a shutdown left records unsent). During
        a shutdown it waits for its outcome. docs/guarantees.md says what "written" proves.
        """
        self._check_fork()
        return flush(self._life, self._reader, self._buffer, self._writer, self._ledger,
                     timeout)

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
        with self._crew.lock:  # threads are started, or never will be
            # Parked for a fork under way on another thread: running again first, so
            # that they drain (the fork's own hook then finds nothing parked).
            self._crew.resume()
            before = self._life.begin_closing()
        ending = Ending(
            queue=self._queue, buffer=self._buffer, ledger=self._ledger, life=self._life,
            reader=self._reader, writer=self._writer, journal=self._journal,
            on_unsent=self._on_unsent, packer=partial(packer_for, self._records),
        )
        # CLOSING already: an earlier shutdown was cut short (an exception); stop the
        # threads it may have left running, if there were any.
        started = before in (RUNNING, FAILED) or (before is CLOSING and self._crew.started())
        report = ending.run(deadline, drain=drain, started=started, quiet=quiet)
        self._life.report = report
        _clients.live.discard(self)
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

    # -- forks (see _process.py, _crew.py and _parking.py) --------------------------------

    def _park(self, deadline: float) -> list[threading.Thread]:
        """Before a fork in this process: the threads to wait for as they park."""
        if self._pid != _getpid():
            return []  # a child of a fork that skipped the hooks: none of ours runs here
        return self._crew.park(deadline)

    def _resume_after_fork(self) -> None:
        self._crew.resume_after_fork()

    _check_fork = _forks.check_fork
    _after_fork_in_child = _forks.after_fork_in_child
    _forget_in_child = _forks.forget_in_child

    # -- the end of the process: what _exit.py asks (see _clients.Drainable) -------------

    _exit_pending = _draining.pending
    _drain_for_exit = _draining.drain
    _abandon = _draining.abandon_drain
    _hopeless = _draining.hopeless
    _unreachable = _draining.unreachable
    _held = _draining.held
    _exit_name = _draining.name
    _explain_wait = _draining.explain_wait
