"""shutdown_on_signal(): drain on SIGTERM, then let the signal end the process as it would.

The process-level promises are tested on real child processes that get a real SIGTERM;
the chaining rules, which need no process of their own, on this one with SIGUSR1.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from unittest import mock

import pytest

from fluentclient import BufferedClient, Buffering, shutdown_on_signal
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .subproc import Child

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs POSIX signals")

SLACK = 0.5

SERVING = """
import threading
from unittest import mock
from fluentclient import BufferedClient, Buffering, shutdown_on_signal

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=P["timeout"],
                        buffering=Buffering(flush_interval=60, limit=P["buffer_limit"],
                                            write_threshold=P["write_threshold"]))
shutdown_on_signal(client)

def fill_until_stuck():
    deadline = _time.monotonic() + 20
    last, still, i = -1, 0, 0
    while _time.monotonic() < deadline:
        for _ in range(500):
            client.post("sig.stuck", {"i": i, "pad": "x" * 200})
            i += 1
        s = client.stats()
        if s.dropped.get("buffer_full"):
            still = still + 1 if s.bytes_sent == last else 0
            last = s.bytes_sent
            if still >= 3:
                return
            _time.sleep(0.05)
    raise SystemExit("never stuck")

if P["stuck"]:
    fill_until_stuck()
else:
    for i in range(P["records"]):
        client.post("sig.healthy", {"i": i})
stamp("READY", client.stats().posted)
if P["in_shutdown"]:
    stamp("IN_SHUTDOWN")
    client.shutdown(30)  # the signal arrives while the main thread is in here
    stamp("SHUTDOWN_RETURNED")
else:
    # In short sleeps, as a server's loop waits: a signal that lands just as a long lock
    # wait begins (Event().wait(30)) is only handled when that wait ends, in CPython.
    for _ in range(600):
        _time.sleep(0.05)
stamp("NOT_KILLED")
"""


def run_serving(server: ForwardServer, *, stuck: bool = False, in_shutdown: bool = False,
                timeout: float = 0.5, records: int = 3000):
    child = Child("serving", SERVING, {
        "port": server.port, "timeout": timeout, "stuck": stuck, "in_shutdown": in_shutdown,
        "records": records, "buffer_limit": 2**20 if stuck else 8 * 2**20,
        # Healthy: nothing leaves before the signal, so only the handler can send it.
        "write_threshold": 8192 if stuck else 4 * 2**20,
    })
    posted = int(child.wait_for_line("READY", timeout=30)[1])
    if in_shutdown:
        child.wait_for_line("IN_SHUTDOWN")
    sent_at = child.signal(signal.SIGTERM)
    result = child.finish(timeout=30)
    return result, result.ended - sent_at, posted


def test_sigterm_with_a_healthy_server_delivers_everything_and_dies_of_the_signal(
        fluent_server):
    result, took, posted = run_serving(fluent_server, timeout=5.0, records=3000)
    assert result.returncode == -signal.SIGTERM, result.describe()
    assert result.stderr == "", result.describe()
    assert not result.lines("NOT_KILLED")
    # Held by a 60 s flush interval until the signal: only the handler sent them.
    assert fluent_server.wait_for_events(3000, timeout=5)
    assert sorted(e.record["i"] for e in fluent_server.events) == list(range(3000))
    assert took < 5.0  # it did not wait for a deadline it did not need


def test_sigterm_with_a_stuck_server_exits_within_the_deadline(fluent_server):
    fluent_server.stall()
    result, took, _ = run_serving(fluent_server, stuck=True, timeout=0.5)
    assert result.returncode == -signal.SIGTERM, result.describe()
    assert took <= 0.5 + SLACK, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    assert "not sent" in result.stderr  # what was left behind is said


def test_sigterm_while_the_main_thread_is_inside_shutdown_does_not_deadlock(fluent_server):
    # The main thread holds the client's shutdown lock (shutdown(30) against a stuck
    # server) when the handler runs on that same thread: it must give up at its own
    # deadline and let the signal kill the process.
    fluent_server.stall()
    result, took, _ = run_serving(fluent_server, stuck=True, in_shutdown=True, timeout=0.5)
    assert result.returncode == -signal.SIGTERM, result.describe()
    assert not result.lines("SHUTDOWN_RETURNED")
    assert took <= 0.5 + SLACK, result.describe()
    assert result.foreign_stderr() == [], result.describe()


WORKER = """
import signal
from fluentclient import BufferedClient, Buffering, shutdown_on_signal

