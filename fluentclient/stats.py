"""Counters, and the snapshots and reports made from them."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .errors import FluentError
from .message import EventTime

# Why a record was dropped before it reached the buffer.
DROP_BUFFER_FULL = "buffer_full"
DROP_UNSERIALIZABLE = "unserializable"
# The record packs, but real servers would lose it, or its neighbours (UnsafeRecordError).
DROP_UNSAFE = "unsafe"
DROP_TOO_LARGE = "too_large"
DROP_CLOSED = "closed"
DROP_NOT_ACKED = "not_acked"
# The spool reached spool_limit.
DROP_SPOOL_FULL = "spool_full"
# Buffered records removed to make room for newer ones (overflow="drop_oldest").
DROP_EVICTED = "evicted"
# A SyncClient could not send the record (the call raised); nothing of it reached a server.
DROP_SEND_FAILED = "send_failed"


class UnsentRecord(NamedTuple):
    """A record that shutdown could not send, as given to ``on_unsent``."""

    tag: str
    time: EventTime | int
    record: Any


@dataclass(frozen=True)
class ServerStats:
    """One server as ``stats()`` shows it."""

    address: str
    state: str
    standby: bool
    connects: int
    failures: int
    frames_sent: int
    acked_frames: int
    last_error: str | None
    # The last failure as the exception it was (AuthenticationError, TlsError, ...), so
    # that code can tell a refusal from an outage without parsing ``last_error``; None
    # once a connection succeeds again.
    error: FluentError | None = None


@dataclass(frozen=True)
class Stats:
    """A snapshot of what happened to the records posted to a client.

    Not taken all at once: the fates (``sent``, ``dropped``, ``unsent``,
    ``possibly_lost``, ``retried`` and the other counters) are read together under the
    counters' lock and agree with each other, but ``posted``, ``buffered_bytes`` and
    ``servers`` are read beside them without it. While records are moving ``posted`` may
    be a moment off, usually behind (a batch in the reader's hands is counted once it is
    packed, while a record it drops is counted at once), and ``buffered`` (``posted`` plus
    ``replayed`` minus the fates, never below 0) is then off by the records in motion.
    When no record moves (after ``shutdown()`` has returned, for one) the fields agree.
    A :class:`SyncClient` reads ``posted`` under the same lock, and its ``buffered`` is 0.

    Every record that ``post()`` accepted, and every record ``replayed`` from a spool a
    previous process left, ends in exactly one of: ``sent``, ``dropped`` (by reason),
    ``unsent`` (still held when the client stopped), ``possibly_lost`` (written to a
    connection that then failed before the server was seen to take it), or is still on
    its way (``buffered``).
    """

    posted: int
    sent: int
    dropped: Mapping[str, int]
    unsent: int
    possibly_lost: int
    buffered: int
    buffered_bytes: int
    retried: int
    frames_sent: int
    bytes_sent: int
    connects: int
    connect_failures: int
    connection_failures: int
    servers: tuple[ServerStats, ...] = ()
    replayed: int = 0
    # The spool's health; None for a client without spool_dir.
    journal: JournalStats | None = None

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass(frozen=True)
class JournalStats:
    """The spool's health: what it failed to write, read or delete.

    ``broken``: an I/O error stopped it writing; records are then sent from memory only.
    ``skipped_files`` and ``skipped_blocks`` count what replay could not read.
    """

    errors: int = 0
    skipped_files: int = 0
    skipped_blocks: int = 0
    broken: bool = False
    last_error: str | None = None


@dataclass(frozen=True)
class ShutdownReport:
    """What ``shutdown()`` could and could not deliver before its deadline."""

    sent: int
    unsent_records: int
    unsent_bytes: int
    possibly_lost: int
    dropped: Mapping[str, int]
    timed_out: bool
    # Of the unsent records: left in the spool for the next start, or given to on_unsent.
    spooled: int = 0
    handed_over: int = 0
    # Why a thread of the client died before shutdown (a bug), if one did.
    failure: str | None = None

    @property
    def complete(self) -> bool:
        """True when everything posted reached the server and nothing was dropped."""
        return not (
            self.unsent_records or self.possibly_lost or sum(self.dropped.values())
            or self.failure
        )


@dataclass
class Counters:
    """Mutable counters shared by a client's threads; every update holds ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    # Records post() refused before they reached the queue (also counted in dropped).
    refused: int = 0
    unsent: int = 0
    unsent_bytes: int = 0
    possibly_lost: int = 0
    retried: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    connects: int = 0
    connect_failures: int = 0
    connection_failures: int = 0
    replayed: int = 0
    spooled: int = 0
    handed_over: int = 0

    def drop(self, reason: str, *, refused: bool, records: int = 1) -> int:
        """Count dropped records; returns how many were dropped for that reason so far."""
        with self.lock:
            n = self.dropped[reason] = self.dropped.get(reason, 0) + records
            if refused:
                self.refused += records
            return n

    def snapshot(
        self, *, posted: int | None, buffered_bytes: int, servers: tuple[ServerStats, ...] = ()
    ) -> Stats:
        """A Stats; whatever is not accounted for yet is still on its way.

        ``posted=None``: every record posted is settled, as in a client that buffers
        nothing; posted is then their sum, taken under the same lock.
        """
        with self.lock:
            dropped = dict(self.dropped)
            settled = self.sent + sum(dropped.values()) + self.unsent + self.possibly_lost
            if posted is None:
                posted = settled - self.replayed
            return Stats(
                posted=posted,
                replayed=self.replayed,
                sent=self.sent,
                dropped=dropped,
                unsent=self.unsent,
                possibly_lost=self.possibly_lost,
                buffered=max(0, posted + self.replayed - settled),
                buffered_bytes=buffered_bytes,
                retried=self.retried,
                frames_sent=self.frames_sent,
                bytes_sent=self.bytes_sent,
                connects=self.connects,
                connect_failures=self.connect_failures,
                connection_failures=self.connection_failures,
                servers=servers,
            )

    def report(self, *, timed_out: bool, failure: str | None = None) -> ShutdownReport:
        with self.lock:
            return ShutdownReport(
                sent=self.sent,
                unsent_records=self.unsent,
                unsent_bytes=self.unsent_bytes,
                possibly_lost=self.possibly_lost,
                dropped=dict(self.dropped),
                timed_out=timed_out,
                spooled=self.spooled,
                handed_over=self.handed_over,
                failure=failure,
            )
