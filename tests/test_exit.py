"""A process using BufferedClient exits on time, whatever the server does, and quietly.

Every scenario is a real child process that posts records and then ends on its own: main
returns (the at-exit shutdown drains), or ``sys.exit`` from a program with many threads
still posting. The child stamps the monotonic time right before it returns; the parent
notes when the process is gone; the difference must stay within ``shutdown_timeout`` plus
half a second, with the server healthy, refusing, stuck with full buffers, or black-holed
(connects never answered). The children run one at a time: each is held to a bound of
half a second, which children competing for the same cores could not promise.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from fluentclient.server import ForwardServer

from .subproc import Child, Finished

SLACK = 0.5
# After the last at-exit hook the interpreter still tears itself down (modules, objects,
# stdio), at whatever speed the machine has to spare: the process-end bound allows for
# that, while the client's own part is held to SLACK on the child's own stamps.
TEARDOWN = 2.0
RECORDS = 2000

EXIT_CHILD = """
import threading
from concurrent.futures import ThreadPoolExecutor
from fluentclient import BufferedClient, Buffering, Timeouts

def fill_until_stuck(client, tag):
    # Post until the buffer overflows and the writer's byte count stops moving: the
    # server's receive buffer and our send buffer are full, nothing more goes out.
    deadline = _time.monotonic() + 20
    last, still = -1, 0
    i = 0
    while _time.monotonic() < deadline:
        for _ in range(500):
            client.post(tag, {"i": i, "pad": "x" * 200})
            i += 1
        s = client.stats()
        if s.dropped.get("buffer_full"):
            still = still + 1 if s.bytes_sent == last else 0
            last = s.bytes_sent
            if still >= 3:
                stamp("STUCK", s.bytes_sent)
                return
            _time.sleep(0.05)

def poster(client, stop):
    n = 0
    while not stop.is_set():
        client.post("exit.thread", {"n": n})
        n += 1
        if n % 20 == 0:
            _time.sleep(0.001)

def main():
    client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=P["timeout"],
                            timeouts=Timeouts(connect=P["io_timeout"], write=P["io_timeout"]),
                            buffering=Buffering(limit=P["buffer_limit"]))
    if P["threads"]:
        stop = threading.Event()  # never set: these threads post until the end
        for _ in range(8):
            threading.Thread(target=poster, args=(client, stop), daemon=True).start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: client.post(P["tag"], {"i": i, "from": "pool"}),
                          range(100)))
        pool = ThreadPoolExecutor(4)  # left running: the interpreter joins its workers
        pool.submit(lambda: None)
    if P["fill"]:
        fill_until_stuck(client, P["tag"])
    else:
        for i in range(P["records"]):
            client.post(P["tag"], {"i": i})
    stamp("EXITING")
    if P["threads"]:
        _sys.exit(0)

