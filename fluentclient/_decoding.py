"""Reading the forward protocol: frames in all four event modes, gzip, both time forms.

The embedded server decodes what clients send with it, the clients read acks and the
handshake with :func:`new_unpacker`, and the tests check the wire with it. Its public
names are importable from :mod:`fluentclient.framing`.
"""

from __future__ import annotations

import gzip
import struct
from typing import Any, Union

import msgpack

from ._words import count
from .message import EventTime, short_repr

_NS = 1_000_000_000

Time = Union[EventTime, int, float]
Entry = tuple[Time, Any]


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        return EventTime(*struct.unpack(">II", data))
    return msgpack.ExtType(code, data)


def new_unpacker(**kwargs: Any) -> msgpack.Unpacker:
    """A streaming unpacker that knows EventTime and accepts every legal encoding width."""
    options: dict[str, Any] = dict(
        ext_hook=_ext_hook,
        raw=False,
        unicode_errors="surrogateescape",
        strict_map_key=False,
        max_buffer_size=64 * 1024 * 1024,
    )
    options.update(kwargs)
    return msgpack.Unpacker(**options)


class FrameError(ValueError):
    """A frame the forward protocol does not allow."""


def _plain_time(t: Any) -> Time:
    # The v1.5 "metadata" form carries [EventTime, {meta}] in place of the time.
    if isinstance(t, list) and t:
        t = t[0]
    if isinstance(t, (EventTime, int, float)) and not isinstance(t, bool):
        return t
    raise FrameError(f"bad event time {short_repr(t)}")


def _entries(payload: bytes, unpacker: msgpack.Unpacker) -> list[Entry]:
    unpacker.feed(payload)
    entries = []
    for entry in unpacker:
        if not isinstance(entry, list) or len(entry) != 2:
            raise FrameError(f"bad entry {short_repr(entry)}")
        entries.append((_plain_time(entry[0]), entry[1]))
    # The stream has no count of its own: a payload cut inside an entry just stops.
    if unpacker.tell() != len(payload):
        short = len(payload) - unpacker.tell()
        raise FrameError(f"entries end {count(short, 'byte')} short of a whole entry")
    return entries


def hashable(value: Any) -> Any:
    """A decoded value usable as a dict key: arrays and maps become tuples."""
    if isinstance(value, list):
        return tuple(hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple((hashable(k), hashable(v)) for k, v in value.items())
    return value


def _dict_with_hashable_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {hashable(key): value for key, value in pairs}


def _decode_entries(payload: bytes) -> list[Entry]:
    try:
        return _entries(payload, new_unpacker())
    except TypeError:
        # A map key that is an array or a map (what a tuple key becomes): fluentd takes
        # it, but a Python dict needs hashable keys, so such keys are decoded as tuples.
        return _entries(payload, new_unpacker(object_pairs_hook=_dict_with_hashable_keys))


class DecodedFrame:
    """What one frame carried: its tag, its entries, its options and its event mode."""

    __slots__ = ("tag", "entries", "options", "mode")

    def __init__(self, tag: str, entries: list[Entry], options: dict[str, Any], mode: str):
        self.tag = tag
        self.entries = entries
        self.options = options
        self.mode = mode


def decode_frame(obj: Any) -> DecodedFrame:
    """Decode one top-level object of the stream in any of the four event modes."""
    if not isinstance(obj, list) or len(obj) < 2 or not isinstance(obj[0], str):
        raise FrameError("a frame is an array of at least two elements starting with a str tag")
    tag, second = obj[0], obj[1]
    if isinstance(second, list):
        options = obj[2] if len(obj) > 2 else {}
        entries = []
        for entry in second:
            if not isinstance(entry, list) or len(entry) != 2:
                raise FrameError(f"bad entry {short_repr(entry)}")
            entries.append((_plain_time(entry[0]), entry[1]))
        mode = "Forward"
    elif isinstance(second, (bytes, str)):
        options = obj[2] if len(obj) > 2 else {}
        payload = second.encode("utf-8", "surrogateescape") if isinstance(second, str) else second
        compressed = isinstance(options, dict) and options.get("compressed") == "gzip"
        if compressed:
            payload = gzip.decompress(payload)  # joins back-to-back members too
        entries = _decode_entries(payload)
        mode = "CompressedPackedForward" if compressed else "PackedForward"
    else:
        if len(obj) < 3:
            raise FrameError("a Message-mode frame needs tag, time and record")
        options = obj[3] if len(obj) > 3 else {}
        entries = [(_plain_time(second), obj[2])]
        mode = "Message"
    if not isinstance(options, dict):
        raise FrameError(f"options must be a map, got {short_repr(options)}")
    return DecodedFrame(tag, entries, options, mode)


def ack_for(chunk: Any) -> bytes:
    """The server's reply to a frame that carried ``chunk``."""
    packed: bytes = msgpack.packb({"ack": chunk}, use_bin_type=True)
    return packed


def decoded_time_ns(t: Time) -> int:
    """Nanoseconds of a decoded time, whatever form it arrived in."""
    if isinstance(t, EventTime):
        return t.to_ns()
    if isinstance(t, float):
        return round(t * _NS)
    return t * _NS
