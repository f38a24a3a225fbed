"""Records that msgpack packs but real servers refuse or choke on, caught one at a time.

Measured against fluentd and Fluent Bit (see docs/hostile.md): a deeply nested record
can crash Fluent Bit or make it keep only the records before it in the frame; NaN or
infinity makes fluentd's JSON outputs refuse the whole frame, for ever; a map key that
is not a str makes Fluent Bit drop the record, and bytes that are not UTF-8 make
fluentd's JSON outputs drop it, while the client counts it sent. The
guard applies four rules to each record before it is packed:

* ``max_depth``: a record nested deeper (the record itself is level 1, each map, list or
  tuple inside adds one) is refused;
* ``non_str_keys``: ``"str"`` turns int, float, bool, None and bytes keys into str keys
  the way ``json.dumps`` does (bytes are decoded as UTF-8, bad bytes escaped); other key
  types, and a converted key equal to a key already there, refuse the record.
  ``"refuse"`` refuses any non-str key; ``"keep"`` sends keys as msgpack encodes them;
* ``non_finite_floats``: ``"null"`` sends NaN and ±infinity as nil, ``"str"`` as the text
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; ``"refuse"`` refuses the record; ``"keep"``
  sends them as float64;
* ``non_utf8_bytes``: bytes that are not UTF-8 (fluentd's JSON outputs drop the record,
  Fluent Bit drops the bad bytes) are sent as text with each bad byte written ``\\xNN``
  under ``"str"``; ``"refuse"`` refuses the record; ``"keep"`` sends them as ``bin``.
  Bytes that are UTF-8 stay ``bin``: both servers store them as text.

A refused record raises :class:`UnsafeRecordError`. Records that need no change come back
as the very same object; the common flat record costs one short loop over its items, and
only records holding maps, lists or tuples are walked.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable

from .errors import UnsafeRecordError
from .message import short_repr

__all__ = [
    "RecordGuard",
    "DEFAULT_MAX_DEPTH",
    "MAX_DEPTH_LIMIT",
    "KEY_RULES",
    "FLOAT_RULES",
    "BYTES_RULES",
]

KEY_RULES = ("str", "refuse", "keep")
FLOAT_RULES = ("null", "str", "refuse", "keep")
BYTES_RULES = ("str", "refuse", "keep")
# Fluent Bit 4.2.8 crashed (SIGABRT or SIGSEGV, losing what it held and what came next) on
# a record of 15 nested maps, or of lists 17 levels deep, in every run measured; 14 never
# did. 8 keeps clear of that with room for the levels its filters add downstream (the
# kubernetes filter nests two), and is deeper than structured logs go. docs/hostile.md
# has the measurements.
DEFAULT_MAX_DEPTH = 8
# The walk recurses (two frames a level), so the limit keeps it well inside Python's
# recursion limit of 1,000 frames; fluentd reads 128 levels at most anyway.
MAX_DEPTH_LIMIT = 200

_NoneType = type(None)
# Exact types that are leaves: nothing inside to check.
_LEAVES = frozenset({str, int, bool, _NoneType})
# What msgpack packs by itself that holds something the rules look at. Any other type
# (subclasses, other Mappings, objects for default=) goes through the packer's default,
# and what it makes of them gets a second look after packing unless it is a str.
_WALK = frozenset({dict, list, tuple, bytearray, memoryview})

_FLOAT_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _float_text(value: float) -> str:
    """How ``json.dumps`` spells a float: ``NaN``, ``Infinity``, ``-Infinity``, ``1.5``."""
    if value != value:
        return "NaN"
    return _FLOAT_TEXT.get(value) or float.__repr__(value)


class RecordGuard:
    """Applies the four rules. Holds nothing but its settings: any thread may use it."""

    __slots__ = ("max_depth", "non_str_keys", "non_finite_floats", "non_utf8_bytes",
                 "_check_keys", "check_floats", "_check_bytes", "flat_check")

    def __init__(
        self,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        non_str_keys: str = "str",
        non_finite_floats: str = "null",
        non_utf8_bytes: str = "str",
    ) -> None:
        if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be an int from 1 to {MAX_DEPTH_LIMIT}")
        if non_str_keys not in KEY_RULES:
            raise ValueError(f"non_str_keys must be one of {', '.join(map(repr, KEY_RULES))}")
        if non_finite_floats not in FLOAT_RULES:
            raise ValueError(
                f"non_finite_floats must be one of {', '.join(map(repr, FLOAT_RULES))}")
        if non_utf8_bytes not in BYTES_RULES:
            raise ValueError(
                f"non_utf8_bytes must be one of {', '.join(map(repr, BYTES_RULES))}")
        self.max_depth = max_depth
        self.non_str_keys = non_str_keys
        self.non_finite_floats = non_finite_floats
        self._check_keys = non_str_keys != "keep"
        self.non_utf8_bytes = non_utf8_bytes
        self.check_floats = non_finite_floats != "keep"
        self._check_bytes = non_utf8_bytes != "keep"
        # :meth:`flat` as a plain function, chosen once for these rules.
        self.flat_check: Callable[[dict[Any, Any]], bool] = (
            _flat_strict if self._check_keys and self.check_floats and self._check_bytes
            else partial(_flat_lenient, self._check_keys, self.check_floats,
                         self._check_bytes))

    # -- the fast path -------------------------------------------------------------------

    def flat(self, record: dict[Any, Any]) -> bool:
        """True if ``record`` is flat and already safe: str keys, no maps, lists or tuples,
        finite floats, UTF-8 bytes. Values of other types are the packer's to convert.

        Anything else goes through :meth:`clean`. The packer's loop calls
        :attr:`flat_check` itself, which spares it this method's call.
        """
        return self.flat_check(record)

    # -- the walk ------------------------------------------------------------------------

    def clean(self, record: dict[Any, Any], *, copy: bool = False) -> dict[Any, Any]:
        """``record`` itself if it is safe, else a safe copy; raises UnsafeRecordError.

        ``copy=True`` (the packer's way) copies each dict and list before looking at it,
        in one C call that another thread's change lands wholly before or after, and
        returns those copies: what is packed next is then exactly what was checked, and
        no other thread can change it half-way.
        """
        try:
            cleaned: dict[Any, Any] = self._map(record, 1, copy)
        except RecursionError:
            # Only when called deep in someone's stack: the walk itself stays shallow.
            raise UnsafeRecordError("the record is nested too deep to check") from None
        return cleaned

    def _map(self, obj: dict[Any, Any], depth: int, copy: bool) -> dict[Any, Any]:
        self._check_depth(depth)
        if copy:
            obj = obj.copy()
        # Built only from the first item that changes: most nested records need nothing.
        out: dict[Any, Any] | None = None
        check_keys = self._check_keys
        for key, value in obj.items():
            new_key = key
            if check_keys and type(key) is not str and not isinstance(key, str):
                new_key = self._key(key)
            kind = type(value)
            if kind in _LEAVES or (kind is float and value - value == 0.0):
                new_value = value
            else:
                new_value = self._value(value, depth, copy)
            if out is None:
                if new_key is key:
                    if new_value is not value and copy:
                        # Our own copy: a new value can go in place, keeping the order.
                        obj[key] = new_value
                    elif new_value is not value:
                        out = _items_before(obj, key)
                        out[key] = new_value
                    continue
                out = _items_before(obj, key)
            if new_key is not key and (new_key in out or new_key in obj):
                raise UnsafeRecordError(
                    f"the key {short_repr(key, 40)} made a str is {new_key!r}, "
                    "a key the record already has")
            out[new_key] = new_value
        return obj if out is None else out

    def _check_depth(self, depth: int) -> None:
        if depth > self.max_depth:
            raise UnsafeRecordError(
                f"the record is nested more than max_depth={self.max_depth} levels deep")

    def _list(self, obj: list[Any] | tuple[Any, ...], depth: int, copy: bool) -> Any:
        self._check_depth(depth)
        if copy and type(obj) is list:
            obj = obj.copy()
        out: list[Any] | None = None
        for index, item in enumerate(obj):
            kind = type(item)
            if kind in _LEAVES or (kind is float and item - item == 0.0):
                new = item
            else:
                new = self._value(item, depth, copy)
            if out is None:
                if new is item:
                    continue
                if copy and type(obj) is list:
                    obj[index] = new  # our own copy
                    continue
                out = list(obj[:index])
            out.append(new)
        return obj if out is None else out

    def _value(self, value: Any, depth: int, copy: bool = False) -> Any:
        kind = type(value)
        if kind in _LEAVES:
            return value
        if kind is float:
            if value - value == 0.0 or not self.check_floats:
                return value
            return self._non_finite(value)
        if kind is bytes:
            if not self._check_bytes or value.isascii() or _is_utf8(value):
                return value
            if self.non_utf8_bytes == "refuse":
                raise UnsafeRecordError(f"the record holds bytes that are not UTF-8: "
                                        f"{short_repr(value, 40)}")
            return value.decode("utf-8", "backslashreplace")
        if (kind is bytearray or kind is memoryview) and self._check_bytes:
            # msgpack packs these as bin itself, without asking the packer's default. A
            # strided memoryview is left for msgpack to refuse.
            if kind is memoryview and not value.contiguous:
                return value
            data = bytes(value) if kind is bytearray else value.tobytes()
            checked = self._value(data, depth)
            # The copy is what was checked: the original may still change.
            return value if checked is data and not copy else checked
        if kind is dict:
            return self._map(value, depth + 1, copy)
        if kind is list or kind is tuple:
            return self._list(value, depth + 1, copy)
        # Anything else (subclasses, other Mappings, objects for default=) is turned into
        # plain values by the packer, which then hands the result back for a second look.
        return value

    def _non_finite(self, value: float) -> Any:
        rule = self.non_finite_floats
        if rule == "null":
            return None
        if rule == "str":
            return _float_text(value)
        raise UnsafeRecordError(f"the record holds the float {_float_text(value)}")

    def _key(self, key: Any) -> Any:
        if self.non_str_keys == "refuse":
            raise UnsafeRecordError(
                f"the record has a key of type {type(key).__name__}: {short_repr(key, 40)}")
        if key is None:
            return "null"
        if isinstance(key, bool):
            return "true" if key else "false"
        if isinstance(key, int):
            return int.__repr__(key)
        if isinstance(key, float):
            return _float_text(key)
        if isinstance(key, (bytes, bytearray)):
            return bytes(key).decode("utf-8", "backslashreplace")
        if isinstance(key, (tuple, list)):
            raise UnsafeRecordError(
                f"the record has an array as a key, which has no str form: "
                f"{short_repr(key, 40)}")
        # Other objects are for the packer (and default=) to turn into something; what
        # comes of them gets a second look.
        return key


def _flat_strict(
    record: dict[Any, Any], str: type = str, int: type = int, float: type = float,
    bytes: type = bytes, type: type = type,
) -> bool:
    """:meth:`RecordGuard.flat` under the default rules, for every record the reader packs.

    One loop in Python is cheaper here than a set of the value types plus separate key and
    float checks (measured with benchmarks/odd_records.py), and it never builds anything.
    The builtins it names are its own arguments: locals are read faster than builtins,
    about a tenth of this loop.
    """
    for key, value in record.items():
        if type(key) is not str:
            return False
        kind = type(value)
        if kind is str or kind is int:
            continue
        if kind is float:
            if value - value != 0.0:  # NaN or an infinity
                return False
            continue
        if kind is bytes:
            if not (value.isascii() or _is_utf8(value)):
                return False
            continue
        if kind in _WALK:
            return False
    return True


def _flat_lenient(
    check_keys: bool, check_floats: bool, check_bytes: bool, record: dict[Any, Any]
) -> bool:
    """:meth:`RecordGuard.flat` where a rule is "keep": what it keeps is not looked at."""
    for key, value in record.items():
        if check_keys and type(key) is not str:
            return False
        kind = type(value)
        if kind is float:
            if check_floats and value - value != 0.0:
                return False
        elif kind is bytes:
            if check_bytes and not (value.isascii() or _is_utf8(value)):
                return False
        elif kind in _WALK:
            return False
    return True


def _items_before(obj: dict[Any, Any], stop: Any) -> dict[Any, Any]:
    """A copy of the items of ``obj`` that come before the key ``stop``."""
    out = {}
    for key, value in obj.items():
        if key is stop:
            break
        out[key] = value
    return out


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
