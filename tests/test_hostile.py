"""Hostile input: odd records, tags and times, one table row each, through every way in.

Each row says what must become of its input: it arrives in a documented form (``Sent``),
it is dropped, counted under a reason and reported to ``on_error`` (``Dropped``), or
``post()`` refuses it at once (``Refused``). Every row runs through
``BufferedClient.post()``, ``post(sync_append=True)`` and ``SyncClient``, with a good
record posted just before and just after the bad one under the same tag, so all three
share a frame: a bad entry that garbled the frame would take its neighbours with it.
docs/hostile.md is this table in prose; a test below keeps the two in step.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import enum
import math
import re
import threading
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Union

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import (
    BufferedClient,
    Buffering,
    EventTime,
    FluentError,
    InvalidTagError,
    InvalidTimeError,
    RecordRules,
    RecordTooLargeError,
    SerializationError,
    SyncClient,
    UnsafeRecordError,
)
from fluentclient.framing import EntryPacker, decode_frame, frame_overhead, packed_forward_frame
from fluentclient.guard import RecordGuard
from fluentclient.message import Message
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF

TAG = "hostile.case"
UTC = datetime.timezone.utc
FRAME = 64 * 1024
BUFFER = 256 * 1024
GOOD = ({"good": 0}, {"good": 1})
T0 = EventTime(1700000000, 5)
Hook = Optional[Callable[[Any], Any]]


# -- the outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """Arrives; ``record`` is what the server decodes, or a predicate on it."""

    record: Any
    time: EventTime | None = None


@dataclass(frozen=True)
class Dropped:
    """Taken by post(), then dropped: counted under ``reason``, reported as ``error``."""

    error: type[FluentError]
    reason: str


@dataclass(frozen=True)
class Refused:
    """post() raises ``error`` at once, in every mode; nothing is counted."""

    error: type[FluentError]


Outcome = Union[Sent, Dropped, Refused]
UNSERIALIZABLE = Dropped(SerializationError, "unserializable")
UNSAFE = Dropped(UnsafeRecordError, "unsafe")
TOO_LARGE = Dropped(RecordTooLargeError, "too_large")
BAD_TAG = Refused(InvalidTagError)
BAD_TIME = Refused(InvalidTimeError)
NOT_A_MAPPING = Refused(SerializationError)


@dataclass(frozen=True)
class Case:
    id: str
    # Builds the record (and the default hook) afresh for each run: some rows are cyclic,
    # huge, or changed by another thread while they are packed.
    make: Callable[[], tuple[Any, Hook]]
    outcome: Outcome
    tag: Any = TAG
    time: Any = T0
    # Run on another thread right after post() returned (the record is passed in).
    after: Callable[[Any], None] | None = None
    # More options for both clients (the odd-record rules).
    options: tuple[tuple[str, Any], ...] = ()


def row(
    id: str, record: Callable[[], Any], outcome: Outcome, *, default: Hook = None,
    tag: Any = TAG, time: Any = T0, after: Callable[[Any], None] | None = None,
    **options: Any,
) -> Case:
    return Case(id, lambda: (record(), default), outcome, tag, time, after,
                tuple(options.items()))


# -- odd things to put in records -----------------------------------------------------------


class Opaque:
    """An object msgpack knows nothing about."""


class Unprintable:
    """Its repr and str raise, so does anything that tries to describe it."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message either")


