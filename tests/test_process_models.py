"""Every process model delivers: preforking web servers, Celery's pool, multiprocessing.

Each test runs the real thing (uWSGI, gunicorn, a Celery worker, a multiprocessing pool)
against a real Fluent Bit, with the client made at import time as applications do, and
checks that every record that was posted arrives exactly once, from every process.
Where a test uses a long ``flush_interval`` it is so that only the drain at a process's
end can deliver: a process model that skips it loses records and the test fails.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from fluentclient import BufferedClient

from .real_servers import FluentBit, fluent_bit_available, free_port, require, wait_until

ROOT = Path(__file__).resolve().parent.parent

# Records each import of the web application posts (see WSGI_APP).
BOOT = 2000
# Generous: a loaded two-core machine starts a Python web server in well under this.
START = 60.0
# A process's drain at exit is bounded by its shutdown_timeout (5 s by default).
ARRIVE = 30.0


@pytest.fixture(scope="module")
def fluent_bit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluentBit]:
    """One Fluent Bit for the module; each test uses its own tag."""
    require("fluent-bit", fluent_bit_available())
    server = FluentBit(tmp_path_factory.mktemp("fluent-bit"))
    server.start()
    yield server
    server.kill()


def child_env(workdir: Path, **extra: Any) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(workdir), env.get("PYTHONPATH")) if p
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def need(command: str) -> str:
    # The one installed with the Python that runs the tests (a venv's, when the suite runs
    # on another version) before any other on PATH, which may belong to another version.
    path = shutil.which(command, path=os.path.dirname(sys.executable)) or shutil.which(command)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{command} is not installed (the test extra has it)")
        pytest.skip(f"{command} is not installed")
    return path


def exactly_once(server: FluentBit, tag: str, key: str, expected: Sequence[Any],
                 timeout: float = ARRIVE) -> list[dict[str, Any]]:
    """Wait for every expected record of ``tag``, then check that none came twice.

    Called once every process that posted has ended. Fluent Bit stores what it took in
    on a timer: waiting for a marker posted after that gives a late duplicate the same
    time to be stored, rather than sleeping for it.
    """
    server.wait_for(len(expected), tag, timeout)
    marker = f"{tag}.marker"
    with BufferedClient("127.0.0.1", server.port, at_exit=False) as client:
        client.post(marker, {"after": tag})
    server.wait_for(1, marker, timeout)
    records = server.records(tag)
    got = Counter(r[key] for r in records)
    missing = sorted(set(expected) - set(got))
    twice = sorted(k for k, n in got.items() if n > 1)
    assert not missing and not twice and len(records) == len(expected), (
        f"{tag}: {len(records)} records for {len(expected)} expected; "
        f"missing {missing[:20]} ({len(missing)}), twice {twice[:20]} ({len(twice)})"
    )
    return records


# -- web servers -------------------------------------------------------------------------

WSGI_APP = """\
import logging
import os
import signal
import time

from fluentclient import BufferedClient, Buffering

logging.basicConfig(filename=os.environ["APP_LOG"], level=logging.INFO,
                    format="%(process)d %(levelname)s %(name)s %(message)s")

TAG = os.environ["APP_TAG"]
BOOT = int(os.environ["APP_BOOT"])
client = BufferedClient("127.0.0.1", int(os.environ["FLUENT_PORT"]),
                        buffering=Buffering(flush_interval=float(os.environ["APP_FLUSH"])))
# Used at import: without lazy loading this runs in the master, right before the fork.
# Enough records that a thread of the client would still be busy with them then.
# A reloading uWSGI master imports again under the same pid: each import has its own id.
IMPORT = os.urandom(8).hex()
for i in range(BOOT):
    client.post(TAG + ".boot", {"i": i, "import": IMPORT, "pad": "x" * 1000})


def application(environ, start_response):
    query = environ.get("QUERY_STRING") or ""
    if query:
        # Long enough for concurrent requests to spread over every worker.
        time.sleep(0.02)
        # Whose SIGTERM handler the worker has while it serves: the server's own.
        handler = signal.getsignal(signal.SIGTERM)
        client.post(TAG, {"n": int(query), "pid": os.getpid(),
                          "sigterm": getattr(handler, "__module__", None) or str(handler)})
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(os.getpid()).encode()]
"""


def assert_boots(server: FluentBit, tag: str, imports: int) -> None:
    """Each import of the application posted BOOT records: all arrived, each once."""
    server.wait_for(imports * BOOT, f"{tag}.boot", ARRIVE)
    boots = Counter((r["import"], r["i"]) for r in server.records(f"{tag}.boot"))
    assert len({imp for imp, _ in boots}) == imports
    assert len(boots) == imports * BOOT and set(boots.values()) == {1}


def get(port: int, query: str = "") -> int:
    """One request; the pid of the worker that served it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", f"/?{query}" if query else "/")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        return int(body)
    finally:
        conn.close()


