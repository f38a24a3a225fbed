"""The journal: what the client asks of its spool, whether or not it has one.

The client and the reader always hold a :class:`Journal`. Without ``spool_dir`` it is a
:class:`NullJournal`, whose every method costs nothing; with one it is a
:class:`FileJournal` over the write-ahead files of :mod:`.spool`.

The interface is split by thread. ``full()``, ``limit``, ``size`` and ``done()`` are safe
on a caller's thread: they read fields or queue spans in memory, and never touch a file.
Everything that does I/O (``append``, ``maintain``, the replay of orphans, ``close``)
is called only by the reader thread and by shutdown, after the threads. ``forget`` is
called in a forked child, whose only thread is the one that forked: it takes no lock.

The file journal owns its I/O errors: none reaches the thread that called it. A failed
write breaks it (it stops writing, the client delivers from memory); what replay cannot
read is skipped. Both are counted in :meth:`Journal.health`, and logged.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Callable, Protocol

from ._spool import Orphan, Span, Spool
from .stats import JournalStats

log = logging.getLogger("fluentclient")

# A replayed record: (tag, packed entry, its number in the previous process's spool).
Replayed = tuple[str, bytes, int]


class Claim(Protocol):
    """An owner a previous process left, claimed for replay until finished or abandoned."""

    owner: str

    def records(self) -> Iterator[Replayed]: ...

    def pending(self) -> int:
        """How many records ``records()`` yields in all (taken or not)."""

    def finish(self) -> None: ...

    def abandon(self, taken: Sequence[Span]) -> None: ...


class Journal(Protocol):
    """Where buffered records are written ahead, so that they survive the process."""

    @property
    def limit(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def recording(self) -> bool:
        """Whether batches given to ``append`` are kept: open, with files, not broken."""

    @property
    def broken(self) -> bool: ...

    @property
    def owns_files(self) -> bool:
        """Whether ``close`` has files to keep or delete."""

    # -- safe on any thread: no file I/O -------------------------------------------------

    def full(self) -> bool: ...

    def done(self, spans: Sequence[Span]) -> None:
        """These records need no replay; written by the next ``maintain``."""

    def pending(self) -> bool:
        """Whether ``done`` spans wait for ``maintain``."""

    def health(self) -> JournalStats | None: ...

    # -- the client's own threads and shutdown only ---------------------------------------

    def append(
        self, first_seq: int, runs: Sequence[tuple[str, bytes]], count: int,
        counts: Sequence[int] | None = None,
    ) -> None:
        """Write a batch ahead: ``count`` records in ``runs``, ``counts`` in each run (may
        be left out for a single run)."""

    def maintain(self, oldest_held: int) -> None:
        """Write the queued done spans; delete segments with no record at or after
        ``oldest_held``."""

    def has_orphans(self) -> bool: ...

    def orphans(self) -> Iterator[Claim]: ...

    def close(self, *, keep: bool) -> None: ...

    def forget(self) -> None: ...


class NullJournal:
    """No spool_dir: nothing is written, nothing replayed, never full."""

    limit = sys.maxsize
    size = 0
    recording = False
    broken = False
    owns_files = False

    def full(self) -> bool:
        return False

    def done(self, spans: Sequence[Span]) -> None:
        pass

    def pending(self) -> bool:
        return False

    def health(self) -> JournalStats | None:
        return None

    def append(
        self, first_seq: int, runs: Sequence[tuple[str, bytes]], count: int,
        counts: Sequence[int] | None = None,
    ) -> None:
        pass

    def maintain(self, oldest_held: int) -> None:
        pass

    def has_orphans(self) -> bool:
        return False

    def orphans(self) -> Iterator[Claim]:
        return iter(())

    def close(self, *, keep: bool) -> None:
        pass

    def forget(self) -> None:
        pass


class _Health:
    """The file journal's counts of what went wrong; any thread may read them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors = 0
        self.skipped_files = 0
        self.skipped_blocks = 0
        self.last_error: str | None = None

    def error(self, text: str) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = text

    def skipped(self, kind: str, text: str) -> None:
        with self._lock:
            if kind == "file":
                self.skipped_files += 1
            else:
                self.skipped_blocks += 1
            self.last_error = text

    def snapshot(self, broken: bool) -> JournalStats:
        with self._lock:
            return JournalStats(
                errors=self.errors, skipped_files=self.skipped_files,
                skipped_blocks=self.skipped_blocks, broken=broken, last_error=self.last_error,
            )


