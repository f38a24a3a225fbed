"""What log integrations share: values the packer always accepts, tags made from names,
exceptions as fields, and the event time of a :class:`logging.LogRecord`.

A logging call must never lose its line because one value in it cannot be serialized, and
the packer runs later, on the reader thread, where a failure drops the whole record. So
log integrations convert values on the caller's thread first, with :func:`safe_value`.
"""

from __future__ import annotations

import datetime
import logging
import math
import sys
import time
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Callable, Optional, Union

from ._plain_values import iso_text
from .errors import InvalidTagError
from .guard import DEFAULT_MAX_DEPTH
from .message import MAX_TAG_LENGTH, TAG_UNSAFE_CHARS

# The tag part grammar the clients accept, and what replaces anything else.
# Nesting past this depth is written as text: it also ends self-referencing containers.
# A field's value sits at level 2 of its record, so this keeps a log line within the
# client's default max_depth: the line is cut short rather than dropped as unsafe.
_MAX_DEPTH = DEFAULT_MAX_DEPTH - 1
_INT_MIN = -(2**63)
_TIMES = (datetime.date, datetime.time)
_INT_MAX = 2**64 - 1
_NS = 1_000_000_000
_MS = 1_000_000

ExcInfo = tuple[type[BaseException], BaseException, Optional[TracebackType]]
OptExcInfo = Union[ExcInfo, tuple[None, None, None]]
Converter = Callable[[Any], Any]


def text(value: object) -> str:
    """``str(value)``, else ``repr(value)``, else a placeholder: never raises."""
    for convert in (str, repr):
        try:
            return convert(value)
        except Exception:
            pass
    return f"<unprintable {type(value).__name__}>"


def safe_value(value: Any, default: Converter | None = str, _depth: int = 0) -> Any:
    """``value`` made of what msgpack packs: str, bytes, bool, int, float, None, dict, list.

    Mappings become dicts with str keys and sequences and sets become lists, recursively;
    a datetime, date or time becomes its ISO 8601 text, as the clients send it.
    Anything else goes through ``default`` (``str`` by default); whatever fails or is still
    not packable ends up as text, so this never raises.
    """
    if value is None or isinstance(value, (str, bool, float, bytes)):
        return value
    if isinstance(value, int):
        # msgpack packs 64-bit integers, signed or unsigned, and raises past them.
        return value if _INT_MIN <= value <= _INT_MAX else str(value)
    if _depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            try:
                items = list(value.items())
            except Exception:
                return text(value)
            return {
                (k if isinstance(k, str) else text(k)): safe_value(v, default, _depth + 1)
                for k, v in items
            }
        if isinstance(value, (list, tuple, set, frozenset)):
            return [safe_value(v, default, _depth + 1) for v in value]
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
        if isinstance(value, _TIMES):
            # As the clients send them (see _plain_values.plain_value): one form everywhere.
            try:
                return iso_text(value)
            except Exception:
                return text(value)
        if default is not None:
            try:
                converted = default(value)
            except Exception:
                return text(value)
            if converted is not value:
                return safe_value(converted, default, _depth + 1)
    return text(value)


def tag_from_name(name: str, prefix: str | None = None) -> str:
    """A valid tag from a logger name: other characters become ``_``, empty parts go.

    ``"my app..db"`` becomes ``"my_app.db"``; a name with nothing usable becomes ``"root"``.
    """
    parts = [TAG_UNSAFE_CHARS.sub("_", part) for part in name.split(".")]
    tag = ".".join(part for part in parts if part) or "root"
    if prefix:
        tag = f"{prefix}.{tag}"
    return tag[:MAX_TAG_LENGTH].rstrip(".")


def check_tag(tag: str, what: str = "tag") -> str:
    """``tag`` itself if the clients accept it, else :class:`InvalidTagError`."""
    if not isinstance(tag, str) or not tag or tag_from_name(tag) != tag:
        raise InvalidTagError(
            f"{what} {tag!r} is not dot-separated parts of letters, digits, '_' and '-'"
        )
    return tag


def exc_info_of(value: object) -> ExcInfo | None:
    """Normalize what ``exc_info=`` may hold (True, an exception, a tuple) to a triple."""
    if value is True:
        current = sys.exc_info()
        return current if current[0] is not None else None
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if (
        isinstance(value, tuple) and len(value) == 3
        and isinstance(value[0], type) and isinstance(value[1], BaseException)
    ):
        return value
    return None


def exception_type_name(exc_type: type[BaseException]) -> str:
    module = getattr(exc_type, "__module__", None)
    name = getattr(exc_type, "__qualname__", exc_type.__name__)
    return name if module in (None, "builtins", "__main__") else f"{module}.{name}"


def exception_fields(
    exc: ExcInfo, traceback_text: str | None = None
) -> tuple[str, str, str]:
    """The exception's type name, its message and its formatted traceback."""
    if traceback_text is None:
        traceback_text = "".join(traceback.format_exception(*exc)).rstrip("\n")
    return exception_type_name(exc[0]), text(exc[1]), traceback_text


def record_time_ns(record: logging.LogRecord) -> int:
    """The moment a LogRecord was made, in integer nanoseconds since the epoch.

    Python 3.13 records carry ``created_ns``. Before that only the float ``created`` exists
    (about a quarter of a microsecond apart at today's dates) and ``msecs``, which logging
    truncated from the same float: the result is kept inside that millisecond so that the
    event time never disagrees with a ``%(msecs)d`` or ``asctime`` in the same line. A
    record whose time was edited to nonsense is stamped now, rather than lost.
    """
    created = getattr(record, "created", None)
    if (
        isinstance(created, bool) or not isinstance(created, (int, float))
        or not math.isfinite(created) or created < 0
    ):
        return time.time_ns()
    ns = getattr(record, "created_ns", None)
    # Someone may have changed created after the record was made: created then wins.
    if type(ns) is int and abs(ns - created * _NS) < _MS:
        return ns
    # A created_ns that disagrees says created was edited, and msecs (taken with
    # created_ns) is then stale too: it must not pull the edited time into its
    # millisecond, even when the two happen to be close.
    edited = type(ns) is int
    whole = int(created)
    nanos = round((created - whole) * _NS)
    msecs = getattr(record, "msecs", None)
    if (
        not edited and isinstance(msecs, (int, float)) and not isinstance(msecs, bool)
        and 0 <= msecs < 1000
    ):
        low = int(msecs) * _MS
        if abs(nanos - low) <= 2 * _MS:  # the same clock reading, not an edited created
            nanos = min(max(nanos, low), low + _MS - 1)
    return whole * _NS + min(nanos, _NS - 1)
