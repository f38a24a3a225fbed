"""Fork safety with real os.fork() in a child process, a multiprocessing pool, and a raw fork.

The forking program runs in its own process (forking the pytest process, with its server
thread, would prove little); the server stays here, so it sees what both sides sent. Records
carry unique ids, so "exactly once" is checked record by record.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pytest

from fluentclient.server import ForwardServer

from .subproc import QUIET_FORK, Child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

N = 20_000  # the parent's records: about 6 MB, more than the kernel buffers hold
M = 500  # the child's

FORKER = """
import os, threading, warnings
from fluentclient import BufferedClient, Timeouts

# This program forks with threads of its own running on purpose (a poster, and one holding
# the client's locks): Python 3.12+ rightly warns about those, whatever the client does.
warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=10, timeouts=Timeouts(write=30))

def wait_until_held():
    # The server takes nothing (stalled or refusing): wait until our buffer holds bytes
    # and the writer's byte count stands still.
    deadline = _time.monotonic() + 20
    last, still = -1, 0
    while _time.monotonic() < deadline:
        s = client.stats()
        still = still + 1 if s.bytes_sent == last and s.buffered_bytes > 0 else 0
        last = s.bytes_sent
        if still >= 4:
            return s
        _time.sleep(0.05)
    raise SystemExit("the buffer never held anything")

thread_posts = 0
stop = threading.Event()

def poster():
    global thread_posts
    while not stop.is_set():
        client.post("fork.thread", {"n": thread_posts})
        thread_posts += 1
        _time.sleep(0.001)

def hold_locks(held, release):
    # A thread of the parent holds the client's locks while the fork happens.
    with client._buffer.lock, client._ledger.lock:
        held.set()
        release.wait(10)

def main():
    for i in range(P["n"]):
        client.post("fork.parent", {"i": i, "pad": "p" * 250})
    poster_thread = threading.Thread(target=poster, daemon=True)
    poster_thread.start()
    held_stats = wait_until_held()
    held, release = threading.Event(), threading.Event()
    threading.Thread(target=hold_locks, args=(held, release), daemon=True).start()
    held.wait(10)
    pid = os.fork()
    if pid == 0:
        # The child: post at once, then exit normally (the at-exit hook drains).
        for i in range(P["m"]):
            assert client.post("fork.child", {"i": i})
        s = client.stats()
        stamp("CHILD", s.posted, s.sent, s.buffered, s.unsent)
        return
    release.set()
    stamp("FORKED", held_stats.buffered_bytes)
    _sys.stdin.readline()  # the server was resumed
    stop.set()
    poster_thread.join(5)
    assert client.flush(20)
    s = client.stats()
    report = client.shutdown(10)
    _, status = os.waitpid(pid, 0)
    stamp("PARENT", _json.dumps({
        "posted": s.posted, "sent": report.sent, "unsent": report.unsent_records,
        "possibly_lost": report.possibly_lost, "dropped": dict(report.dropped),
        "connection_failures": s.connection_failures, "retried": s.retried,
        "thread_posts": thread_posts, "child_exit": os.waitstatus_to_exitcode(status),
    }, separators=(",", ":")))