main()
"""


@dataclass(frozen=True)
class Case:
    server: str  # healthy, down, stuck, blackholed
    how: str  # "return" (main returns) or "sys.exit" (with threads still posting)
    timeout: float  # shutdown_timeout

    @property
    def name(self) -> str:
        return f"{self.server}-{self.how}-{self.timeout:g}s"

    @property
    def tag(self) -> str:
        return f"exit.{self.server}.{self.how.replace('.', '_')}.{int(self.timeout * 10)}"


# Small: below connect_timeout and write_timeout, so the deadline must cut a blocked
# connect or write. Large: above them, so the writer times out, reconnects and retries
# inside the deadline, which must still hold.
SMALL, LARGE = 0.5, 2.5
IO_TIMEOUT = {SMALL: 5.0, LARGE: 1.0}
CASES = [Case(server, how, timeout)
         for server in ("healthy", "down", "stuck", "blackholed")
         for how in ("return", "sys.exit")
         for timeout in (SMALL, LARGE)]


@pytest.fixture(scope="module")
def exit_matrix() -> Iterator[tuple[dict[str, ForwardServer], dict[str, Finished]]]:
    servers = {name: ForwardServer().start() for name in ("healthy", "down", "stuck",
                                                          "blackholed")}
    try:
        servers["down"].refuse()
        servers["stuck"].stall()
        servers["blackholed"].blackhole()
        results = {}
        for case in CASES:
            params = {
                "port": servers[case.server].port,
                "timeout": case.timeout,
                "io_timeout": IO_TIMEOUT[case.timeout],
                "buffer_limit": 2**20 if case.server == "stuck" else 8 * 2**20,
                "threads": case.how == "sys.exit",
                "fill": case.server == "stuck",
                "records": RECORDS,
                "tag": case.tag,
            }
            results[case.name] = Child(case.name, EXIT_CHILD, params).finish()
        yield servers, results
    finally:
        for server in servers.values():
            server.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the black hole needs Linux")
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_process_exits_within_the_shutdown_timeout(exit_matrix, case):
    servers, results = exit_matrix
    result = results[case.name]
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    at_exit_time = result.seconds_between("EXITING", "AT_EXIT_DONE")
    exit_time = result.seconds_since("EXITING")
    print(f"{case.name}: at-exit work took {at_exit_time:.3f} s, exit {exit_time:.3f} s")
    assert at_exit_time <= case.timeout + SLACK, result.describe()
    assert exit_time <= case.timeout + SLACK + TEARDOWN, result.describe()
    if case.server == "stuck":
        assert result.lines("STUCK"), result.describe()  # it really was stuck
    if case.server == "healthy":
        # Everything was delivered, and the exit did not wait for the deadline to do it.
        assert at_exit_time <= min(case.timeout, 1.0) + SLACK
        expected = 100 if case.how == "sys.exit" else 0
        server = servers["healthy"]
        assert server.wait_for(
            lambda: sum(e.tag == case.tag for e in server.events) == RECORDS + expected,
            timeout=5,
        ), result.describe()
        if case.how == "return":
            # Nothing was left unsent. (On a loaded machine the deadline may come before
            # the proof that the server read the last frames: "possibly lost" is honest.)
            assert not re.search(r"\b[1-9][\d,]* records? \([^)]*\) not sent",
                                 result.stderr), result.describe()
    else:
        # What could not be sent is said once, not hidden.
        said = [line for line in result.stderr.splitlines() if "not sent" in line]
        assert len(said) == 1 and "records" in said[0], result.describe()


# -- clients first used while the interpreter is finishing ---------------------------------

LATE_ATEXIT_CHILD = """
import atexit, threading
from fluentclient import BufferedClient

def late():
    # Runs after the client's own at-exit hook (atexit is last in, first out).
    ok = client.post("late.atexit", {"n": 1})
    names = [t.name for t in threading.enumerate() if t.name.startswith("fluentclient")]
    stamp("LATE", ok, len(names))

atexit.register(late)
client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=0.5)
stamp("EXITING")
"""

CREATED_IN_ATEXIT_CHILD = """
import atexit, threading
from fluentclient import BufferedClient

def late():
    client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=0.5)
    ok = client.post("late.created", {"n": 1})
    names = [t.name for t in threading.enumerate() if t.name.startswith("fluentclient")]
    stamp("LATE", ok, len(names))

atexit.register(late)
stamp("EXITING")
"""

DEL_AT_EXIT_CHILD = """
import threading
from fluentclient import BufferedClient

class LogsWhenCollected:
    def __del__(self):
        # Module teardown: the interpreter is finalizing.
        client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=0.5)
        ok = client.post("late.del", {"n": 1})
        used = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=0.5)
        ok2 = used.post("late.del", {"n": 2})
        names = [t.name for t in threading.enumerate() if t.name.startswith("fluentclient")]
        stamp("LATE", ok, ok2, len(names), _sys.is_finalizing())

keeper = LogsWhenCollected()
stamp("EXITING")
"""

WORKER_AFTER_MAIN_CHILD = """
import threading
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=2)

