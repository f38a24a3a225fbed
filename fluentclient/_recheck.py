"""A second look at a packed record that Python code rewrote while it was being packed.

Where a ``default=`` hook, a subclass's method or an escaped str changed what was packed,
:class:`~fluentclient.framing.EntryPacker` has the bytes decoded again: that proves them
one whole msgpack object with distinct keys in every map, and lets the guard see the
result rather than the record.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ._decoding import hashable
from .errors import SerializationError, UnsafeRecordError
from .guard import RecordGuard
from .message import short_repr

_CHANGED = ("the record changed while it was being serialized (a default hook, or another "
            "thread, altered a list or dict in it)")


def _distinct_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A decoded map, refused if two of its keys came out the same.

    Rewrites made while packing (a lone surrogate escaped as ``\\udc80``, a key made by
    ``default=``, a str subclass made a plain str) can turn two keys into one spelling:
    every server then keeps one value and loses the other without a word.
    """
    try:
        out = dict(pairs)
    except TypeError:  # a map used as a key (under non_str_keys="keep"): not hashable
        out = {hashable(key): value for key, value in pairs}
    if len(out) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            key = hashable(key)
            if key in seen:
                raise UnsafeRecordError(
                    f"two keys of a map are both sent as {short_repr(key, 40)}")
            seen.add(key)
    return out


def _decoded(body: bytes) -> Any:
    """``body`` decoded, keys proven distinct in every map, arrays as tuples (so an array
    used as a key stays hashable).

    Decoding also proves the bytes are exactly one msgpack object. msgpack writes a
    list's or dict's length before its items: had Python code run while it packed and
    changed that length, the bytes would no longer parse as the one object they claim to
    be, and would garble every entry after them in the frame.
    """
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=False, use_list=False, timestamp=0,
            object_pairs_hook=_distinct_map,
        )
    except UnsafeRecordError:
        raise
    except Exception as exc:
        raise SerializationError(_CHANGED) from exc


def check_distinct(body: bytes) -> None:
    """Raise unless ``body`` is exactly one msgpack object with distinct keys in each map."""
    _decoded(body)


def second_look(body: bytes, guard: RecordGuard) -> bytes:
    """The guard's rules applied to what the packer made of a record's odd values.

    Python code ran during packing (a subclass turned into its plain value, another
    Mapping copied, a ``default=`` hook): the result, not the record, is what the guard
    must see, since a hook may return NaN or something deeply nested. Decoding also
    proves the bytes whole and the keys distinct (see :func:`_decoded`).
    """
    record = _decoded(body)
    cleaned = guard.clean(record)
    if cleaned is record:
        return body
    # What was decoded packs again; were it ever to fail, the packer's caller words it
    # as it words any other failure of a record.
    packed: bytes = msgpack.packb(cleaned, use_bin_type=True)
    return packed
