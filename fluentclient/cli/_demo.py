"""``fluentclient demo``: records through BufferedClient to a server in another process.

The server runs apart so that the figures shown are the client's: in one process the
server's decoding would share the interpreter with the client and the rate would mostly
measure the server. The server process checks every record as it arrives (its place in
the sequence, its fields, its time to the nanosecond) and reports over its stdout: a line
when it listens, its count while records arrive, and its verdict when asked. It reads
its stdin for that question, and ends when stdin closes, so it cannot outlive the demo
even when the demo is killed outright.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import Any, Callable

from .._accel import REASON
from .._words import count
from ..client import BufferedClient
from ..errors import ConfigurationError
from ..message import EventTime
from ..options import Buffering
from ..server import ForwardServer, ReceivedEvent
from ..stats import ShutdownReport, Stats
from ._progress import Console, Progress, show_progress

TAG = "demo.access"
RECORD = {
    "message": "GET /api/v1/items/1234 HTTP/1.1 200 512 bytes in 12.5 ms",
    "level": "info",
    "host": "web-1",
    "latency_ms": 12.5,
    "request_id": "6f1c0a0e-1b9e-4c55-a7f3",
}
# Record i is posted with the time base + i * STEP ns: distinct times whose last digits
# all vary, so a time rounded anywhere on the way shows.
STEP_NS = 1_001

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130

# How long the demo waits for the server process to start, and for delivery at the end.
START_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 30.0

# The server process imports this package from where the demo imported it, whatever the
# current directory or the way the demo was started.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from fluentclient.cli._demo import serve_for_demo; sys.exit(serve_for_demo(sys.argv[2:]))"
)


class DemoError(Exception):
    """The demo could not run to the end (not a failed check: those are reported)."""


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that the demo cleans up as for Ctrl-C."""


def expected_time(base_ns: int, seq: int) -> EventTime:
    return EventTime.from_ns(base_ns + seq * STEP_NS)


# -- the server process ----------------------------------------------------------------------


class Check:
    """Checks each event against what the demo posted; runs on the server's thread."""

    def __init__(self, base_ns: int) -> None:
        self._base_ns = base_ns
        self.lock = threading.Lock()
        self._cond = threading.Condition(self.lock)
        self.count = 0
        self.last_seq = -1
        self.out_of_order = 0
        self.altered = 0
        self.wrong_time = 0
        self.first_problem: str | None = None
        self.server_errors: list[str] = []

    def take(self, event: ReceivedEvent) -> None:
        record = event.record
        seq = record.get("seq") if isinstance(record, dict) else None
        with self._cond:
            index = self.count
            self.count += 1
            # Each seq greater than the one before: none repeated, none overtaken. Those
            # missing show in the count.
            if not isinstance(seq, int) or seq <= self.last_seq:
                self.out_of_order += 1
                self._note(f"record #{index:,} arrived with seq {seq!r} after "
                           f"{self.last_seq!r}")
            else:
                self.last_seq = seq
            if not isinstance(seq, int) or record != {**RECORD, "seq": seq}:
                self.altered += 1
                self._note(f"record #{index:,} differs from what was posted: {record!r:.200}")
            elif event.time != expected_time(self._base_ns, seq):
                self.wrong_time += 1
                self._note(f"record seq {seq:,} has time {event.time!r}, "
                           f"posted {expected_time(self._base_ns, seq)!r}")
            self._cond.notify_all()

    def _note(self, problem: str) -> None:
        if self.first_problem is None:
            self.first_problem = problem

    def wait_for(self, count: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.count >= count, timeout)

    def verdict(self) -> dict[str, Any]:
        with self._cond:
            return {"arrived": self.count, "out_of_order": self.out_of_order,
                    "altered": self.altered, "wrong_time": self.wrong_time,
                    "first_problem": self.first_problem,
                    "server_errors": self.server_errors[:3]}


