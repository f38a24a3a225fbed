"""Whole processes: the at-exit drain, exiting with a stuck server, and fork."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from fluentclient import BufferedClient, Buffering

from .conftest import FAST_BACKOFF
from .subproc import child_env


def run_python(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=child_env())


def test_records_are_sent_at_process_exit(fluent_server):
    result = run_python(f"""
        from fluentclient import BufferedClient, Buffering
        c = BufferedClient("127.0.0.1", {fluent_server.port},
                           buffering=Buffering(flush_interval=3600))
        for i in range(2000):
            c.post("exit.drain", {{"i": i}})
        # no shutdown(): the at-exit hook must drain
    """)
    assert result.returncode == 0, result.stderr
    assert fluent_server.wait_for_events(2000, timeout=10)


def test_exit_is_bounded_when_the_server_is_stuck(fluent_server):
    fluent_server.stall(True)
    t0 = time.monotonic()
    result = run_python(f"""
        from fluentclient import BufferedClient, Timeouts
        c = BufferedClient("127.0.0.1", {fluent_server.port}, shutdown_timeout=1.0,
                           timeouts=Timeouts(write=30))
        for i in range(30000):
            c.post("exit.stuck", {{"i": i, "pad": "x" * 200}})
    """)
    elapsed = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert "not sent" in result.stderr  # the at-exit report is logged, not silent
    # Interpreter start-up plus the 1 s deadline, with room for a loaded machine.
    assert elapsed < 5


# Forks this process, whose embedded server thread runs: Python 3.12+ warns about that
# thread, the test's own (the client's are parked, see tests/test_fork_parking.py).
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_posts_after_fork_and_does_not_resend_the_parents_records(fluent_server):
    client = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                            at_exit=False, buffering=Buffering(flush_interval=3600))
    client.post("fork.parent", {"who": "parent", "n": 0}, sync_append=True)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            client.post("fork.child", {"who": "child"})
            report = client.shutdown(5)
            code = 0 if report.sent == 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    client.post("fork.parent", {"who": "parent", "n": 1})
    report = client.shutdown(5)
    assert report.sent == 2
    assert fluent_server.wait_for_events(3, timeout=5)
    whos = sorted(e.record["who"] for e in fluent_server.events)
    assert whos == ["child", "parent", "parent"]
