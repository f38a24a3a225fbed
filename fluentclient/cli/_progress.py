"""Status on stderr for the command line: messages, and a progress line about once a second."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from types import TracebackType
from typing import Callable, TextIO

from ..stats import Stats

# Erase the rest of the line, so a shorter status leaves no tail of the longer one.
_ERASE = "\r\x1b[K"


def show_progress(args: argparse.Namespace) -> bool:
    """Whether a command shows its progress line: asked to, or on a terminal."""
    return bool(args.progress) or sys.stderr.isatty()


class Console:
    """Writes to one stream from several threads; on a terminal the status line is redrawn
    in place and a message first clears it, so the two never run together."""

    def __init__(self, stream: TextIO, *, live: bool) -> None:
        self._stream = stream
        self._live = live
        self._lock = threading.Lock()
        self._status_shown = False

    @property
    def live(self) -> bool:
        """Whether the status line is redrawn in place (a terminal)."""
        return self._live

    def say(self, text: str) -> None:
        with self._lock:
            self._clear()
            self._write(text + "\n")

    def status(self, text: str) -> None:
        with self._lock:
            if self._live:
                self._write(_ERASE + text)
                self._status_shown = True
            else:
                self._write(text + "\n")

    def end_status(self) -> None:
        with self._lock:
            self._clear()

    def _clear(self) -> None:
        if self._status_shown:
            self._write(_ERASE)
            self._status_shown = False

    def _write(self, text: str) -> None:
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            # stderr closed or a broken pipe: status is not worth failing the command for.
            pass


def describe(stats: Stats, rate: float | None, *, read: int | None = None) -> str:
    """One status line: how many records went where, and the send rate."""
    parts = [] if read is None else [f"{read:,} read"]
    parts.append(f"{stats.sent:,} sent")
    if rate is not None:
        parts[-1] += f" ({rate:,.0f}/s)"
    parts.append(f"{stats.buffered:,} buffered ({stats.buffered_bytes / 1024:,.0f} KiB)")
    parts.append(f"{stats.dropped_total:,} dropped")
    if stats.possibly_lost:
        parts.append(f"{stats.possibly_lost:,} possibly lost")
    return ", ".join(parts)


class SendRate:
    """``describe()`` of the client's stats with the send rate since the last call: the
    status line of ``cat``."""

    def __init__(self, stats: Callable[[], Stats], *,
                 read: Callable[[], int] | None = None) -> None:
        self._stats = stats
        self._read = read
        self._last_sent = 0
        self._last_at = time.monotonic()

    def __call__(self) -> str:
        stats = self._stats()
        now = time.monotonic()
        rate = (stats.sent - self._last_sent) / max(now - self._last_at, 1e-9)
        self._last_sent, self._last_at = stats.sent, now
        read = None if self._read is None else self._read()
        return describe(stats, rate, read=read)


class Progress:
    """A thread that shows ``line()`` every ``interval`` seconds until stopped.

    Used as a context manager; when ``enabled`` is false it does nothing at all.
    """

    def __init__(
        self,
        console: Console,
        line: Callable[[], str],
        *,
        enabled: bool = True,
        interval: float = 1.0,
    ) -> None:
        self._console = console
        self._line = line
        self._enabled = enabled
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluentclient-progress",
                                        daemon=True)

    def __enter__(self) -> Progress:
        if self._enabled:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._enabled:
            self._stop.set()
            self._thread.join(self._interval + 1.0)
            self._console.end_status()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._console.status(self._line())
