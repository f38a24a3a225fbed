from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from fluentclient import Backoff
from fluentclient.framing import EntryPacker
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


# -- tests that pack no record ---------------------------------------------------------------
# CI runs the suite twice, on the compiled path and in pure Python (tests/run_both_paths.py).
# A test marked no_packing cannot tell the two apart, so the second pass leaves it out; the
# fixture below keeps the marker honest in every pass: a marked test that makes an
# EntryPacker (every client makes one), packs a record through one, or starts a process that
# could do either out of sight (a Python child, a fork) fails.

NO_PACKING = "no_packing"


@pytest.fixture(autouse=True)
def _no_packing_is_true(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker(NO_PACKING) is None:
        yield
        return
    seen: list[str] = []
    patch = pytest.MonkeyPatch()

    def spy(name: str, original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            return original(*args, **kwargs)
        return wrapper

    for method in ("__init__", "pack", "pack_runs"):
        patch.setattr(EntryPacker, method,
                      spy(f"EntryPacker.{method}", getattr(EntryPacker, method)))
    popen_init = subprocess.Popen.__init__

    def popen(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        program = args if isinstance(args, (str, bytes)) else next(iter(args), "")
        if os.path.basename(os.fsdecode(program)).startswith("python") or \
                os.fsdecode(program) == sys.executable:
            seen.append(f"a Python child ({program!r})")
        popen_init(self, args, *rest, **kwargs)

    patch.setattr(subprocess.Popen, "__init__", popen)
    if hasattr(os, "fork"):
        patch.setattr(os, "fork", spy("os.fork", os.fork))
    try:
        yield
    finally:
        patch.undo()
    if seen:
        pytest.fail(f"marked {NO_PACKING}, but used {sorted(set(seen))}: it may pack a "
                    "record, so it must run on both paths (remove the marker)")


# -- parallel runs -------------------------------------------------------------------------
# tests/run_both_paths.py runs the suite with pytest-xdist, test by test (--dist loadgroup),
# in collection order (--no-loadscope-reorder). Two things are decided here, in each worker
# (all of them must collect the same tests in the same order):
#
# * A file whose tests share a module- or session-scoped fixture (a real fluentd, a matrix
#   of children timed one at a time) runs whole in one worker, or each worker would make
#   its own. SPLIT_ANYWAY names files whose shared fixture is cheap to make again (a Fluent
#   Bit starts in a fraction of a second) and whose tests are long: one worker would take
#   longer on them alone than the others on everything else.
# * The longest files go first: a worker that took one of them last would still be running
#   it long after the others had run out of work. The seconds (one serial run on two cores)
#   only need to be roughly right; a new long file belongs here too.
SPLIT_ANYWAY = ("test_process_models",)
LONGEST_FIRST = (
    "test_model",  # 80 s: one hypothesis state machine
    "test_process_models",  # 80 s: gunicorn, uWSGI, Celery, multiprocessing
    "test_real_servers",  # 70 s: real fluentd and Fluent Bit
    "test_cli",  # 65 s
    "test_framing", "test_exit", "test_benchmark_smoke", "test_contained_conn",
    "test_contained_linger", "test_docs",  # 20 to 30 s each
)


def _shares_a_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(defs[-1].scope in ("module", "package", "session")
               for defs in info.name2fixturedefs.values() if defs)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not hasattr(config, "workerinput"):  # only in an xdist worker: a serial run
        return  # keeps the plain order
    for item in items:
        if item.path.stem not in SPLIT_ANYWAY and _shares_a_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable


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