def worker():
    # The interpreter waits for this thread before the at-exit hooks: a client first
    # used now must still start, and the at-exit shutdown must still drain it.
    while threading.main_thread().is_alive():
        _time.sleep(0.001)
    stamp("LATE", client.post("late.worker", {"n": 1}))

threading.Thread(target=worker).start()
stamp("EXITING")
"""

USED_THEN_DEL_CHILD = """
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=0.5)
client.post("late.used", {"n": 0})

class LogsWhenCollected:
    def __del__(self):
        stamp("LATE", client.post("late.used", {"n": 1}))

keeper = LogsWhenCollected()
stamp("EXITING")
"""

@pytest.fixture(scope="module")
def late_results() -> Iterator[tuple[ForwardServer, dict[str, Finished]]]:
    with ForwardServer() as server:
        params = {"port": server.port}
        # One at a time, as above: each is held to a bound of half a second.
        yield server, {name: Child(name, code, params).finish() for name, code in (
            ("late_atexit", LATE_ATEXIT_CHILD),
            ("created_in_atexit", CREATED_IN_ATEXIT_CHILD),
            ("del_at_exit", DEL_AT_EXIT_CHILD),
            ("used_then_del", USED_THEN_DEL_CHILD),
            ("worker_after_main", WORKER_AFTER_MAIN_CHILD),
        )}


def quiet_and_on_time(result: Finished) -> None:
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    assert result.seconds_between("EXITING", "AT_EXIT_DONE") <= 0.5 + SLACK, result.describe()
    assert result.seconds_since("EXITING") <= 0.5 + SLACK + TEARDOWN, result.describe()


@pytest.mark.parametrize("name", [
    "late_atexit",
    "created_in_atexit",
])
def test_a_client_first_used_in_a_late_atexit_handler_starts_no_threads(late_results, name):
    server, results = late_results
    result = results[name]
    quiet_and_on_time(result)
    ok, threads = result.lines("LATE")[0][1:]
    # Refused and counted (dropped as "closed"), rather than handed to threads that the
    # interpreter kills a moment later.
    assert (ok, threads) == ("False", "0"), result.describe()
    assert "dropping records (closed)" in result.stderr


def test_a_client_made_and_used_in_del_during_finalization_refuses_quietly(late_results):
    server, results = late_results
    result = results["del_at_exit"]
    quiet_and_on_time(result)
    assert result.lines("LATE")[0][1:] == ["False", "False", "0", "True"], result.describe()
    assert "dropping records (closed)" in result.stderr


def test_posting_in_del_after_the_at_exit_shutdown_is_dropped_quietly(late_results):
    server, results = late_results
    result = results["used_then_del"]
    quiet_and_on_time(result)
    assert result.lines("LATE")[0][1:] == ["False"], result.describe()
    assert server.wait_for(lambda: any(e.tag == "late.used" for e in server.events), 5)
    assert [e.record for e in server.events if e.tag == "late.used"] == [{"n": 0}]


@pytest.mark.skipif((3, 12, 0) <= sys.version_info[:3] < (3, 12, 2),
                    reason="Python 3.12.0 and 3.12.1 refuse new threads once the main thread "
                           "returned (fixed in 3.12.2): the record is dropped, and said so")
def test_a_worker_thread_may_first_use_a_client_after_main_returned(late_results):
    server, results = late_results
    result = results["worker_after_main"]
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    assert result.lines("LATE")[0][1:] == ["True"], result.describe()
    assert server.wait_for(lambda: any(e.tag == "late.worker" for e in server.events), 5)


# -- every client of the process: one deadline, one summary (issue 19, item 1) -----------

THREE_CLIENTS_CHILD = """
import logging
from loguru import logger
from fluentclient import BufferedClient
from fluentclient.handler import FluentHandler
from fluentclient.loguru import FluentSink