main()
"""


def ids(server: ForwardServer, tag: str, key: str) -> Counter[int]:
    return Counter(e.record[key] for e in server.events if e.tag == tag)


@pytest.mark.parametrize("fault", ["stalled", "refusing"])
def test_fork_with_held_records_and_held_locks_sends_each_record_once(fault):
    with ForwardServer() as server:
        if fault == "stalled":
            server.stall()
        else:
            server.refuse()
        forker = Child(f"forker-{fault}", FORKER, {"port": server.port, "n": N, "m": M},
                       stdin=True)
        # Wait for both sides: the child posted with the server still taking nothing.
        forker.wait_for_line("FORKED", timeout=30)
        forker.wait_for_line("CHILD", timeout=30)
        if fault == "stalled":
            server.stall(False)
        else:
            server.refuse(False)
        forker.send("resumed")
        result = forker.finish(timeout=60)
        assert result.returncode == 0, result.describe()
        assert result.foreign_stderr() == [], result.describe()
        parent = json.loads(result.lines("PARENT")[0][1])
        assert parent["child_exit"] == 0, result.describe()
        assert float(result.lines("FORKED")[0][1]) > 0  # the buffer really held records

        # The child started empty: only its own M records, none of the parent's.
        child_posted, child_sent, child_buffered, child_unsent = map(
            int, result.lines("CHILD")[0][1:])
        assert (child_posted, child_sent, child_unsent) == (M, 0, 0)
        assert child_buffered == M

        thread_posts = parent["thread_posts"]
        expected = {"fork.parent": N, "fork.child": M, "fork.thread": thread_posts}
        assert server.wait_for(
            lambda: all(sum(e.tag == tag for e in server.events) >= n
                        for tag, n in expected.items()), timeout=20,
        ), {tag: sum(e.tag == tag for e in server.events) for tag in expected}
        # Exactly once each: nothing of the parent's was sent again by the child.
        assert ids(server, "fork.parent", "i") == Counter(range(N))
        assert ids(server, "fork.child", "i") == Counter(range(M))
        assert ids(server, "fork.thread", "n") == Counter(range(thread_posts))

        # The parent's stats count its own records only, all sent, and the fork broke
        # nothing of its connection.
        assert parent["posted"] == N + thread_posts
        assert parent["sent"] == N + thread_posts
        assert parent["unsent"] == parent["possibly_lost"] == 0 and not parent["dropped"]
        if fault == "stalled":
            assert parent["connection_failures"] == 0 and parent["retried"] == 0


POOL = """
import os
import multiprocessing as mp
from fluentclient import BufferedClient, Buffering

# A long flush interval: what a worker posted stays in its buffer until something drains it.
client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=5,
                        buffering=Buffering(flush_interval=60))

def task(k):
    for i in range(P["m"]):
        client.post("pool.worker", {"k": k, "i": i})
    if P["flush"]:
        client.flush(5)
    s = client.stats()
    return os.getpid(), s.posted

def main():
    for i in range(P["n"]):
        client.post("pool.parent", {"i": i})
    pool = mp.get_context("fork").Pool(3)
    results = pool.map(task, range(P["tasks"]), chunksize=1)
    pool.close()
    pool.join()
    per_pid = {}
    for pid, posted in results:
        per_pid[pid] = max(per_pid.get(pid, 0), posted)
    stamp("POOL", sum(per_pid.values()), len(per_pid))
    stamp("PARENT", client.stats().posted)

main()
"""

@pytest.mark.parametrize("flush", [False, True],
                         ids=["exit-drains", "task-flushes"])
def test_multiprocessing_fork_pool_workers_deliver_and_never_resend(fluent_server, flush):
    tasks, m, n = 6, 200, 300
    result = Child("pool", POOL, {"port": fluent_server.port, "m": m, "n": n,
                                  "tasks": tasks, "flush": flush}).finish(timeout=60)
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    worker_posted, workers = map(int, result.lines("POOL")[0][1:])
    # Each worker's stats count its own posts only, never the parent's buffered ones.
    assert worker_posted == tasks * m and 1 <= workers <= 3
    assert result.lines("PARENT")[0][1:] == [str(n)]
    assert fluent_server.wait_for(
        lambda: sum(e.tag == "pool.worker" for e in fluent_server.events) >= tasks * m
        and sum(e.tag == "pool.parent" for e in fluent_server.events) >= n, timeout=3,
    )
    assert ids(fluent_server, "pool.parent", "i") == Counter(range(n))
    got = Counter((e.record["k"], e.record["i"])
                  for e in fluent_server.events if e.tag == "pool.worker")
    assert got == Counter((k, i) for k in range(tasks) for i in range(m))


RAW_FORK = QUIET_FORK + """
import ctypes, os
from fluentclient import BufferedClient, Buffering

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=1,
                        buffering=Buffering(flush_interval=0.05))

