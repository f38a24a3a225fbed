"""SIGTERM with Python's default action drains the clients before it ends the process.

``docker stop``, systemd and Kubernetes stop a process with SIGTERM, whose default action
ends it at once, without at-exit hooks: whatever the clients held would vanish without a
word. So when the first client is made or first used on the main thread (only there can a
handler be installed) and SIGTERM still has its default action, this handler is installed.
On SIGTERM it drains every client within the longest ``shutdown_timeout`` (see _exit.py),
writes what was not sent, then restores the default action and raises the signal again:
the process ends exactly as it would have, killed by signal 15.

An application's own handler always wins. One installed before us is seen and we install
nothing (gunicorn's and uvicorn's workers, Celery, asyncio's ``add_signal_handler``);
one installed after us replaces ours, and we do nothing on our own from then on. If that
handler calls ours (as the previous handler it chains to), we drain and return: the
signal, and the end of the process, are its business.

Off: ``FLUENTCLIENT_NO_SIGNAL_HANDLER=1`` in the environment, or ``handle_sigterm=False``
on the client (a client with ``at_exit=False`` never installs it either). The decision is
made once per process, by the first client made or started on the main thread.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from . import _exit
from ._fork_safe import ForkSafeLock

log = logging.getLogger("fluentclient")

ENV = "FLUENTCLIENT_NO_SIGNAL_HANDLER"

_lock = ForkSafeLock()
_decided = False
# A SIGTERM cut an at-exit drain short: once the summary is written, the process ends by
# the signal, as it would have without us.
_pending = False


def offer(wanted: bool = True) -> None:
    """Install the handler if this is the moment: see the module's docstring.

    ``wanted``: whether the client calling may install it (``handle_sigterm``)."""
    global _decided
    if _decided or not wanted:
        return
    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal() works only there: the next client made there decides
    with _lock:
        if _decided:
            return
        _decided = True
    if os.environ.get(ENV, "").strip() not in ("", "0") or not hasattr(signal, "SIGTERM"):
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, handle)
    except (ValueError, OSError) as exc:  # an embedding that keeps signals to itself
        log.debug("fluentclient: no SIGTERM handler: %s", exc)


def installed() -> bool:
    """Whether ours is SIGTERM's handler now."""
    return hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) is handle


def handle(signum: int, frame: FrameType | None) -> None:
    """The handler: drain every client, then die of the signal (if still ours)."""
    global _pending
    state = _exit.state
    if state.running:
        # A second SIGTERM while a drain is under way: abandon it at once (raised into
        # the wait of the main thread, once; later ones, or one that comes while the
        # summary is written, change nothing more).
        if installed():
            _pending = True
        if state.waiting and not state.interrupted:
            state.interrupted = True
            raise _exit.Interrupted
        return
    if not installed():
        # Replaced, and called by the handler that replaced us: do our part, leave the
        # rest to it.
        _drain(signum)
        return
    finish(signum)


def finish(signum: int) -> None:
    """Drain every client, then end the process by ``signum``'s default action."""
    _drain(signum)
    die(signum)


def after_exit_drain() -> None:
    """At the end of an at-exit drain: a SIGTERM that cut it short now ends the process."""
    if _pending and installed():
        die(signal.SIGTERM)


def die(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _drain(signum: int) -> None:
    try:
        _exit.drain_all(f"on {signal.Signals(signum).name}")
    except Exception:  # never let our part keep the signal from its work
        log.exception("fluentclient: draining on signal %d failed", signum)