port, timeout = P["port"], P["timeout"]
client = BufferedClient("127.0.0.1", port, shutdown_timeout=timeout)
handler = FluentHandler("exit.handler", port=port, close_timeout=timeout)
logging.getLogger().addHandler(handler)
sink = FluentSink("exit.sink", port=port, close_timeout=timeout)
logger.remove()
logger.add(sink)
client.post("exit.client", {"n": 1})
logging.getLogger("app").warning("order 7 placed")
logger.info("charged")
# Every one has found the server down before the process ends.
everyone = (client, handler.client, sink.client)
deadline = _time.monotonic() + 20
while not all(c.stats().connect_failures for c in everyone) and _time.monotonic() < deadline:
    _time.sleep(0.01)
stamp("EXITING")
"""


def test_every_client_of_a_process_drains_within_one_deadline_and_one_summary():
    pytest.importorskip("loguru")
    timeout = 1.0
    with ForwardServer() as server:
        server.refuse()
        result = Child("three", THREE_CLIENTS_CHILD,
                       {"port": server.port, "timeout": timeout}).finish()
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    # One after another they took three deadlines; at once, the longest (and the moment
    # aborted threads get to settle their counts, on a machine that may be loaded).
    took = result.seconds_between("EXITING", "AT_EXIT_DONE")
    assert took <= timeout + 2 * SLACK, f"the exit took {took:.2f} s\n{result.describe()}"
    said = [line for line in result.stderr.splitlines() if "not sent" in line]
    # One line per client, each naming it and what it left.
    assert len(said) == 3, result.describe()
    for who in ("BufferedClient to", "FluentHandler's client to", "FluentSink's client to"):
        assert sum(who in line and "1 record " in line for line in said) == 1, (
            who, result.describe())
    assert result.stderr.count("waiting up to") <= 1, result.describe()


# -- a second interrupt during the exit drain (item 3) -------------------------------------

CTRL_C_CHILD = """
import threading
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=30)
for i in range(100):
    client.post("exit.ctrl_c", {"i": i})
deadline = _time.monotonic() + 20
while not client.stats().connect_failures and _time.monotonic() < deadline:
    _time.sleep(0.01)
stamp("READY")
# The first Ctrl-C ends this; short sleeps, since CPython may handle a signal that lands
# just as a long lock wait begins only when the wait ends.
for _ in range(1200):
    _time.sleep(0.05)
"""


def test_a_second_ctrl_c_abandons_the_exit_drain_and_still_says_what_was_not_sent():
    with ForwardServer() as server:
        server.refuse()
        child = Child("ctrl_c", CTRL_C_CHILD, {"port": server.port})
        child.wait_for_line("READY", timeout=30)
        child.signal(signal.SIGINT)  # main ends in KeyboardInterrupt: the exit drain
        child.wait_for_stderr("waiting up to 30 s")  # the drain has begun
        second = child.signal(signal.SIGINT)
        result = child.finish(timeout=60)
    # Ended as an uncaught KeyboardInterrupt ends Python, and promptly, not after 30 s.
    assert result.returncode == -signal.SIGINT, result.describe()
    assert result.ended - second < 5, result.describe()
    assert "Exception ignored" not in result.stderr, result.describe()
    # Only the program's own traceback (its KeyboardInterrupt), none from the drain.
    assert result.stderr.count("Traceback") == 1, result.describe()
    said = [line for line in result.stderr.splitlines() if "not sent" in line]
    assert len(said) == 1 and "100 records" in said[0] and "interrupted" in said[0], (
        result.describe())


# -- the library's own failures reach a person (item 13) -----------------------------------

DICTCONFIG_CHILD = """
import logging, logging.config
logging.config.dictConfig({
    "version": 1,
    "handlers": {"fluent": {"class": "fluentclient.handler.FluentHandler",
                            "host": "fluentd.invalid", "tag": "app"}},
    "root": {"handlers": ["fluent"], "level": "INFO"},
})
logging.getLogger("orders").info("order 7 placed")
stamp("EXITING")
"""


def _no_such_name(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 24224)
    except socket.gaierror as exc:
        return exc.errno == socket.EAI_NONAME
    return False


@pytest.mark.skipif((3, 12, 0) <= sys.version_info[:3] < (3, 12, 2),
                    reason="Python 3.12.0 and 3.12.1 refuse new threads at exit (fixed in "
                           "3.12.2), so clients drain one after the other on the exiting "
                           "thread, and a host found not to resolve once that drain began "
                           "is waited for until its deadline")
def test_a_dictconfig_that_disables_our_logger_still_says_the_host_and_the_loss():
    if not _no_such_name("fluentd.invalid"):
        pytest.skip("this machine's resolver does not answer that fluentd.invalid has no "
                    "address")
    result = Child("dictconfig", DICTCONFIG_CHILD).finish()
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    lines = result.stderr.splitlines()
    # The cause, in words, and what it cost: each said once.
    said = [line for line in lines if "not sent" in line]
    assert len(said) == 1 and "1 record " in said[0], result.describe()
    assert "fluentd.invalid" in said[0] and "does not resolve" in said[0], result.describe()
    assert sum("Name or service not known" in line or "not known" in line
               for line in lines if "not sent" not in line) <= 1, result.describe()
    # A host that does not exist is not waited for (close_timeout is 5 s).
    assert result.seconds_between("EXITING", "AT_EXIT_DONE") <= 2 * SLACK, result.describe()


LOGGING_SETUPS = {
    # logging.config disabled the logger (the FluentHandler it built made it).
    "disabled": """
