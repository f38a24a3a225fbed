"""The end of a BufferedClient's life: stop its threads, settle what they left, report.

Runs once, on the thread that called shutdown() or close(), after the client stopped
taking records. Whatever the threads did not send by the deadline is counted in the
ledger as unsent and then handed, in this order of preference, to the journal (for a
later process to send), to ``on_unsent``, or to nobody but the count.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import replace
from typing import Callable

from . import _notice
from ._buffer import Buffer, Frame
from ._journal import Journal
from ._ledger import Ledger
from ._lifecycle import Lifecycle
from ._reading._reader import STOP, Reader
from ._words import count
from ._writing._writer import Writer, resolve_futures
from .errors import ClientClosedError, FluentError
from .framing import EntryPacker, FrameError, decode_frame, new_unpacker
from .message import Message, settle_future
from .stats import ShutdownReport, UnsentRecord

log = logging.getLogger("fluentclient")

UnsentCallback = Callable[[list[UnsentRecord]], None]


class Ending:
    """Stops one client's reader and writer and settles what they held."""

    def __init__(
        self,
        *,
        queue: deque[object],
        buffer: Buffer,
        ledger: Ledger,
        life: Lifecycle,
        reader: Reader,
        writer: Writer,
        journal: Journal,
        on_unsent: UnsentCallback | None,
        packer: Callable[[], EntryPacker],
    ) -> None:
        self._queue = queue
        self._buffer = buffer
        self._ledger = ledger
        self._life = life
        self._reader = reader
        self._writer = writer
        self._journal = journal
        self._on_unsent = on_unsent
        # A factory: a packer is only worth making when there are stranded records.
        self._packer = packer

    def run(self, deadline: float, *, drain: bool, started: bool,
            quiet: bool = False) -> ShutdownReport:
        """Stop the threads (sending until ``deadline`` if ``drain``) and report.

        Timed out means a drain that did not finish; a close never drains, so it never
        times out. ``quiet``: what was not sent is not logged here (the end of the
        process says it for every client at once).
        """
        timed_out = False
        if started:
            timed_out = not self._stop_threads(deadline, drain=drain) and drain
        return self._final_report(timed_out, quiet=quiet)

    def _stop_threads(self, deadline: float, *, drain: bool) -> bool:
        buf, life = self._buffer, self._life
        self._queue.append(STOP)
        self._reader.wake.set()
        with buf.lock:
            life.drain_deadline = deadline
            if not drain:
                life.abandoned = True
            buf.changed.notify_all()
            buf.done.notify_all()  # a flush() waiting for the writer hears of the end
        for thread in (self._reader.thread, self._writer.thread):
            thread.join(max(0.0, deadline - time.monotonic()))
        # Clean means drained, not merely stopped: at the deadline the writer stops on its
        # own, and may be gone just before the join gives up waiting for it, having counted
        # what it held as possibly lost (so the buffer is empty): it says it was cut short.
        clean = (
            not self._writer.cut_short
            and not self._writer.thread.is_alive()
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

    def _final_report(self, timed_out: bool, *, quiet: bool) -> ShutdownReport:
        life = self._life
        # One step under the lifecycle's lock, which every removal from the queue takes:
        # a post() that queued its record after this sweep finds CLOSED under that lock
        # and takes the record back (refused); one that queued it before is swept here.
        with life.lock:
            stranded = self._reader.take_all_locked()
            records, nbytes, frames = self._buffer.drain_all()
            unsent = self._ledger.close(
                stranded=len(stranded), held=records, held_bytes=nbytes)
            life.closed_locked(
                clean=not timed_out and unsent == 0 and life.failure is None)
        # Told only once counted, so that a waiter woken here finds them in stats().
        for item in stranded:
            for future in (item.waiter, item.delivery):
                settle_future(future, ClientClosedError("the client shut down"))
        closed = ClientClosedError("the client shut down before the server acknowledged it")
        for frame in frames:
            resolve_futures(frame, closed)
        self._hand_over(records, frames, stranded)
        report = self._ledger.report(timed_out=timed_out, failure=life.failure)
        # Outside the ledger: these records were never this client's to count.
        left = self._reader.left_in_spool
        if left:
            report = replace(report, left_in_spool=left)
            log.warning(
                "fluentclient: stopped with %s a previous process left in the spool "
                "not sent; they stay there for a later start", count(left, "record"),
            )
        if report.failure is not None:
            log.error("fluentclient: shut down after %s", report.failure)
        # Possibly lost too: without acks, what a stuck server's connection held at the
        # deadline counts there, not as unsent, and must not pass in silence.
        if quiet:
            return report
        if report.unsent_records > report.spooled + report.handed_over or report.possibly_lost:
            _notice.warn(
                "unsent", "fluentclient: stopped with %s (%s) not sent; %d possibly lost, "
                "%d dropped",
                count(report.unsent_records - report.spooled - report.handed_over, "record"),
                count(report.unsent_bytes, "byte"), report.possibly_lost,
                sum(report.dropped.values()),
            )
        return report

    def _hand_over(self, records: int, frames: list[Frame], stranded: list[Message]) -> None:
        """What was not sent goes to the spool, else to on_unsent, else only to the count."""
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
        packer = self._packer()
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
