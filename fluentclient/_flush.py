"""BufferedClient.flush(): written, and settled in the books, or known not to be.

The steps ask each part through its own methods: the reader, to have taken every record
queued so far; the buffer, to have written everything up to then; the ledger, to have
counted the written records sent. See docs/architecture.md for what each wait means.
"""

from __future__ import annotations

import time

from ._buffer import Buffer
from ._ledger import Ledger
from ._lifecycle import NEW, RUNNING, Lifecycle
from ._reading._reader import Reader
from ._writing._writer import Writer


def flush(life: Lifecycle, reader: Reader, buffer: Buffer, writer: Writer, ledger: Ledger,
          timeout: float | None) -> bool:
    """What BufferedClient.flush() returns (its docstring says what True means)."""
    if life.phase is NEW:
        return True  # nothing was taken that threads could write
    if reader.wake.resume is not None:
        reader.wake.set()  # dormant since a fork: the threads come back first
    deadline = None if timeout is None else time.monotonic() + timeout
    if life.phase is RUNNING and not reader.wait_taken(deadline):
        return False
    if life.phase is RUNNING:
        seq = buffer.request_flush()
        written = buffer.wait_flushed(seq, deadline, lambda: life.phase is not RUNNING)
        if written and life.phase is RUNNING:
            _await_settled(life, buffer, writer, ledger, deadline)
        if life.phase is RUNNING:
            return written
    # A shutdown is under way or done (or a thread failed): only its end can tell
    # whether what this call waits for was sent.
    return life.wait_closed(deadline)


def _await_settled(life: Lifecycle, buffer: Buffer, writer: Writer, ledger: Ledger,
                   deadline: float | None) -> None:
    """After flush()'s writes: wait for the server's answers that let stats() count
    them sent, while one may come. It changes nothing flush() returns: the records
    were written, and the writer would settle them anyway a moment later; this only
    keeps stats() from saying "buffered" about records flush() said were written.

    Counts, not record numbers: records posted after the flush may be written and
    waited for too, which only costs this wait a little more."""
    unsettled, settled_before = ledger.settling()
    if not unsettled:
        return

    def settled() -> bool:
        if life.phase is not RUNNING or not writer.settling():
            return True
        written, now_settled = ledger.settling()
        return not written or now_settled - settled_before >= unsettled

    # Waking the writer at each look to read the answers now, rather than at its next
    # look (_MARKER_POLL); it reads them without the buffer's lock.
    buffer.wait_until(settled, deadline, step=0.005, poke=True)