class Color(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    WARN = 30


class Plain(enum.Enum):
    A = 1


class Point(NamedTuple):
    x: int
    y: int


class Loud(str):
    def __str__(self) -> str:
        return "not the value"


class Ratio(float):
    pass


class Count(int):
    pass


class ItemsRaise(dict):  # type: ignore[type-arg]
    def items(self):  # type: ignore[no-untyped-def, override]
        raise RuntimeError("items() is broken")


class ItemsLie(dict):  # type: ignore[type-arg]
    """Says it has one pair, yields two: packed as is, the map would be garbled."""

    def items(self):  # type: ignore[no-untyped-def, override]
        return [("a", 1), ("b", 2)]


class Settings(Mapping[str, Any]):
    """A Mapping that is not a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class BrokenMapping(Settings):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("cannot read this mapping")


def nest(levels: int, leaf: Any = None, *, as_list: bool = False) -> Any:
    """``levels`` containers nested in each other (built without recursion)."""
    value: Any = [] if as_list else {}
    for _ in range(levels - 1):
        value = [value] if as_list else {"a": value}
    return value


def dict_depth(record: Any) -> int:
    depth = 0
    while isinstance(record, dict):
        depth += 1
        record = record.get("a")
    return depth


def cyclic_dict() -> dict[str, Any]:
    record: dict[str, Any] = {"name": "loop"}
    record["self"] = record
    return record


def cyclic_list() -> dict[str, Any]:
    items: list[Any] = [1]
    items.append(items)
    return {"items": items}


def huge(size: int) -> dict[str, Any]:
    return {"blob": "x" * size}


def fits_exactly() -> dict[str, Any]:
    # 11 bytes of entry head, a fixmap, "blob" and a str16 header around the payload.
    size = FRAME - frame_overhead(TAG) - 11 - 1 - 5 - 3
    return huge(size)


def one_byte_too_many() -> dict[str, Any]:
    record = fits_exactly()
    record["blob"] += "x"
    return record


def raise_hook(obj: Any) -> Any:
    raise RuntimeError(f"the hook refuses {type(obj).__name__}")


def unprintable_raise_hook(obj: Any) -> Any:
    raise UnprintableError()


def forever_hook(obj: Any) -> Any:
    return forever_hook(obj)


def numpy_record(build: Callable[[Any], Any]) -> Callable[[], Any]:
    def make() -> Any:
        np = pytest.importorskip("numpy")  # never a dependency: only checked where present
        return build(np)

    return make


def mutated_mid_pack(
    build: Callable[[], dict[str, Any]], mutate: Callable[[dict[str, Any]], None]
) -> Callable[[], tuple[Any, Hook]]:
    """A record whose default hook lets another thread change it while msgpack is inside it.

    The hook wakes the other thread and waits until it has made its change, so the change
    lands in the middle of packing every time.
    """

    def make() -> tuple[Any, Hook]:
        record = build()
        go, done = threading.Event(), threading.Event()

        def other_thread() -> None:
            if go.wait(10):
                mutate(record)
                done.set()

        threading.Thread(target=other_thread, daemon=True).start()

        def hook(obj: Any) -> Any:
            go.set()
            done.wait(10)
            return "converted"

        return record, hook

    return make


def mutate_after_post(record: dict[str, Any]) -> None:
    # One C call: the reader sees the record wholly before or wholly after it.
    record.update(state="after", extra=[1, 2, 3])


# -- the table -------------------------------------------------------------------------------

CASES: list[Case] = [
    # structure
    row("cyclic-dict", cyclic_dict, UNSAFE),
    row("cyclic-list", cyclic_list, UNSAFE),
    row("cyclic-dict-max-depth-200", cyclic_dict, UNSAFE, max_depth=200),
    row("deep-8", lambda: nest(8), Sent(lambda r: dict_depth(r) == 8)),
    row("deep-9", lambda: nest(9), UNSAFE),
    row("deep-lists-9", lambda: {"v": nest(8, as_list=True)}, UNSAFE),
    row("deep-tuples-9", lambda: {"v": ((((((((1,),),),),),),),)}, UNSAFE),
    row("deep-9-in-mapping", lambda: {"v": types.MappingProxyType(nest(8))}, UNSAFE),
    row("deep-from-default", lambda: {"v": Opaque()}, UNSAFE, default=lambda o: nest(8)),
    row("deep-200-max-depth-200", lambda: nest(200), Sent(lambda r: dict_depth(r) == 200),
        max_depth=200),
    row("deep-201-max-depth-200", lambda: nest(201), UNSAFE, max_depth=200),
    row("deep-100000-dicts", lambda: nest(100_000), UNSAFE),
    row("deep-100000-lists", lambda: {"v": nest(100_000, as_list=True)}, UNSAFE),
    # numbers
    row("int-2**64", lambda: {"v": 2**64}, UNSERIALIZABLE),
    row("int-below-int64", lambda: {"v": -(2**63) - 1}, UNSERIALIZABLE),
    row("int-10**100", lambda: {"v": 10**100}, UNSERIALIZABLE),
    row("int-10**100-default-str", lambda: {"v": 10**100}, Sent({"v": str(10**100)}),
        default=str),
    row("int-limits", lambda: {"hi": 2**64 - 1, "lo": -(2**63)},
        Sent({"hi": 2**64 - 1, "lo": -(2**63)})),
    row("float-nan", lambda: {"v": math.nan, "ok": 0.5}, Sent({"v": None, "ok": 0.5})),
    row("float-inf", lambda: {"p": math.inf, "n": -math.inf}, Sent({"p": None, "n": None})),
    row("float-nan-nested", lambda: {"v": [1.5, {"x": math.nan}]},
        Sent({"v": [1.5, {"x": None}]})),
    row("float-nan-str", lambda: {"v": math.nan, "p": math.inf, "n": -math.inf},
        Sent({"v": "NaN", "p": "Infinity", "n": "-Infinity"}), non_finite_floats="str"),
    row("float-nan-refuse", lambda: {"v": math.nan}, UNSAFE, non_finite_floats="refuse"),
    row("float-nan-keep", lambda: {"v": math.nan}, Sent(lambda r: math.isnan(r["v"])),
        non_finite_floats="keep"),
    row("float-nan-from-default", lambda: {"v": Opaque()}, Sent({"v": None}),
        default=lambda o: math.nan),
    row("float-subclass-inf", lambda: {"v": Ratio(math.inf)}, Sent({"v": None})),
    row("decimal", lambda: {"v": decimal.Decimal("1.10")}, UNSERIALIZABLE),
    row("decimal-default-str", lambda: {"v": decimal.Decimal("1.10")}, Sent({"v": "1.10"}),
        default=str),
    row("int-subclass", lambda: {"v": Count(7)}, Sent({"v": 7})),
    row("float-subclass", lambda: {"v": Ratio(0.5)}, Sent({"v": 0.5})),
    # collections
    row("set", lambda: {"v": {1, 2}}, UNSERIALIZABLE),
    row("frozenset", lambda: {"v": frozenset({1})}, UNSERIALIZABLE),
    row("set-default-sorted", lambda: {"v": {3, 1, 2}}, Sent({"v": [1, 2, 3]}), default=sorted),
    row("tuple", lambda: {"v": (1, "a")}, Sent({"v": [1, "a"]})),
    row("namedtuple", lambda: {"v": Point(1, 2)}, Sent({"v": [1, 2]})),
    row("nested-mappingproxy", lambda: {"v": types.MappingProxyType({"a": 1})},
        Sent({"v": {"a": 1}})),
    row("nested-ordereddict", lambda: {"v": collections.OrderedDict(a=1)}, Sent({"v": {"a": 1}})),
    row("nested-dict-items-raise", lambda: {"v": ItemsRaise(a=1)}, Sent({"v": {"a": 1}})),
    row("nested-dict-items-lie", lambda: {"v": ItemsLie(a=1)}, Sent({"v": {"a": 1}})),
    # objects
    row("object", lambda: {"v": Opaque()}, UNSERIALIZABLE),
    row("unprintable-object", lambda: {"v": Unprintable()}, UNSERIALIZABLE),
    row("unprintable-object-default-str", lambda: {"v": Unprintable()}, UNSERIALIZABLE,
        default=str),
    row("datetime", lambda: {"v": datetime.datetime(2024, 1, 2, 3, 4, 5)},
        Sent({"v": "2024-01-02T03:04:05"})),
    row("datetime-aware", lambda: {"v": datetime.datetime(2024, 1, 2, 3, 4, 5, 6, UTC)},
        Sent({"v": "2024-01-02T03:04:05.000006+00:00"})),
    row("datetime-default-str", lambda: {"v": datetime.datetime(2024, 1, 2, 3, 4, 5)},
        Sent({"v": "2024-01-02T03:04:05"}), default=str),
    row("date-and-time", lambda: {"d": datetime.date(2024, 1, 2), "t": datetime.time(3, 4)},
        Sent({"d": "2024-01-02", "t": "03:04:00"})),
    row("datetime-key", lambda: {datetime.date(2024, 1, 2): 1}, Sent({"2024-01-02": 1})),
    row("enum", lambda: {"v": Plain.A}, UNSERIALIZABLE),
    row("enum-default-name", lambda: {"v": Plain.A}, Sent({"v": "A"}),
        default=lambda e: e.name),
    row("int-enum", lambda: {"v": Level.WARN}, Sent({"v": 30})),
    row("str-enum", lambda: {"v": Color.RED}, Sent({"v": "red"})),
    row("str-subclass-own-str", lambda: {"v": Loud("value")}, Sent({"v": "value"})),
    row("ext-type", lambda: {"v": msgpack.ExtType(5, b"\x01")},
        Sent({"v": msgpack.ExtType(5, b"\x01")})),
    row("numpy-int64", numpy_record(lambda np: {"v": np.int64(5)}), UNSERIALIZABLE),
    row("numpy-float64", numpy_record(lambda np: {"v": np.float64(0.5)}), Sent({"v": 0.5})),
    row("numpy-array-default-tolist", numpy_record(lambda np: {"v": np.arange(3)}),
        Sent({"v": [0, 1, 2]}), default=lambda a: a.tolist()),
    # text and bytes
    row("bytes-not-utf8", lambda: {"v": b"\xff\xfe\x00"}, Sent({"v": "\\xff\\xfe\x00"})),
    row("bytes-not-utf8-nested", lambda: {"v": [{"b": b"a\xffb"}]},
        Sent({"v": [{"b": "a\\xffb"}]})),
    row("memoryview-not-utf8", lambda: {"v": memoryview(b"\xfe")}, Sent({"v": "\\xfe"})),
    row("bytearray-not-utf8", lambda: {"v": bytearray(b"\x80")}, Sent({"v": "\\x80"})),
    row("bytes-not-utf8-refuse", lambda: {"v": b"\xff"}, UNSAFE, non_utf8_bytes="refuse"),
    row("bytes-not-utf8-keep", lambda: {"v": b"\xff\xfe\x00"}, Sent({"v": b"\xff\xfe\x00"}),
        non_utf8_bytes="keep"),
    row("bytes-utf8", lambda: {"v": "é".encode()}, Sent({"v": "é".encode()})),
    row("bytearray", lambda: {"v": bytearray(b"\x00\x01")}, Sent({"v": b"\x00\x01"})),
    row("memoryview", lambda: {"v": memoryview(b"abc")}, Sent({"v": b"abc"})),
    row("memoryview-strided", lambda: {"v": memoryview(b"abcd")[::2]}, UNSERIALIZABLE),
    row("lone-surrogate-value", lambda: {"v": "\udc80"}, Sent({"v": "\\udc80"})),
    row("lone-surrogate-key", lambda: {"\udc80": 1, "ok": "é"},
        Sent({"\\udc80": 1, "ok": "é"})),
    row("half-surrogate-pair", lambda: {"v": ["ok", "smile \ud83d"]},
        Sent({"v": ["ok", "smile \\ud83d"]})),
    # keys
    row("bytes-key", lambda: {b"k": 1, b"\xff": 2}, Sent({"k": 1, "\\xff": 2})),
    row("int-key", lambda: {1: "one"}, Sent({"1": "one"})),
    row("none-key", lambda: {None: 1}, Sent({"null": 1})),
    row("bool-key", lambda: {True: 1, False: 0}, Sent({"true": 1, "false": 0})),
    row("float-key", lambda: {1.5: 1, math.nan: 2}, Sent({"1.5": 1, "NaN": 2})),
    row("int-enum-key", lambda: {Level.WARN: 1}, Sent({"30": 1})),
    row("tuple-key", lambda: {(1, 2): "x"}, UNSAFE),
    row("nested-non-str-keys", lambda: {"m": {1: "a", b"b": 2, None: 3}},
        Sent({"m": {"1": "a", "b": 2, "null": 3}})),
    row("key-collision", lambda: {1: "a", "1": "b"}, UNSAFE),
    row("surrogate-key-collision", lambda: {"\udc80": 1, "\\udc80": 2}, UNSAFE),
    row("surrogate-key-collision-nested", lambda: {"n": [{"\udc80": 1, "\\udc80": 2}]},
        UNSAFE),
    row("bytes-key-surrogate-collision", lambda: {b"\\udc80": 1, "\udc80": 2}, UNSAFE),
    row("default-key-collision", lambda: {Opaque(): 1, "k": 2}, UNSAFE,
        default=lambda o: "k"),
    row("int-key-refuse", lambda: {1: "one"}, UNSAFE, non_str_keys="refuse"),
    row("int-key-keep", lambda: {1: "one"}, Sent({1: "one"}), non_str_keys="keep"),
    row("tuple-key-keep", lambda: {(1, 2): "x"}, Sent({(1, 2): "x"}), non_str_keys="keep"),
    row("key-from-default", lambda: {Opaque(): 1}, Sent({"k": 1}), default=lambda o: "k"),
    row("frozenset-key", lambda: {frozenset({1}): 1}, UNSERIALIZABLE),
    row("frozenset-key-keep", lambda: {frozenset({1}): 1}, UNSERIALIZABLE,
        non_str_keys="keep"),
    row("empty-key", lambda: {"": 1}, Sent({"": 1})),
    row("nul-in-str", lambda: {"v": "a\x00b", "k\x00": 1}, Sent({"v": "a\x00b", "k\x00": 1})),
    row("str-enum-key", lambda: {Color.RED: 1}, Sent({"red": 1})),
    # the record itself
    row("record-none", lambda: None, NOT_A_MAPPING),
    row("record-list", lambda: [("a", 1)], NOT_A_MAPPING),
    row("record-str", lambda: "a log line", NOT_A_MAPPING),
    row("record-mappingproxy", lambda: types.MappingProxyType({"a": 1}), Sent({"a": 1})),
    row("record-custom-mapping", lambda: Settings({"a": 1}), Sent({"a": 1})),
    row("record-mapping-getitem-raises", lambda: BrokenMapping({"a": 1}), UNSERIALIZABLE),
    row("record-dict-items-raise", lambda: ItemsRaise(a=1), Sent({"a": 1})),
    row("record-mutated-after-post", lambda: {"state": "before"},
        Sent(lambda r: r in ({"state": "before"},
                             {"state": "after", "extra": [1, 2, 3]})),
        after=mutate_after_post),
    # The packer packs its own copy of each dict and list: a change made meanwhile is the
    # caller's, and what was copied goes out.
    Case("list-grows-mid-pack",
         mutated_mid_pack(lambda: {"v": [Opaque(), 1]}, lambda r: r["v"].append(2)),
         Sent({"v": ["converted", 1]})),
    Case("list-shrinks-mid-pack",
         mutated_mid_pack(lambda: {"v": [Opaque(), 1]}, lambda r: r["v"].pop()),
         Sent({"v": ["converted", 1]})),
    Case("dict-grows-mid-pack",
         mutated_mid_pack(lambda: {"a": Opaque(), "b": 1}, lambda r: r.update(c=1)),
         Sent({"a": "converted", "b": 1})),
    # A list inside another Mapping is not copied beforehand: the change is seen.
    Case("list-in-mapping-grows-mid-pack",
         mutated_mid_pack(lambda: {"m": types.MappingProxyType({"v": [Opaque(), 1]})},
                          lambda r: r["m"]["v"].append(2)),
         UNSERIALIZABLE),
    Case("list-in-mapping-shrinks-mid-pack",
         mutated_mid_pack(lambda: {"m": types.MappingProxyType({"v": [Opaque(), 1]})},
                          lambda r: r["m"]["v"].pop()),
         UNSERIALIZABLE),
    # sizes
    row("fits-frame-exactly", fits_exactly, Sent(lambda r: r == fits_exactly())),
    row("larger-than-frame", one_byte_too_many, TOO_LARGE),
    row("larger-than-buffer", lambda: huge(BUFFER + 1000), TOO_LARGE),
    # default hooks
    row("default-raises", lambda: {"v": Opaque()}, UNSERIALIZABLE, default=raise_hook),
    row("default-raises-unprintable", lambda: {"v": Opaque()}, UNSERIALIZABLE,
        default=unprintable_raise_hook),
    row("default-returns-unserializable", lambda: {"v": Opaque()}, UNSERIALIZABLE,
        default=lambda o: Opaque()),
    row("default-returns-its-input", lambda: {"v": Opaque()}, UNSERIALIZABLE,
        default=lambda o: o),
    row("default-recurses-forever", lambda: {"v": Opaque()}, UNSERIALIZABLE,
        default=forever_hook),
    row("default-nests-forever", lambda: {"v": Opaque()}, UNSERIALIZABLE,
        default=lambda o: [o]),
    row("default-returns-tuple", lambda: {"v": Opaque()}, Sent({"v": [1, 2]}),
        default=lambda o: (1, 2)),
    # tags
    row("tag-empty", lambda: {"v": 1}, BAD_TAG, tag=""),
    row("tag-space", lambda: {"v": 1}, BAD_TAG, tag="app web"),
    row("tag-non-ascii", lambda: {"v": 1}, BAD_TAG, tag="app.café"),
    row("tag-double-dot", lambda: {"v": 1}, BAD_TAG, tag="app..web"),
    row("tag-leading-dot", lambda: {"v": 1}, BAD_TAG, tag=".app"),
    row("tag-trailing-dot", lambda: {"v": 1}, BAD_TAG, tag="app."),
    row("tag-newline", lambda: {"v": 1}, BAD_TAG, tag="app\n"),
    row("tag-too-long", lambda: {"v": 1}, BAD_TAG, tag="a" * 1025),
    row("tag-longest", lambda: {"v": 1}, Sent({"v": 1}), tag="a" * 1024),
    row("tag-bytes", lambda: {"v": 1}, BAD_TAG, tag=b"app"),
    row("tag-int", lambda: {"v": 1}, BAD_TAG, tag=7),
    row("tag-none", lambda: {"v": 1}, BAD_TAG, tag=None),
    row("tag-list", lambda: {"v": 1}, BAD_TAG, tag=["app"]),
    # times
    row("time-nan", lambda: {"v": 1}, BAD_TIME, time=math.nan),
    row("time-inf", lambda: {"v": 1}, BAD_TIME, time=math.inf),
    row("time-minus-inf", lambda: {"v": 1}, BAD_TIME, time=-math.inf),
    row("time-negative", lambda: {"v": 1}, BAD_TIME, time=-1),
    row("time-bool", lambda: {"v": 1}, BAD_TIME, time=True),
    row("time-str", lambda: {"v": 1}, BAD_TIME, time="1700000000"),
    row("time-decimal", lambda: {"v": 1}, BAD_TIME, time=decimal.Decimal(1700000000)),
    row("time-after-2106", lambda: {"v": 1}, BAD_TIME, time=2**32),
    row("eventtime-reserved-seconds", lambda: {"v": 1}, BAD_TIME, time=EventTime(0xFFFFFFFE)),
    row("eventtime-negative", lambda: {"v": 1}, BAD_TIME, time=EventTime(-1, 0)),
    row("eventtime-ns-overflow", lambda: {"v": 1}, BAD_TIME, time=EventTime(0, 10**9)),
    row("eventtime-float-seconds", lambda: {"v": 1}, BAD_TIME,
        time=EventTime(1.5, 0)),  # type: ignore[arg-type]
    row("eventtime-bool-seconds", lambda: {"v": 1}, BAD_TIME, time=EventTime(True, 0)),
    row("eventtime-epoch", lambda: {"v": 1}, Sent({"v": 1}, EventTime(0, 0)),
        time=EventTime(0, 0)),
    row("eventtime-last", lambda: {"v": 1}, Sent({"v": 1}, EventTime(0xFFFFFFFD, 999_999_999)),
        time=EventTime(0xFFFFFFFD, 999_999_999)),
]

MODES = ["post", "sync_append", "sync_client"]


# -- running a row ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ForwardServer]:
    with ForwardServer("127.0.0.1", 0) as srv:
        yield srv


def matches(expected: Any, received: Any) -> bool:
    return bool(expected(received)) if callable(expected) else received == expected


def is_good(event: Any) -> bool:
    return event.tag == TAG and isinstance(event.record, dict) and "good" in event.record


def test_the_corpus_is_big_enough() -> None:
    assert len(CASES) >= 40
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input(case: Case, mode: str, server: ForwardServer) -> None:
    server.clear()
    record, default = case.make()
    outcome = case.outcome
    errors: list[tuple[FluentError, Message | None]] = []
    client: BufferedClient | SyncClient
    if mode == "sync_client":
        client = SyncClient(server.host, server.port, max_frame_size=FRAME,
                            records=RecordRules(default=default, **dict(case.options)))
    else:
        client = BufferedClient(
            server.host, server.port, buffering=Buffering(max_frame_size=FRAME, limit=BUFFER),
            records=RecordRules(default=default, **dict(case.options)),
            backoff=FAST_BACKOFF, at_exit=False,
            on_error=lambda err, msg: errors.append((err, msg)),
        )
    sync_append = mode == "sync_append"
    raises = isinstance(outcome, Refused) or (isinstance(outcome, Dropped) and mode != "post")
    with client:
        assert client.post(TAG, GOOD[0], sync_append=sync_append) is True
        if raises:
            with pytest.raises(outcome.error):  # type: ignore[union-attr]
                client.post(case.tag, record, time=case.time, sync_append=sync_append)
        else:
            assert client.post(case.tag, record, time=case.time, sync_append=sync_append) is True
        if case.after is not None:
            other = threading.Thread(target=case.after, args=(record,))
            other.start()
            other.join(10)
        assert client.post(TAG, GOOD[1], sync_append=sync_append) is True
        assert client.flush(timeout=10)
    stats = client.stats()  # after shutdown, so what was written is settled as sent

    arriving = 3 if isinstance(outcome, Sent) else 2
    assert server.wait_for_events(arriving, timeout=10)
    events = server.events
    assert len(events) == arriving
    assert server.errors == []  # no frame was garbled
    assert [e.record for e in events if is_good(e)] == list(GOOD)
    if isinstance(outcome, Sent):
        (bad,) = [(i, e) for i, e in enumerate(events) if not is_good(e)]
        index, event = bad
        assert event.tag == case.tag
        if case.tag == TAG:
            assert index == 1  # in order, between its neighbours
        assert matches(outcome.record, event.record), event.record
        if outcome.time is not None:
            assert event.time == outcome.time
    if isinstance(client, SyncClient):
        assert stats.sent == arriving
        return
    if isinstance(outcome, Dropped):
        assert dict(stats.dropped) == {outcome.reason: 1}
        assert len(errors) == 1
        err, msg = errors[0]
        assert isinstance(err, outcome.error)
        assert msg is not None and msg.record is record
        assert repr(msg)  # describing the message never raises, whatever it holds
    else:
        assert dict(stats.dropped) == {} and errors == []
    assert stats.sent == arriving


# -- any record at all -----------------------------------------------------------------------

scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=8)
    | st.binary(max_size=8)
    | st.builds(Unprintable)  # an instance would break the strategy's own repr
    | st.sampled_from([Opaque(), Color.RED, Level.WARN, Plain.A,
                       decimal.Decimal("2.5"), datetime.date(2024, 1, 1), Count(3), Ratio(1.5),
                       Loud("x"), bytearray(b"\x00"), memoryview(b"mv"), msgpack.ExtType(1, b"")])
)
keys = (
    st.text(max_size=6) | st.integers(-5, 5) | st.none() | st.binary(max_size=3)
    | st.tuples(st.integers(0, 3), st.text(max_size=2)) | st.just(frozenset())
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=3).map(tuple)
    | st.sets(st.integers(0, 3), max_size=2)
    | st.dictionaries(keys, inner, max_size=4)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3).map(ItemsRaise)
    | st.dictionaries(st.text(max_size=4), inner, max_size=3).map(types.MappingProxyType),
    max_leaves=25,
)
records = (
    st.dictionaries(keys, values, max_size=5)
    | st.dictionaries(st.text(max_size=4), values, max_size=3).map(Settings)
    | values
)
hooks = st.sampled_from([None, str, repr, raise_hook, lambda o: [o], lambda o: (o,)])


@settings(max_examples=300)
@given(record=records, default=hooks, guarded=st.booleans())
def test_any_record_is_one_whole_entry_or_a_serialization_error(
    record: Any, default: Hook, guarded: bool,
) -> None:
    """Whatever is thrown at the packer, with or without the odd-record rules, the frame
    around it stays readable."""
    packer = EntryPacker(default=default, guard=RecordGuard() if guarded else None)
    good = packer.pack(Message(TAG, GOOD[0], T0.to_ns()))
    try:
        entry = packer.pack(Message(TAG, record, T0.to_ns()))
    except SerializationError:
        return
    frame = packed_forward_frame(TAG, good + entry + good, 3)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(frame)
    decoded = decode_frame(next(unpacker))
    assert len(decoded.entries) == 3
    assert decoded.entries[0][1] == decoded.entries[2][1] == GOOD[0]
    assert isinstance(decoded.entries[1][1], dict)
    # Valid UTF-8 throughout: a strict decoder reads every str.
    msgpack.unpackb(entry, raw=False, strict_map_key=False, unicode_errors="strict",
                    use_list=False)


# -- the table in the docs -------------------------------------------------------------------


def test_docs_list_every_case() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "hostile.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9*-]+)` \|", doc, flags=re.M))
    assert documented == {case.id for case in CASES}