alive = True
client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=5,
                        buffering=Buffering(flush_interval=60))

def handle_exit(signum, frame):
    # A gunicorn-style worker: stop taking requests, finish the current one, return.
    global alive
    alive = False
    stamp("APP_HANDLER", signum, client.post("sig.worker", {"from": "handler"}))

signal.signal(signal.SIGTERM, handle_exit)
shutdown_on_signal(client)  # after the app's: ours runs first, then chains to it
served = 0
while alive:
    client.post("sig.worker", {"request": served})
    served += 1
    if served == 200:
        stamp("READY")
    _time.sleep(0.002)
s = client.stats()
stamp("STOPPED", served, s.posted, s.sent, s.dropped.get("closed", 0), s.unsent)
"""


def test_a_worker_with_its_own_handler_drains_then_stops_gracefully(fluent_server):
    child = Child("worker", WORKER, {"port": fluent_server.port})
    child.wait_for_line("READY", timeout=30)
    child.signal(signal.SIGTERM)
    result = child.finish(timeout=30)
    assert result.returncode == 0, result.describe()
    assert result.stderr.count("dropping records (closed)") <= 1
    assert result.foreign_stderr() == [], result.describe()
    signum, accepted = result.lines("APP_HANDLER")[0][1:]
    # The app's handler ran, after ours: the client was already shut down by then.
    assert (signum, accepted) == (str(int(signal.SIGTERM)), "False")
    served, posted, sent, closed, unsent = map(int, result.lines("STOPPED")[0][1:])
    assert posted == served + 1  # the requests, and the handler's own post
    assert sent + closed == posted and unsent == 0
    assert fluent_server.wait_for_events(sent, timeout=5)
    assert sorted(e.record["request"] for e in fluent_server.events) == list(range(sent))


# -- the chaining rules, in this process ---------------------------------------------------

@pytest.fixture
def usr1():
    """SIGUSR1's handler is put back after the test, whatever it did."""
    before = signal.getsignal(signal.SIGUSR1)
    yield signal.SIGUSR1
    signal.signal(signal.SIGUSR1, before)


def client_for(server: ForwardServer) -> BufferedClient:
    return BufferedClient(server.host, server.port, at_exit=False, backoff=FAST_BACKOFF,
                          buffering=Buffering(flush_interval=60))


def test_a_previous_callable_is_called_after_the_shutdown_and_once_per_signal(
        fluent_server, usr1):
    calls = []
    client = client_for(fluent_server)
    signal.signal(usr1, lambda signum, frame: calls.append((signum, client.post("x", {}))))
    handle = shutdown_on_signal(client, signals=[usr1], timeout=2)
    client.post("sig.chain", {"n": 1})
    signal.raise_signal(usr1)
    assert calls == [(usr1, False)]  # chained, after the client was shut down
    assert handle.fired and len(handle.reports) == 1 and handle.reports[0].sent == 1
    assert fluent_server.wait_for_events(1, timeout=5)
    signal.raise_signal(usr1)  # a second signal goes straight on
    assert [c[0] for c in calls] == [usr1, usr1] and len(handle.reports) == 1


def test_an_ignored_signal_stays_ignored_after_the_shutdown(fluent_server, usr1):
    signal.signal(usr1, signal.SIG_IGN)
    client = client_for(fluent_server)
    client.post("sig.ignored", {"n": 1})
    handle = shutdown_on_signal(client, signals=[usr1])
    signal.raise_signal(usr1)  # would kill pytest if it were passed to the default action
    assert handle.fired and handle.reports[0].sent == 1
    assert signal.getsignal(usr1) == handle._handle


