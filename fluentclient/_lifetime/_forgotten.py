"""A client the program dropped without shutdown() or close(): stopped as it is collected.

The client's threads and callbacks hold its *core* (see :func:`core_of`), never the
client itself; so a client the program drops is collected while its threads run, and its
finalizer (:func:`forgotten`) shuts the core down on a thread of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Protocol, TypeVar

from .._journal import Journal
from .._lifecycle import CLOSED, CLOSING, NEW, Lifecycle
from .._options import TransportOptions
from .._threads import leave_signals_to_others
from .._transport._connection import describe
from ..stats import ShutdownReport
from . import _clients

log = logging.getLogger("fluentclient")

_C = TypeVar("_C")


class Forgettable(_clients.ForkAware, Protocol):
    """What stopping a forgotten client needs of its core."""

    _life: Lifecycle
    _pid: int
    _journal: Journal
    _transport: TransportOptions

    def shutdown(self, timeout: float | None = None) -> ShutdownReport: ...


def core_of(client: _C) -> _C:
    """A second object of ``client``'s class sharing its attributes (the same
    ``__dict__``), which the threads and callbacks hold instead of ``client``.

    Every method then works on either, and the state they change is one; but a program
    that drops its last reference to the client lets it be collected, though its threads
    still run: nothing of ours refers to the client object itself.
    """
    core: _C = object.__new__(type(client))
    # A plain dict, set on both. Reading ``client.__dict__`` would hand both objects the
    # split dict CPython (3.11) makes from an instance's inline attributes, which its
    # attribute cache cannot serve: every ``self._x`` in post() would then take the slow
    # generic lookup, about a fifth of a record's cost on the posting thread.
    shared = dict(client.__dict__)
    client.__dict__ = shared
    core.__dict__ = shared
    return core


def forgotten(core: Forgettable) -> None:
    """The client was collected without shutdown() or close(): do what shutdown() would,
    on a thread of its own, and say so, as Python does for a file left open.

    Called by the garbage collector on whatever thread dropped the last reference. That
    thread is not held up: the drain (bounded by ``shutdown_timeout``) runs on a new
    thread, which is not a daemon, so an exit that comes first still waits for it.
    """
    life = core._life
    if life.phase is CLOSING or life.phase is CLOSED:
        return  # shut down or closed: nothing left open
    if core._pid != os.getpid():
        # Forked without the hooks and never used here: the parent's threads are not ours
        # to stop, and its records are its own. Only our copies of its files are.
        core._forget_in_child()
        return
    if life.phase is NEW and not core._journal.owns_files:
        # No thread, socket or file was ever opened. But the compiled post() holds the
        # core, not the client, so in ``BufferedClient(...).post(...)`` the client is
        # collected before its first post runs: that post starts the client, and then
        # comes back here (see BufferedClient._post_carefully).
        core.__dict__["_orphaned"] = True
        return
    # Until drained: a child forked meanwhile closes its copies of the files and sockets.
    _clients.forgotten.add(core)
    try:
        threading.Thread(target=_drain_apart, args=(core,), name="fluentclient-forgotten",
                         daemon=False).start()
    except RuntimeError:
        # No new threads (the interpreter is going away): stop without sending.
        _drain(core, timeout=0.0)
    servers = ", ".join(describe(s.address) for s in core._transport.servers)
    warnings.warn(
        f"unclosed <BufferedClient to {servers}>: call shutdown() when done with a client "
        f"(what it held is sent now, within shutdown_timeout)",
        ResourceWarning, source=core, stacklevel=2,
    )


def _drain_apart(core: Forgettable) -> None:
    """:func:`_drain` on a thread of its own, which leaves the process's signals to the
    threads that handle them."""
    leave_signals_to_others()
    _drain(core)


def _drain(core: Forgettable, timeout: float | None = None) -> None:
    try:
        core.shutdown(timeout)  # it logs what it could not send
    except Exception:
        log.exception("fluentclient: stopping a client that was not shut down failed")
    finally:
        _clients.forgotten.discard(core)
