"""Records that msgpack packs but real servers refuse or choke on, caught one at a time.

Measured against fluentd and Fluent Bit (see docs/hostile.md): a deeply nested record
can crash Fluent Bit or make it keep only the records before it in the frame; NaN or
infinity makes fluentd's JSON outputs refuse the whole frame, for ever; a map key that
is not a str makes both servers drop the record while the client counts it sent. The
guard applies three rules to each record before it is packed:

* ``max_depth``: a record nested deeper (the record itself is level 1, each map, list or
  tuple inside adds one) is refused;
* ``non_str_keys``: ``"str"`` turns int, float, bool, None and bytes keys into str keys
  the way ``json.dumps`` does (bytes are decoded as UTF-8, bad bytes escaped); other key
  types, and a converted key equal to a key already there, refuse the record.
  ``"refuse"`` refuses any non-str key; ``"keep"`` sends keys as msgpack encodes them;
* ``non_finite_floats``: ``"null"`` sends NaN and ±infinity as nil, ``"str"`` as the text
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; ``"refuse"`` refuses the record; ``"keep"``
  sends them as float64.

A refused record raises :class:`UnsafeRecordError`. Records that need no change come back
as the very same object, so the common flat record costs one pass over its value types
and, once its keys have been seen, a set lookup per key.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import UnsafeRecordError
from .message import short_repr

KEY_RULES = ("str", "refuse", "keep")
FLOAT_RULES = ("null", "str", "refuse", "keep")
# Fluent Bit 4.2.8 was measured to crash (SIGSEGV or SIGABRT, taking every record it
# held) on a record of maps nested 15 levels deep in some runs, and on lists inside a
# record 20 levels deep; 14 and less never did. 8 keeps clear of that with room for the
# levels its filters add downstream (the kubernetes filter nests two), and is deeper than
# structured logs go. See docs/hostile.md.
DEFAULT_MAX_DEPTH = 8
# The walk recurses (two frames a level), so the limit keeps it well inside Python's
# recursion limit of 1,000 frames; fluentd reads 128 levels at most anyway.
MAX_DEPTH_LIMIT = 200
# Enough for the key names of any sane set of record shapes; past it new names are still
# checked, just not remembered.
_KNOWN_KEYS_LIMIT = 4096

_NoneType = type(None)
# Exact types that are leaves: nothing inside to check.
_LEAVES = frozenset({str, int, bool, _NoneType, bytes})
# What a flat record may hold and still skip the walk (floats are checked in the bytes).
_FLAT = _LEAVES | {float}
# A float64 whose exponent bits are all set (NaN or ±infinity), as msgpack writes it. The
# same bytes can turn up inside a bin or an int; such a match only costs an exact check.
NON_FINITE_BYTES = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]")

_FLOAT_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _float_text(value: float) -> str:
    """How ``json.dumps`` spells a float: ``NaN``, ``Infinity``, ``-Infinity``, ``1.5``."""
    if value != value:
        return "NaN"
    return _FLOAT_TEXT.get(value) or float.__repr__(value)


class RecordGuard:
    """Applies the three rules; one per packer (it remembers the key names it has seen)."""

    __slots__ = ("max_depth", "non_str_keys", "non_finite_floats", "_known", "_check_keys",
                 "check_floats")

    def __init__(
        self,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        non_str_keys: str = "str",
        non_finite_floats: str = "null",
    ) -> None:
        if type(max_depth) is not int or not 1 <= max_depth <= MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be an int from 1 to {MAX_DEPTH_LIMIT}")
        if non_str_keys not in KEY_RULES:
            raise ValueError(f"non_str_keys must be one of {', '.join(map(repr, KEY_RULES))}")
        if non_finite_floats not in FLOAT_RULES:
            raise ValueError(
                f"non_finite_floats must be one of {', '.join(map(repr, FLOAT_RULES))}")
        self.max_depth = max_depth
        self.non_str_keys = non_str_keys
        self.non_finite_floats = non_finite_floats
        self._check_keys = non_str_keys != "keep"
        # Read by the packer: whether packed bytes must be scanned for NaN and infinity.
        self.check_floats = non_finite_floats != "keep"
        self._known: set[str] = set()

    # -- the fast path -------------------------------------------------------------------

    def flat(self, record: dict[Any, Any]) -> bool:
        """True if ``record`` holds only leaves and floats under known-good keys.

        Such a record needs nothing but the scan of its packed bytes for non-finite
        floats; anything else goes through :meth:`clean`.
        """
        if not _FLAT.issuperset(map(type, record.values())):
            return False
        if not self._check_keys or record.keys() <= self._known:
            return True
        if not all(type(key) is str for key in record):
            return False
        if len(self._known) < _KNOWN_KEYS_LIMIT:
            # Only exact str keys are ever remembered, so a lookup can only match a str
            # (or an equal str subclass, which packs as the same text).
            self._known.update(record)
        return True

    # -- the walk ------------------------------------------------------------------------

    def clean(self, record: dict[Any, Any]) -> dict[Any, Any]:
        """``record`` itself if it is safe, else a safe copy; raises UnsafeRecordError."""
        try:
            cleaned: dict[Any, Any] = self._map(record, 1)
        except RecursionError:
            # Only when called deep in someone's stack: the walk itself stays shallow.
            raise UnsafeRecordError("the record is nested too deep to check") from None
        return cleaned

    def _map(self, obj: dict[Any, Any], depth: int) -> dict[Any, Any]:
        if depth > self.max_depth:
            raise UnsafeRecordError(
                f"the record is nested more than max_depth={self.max_depth} levels deep")
        out: dict[Any, Any] = {}
        changed = False
        check_keys = self._check_keys
        for key, value in obj.items():
            if check_keys and not isinstance(key, str):
                new_key = self._key(key)
            else:
                new_key = key
            new_value = self._value(value, depth)
            if new_key is not key:
                changed = True
                if new_key in out or new_key in obj:
                    raise UnsafeRecordError(
                        f"the key {short_repr(key, 40)} made a str is {new_key!r}, "
                        "a key the record already has")
            elif new_value is not value:
                changed = True
            out[new_key] = new_value
        return out if changed else obj

    def _list(self, obj: list[Any] | tuple[Any, ...], depth: int) -> Any:
        if depth > self.max_depth:
            raise UnsafeRecordError(
                f"the record is nested more than max_depth={self.max_depth} levels deep")
        out = [self._value(item, depth) for item in obj]
        if any(new is not old for new, old in zip(out, obj)):
            return out
        return obj

    def _value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind in _LEAVES:
            return value
        if kind is float:
            if value - value == 0.0 or not self.check_floats:
                return value
            return self._non_finite(value)
        if kind is dict:
            return self._map(value, depth + 1)
        if kind is list or kind is tuple:
            return self._list(value, depth + 1)
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

