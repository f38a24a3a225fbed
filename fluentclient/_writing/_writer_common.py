"""Small pieces the writer's units share: why a link's connection must end, reading what
a server said, a frame's futures, and socket deadlines that shutdown cuts short."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .._buffer import Frame
from .._lifecycle import Lifecycle
from .._transport._connection import Connection
from .._transport._replies import ConnectionLost
from .._transport._sender import Sender
from ..errors import AuthenticationError, FluentError
from ..message import settle_future


@dataclass(frozen=True)
class Fault:
    """Why a link's connection must end. ``refusal``: the server refused us on a
    connection that was up (an unasked HELO), which backs off the longest delay."""

    reason: str
    refusal: FluentError | None = None


def read_replies(conn: Connection) -> list[object] | Fault:
    """What the server said since we last looked, or why the connection must end."""
    try:
        return Sender.replies(conn)
    except AuthenticationError as exc:
        return Fault(str(exc), refusal=exc)
    except ConnectionLost as exc:
        return Fault(str(exc))


def resolve_futures(frame: Frame, error: BaseException | None = None) -> None:
    """Complete the delivery futures of a frame's records (a cancelled one is skipped)."""
    for future in frame.futures or ():
        settle_future(future, error)
    frame.futures = None


def deadline_within(life: Lifecycle, timeout: float) -> float:
    """A socket call's deadline: ``timeout`` from now, or shutdown's, if sooner."""
    deadline = time.monotonic() + timeout
    drain = life.drain_deadline
    return deadline if drain is None else min(deadline, drain)


def cut_short(life: Lifecycle) -> bool:
    """True once shutdown's deadline has passed or it abandoned the drain."""
    drain = life.drain_deadline
    return life.abandoned or (drain is not None and time.monotonic() >= drain)
