"""A fork in a process whose client has threads: no thread of ours runs at the fork.

Python 3.12+ warns at every os.fork() in a process running more than one thread. A client
starts no thread until it is used, and parks the ones it runs while a fork happens (see
fluentclient/_lifetime/_parking.py). Each forking program runs in a child process (the test process
has threads of its own), shows that warning on stderr at every fork, and also counts the threads
that exist at the very moment of the fork, through an at-fork hook registered before
fluentclient is imported: such hooks run in reverse order, so it runs after the client's
own. That count makes the tests mean the same on 3.9 to 3.11, which never warn.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pytest

from fluentclient import BufferedClient
from fluentclient.server import ForwardServer

from .subproc import Child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

# Counts the threads at each fork (the OS's count where /proc tells it, as Python's warning
# does on Linux), and shows Python 3.12+'s warning about them on stderr at every fork,
# whichever module forked. (An "error" filter would not do: os.fork() clears the error.)
COUNTING = """
import os, threading, warnings

at_fork = []

def count_threads():
    try:
        at_fork.append(len(os.listdir("/proc/self/task")))
    except OSError:
        at_fork.append(threading.active_count())

os.register_at_fork(before=count_threads)
warnings.filterwarnings("always", r"This process .* is multi-threaded", DeprecationWarning)
"""


def ids(server: ForwardServer, tag: str, key: str) -> Counter[int]:
    return Counter(e.record[key] for e in server.events if e.tag == tag)


NEVER_USED = COUNTING + """
import logging
from fluentclient import BufferedClient
from fluentclient.handler import FluentHandler

# Made at import time, as in an application gunicorn --preload loads in its master.
client = BufferedClient("127.0.0.1", P["port"])
handler = FluentHandler("app", host="127.0.0.1", port=P["port"])
logging.getLogger("app").addHandler(handler)
before = threading.active_count()

pid = os.fork()
if pid == 0:
    client.post("never.child", {"i": 0})
    logging.getLogger("app").warning("from the child")
    client.shutdown(10)
    handler.close()
    os._exit(0)
_, status = os.waitpid(pid, 0)
stamp("PARENT", os.waitstatus_to_exitcode(status), before, _json.dumps(at_fork),
      threading.active_count())
"""


def test_a_client_made_but_never_used_forks_with_no_thread_of_its_own(fluent_server):
    result = Child("never-used", NEVER_USED, {"port": fluent_server.port}).finish(timeout=30)
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    _, child_exit, before, at_fork, after = result.lines("PARENT")[0]
    assert child_exit == "0", result.describe()
    # Nothing but the main thread, before the fork, at it and after it: made but unused,
    # the client started nothing (so the fork had nothing to park).
    assert (before, json.loads(at_fork), after) == ("1", [1], "1"), result.describe()
    assert fluent_server.wait_for(lambda: len(fluent_server.events) >= 2, timeout=10)
    assert sorted(e.tag for e in fluent_server.events) == ["app", "never.child"]


RUNNING = COUNTING + """
import multiprocessing as mp
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=10)

def task(k):
    client.post("running.pool", {"k": k})
    assert client.flush(10)
    return os.getpid()

def main():
    for i in range(P["n"]):
        client.post("running.parent", {"i": i})
    assert client.flush(10)  # connected: both threads run, and hold nothing
    running = threading.active_count()
    after = []
    for k in range(P["forks"]):
        pid = os.fork()
        if pid == 0:
            client.post("running.child", {"k": k})
            client.shutdown(10)
            os._exit(0)
        after.append(threading.active_count())  # dormant: nothing to send
        client.post("running.parent", {"i": P["n"] + k})  # which brings them back
        after.append(threading.active_count())
        assert client.flush(10)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    with mp.get_context("fork").Pool(2) as pool:
        pids = pool.map(task, range(P["tasks"]), chunksize=1)
    assert client.flush(10)
    s = client.stats()
    report = client.shutdown(10)  # sent: proven read by the server, which flush() is not
    stamp("PARENT", _json.dumps({
        "at_fork": at_fork, "running": running, "after": after,
        "posted": s.posted, "sent": report.sent, "failures": s.connection_failures,
        "workers": len(set(pids)),
    }, separators=(",", ":")))

main()
"""


def test_a_fork_while_the_threads_run_parks_them_until_the_next_post(fluent_server):
    n, forks, tasks = 200, 3, 6
    result = Child("running", RUNNING, {"port": fluent_server.port, "n": n,
                                        "forks": forks, "tasks": tasks}).finish(timeout=60)
    assert result.returncode == 0, result.describe()
    # No warning at any fork, whoever forked (os.fork here, multiprocessing's pool).
    assert result.foreign_stderr() == [], result.describe()
    parent = json.loads(result.lines("PARENT")[0][1])
    # The main thread, the reader and the writer ran before; only the main thread at each
    # fork, ours and the pool's two (a pool starts its own threads after its workers).
    assert parent["running"] == 3, result.describe()
    assert parent["at_fork"] == [1] * (forks + 2), result.describe()
    # Holding nothing, the client stays without threads after the fork, until a post.
    assert parent["after"] == [1, 3] * forks, result.describe()
    # On the same connection, every record sent.
    assert parent["posted"] == parent["sent"] == n + forks, result.describe()
    assert parent["failures"] == 0, result.describe()
    assert fluent_server.wait_for(
        lambda: len(fluent_server.events) >= n + 2 * forks + tasks, timeout=10)
    assert ids(fluent_server, "running.parent", "i") == Counter(range(n + forks))
    assert ids(fluent_server, "running.child", "k") == Counter(range(forks))
    assert ids(fluent_server, "running.pool", "k") == Counter(range(tasks))


HELD = COUNTING + """
from fluentclient import BufferedClient, Buffering

