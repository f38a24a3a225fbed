"""The buffered clients of this process, as the process's own events see them.

Forks (_process.py) and the end of the process (_exit.py) act on every client at once.
They know a client only through the two protocols below, and find the clients in the
registries here, which each client joins as it is made: so neither imports client.py.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from ..stats import ShutdownReport


class ForkAware(Protocol):
    """What a fork asks of a client (see _process.py)."""

    def _park(self, deadline: float) -> list[threading.Thread]: ...

    def _resume_after_fork(self) -> None: ...

    def _after_fork_in_child(self) -> None: ...

    def _forget_in_child(self) -> None: ...


class Drainable(Protocol):
    """What the end of the process asks of a client (see _exit.py)."""

    # The order the clients were made in, which the summary follows.
    _exit_order: int
    # The setting that bounds its drain, as the user knows it.
    _exit_setting: str
    shutdown_timeout: float

    def _exit_pending(self) -> bool: ...

    def _drain_for_exit(self, deadline: float) -> ShutdownReport | None: ...

    def _abandon(self) -> None: ...

    def _hopeless(self) -> str | None: ...

    def _unreachable(self) -> str | None: ...

    def _held(self) -> int: ...

    def _exit_name(self) -> str: ...


class Client(ForkAware, Drainable, Protocol):
    """A buffered client, as the process's events see it."""


live: weakref.WeakSet[ForkAware] = weakref.WeakSet()
# The cores of clients collected while their drain runs on a thread of theirs (see
# _forgotten.py). Held strongly: nothing else of the program refers to them.
forgotten: set[ForkAware] = set()
# Clients made with at_exit=True: what the end of the process drains (see _exit.py).
drained_at_exit: weakref.WeakSet[Drainable] = weakref.WeakSet()
