"""The end of the process: every client drained at once, one deadline, one summary.

Whatever ends the process (main returning, ``sys.exit``, SIGTERM through our handler,
a worker of multiprocessing, Celery or uWSGI), :func:`drain_all` stops every client made
with ``at_exit=True`` that still holds something. Each client's shutdown runs on a thread
of its own, all at once, each within its own ``shutdown_timeout``: the process waits for
the longest of them, not for their sum. Then one line per client that left something
unsent says what, and why; the clients themselves say nothing at this shutdown.

The caller (usually the main thread) only waits, so a second Ctrl-C or SIGTERM lands in
that wait: it abandons the drain at once (each client aborts its connections and counts
what it held as unsent), and the summary is still written, rather than a traceback
through the middle of a shutdown.

A client whose every server failed in a way no retry can mend before the deadline (a host
that does not resolve, a refused key or certificate, a setting it cannot use) is not
waited for: exit is not the moment to find out again.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import _notice
from .._threads import leave_signals_to_others
from .._words import count
from ..stats import ShutdownReport
from ._clients import Drainable, drained_at_exit
from ._fork_safe import ForkSafeLock

log = logging.getLogger("fluentclient")

# After the deadline, or an abandon, each shutdown still joins its aborted threads for a
# moment (0.25 s) so that they settle their counts: the wait allows for that.
_GRACE = 0.4
# How often the wait looks for clients not worth waiting for.
_SLICE = 0.05


class Interrupted(BaseException):
    """Raised into the drain's wait by a second signal: stop waiting now."""


class _State:
    """The drain under way on this process's main thread, if any (signal handlers read it)."""

    def __init__(self) -> None:
        self.lock = ForkSafeLock()
        #: The main thread waits in drain_all(): an interrupt may be raised into it.
        self.waiting = False
        #: A drain is under way (on any thread).
        self.running = False
        #: An interrupt ended the wait (raised once; later ones are ignored).
        self.interrupted = False


state = _State()


def drain_all(why: str = "at exit") -> bool:
    """Drain every client still holding something, at once; True if one was interrupted.

    Safe to call more than once (at exit, then from a logging integration's close):
    a client already stopped is not waited for again.
    """
    clients = sorted((c for c in list(drained_at_exit) if c._exit_pending()),
                     key=lambda c: c._exit_order)
    if not clients:
        return False
    # Two drains at once (a worker's hook and a signal, say) are harmless: each client's
    # shutdown runs once, and the second waits for its outcome.
    with state.lock:
        state.running = True
        state.interrupted = False
    try:
        return _drain(clients, why)
    finally:
        state.running = False


def _drain(clients: list[Drainable], why: str) -> bool:
    start = time.monotonic()
    timeouts = {c: max(0.0, c.shutdown_timeout) for c in clients}
    longest = max(timeouts.values())
    reports: dict[Drainable, ShutdownReport] = {}
    done = _Countdown(len(clients))
    interrupted = False
    try:
        # From here on a second interrupt on the main thread lands in this block.
        if threading.current_thread() is threading.main_thread():
            state.waiting = True
        inline: list[Drainable] = []
        for client in clients:
            thread = threading.Thread(
                target=_stop_apart, args=(client, start + timeouts[client], reports, done),
                name="fluentclient-exit", daemon=True,
            )
            try:
                thread.start()
            except RuntimeError:  # no new threads now: this thread does it, in turn
                inline.append(client)
        _say_wait(clients, longest, why)
        # Python 3.12.0 and 3.12.1 refuse new threads once the interpreter is exiting,
        # whatever is left to do: the clients are drained here, one after the other, and
        # one that cannot reach a server by any deadline is not waited for.
        for client in inline:
            hopeless = client._hopeless() is not None
            _stop(client, time.monotonic() if hopeless else start + timeouts[client],
                  reports, done)
        _wait(clients, done, start + longest + _GRACE)
    except (KeyboardInterrupt, Interrupted):
        state.waiting = False
        state.interrupted = interrupted = True
    finally:
        state.waiting = False
    if interrupted:
        for client in clients:
            client._abandon()
        try:
            done.wait(_GRACE)
        except (KeyboardInterrupt, Interrupted):
            pass  # a third interrupt: the summary below is all that is left to do
    _summarize(clients, reports, interrupted, why)
    return interrupted