def test_sigint_ends_in_keyboard_interrupt_after_the_shutdown(fluent_server):
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        client = client_for(fluent_server)
        client.post("sig.int", {"n": 1})
        with shutdown_on_signal(client, signals=[signal.SIGINT]) as handle:
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert handle.reports[0].sent == 1
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_uninstall_restores_the_previous_handler_unless_replaced_since(fluent_server, usr1):
    def previous(signum, frame):
        pass

    signal.signal(usr1, previous)
    client = client_for(fluent_server)
    try:
        handle = shutdown_on_signal(client, signals=[usr1])
        assert signal.getsignal(usr1) == handle._handle
        handle.uninstall()
        assert signal.getsignal(usr1) is previous
        handle = shutdown_on_signal(client, signals=[usr1])

        def newer(signum, frame):
            pass

        signal.signal(usr1, newer)
        handle.uninstall()
        assert signal.getsignal(usr1) is newer
    finally:
        client.shutdown(1)


def test_it_must_be_called_from_the_main_thread_with_a_client(fluent_server):
    client = client_for(fluent_server)
    errors: list[BaseException] = []

    def install() -> None:
        try:
            shutdown_on_signal(client)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=install)
    thread.start()
    thread.join(5)
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    assert "main thread" in str(errors[0])
    with pytest.raises(ValueError, match="client"):
        shutdown_on_signal()
    with pytest.raises(ValueError, match="signal"):
        shutdown_on_signal(client, signals=[])
    client.shutdown(1)


# -- SIGTERM by default, without shutdown_on_signal() (issue 19, items 2 and 3) ------------

HELD = """
import os, signal, threading
if P.get("env"):
    os.environ["FLUENTCLIENT_NO_SIGNAL_HANDLER"] = "1"
from fluentclient import BufferedClient, Buffering

if P.get("app") == "before":
    def app_handler(signum, frame):
        stamp("APP_HANDLER")
        raise SystemExit(3)  # a graceful stop: the at-exit drain sends what is held
    signal.signal(signal.SIGTERM, app_handler)
# Held until the signal; with the server down, tried (and failed) at once instead.
client = BufferedClient("127.0.0.1", P["port"],
                        buffering=Buffering(flush_interval=0.05 if P.get("down") else 60,
                                            write_threshold=2**22),
                        shutdown_timeout=P["timeout"],
                        **({} if P.get("ours", True) else {"handle_sigterm": False}))
for i in range(P["records"]):
    client.post("sig.held", {"i": i})
if P.get("app") in ("after", "chained"):
    previous = signal.getsignal(signal.SIGTERM)
    def app_handler(signum, frame):
        stamp("APP_HANDLER")
        if P["app"] == "chained" and callable(previous):
            previous(signum, frame)  # ours, replaced: it drains and leaves the rest to us
            stamp("CHAINED", client.stats().sent)
        raise SystemExit(3)
    signal.signal(signal.SIGTERM, app_handler)
if P.get("down"):
    deadline = _time.monotonic() + 20
    while not client.stats().connect_failures and _time.monotonic() < deadline:
        _time.sleep(0.01)
handler = signal.getsignal(signal.SIGTERM)
stamp("READY", handler.__module__ if callable(handler) else str(handler))
for _ in range(1200):  # short sleeps: see SERVING
    _time.sleep(0.05)
stamp("NOT_KILLED")
"""


def held_child(server: ForwardServer, **params) -> Child:
    params = {"port": server.port, "records": 1000, "timeout": 5.0, **params}
    return Child("held", HELD, params)


def test_sigterm_by_default_sends_what_was_held_then_dies_of_the_signal(fluent_server):
    child = held_child(fluent_server)
    ready = child.wait_for_line("READY", timeout=30)
    child.signal(signal.SIGTERM)
    result = child.finish(timeout=30)
    assert result.returncode == -signal.SIGTERM, result.describe()
    assert result.stderr == "", result.describe()
    # Held by a 60 s flush interval: only the drain on SIGTERM sent them.
    assert fluent_server.wait_for_events(1000, timeout=10), (
        f"{len(fluent_server.events)} of 1000 records arrived")
    assert sorted(e.record["i"] for e in fluent_server.events) == list(range(1000))
    assert ready == [mock.ANY, "fluentclient._lifetime._sigterm"]


