"""One odd record never costs its neighbours, on the servers users run.

For each odd record: 200 good records, the odd one, 200 good records, one frame, acks on,
against fluentd and Fluent Bit. All 400 neighbours must arrive, the odd record must be
refused (counted, reported to ``on_error`` with the typed error) or arrive in the form the
odd-record rules make of it, and the server must still be running. Without the rules some
of these crash Fluent Bit or make fluentd refuse the whole frame on every resend.

Also here: the rules themselves, one unit test each, and a hypothesis test of the guard
against a plain reference walk.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import (
    BufferedClient,
    Buffering,
    FluentError,
    RecordRules,
    SerializationError,
    SyncClient,
    Timeouts,
    UnsafeRecordError,
)
from fluentclient.framing import EntryPacker
from fluentclient.guard import DEFAULT_MAX_DEPTH, MAX_DEPTH_LIMIT, RecordGuard
from fluentclient.message import Message
from tests.real_servers import RealServer

GOOD_BEFORE = 200
GOOD_AFTER = 200


def nest(levels: int, *, as_list: bool = False) -> Any:
    """A record (a map) ``levels`` deep, or inside a record a list ``levels - 1`` deep."""
    value: Any = 1
    if as_list:
        for _ in range(levels - 1):
            value = [value]
        return {"v": value}
    for _ in range(levels):
        value = {"a": value}
    return value


@dataclass(frozen=True)
class Arrives:
    """The odd record is stored in this form (JSON, as both servers' file outputs write)."""

    record: Any


@dataclass(frozen=True)
class Refused:
    error: type[FluentError]
    reason: str


UNSAFE = Refused(UnsafeRecordError, "unsafe")


@dataclass(frozen=True)
class Odd:
    id: str
    record: Callable[[], Any]
    outcome: Arrives | Refused
    options: Mapping[str, Any] = field(default_factory=dict)


# What each odd record becomes with the default rules (and a few others). The measured
# behaviour of each server without the rules is in docs/hostile.md.
ODD: list[Odd] = [
    Odd("map-depth-8", lambda: nest(8), Arrives(nest(8))),
    Odd("map-depth-9", lambda: nest(9), UNSAFE),
    Odd("map-depth-15", lambda: nest(15), UNSAFE),  # crashes Fluent Bit
    Odd("map-depth-129", lambda: nest(129), UNSAFE),  # fluentd resets, for ever
    Odd("list-depth-20", lambda: nest(20, as_list=True), UNSAFE),  # crashes Fluent Bit
    Odd("map-depth-12-allowed", lambda: nest(12), Arrives(nest(12)), {"max_depth": 12}),
    Odd("nan", lambda: {"v": math.nan, "ok": 1.5}, Arrives({"v": None, "ok": 1.5})),
    Odd("inf", lambda: {"p": math.inf, "n": [-math.inf]}, Arrives({"p": None, "n": [None]})),
    Odd("nan-str", lambda: {"v": math.nan, "p": math.inf}, Arrives({"v": "NaN", "p": "Infinity"}),
        {"non_finite_floats": "str"}),
    Odd("nan-refuse", lambda: {"v": math.nan}, UNSAFE, {"non_finite_floats": "refuse"}),
    Odd("int-key", lambda: {1: "one", "x": {2: "two"}}, Arrives({"1": "one", "x": {"2": "two"}})),
    Odd("none-key", lambda: {None: 1}, Arrives({"null": 1})),
    Odd("bool-key", lambda: {True: 1}, Arrives({"true": 1})),
    Odd("bytes-key", lambda: {b"k": 1}, Arrives({"k": 1})),
    Odd("tuple-key", lambda: {(1, 2): "x"}, UNSAFE),
    Odd("int-key-refuse", lambda: {1: "one"}, UNSAFE, {"non_str_keys": "refuse"}),
    Odd("empty-key", lambda: {"": 1}, Arrives({"": 1})),
    Odd("nul-in-str", lambda: {"v": "a\x00b", "k\x00": 1}, Arrives({"v": "a\x00b", "k\x00": 1})),
    Odd("lone-surrogate", lambda: {"v": "\udc80"}, Arrives({"v": "\\udc80"})),
    Odd("uint64-max", lambda: {"v": 2**64 - 1}, Arrives({"v": 2**64 - 1})),
    Odd("int64-min", lambda: {"v": -(2**63)}, Arrives({"v": -(2**63)})),
    Odd("int-beyond-uint64", lambda: {"v": 2**64}, Refused(SerializationError, "unserializable")),
    Odd("bytes-value", lambda: {"v": b"abc"}, Arrives({"v": "abc"})),
    # fluentd's JSON output drops the record, Fluent Bit the bad bytes.
    Odd("bytes-not-utf8", lambda: {"v": b"\xff\xfe\x00"}, Arrives({"v": "\\xff\\xfe\x00"})),
    Odd("bytes-not-utf8-refuse", lambda: {"v": b"\xff"}, UNSAFE, {"non_utf8_bytes": "refuse"}),
]


def run_case(server: RealServer, odd: Odd) -> tuple[BufferedClient, list[tuple[Any, Any]]]:
    """Post the case's 401 records in one frame and wait for every ack."""
    errors: list[tuple[Any, Any]] = []
    client = BufferedClient(
        "127.0.0.1", server.port, require_ack=True, timeouts=Timeouts(ack=10, ack_retries=2),
        buffering=Buffering(write_threshold=4 * 2**20, flush_interval=60), at_exit=False,
        on_error=lambda err, msg: errors.append((err, msg)), records=RecordRules(**odd.options),
    )
    tag = f"odd.{odd.id}"
    for i in range(GOOD_BEFORE):
        client.post(tag, {"i": i})
    client.post(tag, odd.record())
    for i in range(GOOD_BEFORE, GOOD_BEFORE + GOOD_AFTER):
        client.post(tag, {"i": i})
    assert client.flush(timeout=30), f"{odd.id}: not acknowledged"
    client.shutdown(timeout=10)
    return client, errors


def test_odd_records_never_cost_their_neighbours(real_server: RealServer) -> None:
    results = {odd.id: run_case(real_server, odd) for odd in ODD}
    arriving = sum(1 for odd in ODD if isinstance(odd.outcome, Arrives))
    real_server.wait_for(len(ODD) * (GOOD_BEFORE + GOOD_AFTER) + arriving, timeout=60)
    events = real_server.events()
    assert real_server.alive(), real_server.log_tail()
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for tag, _, record in events:
        by_tag.setdefault(tag, []).append(record)
    for odd in ODD:
        client, errors = results[odd.id]
        stored = by_tag.get(f"odd.{odd.id}", [])
        good = [r["i"] for r in stored if set(r) == {"i"}]
        others = [r for r in stored if set(r) != {"i"}]
        assert sorted(good) == list(range(GOOD_BEFORE + GOOD_AFTER)), odd.id
        stats = client.stats()
        if isinstance(odd.outcome, Arrives):
            assert others == [odd.outcome.record], odd.id
            assert errors == [] and dict(stats.dropped) == {}, odd.id
            assert stats.sent == GOOD_BEFORE + GOOD_AFTER + 1, odd.id
        else:
            assert others == [], odd.id
            assert dict(stats.dropped) == {odd.outcome.reason: 1}, odd.id
            ((err, msg),) = errors
            assert type(err) is odd.outcome.error, odd.id
            assert msg is not None and msg.tag == f"odd.{odd.id}"
            assert stats.sent == GOOD_BEFORE + GOOD_AFTER, odd.id


def test_sync_client_raises_for_an_unsafe_record_and_sends_the_next(
    real_server: RealServer,
) -> None:
    with SyncClient("127.0.0.1", real_server.port, require_ack=True) as client:
        client.post("odd.sync", {"i": 0})
        with pytest.raises(UnsafeRecordError):
            client.post("odd.sync", nest(15))
        client.post("odd.sync", {"i": 1, "v": math.nan})
    records = [r for _, _, r in real_server.wait_for(2, "odd.sync")]
    assert records == [{"i": 0}, {"i": 1, "v": None}]
    assert real_server.alive()


# -- the rules, one at a time ------------------------------------------------------------------


def pack(record: Any, **options: Any) -> Any:
    """What the server decodes from the entry the guarded packer makes of ``record``."""
    default = options.pop("default", None)
    packer = EntryPacker(guard=RecordGuard(**options), default=default)
    entry = packer.pack(Message("t", record, 0))
    return msgpack.unpackb(entry, strict_map_key=False, ext_hook=lambda c, d: None)[1]


def test_default_depth_is_below_where_fluent_bit_crashed() -> None:
    # 15 levels crashed Fluent Bit 4.2.8 in every run measured; 14 never did.
    assert DEFAULT_MAX_DEPTH < 15
    assert pack(nest(DEFAULT_MAX_DEPTH)) == nest(DEFAULT_MAX_DEPTH)
    with pytest.raises(UnsafeRecordError, match="max_depth=8"):
        pack(nest(DEFAULT_MAX_DEPTH + 1))


def test_depth_counts_maps_lists_and_tuples_alike() -> None:
    assert pack({"a": [({"b": 1},)]}, max_depth=4) == {"a": [[{"b": 1}]]}
    with pytest.raises(UnsafeRecordError):
        pack({"a": [({"b": {}},)]}, max_depth=4)


def test_max_depth_must_be_sane() -> None:
    for bad in (0, -1, MAX_DEPTH_LIMIT + 1, 2.5, True):
        with pytest.raises(ValueError):
            RecordGuard(max_depth=bad)
    with pytest.raises(ValueError):
        BufferedClient(records=RecordRules(max_depth=0), at_exit=False)
    with pytest.raises(ValueError):
        SyncClient(records=RecordRules(non_str_keys="drop"))
    with pytest.raises(ValueError):
        SyncClient(records=RecordRules(non_finite_floats="zero"))
    with pytest.raises(ValueError):
        BufferedClient(records=RecordRules(non_utf8_bytes="latin-1"), at_exit=False)


def test_non_finite_floats_rules() -> None:
    record = {"n": math.nan, "p": math.inf, "m": -math.inf, "ok": 2.5}
    assert pack(record) == {"n": None, "p": None, "m": None, "ok": 2.5}
    assert pack(record, non_finite_floats="str") == {
        "n": "NaN", "p": "Infinity", "m": "-Infinity", "ok": 2.5}
    with pytest.raises(UnsafeRecordError, match="NaN"):
        pack(record, non_finite_floats="refuse")
    kept = pack(record, non_finite_floats="keep")
    assert math.isnan(kept["n"]) and kept["p"] == math.inf


def test_non_finite_floats_made_by_a_default_hook_or_a_subclass_are_caught() -> None:
    class Ratio(float):
        pass

    assert pack({"v": object()}, default=lambda o: math.inf) == {"v": None}
    assert pack({"v": [Ratio("nan")]}) == {"v": [None]}


def test_non_utf8_bytes_rules() -> None:
    record = {"ok": b"caf\xc3\xa9", "bad": b"a\xffb", "deep": [bytearray(b"\x80")]}
    assert pack(record) == {"ok": b"caf\xc3\xa9", "bad": "a\\xffb", "deep": ["\\x80"]}
    with pytest.raises(UnsafeRecordError, match="not UTF-8"):
        pack(record, non_utf8_bytes="refuse")
    assert pack(record, non_utf8_bytes="keep") == {
        "ok": b"caf\xc3\xa9", "bad": b"a\xffb", "deep": [b"\x80"]}


def test_non_str_keys_rules() -> None:
    record = {1: "a", None: "b", False: "c", 2.5: "d", b"e": 5, b"\xff": 6, "s": 7}
    made = {"1": "a", "null": "b", "false": "c", "2.5": "d", "e": 5, "\\xff": 6, "s": 7}
    assert pack(record) == made
    with pytest.raises(UnsafeRecordError, match="int"):
        pack(record, non_str_keys="refuse")
    assert pack(record, non_str_keys="keep") == record
    with pytest.raises(UnsafeRecordError, match="already has"):
        pack({1: "a", "1": "b"})
    with pytest.raises(UnsafeRecordError, match="array"):
        pack({(1, 2): "a"})
    assert pack({"deep": {"x": {3: 1}}}) == {"deep": {"x": {"3": 1}}}


def test_a_flat_record_comes_back_as_the_same_object() -> None:
    guard = RecordGuard()
    record = {"level": "info", "status": 200, "ms": 1.5, "ok": True, "raw": b"", "n": None}
    assert guard.flat(record)
    assert guard.clean(record) is record
    nested = {"a": [1, {"b": 2}]}
    assert not guard.flat(nested) and guard.clean(nested) is nested


@pytest.mark.parametrize("keep", ["non_str_keys", "non_finite_floats", "non_utf8_bytes"])
def test_a_rule_that_keeps_leaves_the_other_rules_checking(keep: str) -> None:
    # flat() under a "keep" rule skips only what that rule keeps.
    odd = {"non_str_keys": {1: "a"}, "non_finite_floats": {"f": math.nan},
           "non_utf8_bytes": {"b": b"\xff"}}
    guard = RecordGuard(**{keep: "keep"})  # type: ignore[arg-type]
    for rule, record in odd.items():
        assert guard.flat(record) is (rule == keep), rule


def test_a_key_that_raises_while_made_a_str_is_that_records_problem_only() -> None:
    class Bad(bytes):
        def __bytes__(self) -> bytes:
            raise RuntimeError("no bytes for you")

    packer = EntryPacker(guard=RecordGuard())
    with pytest.raises(SerializationError, match="no bytes for you"):
        packer.pack(Message("t", {Bad(b"k"): 1}, 0))
    assert packer.pack(Message("t", {"level": 2}, 0))


# -- the guard against a reference walk --------------------------------------------------------


def reference(record: Any, max_depth: int, keys: str, floats: str, blobs: str) -> str:
    """"refused", "changed" or "same": the rules, as plainly as they can be written."""
    verdict = "same"

    def key_text(key: Any) -> str | None:
        if key is None:
            return "null"
        if key is True or key is False:
            return "true" if key else "false"
        if isinstance(key, int):
            return str(key)
        if isinstance(key, float):
            return "NaN" if key != key else {math.inf: "Infinity", -math.inf: "-Infinity"}.get(
                key, repr(key))
        if isinstance(key, bytes):
            return key.decode("utf-8", "backslashreplace")
        return None

    def walk(obj: Any, depth: int) -> None:
        nonlocal verdict
        if isinstance(obj, (dict, list, tuple)) and depth > max_depth:
            raise UnsafeRecordError("deep")
        if isinstance(obj, float) and not math.isfinite(obj) and floats != "keep":
            if floats == "refuse":
                raise UnsafeRecordError("float")
            verdict = "changed"
        if isinstance(obj, bytes) and blobs != "keep":
            try:
                obj.decode("utf-8")
            except UnicodeDecodeError:
                if blobs == "refuse":
                    raise UnsafeRecordError("bytes") from None
                verdict = "changed"
        if isinstance(obj, dict):
            made: set[str] = set()
            for key, value in obj.items():
                if not isinstance(key, str) and keys != "keep":
                    text = key_text(key)
                    if keys == "refuse" or text is None or text in obj or text in made:
                        raise UnsafeRecordError("key")
                    made.add(text)
                    verdict = "changed"
                walk(value, depth + 1)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, depth + 1)

    try:
        walk(record, 1)
    except UnsafeRecordError:
        return "refused"
    return verdict


