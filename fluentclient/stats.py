"""What a client tells of its records: snapshots, the shutdown report, drop reasons."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import FluentError
from .message import EventTime

__all__ = [
    "Stats",
    "ServerStats",
    "JournalStats",
    "ShutdownReport",
    "UnsentRecord",
    "DROP_BUFFER_FULL",
    "DROP_UNSERIALIZABLE",
    "DROP_UNSAFE",
    "DROP_TOO_LARGE",
    "DROP_CLOSED",
    "DROP_NOT_ACKED",
    "DROP_SPOOL_FULL",
    "DROP_EVICTED",
    "DROP_SEND_FAILED",
    "DROP_REENTRANT",
]

# Why a record was dropped before it reached the buffer.
DROP_BUFFER_FULL = "buffer_full"
DROP_UNSERIALIZABLE = "unserializable"
# The record packs, but real servers would lose it, or its neighbours (UnsafeRecordError).
DROP_UNSAFE = "unsafe"
DROP_TOO_LARGE = "too_large"
DROP_CLOSED = "closed"
# No longer counted: a frame given up after ack_retry_limit attempts had been written each
# time, so the server may hold it; it counts as possibly_lost, never as dropped (which
# says a record never left the process). Kept so that code and dashboards naming it
# still work; it stays at 0.
DROP_NOT_ACKED = "not_acked"
# The spool reached spool_limit.
DROP_SPOOL_FULL = "spool_full"
# Buffered records removed to make room for newer ones (overflow="drop_oldest").
DROP_EVICTED = "evicted"
# A SyncClient could not send the record (the call raised); nothing of it reached a server.
DROP_SEND_FAILED = "send_failed"
# Posted on one of a BufferedClient's own threads while it was reporting an error there
# (an on_error that logs to a handler posting to the same client): see _reporting.py.
DROP_REENTRANT = "reentrant"


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

    The record counts are read together, under one lock, from the one ledger every
    thread of the client steps, so they always balance, even while records move:
    ``posted + replayed == sent + dropped_total + unsent + possibly_lost + buffered``.
    ``buffered`` counts the records still on their way (queued for the reader, in the
    buffer, or written and not yet confirmed). Only ``buffered_bytes`` and ``servers``
    are read beside that lock. After ``shutdown()`` has returned the counts stay as its
    report gave them, except for records posted (and refused) later. A
    :class:`SyncClient`'s ``buffered`` is always 0.

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
    # Records a previous process left in the spool that this client did not take over
    # before it stopped (the deadline passed, or close()): still on disk, for a later
    # start. Not part of ``unsent_records``, which counts this client's own records.
    left_in_spool: int = 0

    @property
    def complete(self) -> bool:
        """True when everything posted (and everything a previous process left in the
        spool) reached the server and nothing was dropped."""
        return not (
            self.unsent_records or self.possibly_lost or sum(self.dropped.values())
            or self.failure or self.left_in_spool
        )