class _Reply:
    """The server process's stdout, shared by its threads; the demo gone, it goes quiet."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._broken = False

    def __call__(self, line: str) -> None:
        with self._lock:
            if self._broken:
                return
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                self._broken = True
                # The demo is gone: what is left in stdout's buffer goes nowhere, quietly,
                # rather than as an error when the interpreter flushes it at exit.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                os.close(devnull)


def forget(server: ForwardServer, check: Check) -> None:
    """Keep the server's errors and forget its events: the check has seen each one, and
    keeping them would only grow. (The server's thread never holds both locks.)"""
    with check.lock:
        check.server_errors.extend(server.errors)
        server.clear()


def serve_for_demo(argv: list[str]) -> int:
    """The server process: ``argv`` is the time base of the posted records, in ns."""
    # Started in a session of its own, this process does not get the terminal's Ctrl-C;
    # a SIGINT sent to it anyway must not end it either: the demo ends it, by closing
    # its stdin, once it has what it needs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A connection cut when the demo is interrupted is not news; what went wrong while
    # it ran is in the verdict, from the server's errors.
    logging.getLogger("fluentclient").addHandler(logging.NullHandler())
    logging.getLogger("fluentclient").propagate = False
    check = Check(int(argv[0]))
    reply = _Reply()
    with ForwardServer(on_event=check.take) as server:
        reply(f"listening {server.port}")
        done = threading.Event()

        def report_count() -> None:
            last = -1
            while not done.wait(0.1):
                count = check.count
                if count != last:
                    reply(f"arrived {count}")
                    last = count
                    forget(server, check)

        reporter = threading.Thread(target=report_count, name="demo-count", daemon=True)
        reporter.start()
        for line in sys.stdin:
            words = line.split()
            if words[:1] == ["expect"] and len(words) == 3:
                check.wait_for(int(words[1]), float(words[2]))
                forget(server, check)
                reply("verdict " + json.dumps(check.verdict()))
        done.set()
    return 0


class ServerProcess:
    """The demo's side of the server process: start it, read its reports, end it."""

    def __init__(self, base_ns: int) -> None:
        self._cond = threading.Condition()
        self._port: int | None = None
        self._arrived = 0
        self._verdict: dict[str, Any] | None = None
        self._ended = False
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _ROOT, str(base_ns)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            # Out of the terminal's process group: Ctrl-C is for the demo, which then
            # ends this process itself, after or without its verdict.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, name="demo-server-reader",
                                        daemon=True)
        self._reader.start()

    @property
    def arrived(self) -> int:
        with self._cond:
            return self._arrived

    def _read(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        for line in stdout:
            kind, _, value = line.rstrip("\n").partition(" ")
            with self._cond:
                if kind == "listening":
                    self._port = int(value)
                elif kind == "arrived":
                    self._arrived = int(value)
                elif kind == "verdict":
                    self._verdict = json.loads(value)
                self._cond.notify_all()
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], Any], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: ready() or self._ended, timeout):
                raise DemoError(f"the server process did not {what} within {timeout:.0f} s")
            if not ready():
                code = self._proc.wait()
                raise DemoError(f"the server process ended (exit status {code}) "
                                f"before it could {what}")

    def wait_listening(self, timeout: float) -> int:
        self._wait(lambda: self._port is not None, timeout, "listen")
        assert self._port is not None
        return self._port

    def verdict(self, count: int, timeout: float) -> dict[str, Any]:
        """The server's checks once it has ``count`` records, or ``timeout`` has passed."""
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(f"expect {count} {timeout}\n")
            stdin.flush()
        except OSError:
            pass  # it ended: _wait says so
        self._wait(lambda: self._verdict is not None, timeout + 10.0, "report")
        assert self._verdict is not None
        return self._verdict

    def close(self) -> None:
        """End the process and reap it, whatever state it is in."""
        stdin = self._proc.stdin
        try:
            if stdin is not None:
                stdin.close()  # its signal to stop
            self._proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            self._proc.kill()
            self._proc.wait()
        finally:
            if self._proc.poll() is None:  # interrupted while waiting
                self._proc.kill()
                self._proc.wait()
        self._reader.join(5)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# -- the demo --------------------------------------------------------------------------------


class StatusLine:
    """What the client posted and holds beside what the server has taken, and its rate."""

    def __init__(self, stats: Callable[[], Stats], arrived: Callable[[], int]) -> None:
        self._stats = stats
        self._arrived = arrived
        self._last = 0
        self._last_at = time.monotonic()

    def __call__(self) -> str:
        stats, arrived, now = self._stats(), self._arrived(), time.monotonic()
        rate = (arrived - self._last) / max(now - self._last_at, 1e-9)
        self._last, self._last_at = arrived, now
        # Short enough for an 80-column terminal, where a wrapped line cannot be redrawn.
        line = (f"{stats.posted:,} posted, {arrived:,} at the server ({rate:,.0f}/s), "
                f"{stats.buffered:,} held ({stats.buffered_bytes / 1024:,.0f} KiB)")
        return line + (f", {stats.dropped_total:,} dropped" if stats.dropped_total else "")


class Run:
    """What the demo measured in its own process."""

    def __init__(self) -> None:
        self.posted = 0
        self.post_seconds = 0.0
        self.total_seconds = 0.0
        self.cpu_seconds = 0.0
        self.report: ShutdownReport | None = None