leaves = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=5) | st.binary(max_size=4) | st.sampled_from([b"\xc3\xa9", b"\xff"])
)
odd_keys = (
    st.text(max_size=4) | st.integers(-3, 3) | st.none() | st.booleans()
    | st.floats(allow_nan=False, width=16) | st.binary(max_size=2)
    | st.tuples(st.integers(0, 2))
)
trees = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=2).map(tuple)
    | st.dictionaries(odd_keys, inner, max_size=3),
    max_leaves=30,
)


@settings(max_examples=400)
@given(
    record=st.dictionaries(odd_keys, trees, max_size=5),
    max_depth=st.integers(1, 10),
    keys=st.sampled_from(["str", "refuse", "keep"]),
    floats=st.sampled_from(["null", "str", "refuse", "keep"]),
    blobs=st.sampled_from(["str", "refuse", "keep"]),
)
def test_the_guard_agrees_with_the_reference(
    record: dict[Any, Any], max_depth: int, keys: str, floats: str, blobs: str,
) -> None:
    expected = reference(record, max_depth, keys, floats, blobs)
    guard = RecordGuard(max_depth=max_depth, non_str_keys=keys, non_finite_floats=floats,
                        non_utf8_bytes=blobs)
    packer = EntryPacker(guard=guard)
    try:
        entry = packer.pack(Message("t", record, 0))
    except UnsafeRecordError:
        assert expected == "refused"
        return
    assert expected != "refused"
    decoded = msgpack.unpackb(entry, strict_map_key=False, use_list=False)[1]
    if expected == "same":
        # Accepted as it is: it decodes back equal (arrays as tuples, NaN by position).
        assert same(decoded, record)
    else:
        assert reference(decoded, max_depth, keys, floats, blobs) == "same"


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN and lists equal to tuples."""
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        if len(a) != len(b):
            return False
        bb = {tuple(k) if isinstance(k, list) else k: v for k, v in b.items()}
        return all(k in bb and same(v, bb[k]) for k, v in a.items())
    return type(a) is type(b) and bool(a == b)


def test_log_lines_are_cut_to_the_default_depth_not_dropped() -> None:
    from fluentclient._convert import safe_value

    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    record = {"message": "deep", "v": safe_value(nest(30)), "c": safe_value(cyclic)}
    assert RecordGuard().clean(record) is record
