"""What ``fluentclient cat`` reads: records from JSON lines or a msgpack stream, and their times.

Each reader yields a :class:`Record` for every good record and a :class:`BadInput` for every
line or object that cannot be one, so the caller reports it and goes on. Only a corrupt
msgpack stream ends early: there is no telling where the next object starts.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO, NamedTuple, Union

import msgpack

from .._decoding import new_unpacker
from ..message import EventTime, TimeLike

_CHUNK = 64 * 1024
_NS = 1_000_000_000
_ISO = re.compile(
    r"(?P<base>\d{4}-\d\d-\d\d[T ]\d\d:\d\d(?::\d\d)?)"
    r"(?:[.,](?P<fraction>\d{1,9}))?"
    r"(?P<zone>Z|[+-]\d\d(?::?\d\d)?)?\Z",
    re.IGNORECASE,
)
_INTEGER = re.compile(r"[+-]?\d+\Z")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")


class Record(NamedTuple):
    where: str  # "line 3" or "object 3", for messages about it
    record: dict[Any, Any]
    size: int  # bytes of input it came from


class BadInput(NamedTuple):
    where: str
    reason: str


Item = Union[Record, BadInput]


def json_lines(stream: BinaryIO) -> Iterator[Item]:
    """One JSON object per line; blank lines are skipped, anything else is a BadInput."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"line {number}"
        try:
            value = json.loads(line)
        except UnicodeDecodeError as exc:
            yield BadInput(where, f"not UTF-8: {exc.reason} at byte {exc.start}")
            continue
        except ValueError as exc:
            yield BadInput(where, f"not JSON: {exc}")
            continue
        if isinstance(value, dict):
            yield Record(where, value, len(line))
        else:
            yield BadInput(where, f"expected a JSON object, got {_kind(value)}")


def msgpack_objects(stream: BinaryIO) -> Iterator[Item]:
    """Concatenated msgpack maps, as ``fluent-cat --format msgpack`` takes them."""
    unpacker = new_unpacker()
    fed = 0
    # Where the last whole object ended: tell() also counts a half-parsed one's bytes.
    done = 0
    number = 0
    while True:
        chunk = _read_some(stream)
        if not chunk:
            break
        unpacker.feed(chunk)
        fed += len(chunk)
        while True:
            try:
                value = next(unpacker)
            except StopIteration:
                break
            except (ValueError, msgpack.UnpackException) as exc:
                why = str(exc) or type(exc).__name__
                yield BadInput(f"object {number + 1}", f"not msgpack at byte {done} ({why}); "
                               "the rest of the input is not read")
                return
            number += 1
            start, done = done, unpacker.tell()
            if isinstance(value, dict):
                yield Record(f"object {number}", value, done - start)
            else:
                yield BadInput(f"object {number}", f"expected a map, got {_kind(value)}")
    left = fed - done
    if left:
        yield BadInput(f"object {number + 1}", "the input ends in the middle of it")


def _read_some(stream: BinaryIO) -> bytes:
    # read1 returns what has arrived instead of waiting for a full chunk, so records
    # from a slow producer go out as they come.
    read1 = getattr(stream, "read1", None)
    data: bytes = read1(_CHUNK) if read1 is not None else stream.read(_CHUNK)
    return data


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), f"a {type(value).__name__}"
    )


def take_time(record: dict[Any, Any], key: str, *, keep: bool) -> TimeLike | None:
    """The event time in ``record[key]`` (removed unless ``keep``); None when absent.

    Numbers (and numeric strings) are seconds since the epoch. Text is ISO 8601; without
    an offset it is local time, as fluentd reads it. msgpack timestamps and EventTime are
    taken as they are. Raises ValueError for anything else.
    """
    if key not in record:
        return None
    value = record[key] if keep else record.pop(key)
    return event_time(value)


def event_time(value: Any) -> TimeLike:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, (int, float, EventTime)):
        return value
    if isinstance(value, msgpack.Timestamp):
        return EventTime(value.seconds, value.nanoseconds)
    if isinstance(value, msgpack.ExtType) and value.code == 0 and len(value.data) == 8:
        return EventTime(*struct.unpack(">II", value.data))
    if isinstance(value, str):
        return _text_time(value.strip())
    raise ValueError(f"{_kind(value)} is not a time")


def _text_time(text: str) -> TimeLike:
    if _INTEGER.match(text):
        return int(text)
    if _NUMBER.match(text):
        return float(text)
    match = _ISO.match(text)
    if match is None:
        raise ValueError(f"{text!r} is neither seconds since the epoch nor ISO 8601")
    zone = match["zone"] or ""
    if zone.upper() == "Z":
        zone = "+00:00"
    elif zone and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:] or '00'}"
    try:
        moment = datetime.fromisoformat(match["base"].replace(" ", "T") + zone)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    fraction = (match["fraction"] or "").ljust(9, "0")
    # timestamp() is exact for whole seconds; the fraction is added as integer ns.
    return EventTime(round(moment.timestamp()), int(fraction))
