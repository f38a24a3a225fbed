"""One record's trouble stays that record's: records changed by another thread while the
reader packs them, and keys that rewriting turns into one.

docs/hostile.md ("Changing a record after post()", "Keys") says what must happen; these
tests hold the client to it with a real client and the embedded server.
"""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient import (
    BufferedClient,
    Buffering,
    RecordRules,
    SerializationError,
    SyncClient,
    UnsafeRecordError,
)
from fluentclient.framing import EntryPacker
from fluentclient.guard import BYTES_RULES, KEY_RULES, RecordGuard
from fluentclient.message import Message
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .waiting import wait_until

TAG = "contained.guard"
T0 = 1_700_000_000 * 10**9
KEYS = 5000
# The mutator keeps at most this many extra keys in the record at any moment.
EXTRA = 1


@pytest.fixture(scope="module")
def server() -> Iterator[ForwardServer]:
    with ForwardServer("127.0.0.1", 0) as srv:
        yield srv


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads take turns far more often than every 5 ms, so the mutator gets in
    between the reader's steps many times per record rather than by luck."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class Mutator:
    """Another thread that keeps adding and removing keys of ``target`` until stopped.

    At every moment between two of its calls the record holds ``k0``..``k4999`` with
    their own numbers and at most ``EXTRA`` keys ``xN`` whose value is ``N``: a record
    packed as it was at one moment passes :func:`one_moment`.
    """

    def __init__(self, target: dict[str, Any]) -> None:
        self.target = target
        self.steps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        target = self.target
        while not self._stop.is_set():
            # One change a turn: whenever the thread is switched out, the size differs
            # from the last time half of the time.
            if n % 2 == 0:
                target[f"x{n}"] = n
            else:
                del target[f"x{n - 1}"]
            n += 1
            self.steps = n

    def __enter__(self) -> Mutator:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


def big_record() -> dict[str, Any]:
    return {f"k{i}": i for i in range(KEYS)}


def one_moment(record: Any) -> bool:
    """The record is what ``Mutator`` leaves between two of its calls."""
    if not isinstance(record, dict):
        return False
    extra = {k: v for k, v in record.items() if k.startswith("x")}
    return (
        len(record) - len(extra) == KEYS
        and all(record[f"k{i}"] == i for i in range(KEYS))
        and len(extra) <= EXTRA
        and all(v == int(k[1:]) for k, v in extra.items())
    )


SHAPES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    # A flat record: the reader's fast path.
    "flat": lambda big: big,
    # The big dict inside another: the guard walks it.
    "nested": lambda big: {"outer": big, "list": [big]},
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_record_another_thread_keeps_changing_costs_the_client_nothing(
    shape: str, server: ForwardServer, busy_switching: None,
) -> None:
    """Issue 17: growing a posted 5,000-key dict killed the reader ("dictionary changed
    size during iteration"), and every later post() was refused as closed."""
    server.clear()
    errors: list[Any] = []
    posts = 60
    big = big_record()
    record = SHAPES[shape](big)
    with BufferedClient(server.host, server.port, backoff=FAST_BACKOFF, at_exit=False,
                        buffering=Buffering(limit=64 * 1024 * 1024),
                        on_error=lambda err, msg: errors.append(err)) as client:
        with Mutator(big) as mutator:
            for _ in range(posts):
                assert client.post(TAG, record) is True
            # The reader packs while the mutator runs: flush() waits for all of it.
            assert client.flush(timeout=60)
            assert mutator.steps > 0
        # The client goes on as before.
        assert client.post(TAG, {"later": 1}) is True
        assert client.flush(timeout=60)
    stats = client.stats()
    assert errors == [] and dict(stats.dropped) == {}
    assert stats.posted == posts + 1
    assert stats.sent == stats.posted  # the books balance: nothing lost, nothing extra
    assert server.wait_for_events(posts + 1, timeout=30)
    events = server.events
    assert server.errors == []
    assert len(events) == posts + 1
    assert events[-1].record == {"later": 1}
    for event in events[:-1]:
        if shape == "flat":
            assert one_moment(event.record)
        else:
            assert one_moment(event.record["outer"])
            assert one_moment(event.record["list"][0])


def test_the_sync_client_sends_a_changing_record_as_one_moment(
    server: ForwardServer, busy_switching: None,
) -> None:
    server.clear()
    big = big_record()
    posts = 100
    with SyncClient(server.host, server.port) as client, Mutator(big) as mutator:
        for _ in range(posts):
            assert client.post(TAG, big) is True
        assert mutator.steps > 0
    assert server.wait_for_events(posts, timeout=30)
    assert all(one_moment(event.record) for event in server.events)
    assert client.stats().sent == posts


# -- a record that cannot be packed costs that record alone ----------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class BrokenMapping(Mapping[str, Any]):
    """Says it has the key "a", then cannot find it."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(["a"])

    def __len__(self) -> int:
        return 1


def hook_raising(exc: BaseException) -> Callable[[Any], Any]:
    def hook(obj: Any) -> Any:
        raise exc

    return hook


@pytest.mark.parametrize("bad, default", [
    ({"v": Unprintable()}, str),  # the default hook raises through __str__
    ({"v": object()}, hook_raising(LookupError("hook"))),
    ({"v": object()}, hook_raising(MemoryError())),
    ({"n": {"deep": [BrokenMapping()]}}, None),
], ids=["str-raises", "hook-raises", "hook-memoryerror", "mapping-raises"])
def test_a_record_whose_own_code_raises_is_dropped_alone(
    bad: dict[str, Any], default: Any, server: ForwardServer,
) -> None:
    server.clear()
    errors: list[Any] = []
    with BufferedClient(server.host, server.port, records=RecordRules(default=default),
                        backoff=FAST_BACKOFF,
                        at_exit=False, on_error=lambda err, msg: errors.append(err)) as client:
        # One batch: the neighbours share the bad record's run.
        assert client.post(TAG, {"n": 0}) is True
        assert client.post(TAG, bad) is True
        assert client.post(TAG, {"n": 1}) is True
        assert client.flush(timeout=30)
    stats = client.stats()
    assert wait_until(lambda: len(server.events) == 2)
    assert [e.record for e in server.events] == [{"n": 0}, {"n": 1}]
    assert stats.sent == 2 and dict(stats.dropped) == {"unserializable": 1}
    assert len(errors) == 1 and isinstance(errors[0], SerializationError)
    with SyncClient(server.host, server.port, records=RecordRules(default=default)) as sync:
        with pytest.raises(SerializationError):
            sync.post(TAG, bad)


# -- keys that rewriting makes equal ---------------------------------------------------------


class Named:
    """A key of the caller's own type, which ``default=str`` turns into ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Named({self.name!r})"


