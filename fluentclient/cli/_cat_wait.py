"""What ``fluentclient cat`` waits for, and what it says while it waits: for room in the
client's buffer while it reads, and for delivery at the end."""

from __future__ import annotations

import threading
import time

from .._words import count
from ..client import BufferedClient
from ..stats import Stats
from ._progress import Console


class WaitNotice:
    """Says once on stderr what cat is waiting for, for how long at most, and how to change
    that, so that a missing server is not a silent 30 s. Only a wait that lasts
    ``QUIET_FOR`` seconds (a quarter of a shorter deadline), or one whose cause is already
    known (a failed connect), is worth a line: a healthy run says nothing."""

    QUIET_FOR = 2.0

    def __init__(self, console: Console) -> None:
        self._console = console
        self._said: set[str] = set()

    def check(self, stats: Stats, purpose: str, started: float, deadline: float) -> None:
        """During a wait that started at ``started``: say ``purpose`` and why, if due."""
        if purpose in self._said or not stats.buffered:
            return
        now = time.monotonic()
        failing = any(s.last_error and s.state != "connected" for s in stats.servers)
        # A short deadline still gets its line before it runs out.
        quiet = min(self.QUIET_FOR, (deadline - started) / 4)
        if not failing and now - started < quiet:
            return
        self._said.add(purpose)
        self._console.say(
            f"cat: waiting up to {_seconds(deadline - now)} s "
            f"{purpose.format(records=count(stats.buffered, 'record'))}: "
            f"{waiting_for(stats)}; --timeout SECONDS changes this limit"
        )

    def watch(self, client: BufferedClient, purpose: str, timeout: float) -> _Watch:
        """A thread checking during a wait the caller cannot break into (shutdown)."""
        return _Watch(self, client, purpose, timeout)


class _Watch:
    """WaitNotice.check every 0.1 s in a thread of its own, for as long as it is entered."""

    def __init__(self, notice: WaitNotice, client: BufferedClient, purpose: str,
                 timeout: float) -> None:
        self._notice = notice
        self._client = client
        self._purpose = purpose
        self._timeout = timeout
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fluentclient-cat-wait",
                                        daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join(1.0)

    def _run(self) -> None:
        started = time.monotonic()
        deadline = started + self._timeout
        while not self._done.wait(0.1):
            self._notice.check(self._client.stats(), self._purpose, started, deadline)


def waiting_for(stats: Stats) -> str:
    """What holds the records back, server by server, in words."""
    servers = [s for s in stats.servers if not s.standby] or list(stats.servers)
    parts = []
    for server in servers[:3]:
        if server.state == "connected":
            parts.append(f"connected to {server.address}, waiting for it to read and "
                         "confirm them")
        elif server.last_error:
            # The connect error repeats the address already named.
            reason = server.last_error.removeprefix(f"cannot connect to {server.address}: ")
            parts.append(f"connecting to {server.address} (last failure: {reason})")
        else:
            parts.append(f"connecting to {server.address}")
    if len(servers) > 3:
        parts.append(f"and {len(servers) - 3} more servers")
    return "; ".join(parts) or "the client"


def _seconds(value: float) -> str:
    value = max(value, 0.0)
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


class Backpressure:
    """Holds cat back while the client's buffer is over half full, so that a fast input is
    not dropped for want of room. Past ``timeout`` without room it stops waiting (records
    are then dropped and counted) until the buffer has drained by itself."""

    CHECK_EVERY = 64

    def __init__(self, client: BufferedClient, limit: int, timeout: float,
                 notice: WaitNotice) -> None:
        self._client = client
        self._notice = notice
        self._high = limit // 2
        self._timeout = timeout
        self._countdown = self.CHECK_EVERY
        self._bytes = 0
        self._gave_up = False

    def note(self, size: int) -> None:
        """Called before each post with the input size of its record."""
        self._countdown -= 1
        self._bytes += size
        # A few large records can fill the buffer well before CHECK_EVERY of them.
        if self._countdown > 0 and self._bytes < self._high // 8:
            return
        self._countdown, self._bytes = self.CHECK_EVERY, 0
        if self._client.stats().buffered_bytes <= self._high:
            self._gave_up = False
        elif not self._gave_up:
            self._gave_up = not self._wait_for_room()

    def _wait_for_room(self) -> bool:
        started = time.monotonic()
        deadline = started + self._timeout
        while True:
            stats = self._client.stats()
            if stats.buffered_bytes <= self._high:
                return True
            self._notice.check(stats, "for room in the buffer ({records} held)", started, deadline)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._client.flush(timeout=min(left, 0.5))