def serving(port: int, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"the server exited with {proc.returncode}")
    try:
        get(port)
        return True
    except (OSError, http.client.HTTPException, ValueError):
        return False


def drive(port: int, ns: range) -> dict[int, int]:
    """Requests from four threads at once; which worker served each one."""
    with ThreadPoolExecutor(4) as pool:
        pids = list(pool.map(lambda n: get(port, str(n)), ns))
    return dict(zip(ns, pids))


def drive_both(port: int, start: int = 0, step: int = 60) -> dict[int, int]:
    """drive() in rounds of ``step`` requests until both workers have served one (20
    rounds at most). Which worker accepts a connection is the kernel's choice: on a busy
    machine one worker, scheduled first, can take a whole round."""
    served: dict[int, int] = {}
    for first in range(start, start + 20 * step, step):
        served.update(drive(port, range(first, first + step)))
        if len(set(served.values())) >= 2:
            break
    return served


class WebServer:
    """A preforking server running WSGI_APP on a free port."""

    def __init__(self, workdir: Path, fluent_bit: FluentBit, tag: str, flush: float) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "wsgiapp.py").write_text(WSGI_APP)
        self.port = free_port()
        self.tag = tag
        self.app_log = workdir / "app.log"
        self.env = child_env(workdir, FLUENT_PORT=fluent_bit.port, APP_TAG=tag,
                             APP_FLUSH=flush, APP_LOG=self.app_log, APP_BOOT=BOOT)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, command: list[str]) -> None:
        self.out = open(self.workdir / "server.out", "wb")  # noqa: SIM115
        # A session of its own, so that a failed test can end every process it forked.
        self.proc = subprocess.Popen(command, env=self.env, cwd=self.workdir,
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        proc = self.proc
        try:
            wait_until(lambda: serving(self.port, proc), START, "the web server")
        except AssertionError:
            self.stop(signal.SIGKILL)
            raise AssertionError(self.describe()) from None

    def stop(self, sig: int | None = None) -> None:
        """Stop with ``sig``; without one, uWSGI's graceful shutdown (its master FIFO).

        uWSGI's signals all stop it brutally: a worker caught inside a request, even
        while finishing one whose response has already gone out, skips every exit hook
        by design, so what it still held is lost. The graceful shutdown lets each worker
        finish, then run them.
        """
        assert self.proc is not None
        if sig is None:
            # Non-blocking: with no master reading the FIFO this fails instead of waiting.
            fifo = os.open(self.workdir / "master.fifo", os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fifo, b"q")
            finally:
                os.close(fifo)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(START)
        except subprocess.TimeoutExpired:
            kill_group(self.proc)
            raise AssertionError(f"did not stop on {sig or 'q'}\n{self.describe()}") from None
        finally:
            self.out.close()

    def kill_all(self) -> None:
        """After a failure: the server and whatever it forked."""
        if self.proc is not None and self.proc.poll() is None:
            kill_group(self.proc)

    def describe(self) -> str:
        text = ""
        for name in ("server.out", "uwsgi.log", "app.log"):
            path = self.workdir / name
            if path.exists():
                text += f"--- {name}\n{path.read_text(errors='replace')[-3000:]}\n"
        return text

    def app_log_lines(self, level: str) -> list[str]:
        if not self.app_log.exists():
            return []
        return [line for line in self.app_log.read_text().splitlines()
                if f" {level} " in line]


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def web_server(fluent_bit: FluentBit, tmp_path: Path) -> Iterator[Any]:
    """``web_server(tag, flush)`` makes a WebServer; any left running are killed."""
    made: list[WebServer] = []

    def make(tag: str, flush: float) -> WebServer:
        server = WebServer(tmp_path / f"web-{len(made)}", fluent_bit, tag, flush)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill_all()


def uwsgi_command(server: WebServer, options: Sequence[str]) -> list[str]:
    return [need("uwsgi"), "--http-socket", f"127.0.0.1:{server.port}",
            "--wsgi-file", str(server.workdir / "wsgiapp.py"), "--master", "--processes", "2",
            "--logto", str(server.workdir / "uwsgi.log"),
            "--master-fifo", str(server.workdir / "master.fifo"), *options]


UWSGI_SETUPS = {
    "defaults": [],
    "lazy-apps": ["--lazy-apps"],
    "enable-threads": ["--enable-threads"],
    "threads": ["--threads", "2"],
    # The at-fork hooks run in the workers then: the claim happens there instead.
    "py-call-osafterfork": ["--py-call-osafterfork"],
}


# uWSGI 2.0's --py-call-osafterfork aborts every worker on Python 3.13 ("Fatal Python
# error: _PyRecursiveMutex_Unlock"), a WSGI app that imports nothing included: there is
# nothing of ours to test there until uWSGI fixes it.
_UWSGI_AFTERFORK_ABORTS = pytest.mark.skipif(
    sys.version_info >= (3, 13), reason="uWSGI's --py-call-osafterfork aborts on 3.13")


@pytest.mark.parametrize("setup", [
    pytest.param(name, marks=[_UWSGI_AFTERFORK_ABORTS] if name == "py-call-osafterfork" else [])
    for name in UWSGI_SETUPS])
def test_uwsgi_workers_deliver_every_request(fluent_bit, web_server, setup):
    tag = f"uwsgi.{setup.replace('-', '_')}"
    server = web_server(tag, flush=0.1)
    server.start(uwsgi_command(server, UWSGI_SETUPS[setup]))
    served = drive_both(server.port, step=100)
    # Sent while the workers are idle in uWSGI's C loop, long before they stop.
    fluent_bit.wait_for(len(served), tag, ARRIVE)
    server.stop()
    records = exactly_once(fluent_bit, tag, "n", list(served))
    assert len(set(served.values())) == 2, "both workers served requests"
    assert {r["n"]: r["pid"] for r in records} == served
    # The app is imported once in the master, or once in each worker when lazy; either
    # way each import's records arrive once (the master's through one of its workers).
    importers = 2 if setup == "lazy-apps" else 1
    assert_boots(fluent_bit, tag, importers)
    assert server.app_log_lines("WARNING") == [], server.describe()


def test_uwsgi_graceful_reload_drains_the_old_workers(fluent_bit, web_server):
    # An hour-long flush interval: only the drain at each worker's end can deliver.
    tag = "uwsgi.reload"
    server = web_server(tag, flush=3600)
    server.start(uwsgi_command(server, []))
    before = drive_both(server.port)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    old = set(before.values())
    # The old workers finish their requests and drain as they go; new ones take over.
    fluent_bit.wait_for(len(before), tag, ARRIVE)
    wait_until(lambda: serving(server.port, server.proc) and get(server.port) not in old,
               START, "new workers after the reload")
    after = drive_both(server.port, start=max(before) + 1)
    assert not set(after.values()) & old
    server.stop()
    records = exactly_once(fluent_bit, tag, "n", list(before) + list(after))
    assert {r["n"]: r["pid"] for r in records} == {**before, **after}
    assert len(set(before.values())) == 2 and len(set(after.values())) == 2
    # The master imports the app again when it reloads. It runs no exit hook and no
    # threads of ours: one worker of each generation sent what it posted.
    assert_boots(fluent_bit, tag, 2)
    assert server.app_log_lines("WARNING") == [] and server.app_log_lines("ERROR") == []


def test_uwsgi_skip_atexit_teardown_still_drains_the_workers(fluent_bit, web_server):
    # Without teardown a worker skips Python's atexit; only uwsgi.atexit is called.
    tag = "uwsgi.skip_teardown"
    server = web_server(tag, flush=3600)
    server.start(uwsgi_command(server, ["--skip-atexit-teardown"]))
    served = drive(server.port, range(60))
    server.stop()
    exactly_once(fluent_bit, tag, "n", list(served))


def test_uwsgi_skip_atexit_is_named_in_an_error(fluent_bit, web_server):
    # Nothing at all runs when such a worker ends: the one setup that cannot drain.
    tag = "uwsgi.skip_atexit"
    server = web_server(tag, flush=0.1)
    server.start(uwsgi_command(server, ["--skip-atexit"]))
    served = drive(server.port, range(20))
    fluent_bit.wait_for(len(served), tag, ARRIVE)
    server.stop()
    errors = server.app_log_lines("ERROR")
    # Said once, by the process that imported the app (the master), naming the option.
    assert len(errors) == 1 and "skip-atexit" in errors[0], server.describe()


GUNICORN_SETUPS = {
    "sync": ["-k", "sync"],
    "sync-preload": ["-k", "sync", "--preload"],
    "gthread": ["-k", "gthread", "--threads", "4"],
    "gthread-preload": ["-k", "gthread", "--threads", "4", "--preload"],
}


@pytest.mark.parametrize("setup", list(GUNICORN_SETUPS))
def test_gunicorn_workers_deliver_every_request(fluent_bit, web_server, setup):
    # An hour-long flush interval: the records arrive through each worker's drain when
    # gunicorn stops it.
    if importlib.util.find_spec("gunicorn") is None:
        need("gunicorn")  # skips, or fails in CI
    tag = f"gunicorn.{setup.replace('-', '_')}"
    server = web_server(tag, flush=3600)
    server.start([sys.executable, "-m", "gunicorn", "-w", "2", "-b",
                  f"127.0.0.1:{server.port}", "--graceful-timeout", "30",
                  *GUNICORN_SETUPS[setup], "wsgiapp:application"])
    served = drive_both(server.port, step=100)
    server.stop(signal.SIGTERM)
    records = exactly_once(fluent_bit, tag, "n", list(served))
    assert {r["n"]: r["pid"] for r in records} == served
    assert len(set(served.values())) == 2, "both workers served requests"
    assert_boots(fluent_bit, tag, 1 if "preload" in setup else 2)
    # gunicorn owns SIGTERM in its workers: the client installed no handler over its own
    # (with --preload, ours went in at import in the master and gunicorn replaced it).
    assert all(r["sigterm"].startswith("gunicorn.") for r in records), records[0]


# -- Celery ------------------------------------------------------------------------------

CELERY_APP = """\
import logging
import os
import time

from celery import Celery

from fluentclient import BufferedClient, Buffering

logging.getLogger("fluentclient").addHandler(logging.FileHandler(os.environ["APP_LOG"]))

TAG = os.environ["APP_TAG"]
folder = os.environ["BROKER_DIR"]
app = Celery("tasks", broker="filesystem://")
app.conf.broker_transport_options = {
    "data_folder_in": folder, "data_folder_out": folder, "polling_interval": 0.05,
}
app.conf.worker_prefetch_multiplier = 1
client = BufferedClient("127.0.0.1", int(os.environ["FLUENT_PORT"]),
                        buffering=Buffering(flush_interval=float(os.environ["APP_FLUSH"])))


@app.task
def work(n):
    time.sleep(0.004)
    # Noted before posting: the test expects a record for every task that ran.
    with open(os.path.join(os.environ["RAN_DIR"], str(os.getpid())), "a") as ran:
        ran.write(f"{n}\\n")
    client.post(TAG, {"n": n, "pid": os.getpid()})
"""


@pytest.mark.parametrize("flush", [0.1, 3600], ids=["flush-0.1s", "flush-1h"])
def test_celery_prefork_pool_stopped_warm_delivers_every_task_that_ran(
        fluent_bit, tmp_path, flush):
    # With an hour-long flush interval every record depends on the drain as each pool
    # process ends; with the default one, only the last few do.
    celery = need("celery")
    tag = f"celery.prefork.f{int(flush * 10)}"
    broker, ran = tmp_path / "broker", tmp_path / "ran"
    broker.mkdir()
    ran.mkdir()
    (tmp_path / "tasks.py").write_text(CELERY_APP)
    env = child_env(tmp_path, FLUENT_PORT=fluent_bit.port, APP_TAG=tag, APP_FLUSH=flush,
                    APP_LOG=tmp_path / "app.log", BROKER_DIR=broker, RAN_DIR=ran)
    total = 2000
    send = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            from tasks import work
            for n in range({total}):
                work.delay(n)
        """)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=START)
    assert send.returncode == 0, send.stderr
    out = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [celery, "-A", "tasks", "worker", "--pool", "prefork", "--concurrency", "2",
         "--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"],
        env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def ran_tasks() -> list[int]:
        return [int(line) for path in ran.iterdir() for line in path.read_text().split()]

    try:
        # Stopped warm half way: running tasks finish, the pool processes end.
        wait_until(lambda: len(ran_tasks()) >= total // 2, START, "half of the tasks")
        worker.send_signal(signal.SIGTERM)
        worker.wait(START)
    finally:
        if worker.poll() is None:
            kill_group(worker)
        out.close()
    done = ran_tasks()
    assert len(done) < total, "the worker stopped before running every task"
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert len(set(done)) == len(done), f"a task ran twice\n{log[-3000:]}"
    exactly_once(fluent_bit, tag, "n", done)
    assert len(list(ran.iterdir())) == 2, "both pool processes ran tasks"


# -- multiprocessing ---------------------------------------------------------------------

MP_SCRIPT = """\
import multiprocessing as mp
import os
import sys

from fluentclient import BufferedClient, Buffering

# Made at import: with forkserver each worker imports this module and makes its own.
client = BufferedClient("127.0.0.1", int(os.environ["FLUENT_PORT"]),
                        buffering=Buffering(flush_interval=3600))
TAG = os.environ["APP_TAG"]


def task(n):
    client.post(TAG, {"n": n, "pid": os.getpid()})
    return os.getpid()


def one_process(n):
    client.post(TAG, {"n": n, "pid": os.getpid()})


if __name__ == "__main__":
    ctx = mp.get_context(sys.argv[1])
    client.post(TAG, {"n": -1, "pid": os.getpid()})
    with ctx.Pool(2) as pool:
        pids = set(pool.map(task, range(200), chunksize=5))
        pool.close()
        pool.join()
    procs = [ctx.Process(target=one_process, args=(n,)) for n in range(200, 204)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    print(len(pids))
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_workers_deliver(fluent_bit, tmp_path, method):
    tag = f"mp.{method}"
    (tmp_path / "mpmain.py").write_text(MP_SCRIPT)
    env = child_env(tmp_path, FLUENT_PORT=fluent_bit.port, APP_TAG=tag)
    result = subprocess.run([sys.executable, str(tmp_path / "mpmain.py"), method], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=START)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    # The long flush interval leaves every record to the drain at each process's end.
    exactly_once(fluent_bit, tag, "n", list(range(-1, 204)))


# -- the parts, without the servers -----------------------------------------------------

FAKE_UWSGI = """\
import logging
import os
import sys
import types

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
fake = types.ModuleType("uwsgi")
fake.opt = {}
fake.has_threads = P.get("has_threads", 1)
MASTER = P["master"] or os.getpid()  # 0: this process is the master
fake.masterpid = lambda: MASTER
sys.modules["uwsgi"] = fake
"""

UWSGI_MASTER = FAKE_UWSGI + """\
import threading
from fluentclient import BufferedClient, Buffering

client = BufferedClient("127.0.0.1", P["port"], buffering=Buffering(flush_interval=3600))
for i in range(P["n"]):
    client.post(P["tag"], {"who": "master", "i": i})
assert threading.active_count() == 1, "no threads in the master"
pids = []
for k in range(3):
    pid = os.fork()  # with the at-fork hooks, unlike uWSGI: both paths claim the same way
    if pid == 0:
        client.post(P["tag"], {"who": "worker", "i": k})
        report = client.shutdown(10)
        os._exit(0 if report.unsent_records == 0 else 3)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
stamp("CODES", *codes)
"""


def test_records_of_a_threadless_uwsgi_master_are_sent_by_exactly_one_worker(fluent_bit):
    from .subproc import Child

    tag, n = "fake.master", 300
    result = Child("master", UWSGI_MASTER, {"port": fluent_bit.port, "tag": tag, "n": n,
                                            "master": 0}).finish(timeout=START)
    assert result.returncode == 0, result.describe()
    assert result.lines("CODES")[0][1:] == ["0", "0", "0"], result.describe()
    records = fluent_bit.wait_for(n + 3, tag, ARRIVE)
    got = Counter((r["who"], r["i"]) for _, _, r in records)
    expected = [("master", i) for i in range(n)] + [("worker", k) for k in range(3)]
    assert got == Counter(expected)


def test_uwsgi_without_python_threads_is_named_in_an_error(fluent_bit):
    from .subproc import Child

    code = FAKE_UWSGI + """\
from fluentclient import BufferedClient
BufferedClient("127.0.0.1", P["port"], at_exit=True)
BufferedClient("127.0.0.1", P["port"], at_exit=True)
"""
    result = Child("no-threads", code, {"port": fluent_bit.port, "has_threads": 0,
                                        "master": 1}).finish(timeout=START)
    assert result.returncode == 0, result.describe()
    errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "enable-threads" in errors[0], result.describe()
