"""The record in flight: :class:`Message`, and the forward protocol's :class:`EventTime`."""

from __future__ import annotations

import re
import reprlib
import time as _time
from collections.abc import Mapping
from concurrent.futures import Future, InvalidStateError
from typing import Any, NamedTuple, Union

from .errors import InvalidTimeError

__all__ = ["EventTime", "Message", "TimeLike", "TAG_PATTERN", "MAX_TAG_LENGTH"]

_NS = 1_000_000_000

# What a tag may hold: dot-separated parts of safe characters, the form both servers route
# on and fluentd outputs put in paths. Checked by post() and the configuration; the logging
# integrations replace anything else with "_".
TAG_PATTERN = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\Z")
TAG_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
MAX_TAG_LENGTH = 1024
# fluent-bit reserves 0xFFFFFFFE and 0xFFFFFFFF seconds as group markers.
_MAX_SECONDS = 0xFFFFFFFD


class EventTime(NamedTuple):
    """Seconds and nanoseconds since the Unix epoch, as the ext type 0 of the protocol.

    The protocol stores both as unsigned 32-bit integers, so only 1970 to 2106 can be sent.
    """

    seconds: int
    nanoseconds: int = 0

    @classmethod
    def now(cls) -> EventTime:
        return cls(*divmod(_time.time_ns(), _NS))

    @classmethod
    def from_ns(cls, ns: int) -> EventTime:
        return cls(*divmod(ns, _NS))

    def to_ns(self) -> int:
        return self.seconds * _NS + self.nanoseconds


TimeLike = Union[EventTime, int, float]


def settle_future(future: Future[None] | None, error: BaseException | None = None) -> None:
    """Complete a caller's future, unless it is cancelled or done already.

    The caller may cancel it at any moment (``asyncio.wait_for`` over ``wrap_future`` does
    on timeout), even between a ``done()`` check and the ``set_*`` call: our threads must
    not die of that.
    """
    if future is None or future.done():
        return
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except InvalidStateError:
        pass


def time_to_ns(value: TimeLike | None) -> int:
    """Convert what ``post(time=...)`` accepts to integer nanoseconds, checking the range.

    Floats are converted once, here, so that the wire never carries a float time: servers
    drop or choke on those.
    """
    if value is None:
        return _time.time_ns()
    if isinstance(value, EventTime):
        sec, nsec = value
        if (
            not (isinstance(sec, int) and isinstance(nsec, int))
            or isinstance(sec, bool) or isinstance(nsec, bool)
            or not 0 <= nsec < _NS
        ):
            raise InvalidTimeError(f"EventTime needs integer seconds and 0 <= ns < 1e9: {value!r}")
        ns = sec * _NS + nsec
    elif isinstance(value, bool):
        raise InvalidTimeError("time must be an EventTime or a number of seconds, not a bool")
    elif isinstance(value, int):
        ns = value * _NS
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidTimeError(f"time must be finite, got {value!r}")
        # Split before scaling so that large timestamps keep their nanoseconds.
        whole = int(value // 1)
        ns = whole * _NS + round((value - whole) * _NS)
    else:
        raise InvalidTimeError(
            f"time must be an EventTime or seconds as int or float, not {type(value).__name__}"
        )
    if not 0 <= ns // _NS <= _MAX_SECONDS:
        raise InvalidTimeError(f"time {value!r} is outside what the protocol can carry (1970-2106)")
    return ns


class Message:
    """One posted record, as both clients carry it from ``post()`` to the wire.

    ``waiter`` (``sync_append``: the record reached the buffer) and ``delivery``
    (``ack=True``: the server acknowledged it) are set only when the caller wants to hear
    what became of the record; the common path leaves both ``None``.
    """

    __slots__ = ("tag", "record", "time_ns", "waiter", "delivery")

    def __init__(
        self,
        tag: str,
        record: Mapping[str, Any],
        time_ns: int,
        waiter: Future[None] | None = None,
        delivery: Future[None] | None = None,
    ) -> None:
        self.tag = tag
        self.record = record
        self.time_ns = time_ns
        self.waiter = waiter
        self.delivery = delivery

    @property
    def time(self) -> EventTime:
        return EventTime.from_ns(self.time_ns)

    def __repr__(self) -> str:
        # Safe for any record (cycles, deep nesting, huge values, a __repr__ that raises),
        # so an on_error callback or a log line can always describe the message.
        return f"Message(tag={self.tag!r}, time={self.time!r}, record={short_repr(self.record)})"


_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxstring = 80
_REPR.maxother = 80


def peer_text(text: str, limit: int = 200) -> str:
    """Words a server sent (a refusal's reason), fit for a message or a log line: cut to
    ``limit`` characters, with lone surrogates (bytes that were not UTF-8) and control
    characters escaped, so that they can neither break a handler that encodes to UTF-8
    nor forge lines of their own in a log."""
    cut = text[:limit]
    if cut.isprintable():
        return cut
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)


def short_repr(obj: object, limit: int = 200) -> str:
    """A repr for messages and logs: never raises, whatever ``obj`` is (also one a server
    sent: a Python repr of deeply nested data would raise RecursionError)."""
    try:
        text = _REPR.repr(obj)
    except Exception:
        text = f"<{type(obj).__name__} object (repr failed)>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