def main():
    for i in range(P["n"]):
        client.post("raw.parent", {"i": i})
    assert client.flush(5)  # connected, threads running
    quiet(client)
    park_threads()  # see QUIET_FORK
    # libc's fork() through ctypes: none of Python's at-fork hooks run in the child.
    # PyDLL keeps the GIL across the call, so the child starts holding it.
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        if P["reader_was_busy"]:
            # The child copies the reader's state: had it been busy at the fork, post()
            # wakes nothing and so checks no pid, and the at-exit hook must notice.
            client._reader.idle = False
        for i in range(P["m"]):
            client.post("raw.child", {"i": i})
        stamp("EXITING")
        return
    resume_threads()
    for i in range(P["n"], 2 * P["n"]):
        client.post("raw.parent", {"i": i})
    assert client.flush(5)
    _, status = os.waitpid(pid, 0)
    stamp("REAPED")
    report = client.shutdown(5)
    s = client.stats()
    stamp("PARENT", os.waitstatus_to_exitcode(status), s.posted, report.sent,
          s.connection_failures, report.possibly_lost, report.unsent_records)

main()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="calls libc fork through ctypes")
@pytest.mark.parametrize("reader_was_busy", [False, True], ids=["reader-idle", "reader-busy"])
def test_a_fork_that_skips_the_at_fork_hooks_is_caught_by_a_pid_check(fluent_server,
                                                                       reader_was_busy):
    n, m = 200, 100
    result = Child("raw-fork", RAW_FORK, {"port": fluent_server.port, "n": n, "m": m,
                                          "reader_was_busy": reader_was_busy}
                   ).finish(timeout=30)
    assert result.returncode == 0, result.describe()
    exit_code, posted, sent, failures, lost, unsent = map(int, result.lines("PARENT")[0][1:])
    assert exit_code == 0
    # The parent: its own records only, and the child did not touch its connection.
    assert (posted, sent, failures, lost, unsent) == (2 * n, 2 * n, 0, 0, 0), result.describe()
    assert fluent_server.wait_for(
        lambda: sum(e.tag == "raw.child" for e in fluent_server.events) >= m, timeout=5,
    ), result.describe()
    assert ids(fluent_server, "raw.child", "i") == Counter(range(m))
    assert ids(fluent_server, "raw.parent", "i") == Counter(range(2 * n))
    # The child's exit is not held up by threads that do not exist in it.
    assert result.stamp("REAPED") - result.stamp("EXITING") <= 1.0 + 0.5, result.describe()


FIRST_POST_AFTER_RAW_FORK = QUIET_FORK + """
import ctypes, os
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], at_exit=False)
client.post("raw.parent", {"i": 0})  # threads started
assert client.flush(10)
quiet(client)
park_threads()  # see QUIET_FORK
parent_state = client._life
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    # The usual path of post(), compiled or not, must notice the fork at once: it may
    # not queue the record into the parent's state, whose reader does not exist here.
    client.post("raw.parent", {"i": 1})
    os._exit(0 if client._pid == os.getpid() and client._life is not parent_state else 3)
resume_threads()
_, status = os.waitpid(pid, 0)
stamp("CHILD", os.waitstatus_to_exitcode(status))
client.close()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="calls libc fork through ctypes")
def test_the_first_post_after_a_fork_without_hooks_starts_the_child_afresh(fluent_server):
    result = Child("raw-fork-post", FIRST_POST_AFTER_RAW_FORK,
                   {"port": fluent_server.port}).finish(timeout=30)
    assert result.returncode == 0, result.describe()
    assert result.lines("CHILD")[0][1:] == ["0"], result.describe()


SYNC_FORK = """
import os
from fluentclient import SyncClient, Timeouts

