"""Run Python children that use the client, and time how they end.

A child prints ``<NAME> <monotonic time>`` lines (``stamp()``); the parent notes the
monotonic time at which it saw the process end (both pipes closed and the process
reaped). CLOCK_MONOTONIC is system-wide on Linux, so the two can be subtracted: the time
from "main is about to return" to "the process is gone" is the child's exit time.

Tight bounds are best taken between two of the child's own stamps, and a child held to
one should run alone: children started together compete for the cores, and each one's
time then says more about the others than about itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Put at the top of every child: its parameters, and a way to stamp moments. The at-exit
# hook registered here is the first, so it runs last: AT_EXIT_DONE is the child's own
# stamp of the moment every other at-exit hook (the client's shutdown) has returned.
PRELUDE = """\
import atexit as _atexit, json as _json, sys as _sys, time as _time
P = _json.loads(_sys.argv[1])

def stamp(name, *values):
    # One write per line: a forked child stamps at the same moment as its parent, on the
    # same pipe, and print() writes each piece on its own when stdout is unbuffered.
    line = " ".join([name, repr(_time.monotonic()), *map(str, values)]) + "\\n"
    _sys.stdout.write(line)
    _sys.stdout.flush()

_atexit.register(lambda: stamp("AT_EXIT_DONE"))
"""


# For children that fork through libc (ctypes), skipping CPython's after-fork repair: the
# child inherits the GIL's mutex and condition variable as they were, and a thread of the
# parent queued on them (waking from a timed wait, say) can leave the child waiting
# forever or crashing. No client can prevent that: a program that forks this way must do
# it while its other threads sleep, and so do these children: ``park_threads()`` ends
# the client's threads as Python's before-fork hook would. ``quiet(client)`` waits
# until the client's threads sit in their long waits: the reader idle, the writer with
# nothing in flight and no answer owed (otherwise it looks every few milliseconds).
# ``blocked_in_read(tid, fd)`` is true once a thread (its native id) is blocked reading
# ``fd``, without the GIL: how a thread of the test's own waits through the fork.
QUIET_FORK = """
def quiet(client, timeout=10):
    deadline = _time.monotonic() + timeout
    writer = client._writer
    while not (client._reader.idle and not any(l.unconfirmed for l in writer.links)
               and not writer.settling()):
        assert _time.monotonic() < deadline, "the client's threads never went quiet"
        _time.sleep(0.01)

def park_threads():
    # What Python's before-fork hook does: the client's threads end, to be started again
    # by resume_threads() (in the parent, after the fork). Even asleep in a timed wait, a
    # thread wakes now and then and queues for the GIL; parked, it is not there at all.
    import threading
    from fluentclient._lifetime import _process
    _process._park_all()
    assert not any(t.name.startswith("fluentclient-") and t.is_alive()
                   for t in threading.enumerate()), "a thread did not park"

def resume_threads():
    from fluentclient._lifetime import _process
    _process._resume_all()

_READ_SYSCALLS = {"0", "63"}  # read(2) on x86_64 and on aarch64

def blocked_in_read(tid, fd):
    with open(f"/proc/self/task/{tid}/syscall") as f:
        words = f.read().split()
    return len(words) > 1 and words[0] in _READ_SYSCALLS and int(words[1], 16) == fd
"""


@dataclass
class Finished:
    name: str
    returncode: int
    stdout: str
    stderr: str
    ended: float

    def lines(self, name: str) -> list[list[str]]:
        """The words after ``name`` on each stdout line that starts with it."""
        return [line.split()[1:] for line in self.stdout.splitlines()
                if line.split()[:1] == [name]]

    def stamp(self, name: str) -> float:
        found = self.lines(name)
        assert found, f"{self.name}: no {name} line in stdout:\n{self.stdout}\n{self.stderr}"
        return float(found[-1][0])

    def seconds_since(self, name: str) -> float:
        """From the child's ``name`` stamp to the moment the parent saw it end."""
        return self.ended - self.stamp(name)

    def seconds_between(self, first: str, then: str) -> float:
        """From one of the child's stamps to another: its own clock, its own moments."""
        return self.stamp(then) - self.stamp(first)

    def foreign_stderr(self) -> list[str]:
        """stderr lines that are not one of our own log lines (tracebacks and the like)."""
        return [line for line in self.stderr.splitlines()
                if line.strip() and not line.startswith("fluentclient: ")]

    def describe(self) -> str:
        return (f"{self.name}: exit {self.returncode}\n--- stdout\n{self.stdout}"
                f"--- stderr\n{self.stderr}")


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (else ours) with this checkout first on the import path: a child must test
    the package these tests came with, not whichever one is installed."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class Child:
    """A running child. Its output is read as it comes; ``finish()`` collects it."""

    def __init__(self, name: str, code: str, params: dict[str, Any] | None = None,
                 stdin: bool = False) -> None:
        self.name = name
        env = child_env()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code), json.dumps(params or {})],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._seen = threading.Condition()
        self._eof = 0
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            with self._seen:
                into.append(line)
                self._seen.notify_all()
        with self._seen:
            self._eof += 1
            self._seen.notify_all()

    def wait_for_line(self, name: str, timeout: float = 10.0) -> list[str]:
        """The words after ``name`` on the first stdout line starting with it, once seen."""

        def found() -> list[str] | None:
            for line in self._out:
                if line.split()[:1] == [name]:
                    return line.split()[1:]
            return None

        with self._seen:
            self._seen.wait_for(lambda: found() is not None or self._eof == 2, timeout)
            words = found()
            if words is None:
                raise AssertionError(
                    f"{self.name}: no {name} line within {timeout} s (or it ended):\n"
                    f"{''.join(self._out)}--- stderr\n{''.join(self._err)}"
                )
            return words

    def wait_for_stderr(self, text: str, timeout: float = 10.0) -> None:
        """Wait until ``text`` appears in what the child wrote to stderr."""
        with self._seen:
            if not self._seen.wait_for(
                    lambda: text in "".join(self._err) or self._eof == 2, timeout) or (
                    text not in "".join(self._err)):
                raise AssertionError(
                    f"{self.name}: {text!r} not on stderr within {timeout} s (or it "
                    f"ended):\n{''.join(self._out)}--- stderr\n{''.join(self._err)}"
                )

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def signal(self, signum: int = signal.SIGTERM) -> float:
        """Send a signal; the monotonic time it was sent."""
        sent = time.monotonic()
        self.proc.send_signal(signum)
        return sent

    def finish(self, timeout: float = 60.0) -> Finished:
        """Wait for the end: both pipes closed and the process reaped."""
        deadline = time.monotonic() + timeout
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.name} did not end within {timeout} s:\n{''.join(self._out)}"
                f"--- stderr\n{''.join(self._err)}"
            ) from None
        for reader in self._readers:
            # A grandchild still holding the pipes is waited for too, within the deadline.
            reader.join(max(0.0, deadline - time.monotonic()))
        ended = time.monotonic()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with self._seen:
            return Finished(self.name, self.proc.returncode, "".join(self._out),
                            "".join(self._err), ended)


def finish_all(children: Sequence[Child], timeout: float = 60.0) -> dict[str, Finished]:
    """Collect every child at once, so that each end time is noted as it happens."""
    results: dict[str, Finished] = {}
    errors: list[BaseException] = []

    def collect(child: Child) -> None:
        try:
            results[child.name] = child.finish(timeout)
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=collect, args=(c,)) for c in children]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
