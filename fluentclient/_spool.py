"""The write-ahead spool: buffered records that survive a crash or a missed deadline.

A client with a spool owns an *owner* in ``spool_dir``: a lock file ``<owner>.lock``,
held with ``flock`` for the client's life, and segment files ``<owner>-<n>.spool``. The
reader thread appends a *data* block for each batch it buffers; when the writer is done
with a frame (sent, acknowledged, or given up and counted), a *done* block names the
records it held. Records are named by the buffer's sequence numbers, and a frame holds
the records of one tag between two of them, so a done block is a few numbers per frame.
A segment is deleted once every record in it is done.

Starting clients claim owners whose lock nobody holds (the process died, or shut down
with records left) and replay the records that have no done block, oldest first. Each
block is length- and CRC-prefixed: a torn last write costs that block and nothing before
it. Lock and segment files are created under a temporary name, locked, then renamed, so
a scanning process never sees a file its owner does not hold yet.

Writes go to the page cache without fsync, except when a segment is sealed and when the
client stops: a killed process loses nothing, a power cut may lose the newest blocks.
"""

from __future__ import annotations

import bisect
import fcntl
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack

from ._words import count

log = logging.getLogger("fluentclient")

_MAGIC = b"FLUENTCLIENT-SPOOL-1\n"
_HEAD = struct.Struct(">II")  # payload length, CRC-32 of the payload
_DATA, _DONE = 0, 1
# A block longer than this is a corrupt length, not a record batch.
_MAX_BLOCK = 256 * 1024 * 1024

# (tag, first sequence, last sequence) of one frame, or of one run of a batch.
Span = tuple[str, int, int]
# Told of what could not be read: ("file" or "block", what and why). The journal counts.
Skipped = Callable[[str, str], None]


def _block(payload: bytes) -> bytes:
    return _HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def read_blocks(path: str, skipped: Skipped | None = None) -> Iterator[list[Any]]:
    """The whole blocks of a segment, stopping at the first torn or corrupt one.

    What is cut off is logged and told to ``skipped``; what came before it is good.
    """

    def skip(kind: str, why: str) -> None:
        log.warning("fluentclient: skipped the rest of spool segment %s: %s", path, why)
        if skipped is not None:
            skipped(kind, f"{path}: {why}")

    try:
        with open(path, "rb") as f:
            magic = f.read(len(_MAGIC))
            if magic != _MAGIC:
                # Empty: its owner died between creating it and writing the magic.
                if magic:
                    skip("file", "not a spool segment")
                return
            while True:
                head = f.read(_HEAD.size)
                if len(head) < _HEAD.size:
                    if head:
                        skip("block", "a torn block head")
                    return
                size, crc = _HEAD.unpack(head)
                if size > _MAX_BLOCK:
                    skip("block", f"a block length of {count(size, 'byte')}")
                    return
                payload = f.read(size)
                if len(payload) < size or zlib.crc32(payload) != crc:
                    skip("block", "a torn or corrupt block")
                    return
                try:
                    block = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                except Exception:
                    skip("block", "a block that is not msgpack")
                    return
                if isinstance(block, list) and block:
                    yield block
    except OSError as exc:
        skip("file", f"cannot read it: {exc}")


def _split_entries(data: bytes) -> list[bytes]:
    """Cut concatenated msgpack entries apart without re-packing them."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data) + 1)
    unpacker.feed(data)
    out: list[bytes] = []
    start = 0
    try:
        for _ in unpacker:
            end = unpacker.tell()
            out.append(data[start:end])
            start = end
    except Exception as exc:  # the CRC matched, so only a bug could get here
        log.warning("fluentclient: a spooled run is not msgpack after %s: %s",
                    count(len(out), "record"), exc)
    return out


def _create_locked(path: str) -> int:
    """Create ``path`` already locked by us: made under a temporary name, then renamed."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, path)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd


