"""Run Python children that use the client, many at once, and time how they end.

A child prints ``<NAME> <monotonic time>`` lines (``stamp()``); the parent notes the
monotonic time at which it saw the process end (both pipes closed and the process
reaped). CLOCK_MONOTONIC is system-wide on Linux, so the two can be subtracted: the time
from "main is about to return" to "the process is gone" is the child's exit time.
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

# Put at the top of every child: its parameters, and a way to stamp moments.
PRELUDE = """\
import json as _json, sys as _sys, time as _time
P = _json.loads(_sys.argv[1])

def stamp(name, *values):
    print(name, repr(_time.monotonic()), *values, flush=True)
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

    def foreign_stderr(self) -> list[str]:
        """stderr lines that are not one of our own log lines (tracebacks and the like)."""
        return [line for line in self.stderr.splitlines()
                if line.strip() and not line.startswith("fluentclient: ")]

    def describe(self) -> str:
        return (f"{self.name}: exit {self.returncode}\n--- stdout\n{self.stdout}"
                f"--- stderr\n{self.stderr}")


class Child:
    """A running child; ``finish()`` collects it."""

    def __init__(self, name: str, code: str, params: dict[str, Any] | None = None,
                 stdin: bool = False) -> None:
        self.name = name
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), env.get("PYTHONPATH")) if p
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRELUDE + textwrap.dedent(code), json.dumps(params or {})],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        self._stdout: list[str] = []

    def readline(self, timeout: float = 10.0) -> str:
        """The next stdout line (kept for the final stdout too); '' at end or timeout."""
        assert self.proc.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()),
                                  daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout)
        line = result[0] if result else ""
        self._stdout.append(line)
        return line

    def wait_for_line(self, name: str, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {name} line within {timeout} s")
            line = self.readline(remaining)
            if not line:
                raise AssertionError(
                    f"{self.name}: ended before {name}:\n{''.join(self._stdout)}"
                    f"{self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            if line.split()[:1] == [name]:
                return line.split()[1:]

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
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError(
                f"{self.name} did not end within {timeout} s:\n{out}\n{err}"
            ) from None
        ended = time.monotonic()
        return Finished(self.name, self.proc.returncode, "".join(self._stdout) + out, err,
                        ended)


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