client = SyncClient("127.0.0.1", P["port"], require_ack=True, timeouts=Timeouts(ack=10))
client.post("sync.parent", {"i": -1})  # connected before the fork
pid = os.fork()
tag, count = ("sync.child", P["m"]) if pid == 0 else ("sync.parent", P["n"])
for i in range(count):
    client.post(tag, {"i": i})  # each waits for its own ack
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
stamp("PARENT", os.waitstatus_to_exitcode(status), client.stats().posted)
"""


def test_a_sync_client_forked_with_a_live_connection_keeps_each_side_on_its_own(
    fluent_server,
):
    # Sharing the socket, the two processes would interleave frames and read each
    # other's acks; after the fork the child must connect on its own.
    n, m = 1000, 1000
    result = Child("sync-fork", SYNC_FORK, {"port": fluent_server.port, "n": n,
                                            "m": m}).finish(timeout=60)
    assert result.returncode == 0, result.describe()
    assert result.lines("PARENT")[0][1:] == ["0", str(n + 1)], result.describe()
    assert fluent_server.wait_for_events(n + m + 1, timeout=10)
    assert ids(fluent_server, "sync.child", "i") == Counter(range(m))
    assert ids(fluent_server, "sync.parent", "i") == Counter(range(-1, n))
    assert fluent_server.errors == []
    # The parent's connection and one of the child's own: nothing failed and was redone.
    assert fluent_server.connections_accepted == 2


SYNC_RAW_FORK = """
import ctypes, os
from fluentclient import SyncClient

client = SyncClient("127.0.0.1", P["port"])
client.post("syncraw.parent", {"i": -1})  # connected before the fork
parent_conn = client._links[0].conn
# libc's fork() through ctypes: none of Python's at-fork hooks run in the child, so the
# child's first post() must notice by itself, or it writes on the parent's connection.
pid = ctypes.PyDLL(None).fork()
if pid == 0:
    for i in range(P["m"]):
        client.post("syncraw.child", {"i": i})
    own = client._links[0].conn is not parent_conn and client._pid == os.getpid()
    os._exit(0 if own and client.stats().connects == 1 else 3)
_, status = os.waitpid(pid, 0)
for i in range(P["n"]):
    client.post("syncraw.parent", {"i": i})
s = client.stats()
stamp("PARENT", os.waitstatus_to_exitcode(status), s.sent, s.connects,
      int(client._links[0].conn is parent_conn))
client.close()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="calls libc fork through ctypes")
def test_a_sync_client_forked_without_the_hooks_connects_on_its_own_in_the_child(
    fluent_server,
):
    n, m = 200, 200
    result = Child("sync-raw-fork", SYNC_RAW_FORK, {"port": fluent_server.port, "n": n,
                                                    "m": m}).finish(timeout=60)
    assert result.returncode == 0, result.describe()
    # The child exited 0 (its own connection); the parent kept its connection.
    assert result.lines("PARENT")[0][1:] == ["0", str(n + 1), "1", "1"], result.describe()
    assert fluent_server.wait_for_events(n + m + 1, timeout=10)
    assert ids(fluent_server, "syncraw.child", "i") == Counter(range(m))
    assert ids(fluent_server, "syncraw.parent", "i") == Counter(range(-1, n))
    assert fluent_server.errors == []
    assert fluent_server.connections_accepted == 2


# -- a client stopped before the fork stays stopped after it -----------------------------

def _child_posts_to(client, sync_client) -> dict:
    """In a forked child: what posting to clients stopped in the parent does."""
    from fluentclient import ClientClosedError

    posts = [client.post("closed.child", {"i": i}) for i in range(3)]
    try:
        client.post("closed.child", {"i": 3}, sync_append=True)
        raised = None
    except ClientClosedError:
        raised = "ClientClosedError"
    except Exception as exc:  # pragma: no cover - reported to the parent
        raised = type(exc).__name__
    try:
        sync_client.post("closed.child", {"i": 4})
        sync_raised = None
    except ClientClosedError:
        sync_raised = "ClientClosedError"
    except Exception as exc:  # pragma: no cover - reported to the parent
        sync_raised = type(exc).__name__
    s = client.stats()
    return {"posts": posts, "sync_append": raised, "sync_client": sync_raised,
            "posted": s.posted, "dropped": dict(s.dropped), "buffered": s.buffered,
            "started": client._reader.thread.ident is not None,
            "flushed": client.flush(timeout=10), "shutdown_again": client.shutdown(1).sent}


