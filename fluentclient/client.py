"""The :class:`BufferedClient`, which never blocks (:class:`SyncClient` lives in sync.py).

Threads of a BufferedClient and what each owns::

    caller threads   post(): check the tag, build a Message, put it on the queue
          |          (a deque; the usual path takes one lock of ours, the ledger's, for
          |          one increment; see the README for the paths that take more; the
          |          reader is woken only when it went idle)
          v
    reader thread    owns the packer; packs a batch, then appends it to the buffer
          |          under buffer.lock and notifies buffer.changed when a write is due
          v
    writer thread    owns the connection; waits on buffer.changed (threshold reached,
                     flush interval passed, flush() or shutdown), takes whole frames
                     under the lock, writes them with the lock released, then releases
                     or requeues them (buffer.done wakes flush() callers)

Shared by all three, each behind its own lock and changed by no one else:

    ledger      (_ledger.py) every record's fate; each thread reports the moves it makes
                (post: queued or refused; reader: buffered or dropped; writer: written,
                sent, requeued or possibly lost; shutdown: unsent), and stats() is one
                snapshot of it. After the shutdown report it is frozen.
    admission   (_admission.py) the one decision on limits and overflow, asked by post()
                and by the reader; the caller acts on its verdict.
    journal     (_journal.py) the spool, or a null one. Callers only queue "done" spans
                in memory; the reader does every file operation.

Shutdown is a state change in :class:`Lifecycle` made under buffer.lock plus a
notify_all, and a STOP marker on the queue for the reader. Past the deadline the
shutting-down thread aborts the writer's socket itself, so it never waits on I/O.
"""

from __future__ import annotations

import atexit
import logging
import os
import ssl
import sys
import threading
import time as _time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import replace
from typing import Any, Callable, Literal, Optional, overload

from ._admission import Act, Admission
from ._base import Client as _Client
from ._base import TagChecker as _TagChecker
from ._buffer import Buffer, Frame
from ._journal import Journal, NullJournal, open_journal
from ._ledger import Ledger, State
from ._lifecycle import Lifecycle, swallow
from ._options import (
    BufferOptions,
    RecordOptions,
    TransportOptions,
    security_from,
    servers_from,
)
from ._options import MiB as _MiB
from ._pool import ServerSpec
from ._reader import STOP, Reader, yield_gil
from ._sender import Sender
from ._writer import Writer, resolve_futures
from .backoff import Backoff
from .errors import (
    BufferFullError,
    ClientClosedError,
    FluentError,
    FluentTimeoutError,
    InvalidTagError,
)
from .framing import Default, FrameError, decode_frame, new_unpacker
from .guard import DEFAULT_MAX_DEPTH
from .message import Message, TimeLike, settle_future, time_to_ns
from .stats import (
    DROP_CLOSED,
    DROP_EVICTED,
    ShutdownReport,
    Stats,
    UnsentRecord,
)
from .sync import SyncClient

__all__ = ["BufferedClient", "SyncClient"]

log = logging.getLogger("fluentclient")

ErrorCallback = Callable[[FluentError, Optional[Message]], None]
UnsentCallback = Callable[[list[UnsentRecord]], None]

# Queued messages past which post() lets the reader run before queueing more.
_YIELD_AT = 256
_getpid = os.getpid
_time_ns = _time.time_ns


def _call_on_error(
    callback: ErrorCallback | None, err: FluentError, msg: Message | None
) -> None:
    if callback is None:
        return
    try:
        callback(err, msg)
    except BaseException as exc:
        if not swallow(exc):
            raise
        log.exception("fluentclient: the on_error callback raised")


_live_clients: weakref.WeakSet[BufferedClient] = weakref.WeakSet()
# One lock per process for noticing a fork that skipped the at-fork hooks (see
# _check_fork); setdefault on a dict is atomic, so every thread of a process gets the same.
_fork_locks: dict[int, threading.Lock] = {}
# Clients made with at_exit=True: what a host's own end-of-process hook drains.
_drained_at_exit: weakref.WeakSet[BufferedClient] = weakref.WeakSet()


