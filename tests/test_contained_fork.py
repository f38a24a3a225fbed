"""A fork takes no lock a parent thread may hold, and a forgotten client frees itself.

Forks run in a child program (forking the pytest process, with its server thread, would
prove little); the server stays here and sees what every process sent. A forked child
that does not exit by its deadline is killed and counted as hung.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
import warnings
import weakref
from concurrent.futures import Future

import pytest

from fluentclient import BufferedClient, FluentError, Timeouts
from fluentclient.server import ForwardServer

from .subproc import QUIET_FORK, Child
from .waiting import wait_until

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
from fluentclient import BufferedClient, Buffering

client = BufferedClient("127.0.0.1", P["port"],
                        buffering=Buffering(spool_dir=P["spool"], flush_interval=0.01),
                        shutdown_timeout=10)
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
        if posted % 16 == 0:
            _time.sleep(0.001)  # the machine (and the server) is shared: not a flood

def child(k):
    code = 1
    try:
        for i in range(P["m"]):
            assert client.post("loop.child", {"k": k, "i": i})
        if k % 2:
            code = None  # half of them end as a program does: the at-exit hook drains
        else:
            # Generous: the server is busy with the parent's records.
            report = client.shutdown(30)
            code = 0 if report.sent == P["m"] else 2
            if code:
                stamp("SHORT", k, repr(report).replace(" ", ""))
    finally:
        if code is not None:
            os._exit(code)
    _sys.exit(0)

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
            "deadline": 60,
        }).finish(timeout=forks * 60)
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


HELD_LOCKS = REAP + QUIET_FORK + """
import ctypes, faulthandler, threading
from fluentclient import BufferedClient, Buffering

client = BufferedClient("127.0.0.1", P["port"],
                        buffering=Buffering(spool_dir=P["spool"], flush_interval=0.05),
                        shutdown_timeout=10)

def hold_locks(held, release):
    # Every lock of the client a parent thread can hold at the fork, held through it.
    spool, health = client._journal._spool._lock, client._journal._health._lock
    pop, buffer, ledger = client._reader.pop_lock, client._buffer.lock, client._ledger.lock
    with spool, health, pop, buffer, ledger:
        held.append(threading.get_native_id())
        # Blocked in read(2), without the GIL, through the fork (see QUIET_FORK).
        os.read(release, 1)

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
    quiet(client)
    if P["raw"]:
        park_threads()  # a raw fork skips CPython's own repair of the GIL: see QUIET_FORK
    held, (release, let_go) = [], os.pipe()
    threading.Thread(target=hold_locks, args=(held, release), daemon=True).start()
    deadline = _time.monotonic() + 10
    while not (held and blocked_in_read(held[0], release)):
        assert _time.monotonic() < deadline, "the thread holding the locks never blocked"
        _time.sleep(0.005)
    pid = fork()
    if pid == 0:
        # Where a child that hangs is stuck, for the failure message.
        faulthandler.dump_traceback_later(P["deadline"] - 3, exit=False)
        code = 1
        try:
            for i in range(P["m"]):
                assert client.post("held.child", {"i": i})
            report = client.shutdown(20)
            code = 0 if report.sent == P["m"] else 2
        finally:
            os._exit(code)
    code, took = reap(pid, P["deadline"])
    os.write(let_go, b"x")
    if P["raw"]:
        resume_threads()
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
            "m": m, "deadline": 40,
        }).finish(timeout=120)
        assert result.returncode == 0, result.describe()
        assert result.lines("CHILD")[0][1:] == ["0"], result.describe()
        assert result.lines("PARENT")[0][1:] == [str(n)], result.describe()
        assert server.wait_for(
            lambda: sum(e.tag == "held.child" for e in server.events) >= m, timeout=20)
        assert sorted(e.record["i"] for e in server.events if e.tag == "held.child") == \
            list(range(m))


# -- a client the program forgot is freed ------------------------------------------------