# Keys chosen to meet once rewritten: each next to what it is rewritten to.
TRICKY_KEYS = [
    "\udc80", "\\udc80", "\udcff", "\\udcff", b"\\udc80", "\ud83d", "\\ud83d",
    b"\xff", "\\xff", b"a", "a", 1, "1", b"1", None, "null", True, "true", False, "false",
    1.5, "1.5", math.nan, "NaN", math.inf, "Infinity",
    Named("a"), Named("1"), Named("\\udc80"), Named("\udc80"),
]
keys = st.sampled_from(TRICKY_KEYS) | st.text(
    st.sampled_from(["\\", "u", "d", "c", "8", "0", "\udc80", "x", "f"]), max_size=6)
leaves = st.integers(-3, 3) | st.text(max_size=3) | st.just("\udc80")
trees = st.recursive(
    leaves,
    lambda inner: st.dictionaries(keys, inner, max_size=6) | st.lists(inner, max_size=3),
    max_leaves=20,
)


def same_shape(original: Any, decoded: Any) -> None:
    """Every map decoded has exactly as many keys as the original map, at every depth.

    ``decoded`` was read as a server reads it, one value per key (the last one wins), with
    arrays as tuples.
    """
    if isinstance(original, dict):
        assert isinstance(decoded, dict), decoded
        assert len(decoded) == len(original), (original, decoded)
        for value, out in zip(original.values(), decoded.values()):
            same_shape(value, out)
    elif isinstance(original, (list, tuple)):
        assert isinstance(decoded, tuple) and len(decoded) == len(original)
        for value, out in zip(original, decoded):
            same_shape(value, out)


@settings(max_examples=400)
@given(
    record=st.dictionaries(keys, trees, max_size=6),
    non_str_keys=st.sampled_from(KEY_RULES),
    non_utf8_bytes=st.sampled_from(BYTES_RULES),
    default=st.sampled_from([None, str]),
)
def test_no_key_is_ever_lost_to_another_that_came_out_the_same(
    record: dict[Any, Any], non_str_keys: str, non_utf8_bytes: str, default: Any,
) -> None:
    """Either the record is refused with a SerializationError, or every map arrives with
    as many keys as it had: two keys never collapse into one on the server."""
    guard = RecordGuard(non_str_keys=non_str_keys, non_utf8_bytes=non_utf8_bytes)
    packer = EntryPacker(default=default, guard=guard)
    msg = Message(TAG, record, T0)
    failed: list[SerializationError] = []
    good = Message(TAG, {"good": 1}, T0)
    # The reader's way: the record between two good ones.
    runs = packer.pack_runs([good, msg, good], lambda m, exc: failed.append(exc))
    entries = [e for run in runs for e in run.entries()]
    try:
        alone = packer.pack(msg)  # the SyncClient's way
    except SerializationError as exc:
        assert len(failed) == 1 and type(failed[0]) is type(exc)
        assert len(entries) == 2
        return
    assert failed == [] and len(entries) == 3 and entries[1] == alone
    entry = msgpack.unpackb(alone, raw=False, strict_map_key=False, use_list=False,
                            ext_hook=lambda code, data: data)
    same_shape(record, entry[1])


@pytest.mark.parametrize("record", [
    {"\udc80": 1, "\\udc80": 2},
    {"n": {"a": [{"\\udc80": 1, "\udc80": 2}]}},
    {b"\\udc80": 1, "\udc80": 2},
    {1: 1, Named("1"): 2},
    {"deep": {Named("k"): 1, "k": 2}},
], ids=["surrogate", "surrogate-nested", "bytes-key", "int-and-default", "default-nested"])
def test_keys_that_come_out_the_same_are_refused_as_unsafe(
    record: dict[Any, Any], server: ForwardServer,
) -> None:
    """Issue 17: both keys went out as ``\\udc80``, servers kept one, and sent=1."""
    server.clear()
    errors: list[Any] = []
    with BufferedClient(server.host, server.port, records=RecordRules(default=str),
                        backoff=FAST_BACKOFF,
                        at_exit=False, on_error=lambda err, msg: errors.append(err)) as client:
        assert client.post(TAG, record) is True
        assert client.post(TAG, {"after": 1}) is True
        assert client.flush(timeout=30)
    assert wait_until(lambda: len(server.events) == 1)
    assert [e.record for e in server.events] == [{"after": 1}]
    stats = client.stats()
    assert stats.sent == 1 and dict(stats.dropped) == {"unsafe": 1}
    assert len(errors) == 1 and isinstance(errors[0], UnsafeRecordError)
    with SyncClient(server.host, server.port, records=RecordRules(default=str)) as sync:
        with pytest.raises(UnsafeRecordError):
            sync.post(TAG, record)