import logging.config
from fluentclient.handler import FluentHandler
logging.config.dictConfig({"version": 1, "root": {"level": "INFO"}})
""",
    # No handler anywhere, and the program removed Python's last resort.
    "no-last-resort": """
import logging
logging.lastResort = None
""",
    # Logging works: each line must come once, not once more from us.
    "a-handler": """
import logging, sys
logging.basicConfig(stream=sys.stderr, format="%(message)s")
""",
}

FAILURES_CHILD = """
from fluentclient import BufferedClient

client = BufferedClient("127.0.0.1", P["port"], shutdown_timeout=0.3)
client.post("exit.quiet", {"n": 1})
deadline = _time.monotonic() + 20
while not client.stats().connect_failures and _time.monotonic() < deadline:
    _time.sleep(0.01)
stamp("EXITING")
"""


@pytest.mark.parametrize("setup", list(LOGGING_SETUPS))
def test_connect_failures_and_losses_reach_stderr_once_however_logging_is_set_up(setup):
    with ForwardServer() as server:
        server.refuse()
        result = Child(setup, LOGGING_SETUPS[setup] + FAILURES_CHILD,
                       {"port": server.port}).finish()
    assert result.returncode == 0, result.describe()
    lines = result.stderr.splitlines()
    assert sum("cannot connect to" in line and "retrying" in line for line in lines) == 1, (
        result.describe())
    assert sum("not sent" in line for line in lines) == 1, result.describe()


# -- a client dropped in the expression of its first post --------------------------------

DROPPED_AT_ONCE_CHILD = """
from fluentclient import BufferedClient
# The client object is collected before post() runs (the compiled post holds only the
# client's core): its record must still be tried, and what was not sent said.
BufferedClient("127.0.0.1", P["port"], shutdown_timeout=0.5).post("gone.at.once", {"n": 1})
stamp("EXITING")
"""


@pytest.mark.parametrize("server_up", [True, False], ids=["server-up", "server-down"])
def test_a_client_dropped_as_it_first_posts_still_sends_or_says_so(server_up, tmp_path):
    server = ForwardServer().start()
    try:
        port = server.port
        if not server_up:
            server.stop()
        result = Child("dropped", DROPPED_AT_ONCE_CHILD, {"port": port}).finish()
        assert result.returncode == 0, result.describe()
        if server_up:
            assert server.wait_for(
                lambda: [e.record for e in server.events] == [{"n": 1}], 5), result.describe()
        else:
            said = [line for line in result.stderr.splitlines() if "not sent" in line]
            assert len(said) == 1 and "1 record " in said[0], result.describe()
    finally:
        server.stop()