def _ours() -> set[threading.Thread]:
    return {t for t in threading.enumerate()
            if t.name.startswith("fluentclient-") and t.is_alive()}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _post_and_forget(server: ForwardServer, k: int) -> weakref.ref[BufferedClient]:
    client = BufferedClient(server.host, server.port, shutdown_timeout=10)
    assert client.post("forgotten", {"k": k})
    return weakref.ref(client)  # the only reference returned: the client is dropped


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_forgotten_clients_are_drained_closed_and_named_in_a_warning():
    clients = 50
    with ForwardServer() as server:
        threads, fds = _ours(), _fds()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            refs = [_post_and_forget(server, k) for k in range(clients)]
            gc.collect()
        # Collected: nothing of ours (threads, at-exit hooks, registries) kept them.
        assert [r for r in refs if r() is not None] == []
        unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)
                    and "unclosed <BufferedClient to 127.0.0.1:" in str(w.message)]
        assert len(unclosed) == clients, [str(w.message) for w in caught]
        # Drained as at exit: every record arrived...
        assert server.wait_for(
            lambda: sum(e.tag == "forgotten" for e in server.events) >= clients, timeout=20)
        assert sorted(e.record["k"] for e in server.events) == list(range(clients))
        # ...and then no thread or descriptor of theirs is left (the server closes its
        # end of each connection once the client has closed its own).
        assert wait_until(lambda: _ours() <= threads, timeout=20), _ours() - threads
        assert wait_until(lambda: _fds() <= fds, timeout=20), (_fds(), fds)


def test_a_client_shut_down_or_closed_emits_no_warning(fluent_server):
    gc.collect()  # earlier tests' garbage warns now, not as this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for stop in ("shutdown", "close"):
            client = BufferedClient(fluent_server.host, fluent_server.port)
            client.post("stopped", {"stop": stop})
            client.flush(10)
            getattr(client, stop)()
            ref = weakref.ref(client)
            del client
            gc.collect()
            assert ref() is None
        with BufferedClient(fluent_server.host, fluent_server.port) as client:
            client.post("stopped", {"stop": "with"})
        del client
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def _stalled_client(server: ForwardServer) -> tuple[BufferedClient, Future[None]]:
    client = BufferedClient(server.host, server.port, shutdown_timeout=6,
                            timeouts=Timeouts(write=30),
                            require_ack=True)
    delivery = client.post("stalled", {"i": -1}, ack=True)
    for i in range(2000):
        client.post("stalled", {"i": i, "pad": "s" * 1024})
    # Connected, and writing to a server that reads nothing.
    assert wait_until(lambda: client._writer.links[0].conn is not None, timeout=20)
    return client, delivery


def test_dropping_a_client_does_not_wait_for_its_drain():
    # The server takes nothing: the drain of the forgotten client lasts its whole
    # shutdown_timeout, on a thread of its own, never on the one that dropped it.
    with ForwardServer() as server:
        server.stall()
        threads = _ours()
        client, delivery = _stalled_client(server)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", ResourceWarning)
            start = time.monotonic()
            del client
            gc.collect()
            dropped_in = time.monotonic() - start
        # Well under the drain's 6 s, however loaded the machine.
        assert dropped_in < 3.0
        # The drain gives up at its deadline, settles what it held, and its threads end.
        assert wait_until(delivery.done, timeout=30)
        assert isinstance(delivery.exception(), FluentError)
        assert wait_until(lambda: _ours() <= threads, timeout=30), _ours() - threads
        server.stall(False)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_a_forgotten_sync_client_closes_its_socket_and_says_so(fluent_server):
    from fluentclient import SyncClient

    # What earlier tests in this worker left to the cycle collector (an unclosed file)
    # goes now, so that its warnings are not counted as this client's.
    gc.collect()
    fds = _fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        client = SyncClient(fluent_server.host, fluent_server.port)
        client.post("sync.forgotten", {"i": 0})
        del client
        gc.collect()
        never_connected = SyncClient(fluent_server.host, fluent_server.port)
        del never_connected
        gc.collect()
    messages = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    # Named by the client (not only the bare socket), once; a client with no
    # connection open has nothing to warn about.
    assert len(messages) == 1 and messages[0].startswith("unclosed <SyncClient to "), messages
    assert wait_until(lambda: _fds() <= fds, timeout=20), (_fds(), fds)
    assert fluent_server.wait_for_events(1, timeout=10)


DROPPED_AT_EXIT = """
import gc
from fluentclient import BufferedClient, Buffering

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=10,
                        buffering=Buffering(flush_interval=60))
for i in range(P["n"]):
    client.post("dropped.exit", {"i": i})
del client
gc.collect()
stamp("DROPPED")
"""


def test_a_client_dropped_just_before_exit_still_sends_what_it_held(fluent_server):
    # The flush interval is long: only the drain of the forgotten client sends, and the
    # process's end waits for it.
    n = 500
    result = Child("dropped-at-exit", DROPPED_AT_EXIT,
                   {"port": fluent_server.port, "n": n}).finish(timeout=60)
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    assert fluent_server.wait_for(
        lambda: sum(e.tag == "dropped.exit" for e in fluent_server.events) >= n, timeout=10)
    assert sorted(e.record["i"] for e in fluent_server.events) == list(range(n))