def test_sigterm_by_default_with_the_server_down_says_what_was_not_sent(fluent_server):
    fluent_server.refuse()
    child = held_child(fluent_server, timeout=0.5, down=True)
    child.wait_for_line("READY", timeout=30)
    sent = child.signal(signal.SIGTERM)
    result = child.finish(timeout=30)
    assert result.returncode == -signal.SIGTERM, result.describe()
    assert result.ended - sent <= 0.5 + 2.0, result.describe()  # the deadline, and exit
    assert result.foreign_stderr() == [], result.describe()
    said = [line for line in result.stderr.splitlines() if "not sent" in line]
    assert len(said) == 1 and "1,000 records" in said[0] and "SIGTERM" in said[0], (
        result.describe())


def test_a_second_sigterm_abandons_the_drain_and_still_says_what_was_not_sent(fluent_server):
    fluent_server.refuse()
    child = held_child(fluent_server, timeout=30, down=True, records=10)
    child.wait_for_line("READY", timeout=30)
    child.signal(signal.SIGTERM)
    child.wait_for_stderr("waiting up to 30 s")  # the drain has begun
    second = child.signal(signal.SIGTERM)
    result = child.finish(timeout=60)
    assert result.returncode == -signal.SIGTERM, result.describe()
    assert result.ended - second < 5, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    said = [line for line in result.stderr.splitlines() if "not sent" in line]
    assert len(said) == 1 and "10 records" in said[0] and "interrupted" in said[0], (
        result.describe())


@pytest.mark.parametrize("app", ["before", "after", "chained"])
def test_an_application_handler_wins_over_ours(fluent_server, app):
    child = held_child(fluent_server, app=app, records=100)
    words = child.wait_for_line("READY", timeout=30)
    assert words[1] == "__main__", words  # the app's handler is SIGTERM's
    child.signal(signal.SIGTERM)
    result = child.finish(timeout=30)
    # The app's handler ran and decided how the process ends; ours did not kill it.
    assert result.returncode == 3, result.describe()
    assert result.lines("APP_HANDLER"), result.describe()
    assert result.foreign_stderr() == [], result.describe()
    if app == "chained":
        # Called by the app as the handler it replaced: ours drained, then returned.
        assert result.lines("CHAINED")[0][1:] == ["100"], result.describe()
    # Either way the records went, through the exit drain or ours.
    assert fluent_server.wait_for_events(100, timeout=10), len(fluent_server.events)


@pytest.mark.parametrize("how", ["env", "keyword"])
def test_the_handler_can_be_turned_off(fluent_server, how):
    child = held_child(fluent_server, records=10,
                       **({"env": True} if how == "env" else {"ours": False}))
    words = child.wait_for_line("READY", timeout=30)
    assert words[1] in ("0", "Handlers.SIG_DFL"), words  # str() of SIG_DFL differs by version
    child.signal(signal.SIGTERM)
    result = child.finish(timeout=30)
    assert result.returncode == -signal.SIGTERM, result.describe()
    assert result.stderr == "", result.describe()


def _blocked(native_id: int) -> int:
    """The signal mask of one thread of this process, from /proc."""
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("SigBlk:")), 16)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc")
def test_the_client_threads_leave_the_process_signals_to_the_main_thread(fluent_server):
    # A SIGTERM the kernel hands to our reader or writer is not handled until the main
    # thread wakes on its own: one waiting on a lock (Event().wait(30)) waits it out.
    client = BufferedClient("127.0.0.1", fluent_server.port, at_exit=False)
    try:
        client.post("t", {"a": 1})
        assert client.flush(10)
        ours = [client._reader.thread.native_id, client._writer.thread.native_id]
        for native_id in ours:
            assert native_id is not None
            mask = _blocked(native_id)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
                assert mask & (1 << (sig - 1)), (native_id, sig, hex(mask))
            # A fault in our own code must still kill the process, not hang it.
            assert not mask & (1 << (signal.SIGSEGV - 1)), hex(mask)
        main = threading.main_thread().native_id
        assert main is not None
        assert not _blocked(main) & (1 << (signal.SIGTERM - 1))
    finally:
        client.close()