class BufferedClient(_Client):
    """Posts records without ever blocking; a reader and a writer thread do the rest.

    ``post()`` returns at once whatever the server does. Records are packed into
    PackedForward frames of at most ``max_frame_size`` bytes and written when
    ``write_threshold`` bytes are waiting or ``flush_interval`` seconds have passed since
    the oldest unsent one. Memory is bounded by ``buffer_limit``, which also covers what
    still waits to be packed; past it new records are dropped and counted. Every record
    ends up counted in :meth:`stats` as sent, dropped, possibly lost or unsent.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 24224,
        *,
        unix_path: str | None = None,
        servers: Sequence[ServerSpec] | None = None,
        tag_prefix: str | None = None,
        buffer_limit: int = 8 * _MiB,
        write_threshold: int = 8 * 1024,
        flush_interval: float = 0.1,
        max_frame_size: int = _MiB,
        connect_timeout: float = 5.0,
        write_timeout: float = 5.0,
        backoff: Backoff = Backoff(),
        on_error: ErrorCallback | None = None,
        default: Default = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        non_str_keys: str = "str",
        non_finite_floats: str = "null",
        non_utf8_bytes: str = "str",
        shutdown_timeout: float = 5.0,
        require_ack: bool = False,
        ack_timeout: float = 60.0,
        ack_retry_limit: int = 8,
        shared_key: str | None = None,
        self_hostname: str | None = None,
        username: str = "",
        password: str = "",
        ssl_context: ssl.SSLContext | None = None,
        tls: bool = False,
        tls_ca_file: str | None = None,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        tls_verify: bool = True,
        tls_server_name: str | None = None,
        compress: str | None = None,
        compress_level: int = 6,
        keepalive_timeout: float | None = None,
        dns_refresh: bool = True,
        int_time: bool = False,
        entries_as_str: bool = False,
        at_exit: bool = True,
        overflow: str = "drop_newest",
        overflow_timeout: float = 1.0,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_limit: int | None = None,
        on_unsent: UnsentCallback | None = None,
    ) -> None:
        self._buffer_options = BufferOptions(
            buffer_limit=buffer_limit, write_threshold=write_threshold,
            flush_interval=flush_interval, max_frame_size=max_frame_size, overflow=overflow,
            overflow_timeout=overflow_timeout,
            spool_dir=None if spool_dir is None else os.fspath(spool_dir),
            spool_limit=spool_limit, shutdown_timeout=shutdown_timeout,
        )
        self._transport = TransportOptions(
            servers=servers_from(host, port, unix_path, servers),
            security=security_from(
                shared_key=shared_key, self_hostname=self_hostname, username=username,
                password=password, ssl_context=ssl_context, tls=tls, tls_ca_file=tls_ca_file,
                tls_cert_file=tls_cert_file, tls_key_file=tls_key_file, tls_verify=tls_verify,
                tls_server_name=tls_server_name,
            ),
            connect_timeout=connect_timeout, write_timeout=write_timeout, backoff=backoff,
            require_ack=require_ack, ack_timeout=ack_timeout, ack_retry_limit=ack_retry_limit,
            compress=compress, compress_level=compress_level,
            keepalive_timeout=keepalive_timeout, dns_refresh=dns_refresh,
        )
        self._records = RecordOptions(
            default=default, max_depth=max_depth, non_str_keys=non_str_keys,
            non_finite_floats=non_finite_floats, non_utf8_bytes=non_utf8_bytes,
            int_time=int_time, entries_as_str=entries_as_str,
        )
        self._tags = _TagChecker(tag_prefix)
        self._overflow = overflow
        self._overflow_timeout = overflow_timeout
        self._on_unsent = on_unsent
        self._journal: Journal = NullJournal()
        self._on_error = on_error
        self.shutdown_timeout = shutdown_timeout
        self._shutdown_lock = threading.Lock()
        self._report: ShutdownReport | None = None
        self._fresh()
        _live_clients.add(self)
        if at_exit:
            _register_at_exit(self)
        if self._journal.has_orphans():
            # What a previous process left is sent now, not at the first post().
            self._start()

    def _fresh(self, *, closed: bool = False) -> None:
        """Build the queue, buffer and threads (not started): at init and after fork.

        ``closed``: a child of a process that had stopped this client; it stays stopped,
        and opens no spool.
        """
        o, t = self._buffer_options, self._transport
        self._closing = closed
        self._life = Lifecycle()
        self._ledger = Ledger()
        self._count_post = self._ledger.enqueue_one
        self._queue: deque[object] = deque()
        frame_size = o.max_frame_size
        if t.compress:
            # Deflate can grow incompressible input a little (stored blocks, gzip header
            # and trailer): leave room so a compressed frame still fits.
            frame_size -= frame_size // 500 + 64
        if not closed:
            self._journal = open_journal(o.spool_dir, limit=o.spool_bytes)
        self._buffer = Buffer(
            limit=o.buffer_limit,
            write_threshold=o.write_threshold,
            max_frame_size=frame_size,
            on_release=self._released if self._journal.recording else None,
        )
        # Filled once the threads exist: admission needs to know them, they need it.
        own_threads: list[threading.Thread] = []
        self._admission = Admission(
            self._overflow, self._overflow_timeout, self._buffer, self._queue,
            self._journal if self._journal.recording else None,
            own_threads,
        )
        self._reader = Reader(
            self._queue, self._buffer, self._life, self._records.packer(), self._fail,
            admission=self._admission, ledger=self._ledger, evicted=self._evicted,
            fail_spooled=self._fail_spooled, journal=self._journal,
        )
        self._writer = Writer(
            Sender(t.links(), self._ledger, t),
            self._buffer,
            self._life,
            self._ledger,
            self._records.builder(t, markers=True),
            flush_interval=o.flush_interval,
            max_write=max(o.max_frame_size, _MiB),
            transport=t,
            report=lambda err: _call_on_error(self._on_error, err, None),
        )
        own_threads += (self._reader.thread, self._writer.thread)
        self._started = False
        self._start_lock = threading.Lock()
        self._handoff: _Handoff | None = None
        self._pid = os.getpid()

    def _start(self) -> None:
        # Threads start on first use, so a client made at import time in a preforking
        # server (gunicorn --preload) has no threads when the fork happens.
        if self._pid != _getpid():
            # Threads started on the parent's state would be orphaned by the pid check.
            self._check_fork()
        with self._start_lock:
            if self._started or self._handoff is not None:
                return
            if sys.is_finalizing() or _main_thread_finished():
                # Threads started now would be killed unflushed a moment later.
                raise ClientClosedError("the interpreter is shutting down")
            if _in_uwsgi_master():
                # uWSGI's master forks its workers without holding the GIL: a worker
                # forked while one of our threads held it would wait for it forever.
                # So no threads here; what the master posts waits in the queue, and
                # the first worker to claim the handoff sends it.
                self._handoff = _Handoff()
                return
            self._reader.thread.start()
            self._writer.thread.start()
            self._started = True

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

        With ``ack=True`` (which needs ``require_ack=True``) it returns instead a
        :class:`concurrent.futures.Future` that resolves once the server acknowledged the
        frame holding the record, or fails with the reason it never will be; use
        ``asyncio.wrap_future`` to await it.

        With ``sync_append=True`` the call returns only once the record is in the buffer,
        and raises the reason when it cannot be: :class:`SerializationError`,
        :class:`BufferFullError`, :class:`RecordTooLargeError`, :class:`ClientClosedError`,
        or :class:`FluentTimeoutError` after ``timeout`` seconds (the record may still be
        buffered later). An invalid tag or time always raises at once.
        """
        tags = self._tags
        try:
            full_tag = tags.known.get(tag) or tags(tag)
        except TypeError:  # an unhashable tag (a list...) fails the cache lookup
            raise InvalidTagError(f"tag must be a str, not {type(tag).__name__}") from None
        time_ns = _time_ns() if time is None else time_to_ns(time)
        if self._pid != _getpid():
            # Forked without Python's at-fork hooks (uWSGI's workers, a C extension): the
            # state here is the parent's, and its threads do not exist in this process.
            # Checked on every post, because nothing else runs in such a child to notice.
            self._check_fork()
        queue = self._queue
        if not (ack or sync_append or self._closing or self._life.failed) and self._started:
            # The usual case, kept short: every call here is paid once per record.
            if len(queue) > _YIELD_AT:
                # Posts are outrunning serialization: give the reader the GIL for a
                # moment rather than let the queue grow into drops. No I/O is waited on.
                yield_gil()
            if not self._admission.full():
                # Counted before the reader can see it, so its steps never run ahead.
                self._count_post()
                queue.append(Message(full_tag, record, time_ns))
                if self._reader.idle:
                    self._reader.wake.set()
                return True
        delivery: Future[None] | None = None
        if ack:
            if not self._transport.require_ack:
                raise ValueError("post(ack=True) needs a client made with require_ack=True")
            delivery = Future()
        # One path for both kinds of post; the ack kind answers with its future whatever
        # became of the record, the plain kind with whether it was queued.
        msg = Message(full_tag, record, time_ns, None, delivery)
        if self._closing or self._life.failed:
            queued = self._refuse(DROP_CLOSED, self._closed_error(), msg, sync_append)
            return queued if delivery is None else delivery
        if not self._started:
            try:
                self._start()
            except (ClientClosedError, RuntimeError) as exc:
                # No new threads once the interpreter is finalizing.
                err = ClientClosedError(f"cannot start the client: {exc}")
                queued = self._refuse(DROP_CLOSED, err, msg, sync_append)
                return queued if delivery is None else delivery
        if len(self._queue) > _YIELD_AT:
            # Posts are outrunning serialization: give the reader the GIL for a moment
            # rather than let the queue grow into drops. This waits on no I/O.
            yield_gil()
        if self._admission.full() and not self._admit(msg, sync_append):
            return False if delivery is None else delivery
        reader = self._reader
        # Counted before the reader can see it, so its steps never run ahead of ours.
        self._ledger.enqueue()
        if not sync_append:
            self._queue.append(msg)
            if reader.idle:
                reader.wake.set()
            return True if delivery is None else delivery
        waiter: Future[None] = Future()
        msg.waiter = waiter
        self._queue.append(msg)
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
                self._wait_for_room(verdict.deadline)
            else:
                assert verdict.error is not None
                return self._refuse(
                    verdict.reason, verdict.error, msg, sync_append or verdict.raises)
            verdict = self._admission.judge(after=verdict.act)
        return True

    def _closed_error(self) -> ClientClosedError:
        failed = self._life.failed
        if failed is not None and not self._closing:
            return ClientClosedError(f"the client stopped working: {failed}")
        return ClientClosedError("the client is shut down")

    def _evict_for(self, nbytes: float) -> None:
        buf, mean = self._buffer, self._admission.mean_entry
        with buf.lock:
            over = buf.held_bytes + len(self._queue) * mean + nbytes - buf.limit
            evicted = buf.evict_locked(int(over) + 1) if over > 0 else []
            over -= sum(frame.entry_bytes for frame in evicted)
        if evicted:
            self._evicted(evicted)
        # Next oldest: what still waits for the reader. Popping the head of a deque is
        # atomic, so the reader taking the same end at once only means one fewer here.
        err: BufferFullError | None = None
        while over > 0:
            with self._reader.pop_lock:
                try:
                    item = self._queue.popleft()
                except IndexError:
                    break
                if not isinstance(item, Message):
                    self._queue.appendleft(item)  # the stop marker stays first
                    break
                self._reader.removed += 1
            err = err or BufferFullError("evicted to make room for newer records")
            self._fail(DROP_EVICTED, err, item)
            with self._reader.pop_lock:
                self._reader.evicted += 1  # settled: counted as dropped
            over -= mean

    def _wait_for_room(self, deadline: float) -> None:
        buf = self._buffer
        with buf.lock:
            buf.room_waiters += 1
            try:
                while self._admission.full() and not self._closing:
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
        err = BufferFullError(f"evicted to make room for newer records ({records} records)")
        # Counted before the futures and on_error hear of it (see _fail).
        if self._ledger.drop(DROP_EVICTED, records, State.BUFFERED) == records:
            log.warning("fluentclient: dropping the oldest records to make room: %s", err)
        for frame in frames:
            resolve_futures(frame, err)
        _call_on_error(self._on_error, err, None)
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
            if self._started and not self._reader.thread.is_alive() and not waiter.done():
                raise ClientClosedError("the client's reader thread has stopped")

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
        if total == 1:
            # Once per reason, so a flood of drops cannot flood the log; stats() and
            # on_error see every one.
            log.warning("fluentclient: dropping records (%s): %s", reason, err)
        _call_on_error(self._on_error, err, msg)

    # -- flushing and stopping -----------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything posted before this call; False if ``timeout`` ran out first.

        Written means the server's host has taken the bytes (where the OS can tell).
        """
        self._check_fork()
        if not self._started:
            return True
        deadline = None if timeout is None else _time.monotonic() + timeout
        # Everything posted before now must first pass through the reader: what it (or an
        # eviction) removed from the queue so far plus what is still queued, counted under
        # the lock that removing takes, so a batch in the reader's hands is in neither.
        reader = self._reader
        with reader.pop_lock:
            target = reader.removed + len(self._queue)
        reader.wake.set()
        life = self._life
        with self._buffer.lock:
            while reader.settled + reader.evicted < target and not life.reader_done:
                remaining = 0.005 if deadline is None else min(0.005, deadline - _time.monotonic())
                if remaining <= 0:
                    return False
                self._buffer.done.wait(remaining)
        if life.failed:
            # A thread died: what it held may never be written.
            return False
        seq = self._buffer.request_flush()
        return self._buffer.wait_flushed(seq, deadline, lambda: life.failed) and not life.failed

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        """Stop taking records, send what is held until the deadline, and report.

        Returns on time even if the server is stuck: at the deadline the writer's socket is
        aborted and whatever was not sent is counted in the report. Idempotent.
        """
        self._check_fork()
        with self._shutdown_lock:
            if self._report is not None:
                return self._report
            timeout = self.shutdown_timeout if timeout is None else timeout
            deadline = _time.monotonic() + max(0.0, timeout)
            self._closing = True
            timed_out = False
            if self._started:
                timed_out = not self._stop_threads(deadline, drain=True)
            self._report = self._final_report(timed_out)
            _live_clients.discard(self)
            return self._report

    def close(self) -> None:
        """Stop at once without sending what is still held; it is counted as unsent."""
        self._check_fork()
        with self._shutdown_lock:
            if self._report is not None:
                return
            self._closing = True
            if self._started:
                self._stop_threads(_time.monotonic(), drain=False)
            self._report = self._final_report(timed_out=False)
            _live_clients.discard(self)

    def _stop_threads(self, deadline: float, *, drain: bool) -> bool:
        buf, life = self._buffer, self._life
        self._queue.append(STOP)
        self._reader.wake.set()
        with buf.lock:
            life.drain_deadline = deadline
            if not drain:
                life.abandoned = True
            buf.changed.notify_all()
        for thread in (self._reader.thread, self._writer.thread):
            thread.join(max(0.0, deadline - _time.monotonic()))
        # Clean means drained, not merely stopped: at the deadline the writer stops on its
        # own, and may be gone just before the join gives up waiting for it.
        clean = (
            not self._writer.thread.is_alive()
            and not self._reader.thread.is_alive()
            and buf.held_records == 0
            and not any(isinstance(item, Message) for item in self._queue)
        )
        if not clean or not drain:
            with buf.lock:
                life.abandoned = True
                buf.changed.notify_all()
            self._writer.abort()
            # A short grace so the threads settle their own counts before we report.
            for thread in (self._reader.thread, self._writer.thread):
                thread.join(0.25)
        return clean

    def _final_report(self, timed_out: bool) -> ShutdownReport:
        stranded: list[Message] = []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, Message):
                stranded.append(item)
        records, nbytes, frames = self._buffer.drain_all()
        self._ledger.close(stranded=len(stranded), held=records, held_bytes=nbytes)
        # Told only once counted, so that a waiter woken here finds them in stats().
        for item in stranded:
            for future in (item.waiter, item.delivery):
                settle_future(future, ClientClosedError("the client shut down"))
        closed = ClientClosedError("the client shut down before the server acknowledged it")
        for frame in frames:
            resolve_futures(frame, closed)
        self._hand_over(records, frames, stranded)
        report = self._ledger.report(timed_out=timed_out, failure=self._life.failed)
        if report.failure is not None:
            log.error("fluentclient: shut down after %s", report.failure)
        if report.unsent_records > report.spooled + report.handed_over:
            log.warning(
                "fluentclient: stopped with %d records (%d bytes) not sent; %d possibly lost, "
                "%d dropped",
                report.unsent_records - report.spooled - report.handed_over,
                report.unsent_bytes, report.possibly_lost, sum(report.dropped.values()),
            )
        return report

    def _hand_over(self, records: int, frames: list[Frame], stranded: list[Message]) -> None:
        """What was not sent goes to the spool, else to on_unsent, else only to the count."""
        # Kept after closing, for the health it reports in stats().
        journal = self._journal
        if journal.broken:
            # It stopped writing when it failed: what it holds is not all there is, so
            # nothing counts as spooled. Its files stay for a later process only when
            # on_unsent does not get the records, lest they arrive twice.
            journal.close(keep=self._on_unsent is None)
        elif journal.recording:
            # Buffered records are in the spool already; those never packed join them.
            kept = records + self._spool_stranded(journal, stranded)
            journal.close(keep=kept > 0)
            self._ledger.spooled(kept)
            return
        if self._on_unsent is None or not (records or stranded):
            return
        unsent = [UnsentRecord(m.tag, m.time, m.record) for m in stranded]
        for frame in frames:
            unsent.extend(_frame_records(frame))
        try:
            self._on_unsent(unsent)
        except Exception:
            log.exception("fluentclient: the on_unsent callback raised")
            return
        self._ledger.handed_over(records + len(stranded))

    def _spool_stranded(self, spool: Journal, stranded: list[Message]) -> int:
        packer = self._records.packer()
        seq = self._buffer.next_seq
        kept = 0
        for msg in stranded:
            try:
                entry = packer.pack(msg)
            except FluentError:
                continue
            spool.append(seq + kept, [(msg.tag, entry)], 1)
            kept += 1
        return kept

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
        with _fork_locks.setdefault(pid, threading.Lock()):
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
        # A client shut down or closed in the parent stays so here (its shutdown may still
        # be under way in a parent thread): it refuses every post, and a shutdown here
        # reports this process's counts, which start from zero.
        closed = self._closing
        stopped = self._report is not None
        self._report = None
        self._journal.forget()
        self._journal = NullJournal()
        if closed:
            if handoff is not None:
                handoff.claim()  # only closes our end: the parent sent what it could
            self._fresh(closed=True)
            if stopped:
                self._report = self._ledger.report(timed_out=False)
            return
        try:
            self._fresh()
        except OSError as exc:
            # Only the spool can fail here; the child goes on without one.
            log.error("fluentclient: cannot open the spool after fork: %s", exc)
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


def _frame_records(frame: Frame) -> list[UnsentRecord]:
    """Decode a frame back into records, whether or not the writer had built it yet."""
    try:
        if frame.built:
            unpacker = new_unpacker()
            unpacker.feed(frame.data)
            decoded = decode_frame(unpacker.unpack())
            return [UnsentRecord(frame.tag, t, r) for t, r in decoded.entries]  # type: ignore[arg-type]
        unpacker = new_unpacker()
        unpacker.feed(bytes(frame.entries))
        return [UnsentRecord(frame.tag, t, r) for t, r in unpacker]
    except (FrameError, ValueError) as exc:  # pragma: no cover - our own bytes
        log.warning("fluentclient: cannot decode an unsent frame of %r: %s", frame.tag, exc)
        return []


def _main_thread_finished() -> bool:
    # While atexit handlers run, sys.is_finalizing() is still False, but the main thread
    # has already been marked as stopped.
    main = threading.main_thread()
    return threading.current_thread() is main and not main.is_alive()


def _shutdown_at_exit(ref: weakref.ref[BufferedClient]) -> None:
    c = ref()
    if c is None:
        return
    c._check_fork()
    if c._report is None and (c._started or c._journal.owns_files):
        # shutdown() logs what it could not send.
        c.shutdown(c.shutdown_timeout)


def _register_at_exit(client: BufferedClient) -> None:
    ref = weakref.ref(client)
    atexit.register(_shutdown_at_exit, ref)
    _drained_at_exit.add(client)
    _drain_in_celery_pool()
    _drain_in_uwsgi()
    # multiprocessing's workers end with os._exit(), after its own finalizers but
    # without atexit: in each worker it starts, drain there too.
    try:
        from multiprocessing import process, util
    except ImportError:  # pragma: no cover - a stripped-down interpreter
        return
    if process.parent_process() is not None:
        # Made inside a worker already (forkserver and spawn import the main module
        # there): no fork is left to hook.
        _drain_in_worker(client)
    util.register_after_fork(client, _drain_in_worker)


def _drain_in_worker(client: BufferedClient) -> None:
    from multiprocessing import util

    # A weak reference, so a client dropped in the worker is not kept alive.
    util.Finalize(None, _shutdown_at_exit, args=(weakref.ref(client),), exitpriority=0)


def _drain_in_celery_pool() -> None:
    """In a Celery worker, drain when a pool process ends.

    Celery's prefork pool (billiard) ends its processes with os._exit() from inside the
    task loop, so neither atexit nor multiprocessing's finalizers run there; Celery's
    worker_process_shutdown signal is the one thing that does. Celery is never imported
    here: if the application has not, this is not a Celery worker.
    """
    global _celery_hooked
    signals = sys.modules.get("celery.signals")
    if signals is None or _celery_hooked:
        # Connected once, the receiver is inherited by every forked child.
        return
    shutdown = getattr(signals, "worker_process_shutdown", None)
    if shutdown is None:  # pragma: no cover - a Celery without the signal
        return
    shutdown.connect(_drain_all, weak=False, dispatch_uid="fluentclient-drain")
    _celery_hooked = True


_celery_hooked = False


def _drain_all(*args: object, **kwargs: object) -> None:
    for client in list(_drained_at_exit):
        try:
            _shutdown_at_exit(weakref.ref(client))
        except Exception:  # the host's exit path must go on whatever happens here
            log.exception("fluentclient: draining at the end of a worker process failed")


# -- uWSGI ------------------------------------------------------------------------------
#
# uWSGI forks its workers in C, without Python's at-fork hooks (unless
# --py-call-osafterfork): the pid check in post() covers that. A worker runs Python's
# atexit when it ends, except with --skip-atexit (nothing at all runs) or
# --skip-atexit-teardown (only the uwsgi.atexit callable runs). The master runs neither.

_uwsgi_hooked = False


class _Handoff:
    """Records a parent left for exactly one of its forked children to send.

    A pipe holding one byte: every child inherits the read end, and the one whose read
    gets the byte has claimed the records. A child respawned later finds it empty, and
    a reloading uWSGI master, which execs itself, closes it (pipes are close-on-exec).
    """

    def __init__(self) -> None:
        read, write = os.pipe()
        try:
            os.write(write, b"1")
        finally:
            os.close(write)
        os.set_blocking(read, False)
        self._fd = read

    def claim(self) -> bool:
        """True in the one child that gets the byte; the pipe is closed here either way."""
        try:
            return os.read(self._fd, 1) == b"1"
        except OSError:  # empty: another child claimed it
            return False
        finally:
            os.close(self._fd)


def _uwsgi_module() -> Any:
    """The ``uwsgi`` module, which uWSGI puts in sys.modules before loading any
    application and which exists nowhere else; else None."""
    return sys.modules.get("uwsgi")


def _in_uwsgi_master() -> bool:
    uwsgi = _uwsgi_module()
    if uwsgi is None:
        return False
    try:
        return bool(uwsgi.masterpid() == os.getpid())
    except Exception:  # an embedding without the call: not a master we know of
        return False


def _uwsgi_option(uwsgi: Any, name: str) -> bool:
    value = getattr(uwsgi, "opt", {}).get(name)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return bool(value) and str(value).lower() not in ("0", "false", "no", "off")


def _drain_in_uwsgi() -> None:
    """Inside uWSGI: chain the drain into uwsgi.atexit, and say what cannot work."""
    global _uwsgi_hooked
    uwsgi = _uwsgi_module()
    if uwsgi is None or _uwsgi_hooked:
        return
    _uwsgi_hooked = True
    # With --skip-atexit-teardown a worker skips Python's atexit but still calls this.
    previous = getattr(uwsgi, "atexit", None)

    def at_uwsgi_exit() -> None:
        _drain_all()
        if previous is not None:
            previous()

    uwsgi.atexit = at_uwsgi_exit
    if _uwsgi_option(uwsgi, "skip-atexit"):
        log.error(
            "fluentclient: uWSGI runs with skip-atexit, so a worker ends without running "
            "any exit hook: records still buffered when it stops or reloads are lost. "
            "Remove skip-atexit (skip-atexit-teardown is fine) or call shutdown() yourself."
        )
    if not getattr(uwsgi, "has_threads", True):
        log.error(
            "fluentclient: uWSGI runs without Python threads, so the client's threads only "
            "run while a request does and records wait for the next one. Start uWSGI with "
            "enable-threads."
        )


def _reinit_in_child() -> None:
    for client in list(_live_clients):
        client._after_fork_in_child()
    if _drained_at_exit:
        _drain_in_celery_pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_in_child)