class _Countdown:
    """Set once every shutdown has returned.

    Waited on rather than joining the threads: an exception raised into
    ``Thread.join()`` by a signal handler can leave the thread marked as stopped while it
    still runs (before Python 3.13), and the wait is exactly where a second interrupt
    lands.
    """

    def __init__(self, n: int) -> None:
        self._left = n
        self._lock = threading.Lock()
        self._all = threading.Event()
        if n == 0:
            self._all.set()

    def one_done(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left <= 0:
                self._all.set()

    def wait(self, timeout: float) -> bool:
        return self._all.wait(max(0.0, timeout))


def _stop_apart(client: Drainable, deadline: float,
                reports: dict[Drainable, ShutdownReport], done: _Countdown) -> None:
    """:func:`_stop` on a thread of its own: a second Ctrl-C or SIGTERM must reach the
    main thread, which waits for this one and abandons the drain."""
    leave_signals_to_others()
    _stop(client, deadline, reports, done)


def _stop(client: Drainable, deadline: float,
          reports: dict[Drainable, ShutdownReport], done: _Countdown) -> None:
    try:
        report = client._drain_for_exit(deadline)
        if report is not None:
            reports[client] = report
    except Exception:
        log.exception("fluentclient: draining a client at the end of the process failed")
    finally:
        done.one_done()


def _wait(clients: list[Drainable], done: _Countdown, deadline: float) -> None:
    """Wait for the shutdowns until ``deadline``, abandoning those not worth waiting for."""
    hopeless: set[Drainable] = set()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        for client in clients:
            if client not in hopeless and client._hopeless() is not None:
                hopeless.add(client)
                client._abandon()
        if done.wait(min(_SLICE, remaining)):
            return


def _say_wait(clients: list[Drainable], longest: float, why: str) -> None:
    """One line before a wait for servers known to be down: what it waits for, how long."""
    # Not those it will not wait for (see _wait).
    waiting = [(c, c._unreachable()) for c in clients if c._hopeless() is None]
    waiting = [(c, reason) for c, reason in waiting if reason is not None]
    held = sum(c._held() for c, _ in waiting)
    if not held or longest <= 0:
        return
    settings = sorted({c._exit_setting for c, _ in waiting})
    who = count(len(waiting), "client") if len(waiting) > 1 else waiting[0][0]._exit_name()
    _notice.warn(
        "exit-wait", "fluentclient: %s, waiting up to %g s (%s) to send %s held by %s; "
        "no server reachable: %s", why, longest, " or ".join(settings),
        count(held, "record"), who, waiting[0][1],
    )


def _summarize(clients: list[Drainable], reports: dict[Drainable, ShutdownReport],
               interrupted: bool, why: str) -> None:
    """One line per client that left something unsent (none if everything went)."""
    for client in clients:
        report = reports.get(client)
        line = _line(client, report, interrupted)
        if line is not None:
            name = client._exit_name()
            _notice.warn(f"unsent {name}", "fluentclient: %s, %s: %s", why, name, line)


def _line(client: Drainable, report: ShutdownReport | None,
          interrupted: bool) -> str | None:
    if report is None:
        # Its shutdown did not finish (the thread that was to run it could not take the
        # client's lock in time): what the books say it still held.
        held = client._held()
        why = "the drain was interrupted" if interrupted else \
            "its shutdown did not finish in time"
        return f"{count(held, 'record')} held not sent ({why})" if held else None
    unsent = report.unsent_records - report.spooled - report.handed_over
    if not unsent and not report.possibly_lost and not report.spooled \
            and not report.handed_over:
        return None
    parts = [f"{count(unsent, 'record')} ({count(report.unsent_bytes, 'byte')}) not sent"]
    if report.spooled:
        parts.append(f"{count(report.spooled, 'record')} kept in the spool for the next start")
    if report.handed_over:
        parts.append(f"{count(report.handed_over, 'record')} handed to on_unsent")
    if report.possibly_lost:
        parts.append(f"{count(report.possibly_lost, 'record')} possibly lost")
    dropped = sum(report.dropped.values())
    if dropped:
        parts.append(f"{count(dropped, 'record')} dropped before")
    return "; ".join(parts) + f" ({_cause(client, report, interrupted)})"


def _cause(client: Drainable, report: ShutdownReport, interrupted: bool) -> str:
    hopeless = client._hopeless()
    if hopeless is not None:
        return f"not waited for: {hopeless}"
    if report.failure is not None:
        return report.failure
    last = client._unreachable()
    if interrupted:
        cause = "the drain was interrupted"
    elif report.timed_out:
        cause = f"{client._exit_setting}={client.shutdown_timeout:g} s ran out"
    else:
        cause = "stopped"
    return cause if last is None else f"{cause}; {last}"