SOCKET_COPY = """
import gc, os
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=5)
client.post("copy.parent", {"i": 0})
assert client.flush(10)
sock = client._writer.links[0].conn.sock
inode = os.fstat(sock.fileno()).st_ino
del sock
gc.disable()  # the old writer must not be closed by a collection that happens to run

def socket_inodes():
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return found

pid = os.fork()
if pid == 0:
    code = 3 if inode in socket_inodes() else 0
    os._exit(code)
_, status = os.waitpid(pid, 0)
stamp("CHILD", os.waitstatus_to_exitcode(status))
client.shutdown(5)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists /proc/self/fd")
def test_a_forked_child_closes_its_copy_of_the_parents_socket(fluent_server):
    # Else the server sees no end of the parent's connection until the child's copy goes.
    result = Child("socket-copy", SOCKET_COPY, {"port": fluent_server.port}).finish(timeout=30)
    assert result.returncode == 0, result.describe()
    assert result.lines("CHILD")[0][1:] == ["0"], result.describe()


FORK_DURING_DRAIN = """
import gc, os, threading
from fluentclient import BufferedClient, Buffering, Timeouts

def inodes():
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return found

def forget():
    client = BufferedClient("127.0.0.1", P["port"], timeouts=Timeouts(write=60),
                            buffering=Buffering(spool_dir=P["spool"]), shutdown_timeout=20)
    for i in range(2000):
        client.post("drain.parent", {"i": i, "pad": "d" * 1024})
    deadline = _time.monotonic() + 20
    while client._writer.links[0].conn is None:  # connected to the stalled server
        assert _time.monotonic() < deadline, "never connected"
        _time.sleep(0.01)
    spool = client._journal._spool
    ours = {os.fstat(client._writer.links[0].conn.sock.fileno()).st_ino,
            os.fstat(spool._lock_fd).st_ino}
    return ours

ours = forget()
gc.collect()
assert any(t.name == "fluentclient-forgotten" for t in threading.enumerate())
assert ours <= inodes()
pid = os.fork()
if pid == 0:
    os._exit(3 if ours & inodes() else 0)
_, status = os.waitpid(pid, 0)
stamp("CHILD", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists /proc/self/fd")
def test_a_child_forked_while_a_forgotten_client_drains_closes_its_copies(tmp_path):
    with ForwardServer() as server:
        server.stall()
        child = Child("fork-during-drain", FORK_DURING_DRAIN, {
            "port": server.port, "spool": str(tmp_path / "spool")})
        child.wait_for_line("CHILD", timeout=30)
        server.stall(False)  # the drain may end now
        result = child.finish(timeout=60)
    assert result.returncode == 0, result.describe()
    assert result.lines("CHILD")[0][1:] == ["0"], result.describe()


SPOOL_GONE = """
import logging, os
from fluentclient import BufferedClient, Buffering

class Said(logging.Handler):
    def emit(self, record):
        stamp("LOGGED", record.getMessage().replace(" ", "_"))

logging.getLogger("fluentclient").addHandler(Said())
client = BufferedClient("127.0.0.1", P["port"], buffering=Buffering(spool_dir=P["spool"]),
                        shutdown_timeout=10)
client.post("gone.parent", {"i": 0})
assert client.flush(10)
# The child cannot open a spool there: the path is a file now.
os.rename(P["spool"], P["spool"] + ".moved")
open(P["spool"], "w").close()
pid = os.fork()
if pid == 0:
    stamp("FORKED")
    client.post("gone.child", {"i": 0})
    client.shutdown(10)
    os._exit(0)
_, status = os.waitpid(pid, 0)
stamp("CHILD", os.waitstatus_to_exitcode(status))
client.shutdown(10)
"""


def test_a_child_that_cannot_open_its_spool_says_so_at_its_first_post_not_in_the_fork(
    fluent_server, tmp_path,
):
    result = Child("spool-gone", SPOOL_GONE, {
        "port": fluent_server.port, "spool": str(tmp_path / "spool")}).finish(timeout=60)
    assert result.returncode == 0, result.describe()
    assert result.lines("CHILD")[0][1:] == ["0"], result.describe()
    said = [line.split()[0] + ("_after_fork" in line) * " after fork"
            for line in result.stdout.splitlines()]
    # Logged once, by the child, after the fork had returned (not in its at-fork hook).
    assert said.count("LOGGED after fork") == 1, result.describe()
    assert said.index("FORKED") < said.index("LOGGED after fork"), result.describe()
    assert fluent_server.wait_for(
        lambda: any(e.tag == "gone.child" for e in fluent_server.events), timeout=20)
