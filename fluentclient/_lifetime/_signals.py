"""Shut clients down when the process is told to stop, then let the signal do its work.

A process stopped by SIGTERM (the default action) never runs its at-exit hooks, so what a
:class:`~fluentclient.BufferedClient` holds would vanish without a word.
:func:`shutdown_on_signal` puts a handler in front of the one already installed: it drains
the clients within their deadline, then hands the signal on, so the process ends exactly as
it would have without us (killed by the signal, or whatever the previous handler does).

Python runs signal handlers on the main thread between two bytecodes, so the handler may
interrupt the main thread anywhere, even inside ``client.shutdown()`` with its lock held.
The shutdowns therefore run in helper threads that the handler joins with the deadline:
if one cannot proceed until the main thread does, the handler gives up at the deadline
and passes the signal on rather than wait for itself.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterable
from types import FrameType
from typing import Any, Callable, Optional, Protocol, Union

from .._words import count
from ..stats import ShutdownReport
from . import _sigterm
from ._fork_safe import ForkSafeLock

log = logging.getLogger("fluentclient")

# What signal.getsignal() returns: a callable, SIG_DFL, SIG_IGN, or None for a handler
# that was not installed from Python.
_Handler = Union[Callable[[int, Optional[FrameType]], Any], int, signal.Handlers, None]

# Past the deadline, shutdown() still joins its aborted threads for a moment so that they
# settle their counts; the handler waits that long too before it passes the signal on.
_GRACE = 0.3
_DEFAULT_TIMEOUT = 5.0


class Stoppable(Protocol):
    """What the handler needs from a client: both clients of this package qualify."""

    def shutdown(self, timeout: float | None = None) -> ShutdownReport: ...


class SignalShutdown:
    """The installed handler; :meth:`uninstall` puts the previous handlers back.

    After the handler ran, :attr:`reports` holds the clients' shutdown reports (those that
    finished before the deadline) and :attr:`fired` is true. It runs the shutdowns once:
    a second signal, even one arriving while the first is being handled, goes straight
    to the previous handler (so a second SIGTERM ends a process at once).
    """

    def __init__(
        self,
        clients: tuple[Stoppable, ...],
        signals: tuple[int, ...],
        timeout: float | None,
    ) -> None:
        self.clients = clients
        self.signals = signals
        self.timeout = timeout
        self.reports: list[ShutdownReport] = []
        self.fired = False
        self._previous: dict[int, _Handler] = {}
        self._lock = ForkSafeLock()

    def _install(self) -> None:
        try:
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        except BaseException:
            self.uninstall()
            raise

    def uninstall(self) -> None:
        """Restore the previous handlers (main thread only).

        A signal whose handler was replaced again since is left alone: the newer handler
        may chain to ours, and removing ours from under it is its owner's business.
        """
        _require_main_thread("uninstall()")
        for signum, previous in list(self._previous.items()):
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            del self._previous[signum]

    def __enter__(self) -> SignalShutdown:
        return self

    def __exit__(self, *exc: object) -> None:
        self.uninstall()

    # -- in the handler ------------------------------------------------------------------

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        first = not self.fired
        self.fired = True
        if first:
            try:
                self._shutdown_all(signum)
            except Exception:  # never let our part keep the signal from its work
                log.exception("fluentclient: shutting down on signal %d failed", signum)
        self._chain(signum, frame)

    def _shutdown_all(self, signum: int) -> None:
        start = time.monotonic()
        budgets = [
            self.timeout if self.timeout is not None
            else float(getattr(client, "shutdown_timeout", _DEFAULT_TIMEOUT))
            for client in self.clients
        ]
        deadline = start + max(budgets, default=0.0) + _GRACE
        threads = []
        for client, budget in zip(self.clients, budgets):
            thread = threading.Thread(
                target=self._stop, args=(client, budget), name="fluentclient-signal",
                daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # the interpreter is finishing: no new threads
                continue
            threads.append(thread)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        late = sum(thread.is_alive() for thread in threads)
        with self._lock:
            reports = list(self.reports)
        unsent = sum(r.unsent_records for r in reports)
        lost = sum(r.possibly_lost for r in reports)
        if late or unsent or lost:
            log.warning(
                "fluentclient: on signal %d, %s not sent and %d possibly lost%s", signum,
                count(unsent, "record"), lost,
                f"; {count(late, 'client')} did not finish shutting down in time"
                if late else "",
            )

    def _stop(self, client: Stoppable, timeout: float) -> None:
        try:
            report = client.shutdown(timeout)
        except Exception:
            log.exception("fluentclient: shutdown on signal failed")
            return
        with self._lock:
            self.reports.append(report)

    def _chain(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum, signal.SIG_DFL)
        if previous == signal.SIG_IGN:
            return
        if previous is _sigterm.handle:
            # Ours by default, in place of SIG_DFL: drain the other clients, then the
            # default action.
            _sigterm.finish(signum)
            return
        if callable(previous):
            previous(signum, frame)
            return
        # SIG_DFL, or a handler installed outside Python that we cannot call: let the
        # default action happen, so the exit status says which signal ended the process.
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def _require_main_thread(what: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise ValueError(
            f"{what} must be called from the main thread: Python runs signal handlers "
            "there and only there can they be installed"
        )


def shutdown_on_signal(
    *clients: Stoppable,
    signals: Iterable[int] = (signal.SIGTERM,),
    timeout: float | None = None,
) -> SignalShutdown:
    """On any of ``signals``, shut ``clients`` down, then pass the signal on.

    Each client gets ``timeout`` seconds (by default its own ``shutdown_timeout``); they
    shut down side by side, so the handler takes the longest of them, plus a moment for
    aborted threads to settle. Then the handler that was installed before takes over: a
    Python callable is called (a framework's graceful-stop handler, or KeyboardInterrupt
    for SIGINT), the default action is restored and the signal raised again (the process
    ends with the signal's status, as it would have), and an ignored signal is ignored.

    Must be called from the main thread; raises ValueError otherwise. Returns a
    :class:`SignalShutdown` whose ``uninstall()`` restores the previous handlers; it is
    also a context manager. Records posted after the handler ran are dropped (counted as
    ``closed``), so install it where the process is about to stop anyway.
    """
    if not clients:
        raise ValueError("shutdown_on_signal() needs at least one client")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must not be negative")
    _require_main_thread("shutdown_on_signal()")
    wanted = tuple(dict.fromkeys(signals))
    if not wanted:
        raise ValueError("shutdown_on_signal() needs at least one signal")
    handle = SignalShutdown(clients, wanted, timeout)
    handle._install()
    return handle
