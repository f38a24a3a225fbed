"""What the reader writes to the journal: each batch it buffers, cut to the spool's room,
and the spans of frames gone for good. Runs on the reader's thread, but for ``release``
(see _journal.py for the journal, _replay.py for reading back what a process left)."""

from __future__ import annotations

from collections.abc import Sequence

from .._admission import Admission
from .._buffer import Buffer, Frame, Tagged
from .._journal import Journal
from .._reporting import Reporter
from ..framing import PackedRun
from ..stats import DROP_SPOOL_FULL

# Room kept in the spool for a block's head and its tags, beyond the entries themselves.
_BLOCK_OVERHEAD = 64


class Spooling:
    """The reader's side of the journal, one batch at a time. The reader asks the journal
    itself whether it records (``recording``) and has spans to write (``pending``): two
    questions per batch that cost it no call through here."""

    def __init__(self, journal: Journal, buffer: Buffer, admission: Admission,
                 reporter: Reporter) -> None:
        self._journal = journal
        self._buffer = buffer
        self._admission = admission
        self._fail = reporter.fail

    def trim(self, run: PackedRun) -> None:
        """Cut ``run`` to what the spool has room for; the rest is dropped as spool full."""
        spool = self._journal
        if spool.size + len(run.data) + _BLOCK_OVERHEAD > spool.limit:
            self.maintain()
        fits = self._admission.spool_fits(run.sizes, _BLOCK_OVERHEAD)
        if fits == len(run.sizes):
            return
        err = self._admission.spool_full()
        for msg in run.messages[fits:]:
            self._fail(DROP_SPOOL_FULL, err, msg)
        run.data = run.data[:sum(run.sizes[:fits])]
        del run.messages[fits:]
        del run.sizes[fits:]

    def record(
        self, first_seq: int, kept: Sequence[Tagged], packed: PackedRun | list[bytes],
        rejected: Sequence[Tagged],
    ) -> None:
        """Append what the buffer took of ``kept`` (numbered from ``first_seq``): all of
        it but ``rejected``. ``packed``: their entries, as one run or one by one."""
        if isinstance(packed, PackedRun):
            if not rejected:
                self._journal.append(first_seq, [(packed.tag, bytes(packed.data))], len(kept))
                return
            entries = packed.entries()
        else:
            entries = packed
        if rejected:
            dropped = set(map(id, rejected))
            pairs = [(m.tag, e) for m, e in zip(kept, entries) if id(m) not in dropped]
        else:
            pairs = [(m.tag, e) for m, e in zip(kept, entries)]
        if not pairs:
            return
        # One block holds runs of one tag each: consecutive records under the same tag
        # share a run.
        runs: list[tuple[str, bytes]] = []
        counts: list[int] = []
        run_tag, run, n = pairs[0][0], bytearray(), 0
        for tag, entry in pairs:
            if tag != run_tag:
                runs.append((run_tag, bytes(run)))
                counts.append(n)
                run_tag, run, n = tag, bytearray(), 0
            run += entry
            n += 1
        runs.append((run_tag, bytes(run)))
        counts.append(n)
        self._journal.append(first_seq, runs, len(pairs), counts)

    def release(self, frames: Sequence[Frame]) -> bool:
        """Frames gone for good (sent, given up, evicted): the spool need not replay them.
        Any thread: the spans are only queued, for ``maintain``. True if any were."""
        journal = self._journal
        if not journal.recording:
            return False
        journal.done([(f.tag, f.first_seq, f.last_seq) for f in frames])
        return True

    def maintain(self) -> None:
        """Write the released spans and let go of the segments nothing holds any more."""
        with self._buffer.lock:
            oldest = self._buffer.oldest_held_locked()
        self._journal.maintain(oldest)