class FileJournal:
    """A :class:`.spool.Spool` behind the journal's interface, and a wall for its errors."""

    def __init__(self, directory: str, *, limit: int) -> None:
        # Raises if the directory cannot be used at all: a configuration error, the
        # user's to see at once.
        self._spool = Spool(directory, limit=limit)
        self._health = _Health()
        self._spool.skipped = self._health.skipped
        # Spans from done(), on any thread; deque appends and pops are atomic.
        self._done: deque[Sequence[Span]] = deque()
        self._closed = False
        self._break_counted = False

    @property
    def limit(self) -> int:
        return self._spool.limit

    @property
    def size(self) -> int:
        return self._spool.size

    @property
    def recording(self) -> bool:
        return not (self._closed or self._spool.broken)

    @property
    def broken(self) -> bool:
        return self._spool.broken

    @property
    def owns_files(self) -> bool:
        return not self._closed

    @property
    def owner(self) -> str:
        return self._spool.owner

    def full(self) -> bool:
        return self._spool.size >= self._spool.limit

    def done(self, spans: Sequence[Span]) -> None:
        if spans and self.recording:
            self._done.append(spans)

    def pending(self) -> bool:
        return bool(self._done)

    def health(self) -> JournalStats:
        return self._health.snapshot(self._spool.broken)

    def append(
        self, first_seq: int, runs: Sequence[tuple[str, bytes]], count: int,
        counts: Sequence[int] | None = None,
    ) -> None:
        self._guard("write", self._spool.append, first_seq, runs, count, counts)

    def maintain(self, oldest_held: int) -> None:
        spans: list[Span] = []
        while self._done:
            spans.extend(self._done.popleft())
        if spans:
            self._guard("write", self._spool.done, spans)
        self._guard("clean", self._spool.collect, oldest_held)

    def has_orphans(self) -> bool:
        try:
            return self._spool.has_orphans()
        except Exception as exc:
            self.failed("read", exc)
            return False

    def orphans(self) -> Iterator[Claim]:
        claims = self._spool.orphans()
        while True:
            try:
                orphan = next(claims)
            except StopIteration:
                return
            except Exception as exc:
                self.failed("read", exc)
                return
            yield _GuardedClaim(orphan, self)

    def close(self, *, keep: bool) -> None:
        if keep:
            # So that the next process does not send again what this one finished.
            spans: list[Span] = []
            while self._done:
                spans.extend(self._done.popleft())
            if spans:
                self._guard("write", self._spool.done, spans)
        self._done.clear()
        self._closed = True
        self._guard("close", self._spool.close, keep=keep)

    def forget(self) -> None:
        # In a forked child, from the at-fork hook: no lock of the parent's may be taken
        # here (neither the spool's nor the health counts'), and nothing logged, so an
        # error is ignored rather than counted: this journal is being thrown away.
        self._done = deque()
        if self._closed:
            # Its descriptors are closed; their numbers may belong to others by now.
            return
        self._closed = True
        try:
            self._spool.forget()
        except Exception:  # pragma: no cover - forget() only closes descriptors
            pass

    def _guard(self, what: str, call: Callable[..., object], *args: object,
               **kwargs: object) -> None:
        try:
            call(*args, **kwargs)
        except Exception as exc:
            self.failed(what, exc)
        if self._spool.broken and not self._break_counted:
            # The spool broke itself, and said so at ERROR; counted here, once.
            self._break_counted = True
            self._health.error(self._spool.last_error or "broken")

    def failed(self, what: str, exc: Exception) -> None:
        """An error the spool did not handle itself: counted, logged, never raised."""
        self._health.error(f"{what}: {exc}")
        log.warning("fluentclient: the spool could not %s: %s", what, exc)


class _GuardedClaim:
    """An orphan whose reading and deleting never raise into the reader."""

    def __init__(self, orphan: Orphan, journal: FileJournal) -> None:
        self._orphan = orphan
        self._journal = journal
        self.owner = orphan.owner

    def records(self) -> Iterator[Replayed]:
        try:
            yield from self._orphan.records()
        except Exception as exc:
            self._journal.failed("read", exc)

    def pending(self) -> int:
        try:
            return self._orphan.pending()
        except Exception as exc:
            # Counted as an error in the journal's health: the report cannot tell these.
            self._journal.failed("read", exc)
            return 0

    def finish(self) -> None:
        try:
            self._orphan.finish()
        except Exception as exc:
            self._journal.failed("clean", exc)

    def abandon(self, taken: Sequence[Span]) -> None:
        try:
            self._orphan.abandon(taken)
        except Exception as exc:
            self._journal.failed("close", exc)


def open_journal(directory: str | None, *, limit: int) -> Journal:
    """The journal for ``spool_dir``: a file journal, or none."""
    if directory is None:
        return NullJournal()
    return FileJournal(directory, limit=limit)
