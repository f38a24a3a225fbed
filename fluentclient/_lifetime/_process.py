"""What a BufferedClient does about its process: forks, exits, and the hosts that
skip the usual hooks for either (multiprocessing, Celery's prefork pool, uWSGI).

The client itself decides what a fork means for its own state
(``BufferedClient._after_fork_in_child``) and what draining means
(``BufferedClient._drain_for_exit``); this module only finds out when to ask, and knows
a client only as _clients.py describes it.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import sys
import threading
import time
from typing import Any

from . import _parking, _sigterm
from ._clients import Client, ForkAware, drained_at_exit, forgotten, live
from ._exit import drain_all

log = logging.getLogger("fluentclient")

# One lock per process for noticing a fork that skipped the at-fork hooks (see
# BufferedClient._check_fork); setdefault on a dict is atomic, so every thread of a
# process gets the same.
_fork_locks: dict[int, threading.Lock] = {}
_hooked = False
_made = itertools.count()


def fork_lock(pid: int) -> threading.Lock:
    """The lock of process ``pid``, made in it, so no parent thread can have held it."""
    return _fork_locks.setdefault(pid, threading.Lock())


def main_thread_finished() -> bool:
    # While atexit handlers run, sys.is_finalizing() is still False, but the main thread
    # has already been marked as stopped.
    main = threading.main_thread()
    return threading.current_thread() is main and not main.is_alive()


def _at_exit() -> None:
    drain_all()
    _sigterm.after_exit_drain()


def register_at_exit(client: Client) -> None:
    """Drain ``client`` at the end of the process, with every other client.

    One hook for the process, registered with the first client: so it runs after every
    atexit hook registered since (they may still log through the clients), and the
    clients drain together, within the longest of their deadlines, not one after another.
    """
    global _hooked
    if not _hooked:
        _hooked = True
        atexit.register(_at_exit)
    # The summary at exit names the clients in the order they were made.
    client._exit_order = next(_made)
    drained_at_exit.add(client)
    _drain_in_celery_pool()
    _drain_in_uwsgi()
    # multiprocessing's workers end with os._exit(), after its own finalizers but
    # without atexit: in each worker it starts, drain there too.
    try:
        from multiprocessing import process, util
    except ImportError:  # pragma: no cover - a stripped-down interpreter
        return
    if process.parent_process() is not None:
        # Made inside a worker already (forkserver and spawn import the main module
        # there): no fork is left to hook.
        _drain_in_worker(client)
    util.register_after_fork(client, _drain_in_worker)


def _drain_in_worker(client: Client) -> None:
    from multiprocessing import util

    # Holds no client, so a client dropped in the worker is not kept alive; the first of
    # these to run drains every client of the worker, the others find nothing left.
    util.Finalize(None, _drain_all, exitpriority=0)


def _drain_in_celery_pool() -> None:
    """In a Celery worker, drain when a pool process ends.

    Celery's prefork pool (billiard) ends its processes with os._exit() from inside the
    task loop, so neither atexit nor multiprocessing's finalizers run there; Celery's
    worker_process_shutdown signal is the one thing that does. Celery is never imported
    here: if the application has not, this is not a Celery worker.
    """
    global _celery_hooked
    signals = sys.modules.get("celery.signals")
    if signals is None or _celery_hooked:
        # Connected once, the receiver is inherited by every forked child.
        return
    shutdown = getattr(signals, "worker_process_shutdown", None)
    if shutdown is None:  # pragma: no cover - a Celery without the signal
        return
    shutdown.connect(_drain_all, weak=False, dispatch_uid="fluentclient-drain")
    _celery_hooked = True


_celery_hooked = False


def _drain_all(*args: object, **kwargs: object) -> None:
    try:
        drain_all()
    except Exception:  # the host's exit path must go on whatever happens here
        log.exception("fluentclient: draining at the end of a worker process failed")


# -- uWSGI ------------------------------------------------------------------------------
#
# uWSGI forks its workers in C, without Python's at-fork hooks (unless
# --py-call-osafterfork): the pid check in post() covers that. A worker runs Python's
# atexit when it ends, except with --skip-atexit (nothing at all runs) or
# --skip-atexit-teardown (only the uwsgi.atexit callable runs). The master runs neither.

_uwsgi_hooked = False


class Handoff:
    """Records a parent left for exactly one of its forked children to send.

    A pipe holding one byte: every child inherits the read end, and the one whose read
    gets the byte has claimed the records. A child respawned later finds it empty, and
    a reloading uWSGI master, which execs itself, closes it (pipes are close-on-exec).
    """

    def __init__(self) -> None:
        read, write = os.pipe()
        try:
            os.write(write, b"1")
        finally:
            os.close(write)
        os.set_blocking(read, False)
        self._fd = read

    def claim(self) -> bool:
        """True in the one child that gets the byte; the pipe is closed here either way."""
        try:
            return os.read(self._fd, 1) == b"1"
        except OSError:  # empty: another child claimed it
            return False
        finally:
            os.close(self._fd)


def _uwsgi_module() -> Any:
    """The ``uwsgi`` module, which uWSGI puts in sys.modules before loading any
    application and which exists nowhere else; else None."""
    return sys.modules.get("uwsgi")


def in_uwsgi_master() -> bool:
    uwsgi = _uwsgi_module()
    if uwsgi is None:
        return False
    try:
        return bool(uwsgi.masterpid() == os.getpid())
    except Exception:  # an embedding without the call: not a master we know of
        return False


def _uwsgi_option(uwsgi: Any, name: str) -> bool:
    value = getattr(uwsgi, "opt", {}).get(name)
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return bool(value) and str(value).lower() not in ("0", "false", "no", "off")


def _drain_in_uwsgi() -> None:
    """Inside uWSGI: chain the drain into uwsgi.atexit, and say what cannot work."""
    global _uwsgi_hooked
    uwsgi = _uwsgi_module()
    if uwsgi is None or _uwsgi_hooked:
        return
    _uwsgi_hooked = True
    # With --skip-atexit-teardown a worker skips Python's atexit but still calls this.
    previous = getattr(uwsgi, "atexit", None)

    def at_uwsgi_exit() -> None:
        _drain_all()
        if previous is not None:
            previous()

    uwsgi.atexit = at_uwsgi_exit
    if _uwsgi_option(uwsgi, "skip-atexit"):
        log.error(
            "fluentclient: uWSGI runs with skip-atexit, so a worker ends without running "
            "any exit hook: records still buffered when it stops or reloads are lost. "
            "Remove skip-atexit (skip-atexit-teardown is fine) or call shutdown() yourself."
        )
    if not getattr(uwsgi, "has_threads", True):
        log.error(
            "fluentclient: uWSGI runs without Python threads, so the client's threads only "
            "run while a request does and records wait for the next one. Start uWSGI with "
            "enable-threads."
        )


# The clients whose threads were asked to park for the fork under way.
_parked: list[ForkAware] = []


def _park_all() -> None:
    """Before a fork: park every running client's threads, waiting for all of them
    together at most ``PARK_WAIT`` (see _parking.py)."""
    if sys.is_finalizing() or main_thread_finished():
        return  # no thread could be started again after the fork
    deadline = time.monotonic() + _parking.PARK_WAIT
    waits: list[threading.Thread] = []
    for client in list(live):
        threads = client._park(deadline)
        if threads:
            _parked.append(client)
            waits += threads
    for thread in waits:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break  # what still runs is forked running: Python's warning says so
        thread.join(remaining)
        if not thread.is_alive():
            _wait_for_os_thread(thread, deadline)


def _wait_for_os_thread(thread: threading.Thread, deadline: float) -> None:
    """Wait until the OS thread under a joined Python thread is gone too.

    Before Python 3.13, join() returns as the thread releases its state, a moment before
    the OS thread exits; Python's warning counts OS threads (on Linux, from /proc), and
    would find it there now and then. Where /proc lists them, wait for that.
    """
    native_id = thread.native_id
    if native_id is None:
        return
    task = f"/proc/self/task/{native_id}"
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(0.0001)


def _resume_all() -> None:
    """After a fork, in the parent: restart what parked."""
    clients = list(_parked)
    _parked.clear()
    for client in clients:
        client._resume_after_fork()


def _reinit_in_child() -> None:
    # The child's clients start afresh: nothing of theirs is parked.
    _parked.clear()
    for client in list(live):
        client._after_fork_in_child()
    # Their drain runs in the parent only: here nothing of theirs is left but our copies
    # of their files and sockets.
    for core in list(forgotten):
        core._forget_in_child()
    forgotten.clear()
    if drained_at_exit:
        _drain_in_celery_pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_park_all, after_in_parent=_resume_all,
                        after_in_child=_reinit_in_child)