def _try_lock(path: str) -> int | None:
    """Open and lock ``path`` if nobody holds it and it still exists; else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Its owner may have unlinked it between our open and our lock.
        if os.fstat(fd).st_nlink == 0:
            raise OSError("unlinked")
    except OSError:
        os.close(fd)
        return None
    return fd


def _spans(block: list[Any], path: str) -> list[Span]:
    try:
        return [(str(tag), int(first), int(last)) for tag, first, last in block[1]]
    except (TypeError, ValueError, IndexError):
        log.warning("fluentclient: skipped a malformed block in %s", path)
        return []


def _data(block: list[Any], path: str) -> tuple[int, list[tuple[str, bytes]]]:
    try:
        return int(block[1]), [(str(tag), bytes(run)) for tag, run in block[2]]
    except (TypeError, ValueError, IndexError):
        log.warning("fluentclient: skipped a malformed block in %s", path)
        return 0, []


def _run_counts(block: list[Any], path: str) -> tuple[int, list[tuple[str, int]]]:
    """The first number of a data block and (tag, records) of each of its runs: from the
    counts the block carries, or, for a block written without them, by splitting."""
    seq, runs = _data(block, path)
    counts = block[3] if len(block) > 3 else None
    if (isinstance(counts, list) and len(counts) == len(runs)
            and all(isinstance(n, int) and n >= 0 for n in counts)):
        return seq, [(tag, n) for (tag, _), n in zip(runs, counts)]
    return seq, [(tag, len(_split_entries(run))) for tag, run in runs]


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, overlapping or touching spans joined: disjoint, ends increasing."""
    out: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def _covered(spans: list[tuple[int, int]], starts: list[int], first: int, last: int) -> int:
    """How many numbers from ``first`` to ``last`` the merged ``spans`` cover."""
    total = 0
    i = bisect.bisect_right(starts, last) - 1
    # Merged spans that start at or before ``last``, latest first, while they reach back
    # to ``first``: their ends decrease as we go.
    while i >= 0 and spans[i][1] >= first:
        total += min(last, spans[i][1]) - max(first, spans[i][0]) + 1
        i -= 1
    return total


@dataclass
class _Segment:
    path: str
    fd: int
    size: int
    # Highest sequence number of a record in a data block here (-1: none yet).
    last_seq: int = -1


