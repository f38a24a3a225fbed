from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import HealthCheck, settings

from fluentclient import Backoff
from tests.certs import pki  # noqa: F401
from tests.peer_server import node_peer, node_peer_factory  # noqa: F401
from tests.real_servers import real_server, real_server_factory, real_server_kind  # noqa: F401

# Tests run real servers and threads: no per-example deadline, and fixtures are reused.
settings.register_profile(
    "fluentclient",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("fluentclient")

# Quick reconnects keep fault tests short; the shape of the backoff is tested on its own.
FAST_BACKOFF = Backoff(initial=0.01, maximum=0.1)


@pytest.fixture
def fast_backoff() -> Backoff:
    return FAST_BACKOFF


# -- nothing left behind -------------------------------------------------------------------

_THREADS_AT_START: set[threading.Thread] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _THREADS_AT_START.update(threading.enumerate())


def _our_children() -> list[str]:
    """Our processes not yet reaped (Linux only; elsewhere nothing is checked)."""
    kids: list[str] = []
    try:
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                kids += f.read().split()
        except OSError:
            pass
    return kids


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A thread or process a test leaves behind goes on using the machine (and the ports)
    # while later tests run; each must end with its test, or at most with its fixtures.
    # The wait is for threads that were told to stop and are on their way out.
    deadline = time.monotonic() + 10
    while True:
        threads = [t for t in threading.enumerate()
                   if t not in _THREADS_AT_START and t.is_alive()]
        children = _our_children()
        if not (threads or children) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if threads or children:
        print(f"\nleft behind: threads {[t.name for t in threads]}, processes {children}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