def post_all(port: int, records: int, base_ns: int, console: Console, progress: bool,
             arrived: Callable[[], int]) -> Run:
    run = Run()
    # A server slower than this loop makes post() wait for room rather than drop: the
    # demo is to show every record arriving, whatever the two machines' speeds. A batch
    # job can wait longer than the default second: a server starved of CPU for a moment
    # (a busy machine) must not cost a record.
    client = BufferedClient("127.0.0.1", port, at_exit=False,
                            buffering=Buffering(overflow="block", overflow_timeout=30.0))
    try:
        interval = 0.25 if console.live else 1.0
        with Progress(console, StatusLine(client.stats, arrived), enabled=progress,
                      interval=interval):
            cpu, start = time.process_time(), time.perf_counter()
            for seq in range(records):
                client.post(TAG, {**RECORD, "seq": seq}, time=expected_time(base_ns, seq))
            run.posted = records
            run.post_seconds = time.perf_counter() - start
            run.report = client.shutdown(DELIVERY_TIMEOUT)
            run.total_seconds = time.perf_counter() - start
            run.cpu_seconds = time.process_time() - cpu
    finally:
        client.close()  # after shutdown() a no-op; after an interrupt it stops the threads
    return run


def _rate(n: int, seconds: float) -> str:
    return f"{n / max(seconds, 1e-9):,.0f} records/s"


def _yes(bad: int, ok: str) -> str:
    return f"yes: {ok}" if not bad else f"NO: {count(bad, 'record')}"


def summary(records: int, run: Run, verdict: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The summary lines, and the problems found (none when everything checks out)."""
    report = run.report
    assert report is not None
    arrived = verdict["arrived"]
    lines = [
        f"posted     {records:,} in {run.post_seconds:.2f} s "
        f"({_rate(records, run.post_seconds)}, the loop calling post())",
        f"arrived    {arrived:,}{'' if arrived == records else f' of {records:,}'} "
        f"in {run.total_seconds:.2f} s "
        f"({_rate(arrived, run.total_seconds)} end to end)",
        "in order   " + _yes(verdict["out_of_order"], "none repeated or overtaken"),
        "intact     " + _yes(verdict["altered"], "every field as posted"),
        "times      " + _yes(verdict["wrong_time"], "every EventTime exact to the nanosecond"),
        f"client CPU {run.cpu_seconds / max(records, 1) * 1e6:.1f} µs per record "
        f"(this process: building, packing, sending)",
        f"packer     {REASON}",
    ]
    problems = []
    if arrived != records:
        problems.append(f"{arrived:,} of {count(records, 'record')} arrived")
    for key in ("out_of_order", "altered", "wrong_time"):
        if verdict[key]:
            problems.append(f"{count(verdict[key], 'record')} {key.replace('_', ' ')}")
    if not report.complete:
        problems.append(f"the client reports unsent={report.unsent_records:,} "
                        f"possibly_lost={report.possibly_lost:,} dropped={dict(report.dropped)}"
                        + (f" failure={report.failure}" if report.failure else ""))
    if verdict["server_errors"]:
        problems.append("the server saw: " + "; ".join(verdict["server_errors"]))
    if verdict["first_problem"]:
        problems.append(f"first: {verdict['first_problem']}")
    return lines, problems


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted()


def demo_command(args: argparse.Namespace) -> int:
    """Post ``--records`` records to a server in another process, which checks each one."""
    if args.records < 1:
        raise ConfigurationError("--records needs at least 1 record")
    return demo(args.records, progress=show_progress(args))


def demo(records: int, *, progress: bool) -> int:
    """Run the demo; the exit status of ``fluentclient demo``."""
    console = Console(sys.stderr, live=sys.stderr.isatty())
    base_ns = time.time_ns()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        print(f"demo: {count(records, 'record')} through BufferedClient to a server in its own "
              "process", flush=True)
        with ServerProcess(base_ns) as server:
            port = server.wait_listening(START_TIMEOUT)
            run = post_all(port, records, base_ns, console, progress, lambda: server.arrived)
            assert run.report is not None
            verdict = server.verdict(run.report.sent, DELIVERY_TIMEOUT)
    except (KeyboardInterrupt, Interrupted):
        console.say("demo: interrupted; the server process is stopped")
        return EXIT_INTERRUPTED
    except (DemoError, OSError) as exc:
        console.say(f"demo: FAILED: {exc}")
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGTERM, previous)
    lines, problems = summary(records, run, verdict)
    print("\n".join(lines))
    if problems:
        print("FAILED: " + "; ".join(problems))
        return EXIT_FAILED
    print("OK: every record arrived once, in order, exactly as posted")
    return 0