@dataclass
class Orphan:
    """The files of an owner that is gone, claimed (locked) by us until ``finish``."""

    owner: str
    lock_fd: int
    lock_path: str
    segments: list[str] = field(default_factory=list)
    skipped: Skipped | None = None

    def records(self) -> Iterator[tuple[str, bytes, int]]:
        """(tag, entry, number) of every record without a done block, oldest first."""
        # Two passes, so that only the done spans are held in memory, not the records.
        done: dict[str, list[tuple[int, int]]] = {}
        for path in self.segments:
            for block in read_blocks(path):
                if block[0] == _DONE:
                    for span in _spans(block, path):
                        done.setdefault(span[0], []).append(span[1:])
        for path in self.segments:
            # Only this pass tells of what it skips: the first one met the same blocks.
            for block in read_blocks(path, self.skipped):
                if block[0] != _DATA:
                    continue
                seq, runs = _data(block, path)
                for tag, run in runs:
                    spans = done.get(tag, ())
                    for entry in _split_entries(run):
                        if not any(first <= seq <= last for first, last in spans):
                            yield tag, entry, seq
                        seq += 1

    def pending(self) -> int:
        """How many records :meth:`records` yields: those without a done block.

        Reads the blocks but, for blocks that carry their runs' counts, not the records:
        cheap enough for shutdown to tell how many records it leaves here.
        """
        done: dict[str, list[tuple[int, int]]] = {}
        runs: list[tuple[str, int, int]] = []  # (tag, first number, records)
        for path in self.segments:
            for block in read_blocks(path):
                if block[0] == _DONE:
                    for tag, first, last in _spans(block, path):
                        done.setdefault(tag, []).append((first, last))
                elif block[0] == _DATA:
                    seq, counted = _run_counts(block, path)
                    for tag, n in counted:
                        runs.append((tag, seq, n))
                        seq += n
        merged = {tag: _merged(spans) for tag, spans in done.items()}
        starts = {tag: [first for first, _ in spans] for tag, spans in merged.items()}
        left = 0
        for tag, first, n in runs:
            spans = merged.get(tag)
            covered = _covered(spans, starts[tag], first, first + n - 1) if spans else 0
            left += n - covered
        return left

    def finish(self) -> None:
        """Everything was taken over: delete the files (segments first, the lock last)."""
        for path in self.segments:
            _unlink(path)
        _unlink(self.lock_path)
        os.close(self.lock_fd)

    def abandon(self, taken: Sequence[Span] = ()) -> None:
        """Leave the files for a later process, minus the records ``taken`` over already."""
        if taken:
            numbers = (_segment_number(os.path.basename(p), self.owner) for p in self.segments)
            last = max((n for n in numbers if n is not None), default=-1)
            path = f"{self.lock_path[: -len('.lock')]}-{last + 1:08d}.spool"
            payload = msgpack.packb([_DONE, [list(span) for span in taken]], use_bin_type=True)
            try:
                fd = _create_locked(path)
                try:
                    os.write(fd, _MAGIC + _block(payload))
                    _sync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("fluentclient: cannot mark replayed records in %s: %s", path, exc)
        os.close(self.lock_fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("fluentclient: cannot delete spool file %s: %s", path, exc)


def _segment_number(name: str, owner: str) -> int | None:
    """The number of ``owner``'s segment file ``name``; None if it is not one."""
    if not name.startswith(owner + "-"):
        return None
    match = _SEGMENT_TAIL.fullmatch(name, len(owner) + 1)
    return int(match.group(1)) if match else None


# What follows "<owner>-" in a segment's name (see Spool._open_segment).
_SEGMENT_TAIL = re.compile(r"([0-9]{8,})\.spool")
# An owner's name (see Spool.__init__): a lock file named otherwise is not ours to take.
_OWNER = re.compile(r"[0-9]+-[0-9a-f]{12}")


class Spool:
    """One client's owner in a spool directory.

    The client reaches it only through a journal (``_journal.FileJournal``), which calls
    the methods that do I/O from the reader thread and at shutdown; the lock keeps those
    two apart should a shutdown give up waiting for the reader. ``size`` is read without
    it, by ``post()`` for its quick limit check.

    An I/O error while writing (disk full, the directory removed) *breaks* the spool: it
    says so once, at ERROR, and from then on writes nothing. The records are still in the
    buffer and are sent from there; only their survival across a crash is lost.
    """

    def __init__(self, directory: str, *, limit: int, segment_size: int | None = None) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.limit = limit
        self.segment_size = segment_size or max(64 * 1024, min(4 * 1024 * 1024, limit // 8))
        self.owner = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._next = 0
        self.size = 0
        self._closed = False
        self.broken = False
        self.last_error: str | None = None
        # Set by the journal, which counts what replay skips.
        self.skipped: Skipped | None = None
        self._lock_path = os.path.join(directory, f"{self.owner}.lock")
        self._lock_fd = _create_locked(self._lock_path)

    # -- writing -------------------------------------------------------------------------

    def append(
        self, first_seq: int, runs: Sequence[tuple[str, bytes]], count: int,
        counts: Sequence[int] | None = None,
    ) -> None:
        """Record a batch: ``runs`` of (tag, concatenated entries), ``count`` records.

        ``counts``: the records in each run. Kept in the block (a trailing field older
        readers ignore) so that what a spool holds can be counted without splitting
        every run into its entries (see :meth:`Orphan.pending`).
        """
        if counts is None and len(runs) == 1:
            counts = (count,)
        block: list[Any] = [_DATA, first_seq, [list(run) for run in runs]]
        if counts is not None:
            block.append(list(counts))
        payload = msgpack.packb(block, use_bin_type=True)
        self._write(_block(payload), first_seq + count - 1)

    def done(self, spans: Sequence[Span]) -> None:
        """These records need no replay: they were sent, acknowledged or counted."""
        if spans:
            payload = msgpack.packb([_DONE, [list(span) for span in spans]], use_bin_type=True)
            self._write(_block(payload), -1)

    def _write(self, block: bytes, last_seq: int) -> None:
        with self._lock:
            if self._closed or self.broken:
                return
            try:
                seg = self._segments[-1] if self._segments else None
                if seg is None or seg.size + len(block) > self.segment_size:
                    if seg is not None:
                        _sync(seg.fd)
                    seg = self._open_segment()
                written = os.write(seg.fd, block)
                if written != len(block):
                    raise OSError(f"short write ({written} of {len(block)} bytes)")
            except OSError as exc:
                self._break(exc)
                return
            seg.size += len(block)
            self.size += len(block)
            if last_seq > seg.last_seq:
                seg.last_seq = last_seq

    def _break(self, exc: OSError) -> None:
        """Called with the lock held: stop spooling, loudly, and keep running."""
        self.broken = True
        self.last_error = str(exc) or type(exc).__name__
        log.error(
            "fluentclient: the spool in %s failed (%s); going on without it: records are "
            "sent from memory, and are lost if the process dies first", self.directory, exc,
        )
        # Its files are left as they are: a later process replays what they hold.
        for seg in self._segments:
            _close(seg.fd)
        self._segments.clear()
        self.size = 0

    def _open_segment(self) -> _Segment:
        path = os.path.join(self.directory, f"{self.owner}-{self._next:08d}.spool")
        self._next += 1
        fd = _create_locked(path)
        try:
            os.write(fd, _MAGIC)
        except OSError:
            _close(fd)
            raise
        seg = _Segment(path, fd, len(_MAGIC))
        self._segments.append(seg)
        self.size += seg.size
        return seg

    def collect(self, oldest_held: int) -> None:
        """Delete sealed segments whose records all have numbers below ``oldest_held``."""
        with self._lock:
            while len(self._segments) > 1 and self._segments[0].last_seq < oldest_held:
                seg = self._segments.pop(0)
                _unlink(seg.path)
                _close(seg.fd)
                self.size -= seg.size

    def close(self, *, keep: bool) -> None:
        """Stop: delete everything, or with ``keep`` leave it for the next process."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for seg in self._segments:
                if keep:
                    _sync(seg.fd)
                else:
                    _unlink(seg.path)
                _close(seg.fd)
            self._segments.clear()
            self.size = 0
            if not keep:
                _unlink(self._lock_path)
            _close(self._lock_fd)

    def forget(self) -> None:
        """In a forked child: close our copies of the parent's files, touching nothing.

        Takes no lock: the parent's reader may have held it at the fork, and no thread of
        this process will ever release it. Nothing else runs here that could use the
        spool meanwhile (the child has only the thread that forked). Our fd numbers are
        copies of the parent's, so closing them leaves the parent's files and their locks
        as they are. A segment being opened at the fork, not listed yet, stays open here.
        """
        self._closed = True
        segments, self._segments = self._segments, []
        for seg in segments:
            _close(seg.fd)
        _close(self._lock_fd)

    # -- taking over -------------------------------------------------------------------

    def has_orphans(self) -> bool:
        """Whether an owner whose process is gone left files here."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return False
        for name in names:
            if (name.endswith(".lock") and name != f"{self.owner}.lock"
                    and _OWNER.fullmatch(name[: -len(".lock")])):
                fd = _try_lock(os.path.join(self.directory, name))
                if fd is not None:
                    os.close(fd)
                    return True
        return False

    def orphans(self) -> Iterator[Orphan]:
        """Claim, one at a time, the owners in the directory whose process is gone."""
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            log.warning("fluentclient: cannot list the spool %s: %s", self.directory, exc)
            return
        for name in names:
            if not name.endswith(".lock"):
                continue
            owner = name[: -len(".lock")]
            if owner == self.owner:
                continue
            if not _OWNER.fullmatch(owner):
                # Finishing an owner deletes its lock file: never someone else's file.
                log.warning("fluentclient: skipped %s in the spool: not a lock of ours", name)
                if self.skipped is not None:
                    self.skipped("file", f"{name}: not a lock of ours")
                continue
            path = os.path.join(self.directory, name)
            fd = _try_lock(path)
            if fd is None:
                continue
            # Listed under the lock: the owner can no longer add segments.
            try:
                listed = os.listdir(self.directory)
            except OSError:
                _close(fd)
                raise
            numbered: list[tuple[int, str]] = []
            for n in listed:
                if not (n.endswith(".spool") and n.startswith(owner + "-")):
                    continue
                number = _segment_number(n, owner)
                if number is None:
                    # Named like a segment, but not one we wrote: left alone.
                    log.warning("fluentclient: skipped %s in the spool: not a segment", n)
                    if self.skipped is not None:
                        self.skipped("file", f"{n}: not a segment")
                    continue
                numbered.append((number, os.path.join(self.directory, n)))
            yield Orphan(owner, fd, path, [p for _, p in sorted(numbered)], self.skipped)


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _sync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass
