"""The plain built-in value the packer sends for a value msgpack has no exact type for:
a tuple, a subclass of a built-in type, a datetime, date or time."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

_TIMES = (datetime.date, datetime.time)  # datetime.datetime is a date


def iso_text(value: datetime.date | datetime.time) -> str:
    """A datetime, date or time as ISO 8601 text: ``2024-01-02T03:04:05.000006+00:00``.

    A naive datetime or time is sent as it is, without an offset: the client cannot know
    which zone it meant. A subclass whose ``isoformat`` fails is written with the base
    class's.
    """
    text: object = None
    try:
        text = value.isoformat()
    except Exception:
        pass
    if type(text) is str:
        return text
    if isinstance(value, datetime.datetime):
        return datetime.datetime.isoformat(value)
    if isinstance(value, datetime.date):
        return datetime.date.isoformat(value)
    return datetime.time.isoformat(value)


def plain_value(obj: Any) -> Any:
    """The plain built-in value of a tuple or of a subclass of a type msgpack packs, or
    the ISO 8601 text of a datetime, date or time.

    The copies go through the base types' own methods, so a subclass's overrides (a
    str-mixin Enum's ``__str__``) do not change the value. Anything else comes back as is.

    Datetimes are the one value with no msgpack form that nearly every application logs;
    refusing them cost the whole record, while the log integrations sent them as text.
    ISO 8601 is what both servers' parsers, Elasticsearch and Loki read as a time, and it
    is decided before ``default=`` so that a datetime reads the same whatever client or
    integration sent it.
    """
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):
        return int.__int__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(memoryview(obj))
    if isinstance(obj, _TIMES):
        return iso_text(obj)
    return obj
