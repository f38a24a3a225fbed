"""A fork takes no lock a parent thread may hold, and a forgotten client frees itself.

Forks run in a child program (forking the pytest process, with its server thread, would
prove little); the server stays here and sees what every process sent. A forked child
that does not exit by its deadline is killed and counted as hung.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from fluentclient.server import ForwardServer

from .subproc import Child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

# Waiting for one forked child: ``(exit code or "hung", seconds)``; a hung child is killed.
REAP = """
import os, signal

def reap(pid, deadline):
    start = _time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), _time.monotonic() - start
        if _time.monotonic() - start > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hung", _time.monotonic() - start
        _time.sleep(0.005)
"""

FORK_LOOP = REAP + """
import threading
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], spool_dir=P["spool"], shutdown_timeout=10,
                        flush_interval=0.01)
stop = threading.Event()
posted = 0

def poster():
    # 2 KB records as fast as the reader takes them: it writes the spool all the time,
    # under the spool's lock, and so holds it at many of the forks.
    global posted
    pad = "x" * 2048
    while not stop.is_set():
        client.post("loop.parent", {"i": posted, "pad": pad})
        posted += 1
        if posted % 64 == 0:
            _time.sleep(0.001)  # the machine is shared: packing, not spinning

def child(k):
    code = 1
    try:
        for i in range(P["m"]):
            assert client.post("loop.child", {"k": k, "i": i})
        report = client.shutdown(10)
        code = 0 if report.sent == P["m"] else 2
    finally:
        os._exit(code)

def main():
    thread = threading.Thread(target=poster, daemon=True)
    thread.start()
    deadline = _time.monotonic() + 20
    while client.stats().buffered + client.stats().sent < 200:
        assert _time.monotonic() < deadline, "the poster never got going"
        _time.sleep(0.01)
    results = []
    for k in range(P["forks"]):
        pid = os.fork()
        if pid == 0:
            child(k)
        code, took = reap(pid, P["deadline"])
        results.append(code)
        if code == "hung":
            break  # one is enough to fail; the rest would each cost a whole deadline
    stop.set()
    thread.join(5)
    stamp("RESULTS", _json.dumps(results, separators=(",", ":")))
    client.shutdown(10)

main()
"""


def test_forks_while_the_reader_writes_the_spool_never_hang_the_child(tmp_path):
    forks, m = 40, 5
    with ForwardServer() as server:
        result = Child("fork-loop", FORK_LOOP, {
            "port": server.port, "spool": str(tmp_path / "spool"), "forks": forks, "m": m,
            "deadline": 15,
        }).finish(timeout=forks * 20)
        assert result.returncode == 0, result.describe()
        results = json.loads(result.lines("RESULTS")[0][1])
        # Every child exited by itself, having sent what it posted.
        assert results == [0] * forks, result.describe()
        assert server.wait_for(
            lambda: sum(e.tag == "loop.child" for e in server.events) >= forks * m,
            timeout=20,
        )
        got = sorted((e.record["k"], e.record["i"]) for e in server.events
                     if e.tag == "loop.child")
        assert got == [(k, i) for k in range(forks) for i in range(m)]


HELD_LOCKS = REAP + """
import ctypes, threading
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], spool_dir=P["spool"], shutdown_timeout=10,
                        flush_interval=0.05)

def hold_locks(held, release):
    # Every lock of the client a parent thread can hold at the fork, held through it.
    spool, health = client._journal._spool._lock, client._journal._health._lock
    pop, buffer, ledger = client._reader.pop_lock, client._buffer.lock, client._ledger.lock
    with spool, health, pop, buffer, ledger:
        held.set()
        release.wait(60)

def fork():
    if P["raw"]:
        # libc's fork() through ctypes: none of Python's at-fork hooks run in the child,
        # so it is the pid check in post() that notices. PyDLL keeps the GIL across the
        # call, so the child starts holding it.
        return ctypes.PyDLL(None).fork()
    return os.fork()

def main():
    for i in range(P["n"]):
        client.post("held.parent", {"i": i, "pad": "p" * 2048})
    assert client.flush(10)
    # A raw fork also skips CPython's own repair of the GIL: fork while our threads
    # sleep in their long waits, not about to queue for the GIL (see test_fork.py).
    deadline = _time.monotonic() + 10
    while not (client._reader.idle
               and not any(link.unconfirmed for link in client._writer.links)):
        assert _time.monotonic() < deadline, "the client's threads never went quiet"
        _time.sleep(0.01)
    held, release = threading.Event(), threading.Event()
    threading.Thread(target=hold_locks, args=(held, release), daemon=True).start()
    assert held.wait(10)
    pid = fork()
    if pid == 0:
        code = 1
        try:
            for i in range(P["m"]):
                assert client.post("held.child", {"i": i})
            report = client.shutdown(10)
            code = 0 if report.sent == P["m"] else 2
        finally:
            os._exit(code)
    code, took = reap(pid, P["deadline"])
    release.set()
    stamp("CHILD", code)
    report = client.shutdown(10)
    stamp("PARENT", report.sent)

main()
"""


@pytest.mark.parametrize("raw", [
    False,
    pytest.param(True, marks=pytest.mark.skipif(sys.platform != "linux",
                                                reason="calls libc fork through ctypes")),
], ids=["hooked-fork", "unhooked-fork"])
def test_a_child_forked_while_the_parent_holds_every_lock_posts_and_exits(tmp_path, raw):
    n, m = 50, 20
    with ForwardServer() as server:
        result = Child("held-locks", HELD_LOCKS, {
            "port": server.port, "spool": str(tmp_path / "spool"), "raw": raw, "n": n,
            "m": m, "deadline": 15,
        }).finish(timeout=60)
        assert result.returncode == 0, result.describe()
        assert result.lines("CHILD")[0][1:] == ["0"], result.describe()
        assert result.lines("PARENT")[0][1:] == [str(n)], result.describe()
        assert server.wait_for(
            lambda: sum(e.tag == "held.child" for e in server.events) >= m, timeout=20)
        assert sorted(e.record["i"] for e in server.events if e.tag == "held.child") == \
            list(range(m))