def _read_all(fd: int, timeout: float) -> bytes:
    import select
    import time

    deadline = time.monotonic() + timeout
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the child said only {data!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return data
            data += chunk


# This test forks the test process itself, whose server thread runs: Python 3.12+ warns
# about that thread, which is the test's, not the client's.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("stop", ["shutdown", "close"])
@pytest.mark.parametrize("used", [False, True], ids=["never-started", "started"])
def test_a_client_stopped_before_a_fork_stays_stopped_in_the_child(fluent_server, stop,
                                                                    used):
    from fluentclient import BufferedClient, SyncClient

    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False)
    sync_client = SyncClient(fluent_server.host, fluent_server.port)
    if used:
        client.post("closed.parent", {"i": 0})
        assert client.flush(5)
        sync_client.post("closed.parent", {"i": 1})
    getattr(client, stop)()
    getattr(sync_client, stop)()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            os.close(read)
            os.write(write, json.dumps(_child_posts_to(client, sync_client)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        said = _read_all(read, timeout=20)
    finally:
        os.close(read)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said
    child = json.loads(said)
    assert child["posts"] == [False, False, False], child
    assert child["sync_append"] == "ClientClosedError", child
    assert child["sync_client"] == "ClientClosedError", child
    # Counted in the child's own stats, from zero, as refused because closed.
    assert (child["posted"], child["dropped"], child["buffered"]) == (4, {"closed": 4}, 0)
    # No threads started: nothing of the child's can reach the server.
    assert child["started"] is False and child["shutdown_again"] == 0
    # Nothing of the child's is left unsent: its flush has nothing to wait for.
    assert child["flushed"] is True


RAW_FORK_CLOSED = """
import ctypes, os
from fluentclient import BufferedClient, Buffering, ClientClosedError

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=1,
                        buffering=Buffering(flush_interval=0.05))
client.post("rawclosed.parent", {"i": 0})
assert client.flush(5)
getattr(client, P["stop"])()  # its threads are gone: nothing of ours runs at the fork

def main():
    # libc's fork() through ctypes: none of Python's at-fork hooks run in the child.
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        posts = [client.post("rawclosed.child", {"i": i}) for i in range(3)]
        try:
            client.post("rawclosed.child", {"i": 3}, sync_append=True)
            raised = "nothing"
        except ClientClosedError:
            raised = "ClientClosedError"
        s = client.stats()
        stamp("CHILD", _json.dumps({"posts": posts, "raised": raised, "posted": s.posted,
                                     "dropped": dict(s.dropped),
                                     "started": client._reader.thread.ident is not None},
                                    separators=(",", ":")))
        _sys.stdout.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    stamp("PARENT", os.waitstatus_to_exitcode(status))

main()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="calls libc fork through ctypes")
@pytest.mark.parametrize("stop", ["shutdown", "close"])
def test_a_client_stopped_before_an_unhooked_fork_stays_stopped(fluent_server, stop):
    result = Child("raw-fork-closed", RAW_FORK_CLOSED,
                   {"port": fluent_server.port, "stop": stop}).finish(timeout=30)
    assert result.returncode == 0, result.describe()
    assert result.lines("PARENT")[0][1:] == ["0"], result.describe()
    child = json.loads(result.lines("CHILD")[0][1])
    assert child == {"posts": [False, False, False], "raised": "ClientClosedError",
                     "posted": 4, "dropped": {"closed": 4}, "started": False}, child