# Records wait in the buffer for a minute: the client holds work at the fork.
client = BufferedClient("127.0.0.1", P["port"], buffering=Buffering(flush_interval=60))
for i in range(P["n"]):
    client.post("held.parent", {"i": i})
warnings.resetwarnings()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    after = threading.active_count()
warned = any("multi-threaded" in str(w.message) for w in caught)
os.waitpid(pid, 0)
assert client.flush(10)
stamp("PARENT", _json.dumps(at_fork), after, warned, client.shutdown(10).sent)
"""


def test_a_fork_while_records_are_held_brings_the_threads_back_at_once(fluent_server):
    n = 100
    result = Child("held", HELD, {"port": fluent_server.port, "n": n}).finish(timeout=30)
    assert result.returncode == 0, result.describe()
    _, at_fork, after, warned, sent = result.lines("PARENT")[0]
    # Forked without our threads; back at once in the parent, which has records to send.
    assert (json.loads(at_fork), after, sent) == ([1], "3", str(n)), result.describe()
    # Python 3.13+ counts threads after the parent's at-fork hooks, so it counts them:
    # the one case where it warns though the child was forked without them.
    assert warned == str(sys.version_info >= (3, 13)), result.describe()


STUCK = """
import os, threading, warnings
from fluentclient import BufferedClient, Timeouts
from fluentclient._lifetime import _parking

# Were the stuck writer waited for, each fork would take this long.
_parking.PARK_WAIT = 30.0

client = BufferedClient("127.0.0.1", P["port"], timeouts=Timeouts(write=60), shutdown_timeout=20)

def fork_once():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = _time.monotonic()
        pid = os.fork()
        if pid == 0:
            os._exit(0)  # the server reads nothing yet: the child's part is the fork
        took = _time.monotonic() - started
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return took, any("multi-threaded" in str(w.message) for w in caught)

def main():
    for i in range(P["n"]):
        client.post("stuck.parent", {"i": i, "pad": "p" * 250})
    # The server reads nothing: the writer sits in a send of more than the kernels hold.
    deadline = _time.monotonic() + 20
    while client._writer.in_socket_call_since is None or (
            _time.monotonic() - client._writer.in_socket_call_since < 0.5):
        assert _time.monotonic() < deadline, "the writer never got stuck in a send"
        _time.sleep(0.01)
    first, warned = fork_once()
    second, _ = fork_once()
    stamp("FORKED", first, second, warned)
    _sys.stdin.readline()  # the server reads again
    assert client.flush(30)
    report = client.shutdown(20)
    stamp("PARENT", report.sent, report.possibly_lost, report.unsent_records)

main()
"""


def test_a_fork_does_not_wait_out_a_writer_stuck_in_a_send(fluent_server):
    n = 20_000  # about 6 MB: more than the kernel buffers hold
    fluent_server.stall()
    forker = Child("stuck", STUCK, {"port": fluent_server.port, "n": n}, stdin=True)
    _, first, second, warned = forker.wait_for_line("FORKED", timeout=60)
    fluent_server.stall(False)
    forker.send("resumed")
    result = forker.finish(timeout=60)
    assert result.returncode == 0, result.describe()
    # A writer stuck in a send is not waited for (the park deadline is 30 s here, its
    # write_timeout a minute): the fork only waits for the reader, which parks at once.
    # The bound is generous for a loaded machine.
    assert float(first) < 5.0 and float(second) < 5.0, result.describe()
    # It ran through the fork, and Python 3.12+ says so: the warning is honest.
    assert warned == str(sys.version_info >= (3, 12)), result.describe()
    # Nothing was lost to the park: the reader resumed, the writer carried on.
    assert result.lines("PARENT")[0][1:] == [str(n), "0", "0"], result.describe()
    assert fluent_server.wait_for(lambda: len(fluent_server.events) >= n, timeout=20)
    assert ids(fluent_server, "stuck.parent", "i") == Counter(range(n))


def test_a_shutdown_while_parked_for_a_fork_restarts_the_threads_and_drains(fluent_server):
    # A shutdown on another thread (a signal's) while the forking thread waits for the
    # threads to park: they are restarted first, and drain everything.
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False)
    for i in range(100):
        client.post("parked.before", {"i": i})
    assert client.flush(10)
    import time

    waits = client._park(time.monotonic() + 10)
    assert len(waits) == 2
    for thread in waits:
        thread.join(10)
        assert not thread.is_alive()
    for i in range(50):
        assert client.post("parked.during", {"i": i})
    report = client.shutdown(10)
    assert (report.sent, report.unsent_records, report.timed_out) == (150, 0, False), report
    assert fluent_server.wait_for_events(150, timeout=10)
    assert ids(fluent_server, "parked.during", "i") == Counter(range(50))
