"""What the end of the process asks of one buffered client (see _exit.py, which asks
every client at once, and _clients.Drainable, which lists the questions)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from .._buffer import Buffer
from .._journal import Journal
from .._ledger import Ledger
from .._lifecycle import CLOSING, FAILED, NEW, RUNNING, Lifecycle, abandon
from .._options import TransportOptions
from .._transport._connection import describe
from .._transport._sender import why_hopeless, why_unreachable
from .._words import count
from .._writing._writer import Writer
from ..stats import ShutdownReport

log = logging.getLogger("fluentclient")


class Ending(Protocol):
    """The parts of a client's state its end reads."""

    _life: Lifecycle
    _ledger: Ledger
    _buffer: Buffer
    _writer: Writer
    _journal: Journal
    _transport: TransportOptions
    _shutdown_lock: threading.Lock
    _owner: str

    def _check_fork(self) -> bool: ...

    def _end(self, deadline: float, *, drain: bool, quiet: bool = False) -> ShutdownReport: ...


def pending(client: Ending) -> bool:
    """Whether the end of the process has something to drain here: threads that ran
    (a child of a stopped client starts closed, and has none), or spool files."""
    client._check_fork()
    life = client._life
    if life.report is not None or client._shutdown_lock.locked():
        # Stopped, or being stopped by another thread, whose shutdown keeps its own
        # deadline and says itself what it could not send (a signal that came while
        # the program was in shutdown(), say).
        return False
    ran = life.phase is RUNNING or life.phase is FAILED or life.phase is CLOSING
    return ran or client._journal.owns_files


def drain(client: Ending, deadline: float) -> ShutdownReport | None:
    """shutdown() until ``deadline``, quietly: the end of the process says what was
    not sent, for every client at once. None if this thread could not take the
    shutdown in time (another thread is inside shutdown(): its report is its own)."""
    lock = client._shutdown_lock
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        return None
    try:
        report = client._life.report
        if report is None:
            report = client._end(deadline, drain=True, quiet=True)
        return report
    finally:
        lock.release()


def abandon_drain(client: Ending) -> None:
    """Cut a drain under way short: the threads stop without new work and the socket is
    aborted, so the shutdown finishes at once and counts what was held as unsent."""
    if client._life.phase is CLOSING:
        abandon(client._buffer, client._life)
        client._writer.abort()


def hopeless(client: Ending) -> str | None:
    """Why no server of this client can take records before any deadline (a host that
    does not resolve, a refused key, a setting it cannot use), or None."""
    return None if client._life.phase is NEW else why_hopeless(client._writer.links)


def unreachable(client: Ending) -> str | None:
    """Why no server can take records now (the last error), or None if one may."""
    return None if client._life.phase is NEW else why_unreachable(client._writer.links)


def held(client: Ending) -> int:
    """Records posted and neither sent nor settled otherwise (as the books say)."""
    return client._ledger.snapshot(buffered_bytes=0).buffered


def name(client: Ending) -> str:
    """The client as a person at a terminal tells it from others: who made it, where to."""
    servers = ", ".join(describe(s.address) for s in client._transport.servers)
    return f"{client._owner} to {servers}"


def explain_wait(client: Ending, timeout: float, setting: str) -> None:
    """Before an end of process that waits for servers known to be down: one line
    saying what it waits for, and which setting bounds it."""
    if client._life.report is not None or timeout <= 0:
        return
    why = unreachable(client)
    if why is None:
        # Not tried yet: the writer's first failure, if it comes, says how long the
        # drain goes on (see Writer._connected_link).
        return
    records = held(client)
    if records:
        log.warning("fluentclient: waiting up to %g s (%s) to send %s held; "
                    "no server reachable: %s", timeout, setting, count(records, "record"),
                    why)
