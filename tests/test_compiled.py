"""The compiled packer and the pure-Python one behave as one.

The compiled packer (fluentclient/_speedups.pyx) takes the common record and hands
anything else back to the Python path. These tests pack the same records and batches with
the compiled packer on and off in one process, and compare the bytes, which records fail,
and the error texts, under every guard option, at every msgpack size boundary, and with
the odd values the Python path alone handles (subclasses, enums, NaN, lone surrogates,
bytes that are not UTF-8, tuples, default= hooks, huge ints, depth past max_depth).

Also: ``FLUENTCLIENT_NO_EXTENSIONS=1`` really switches the path, and the CLI says which
path runs. Tests that need the extension skip where it was not built, but fail in CI
(``CI`` set), where it must have been.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import gc
import importlib
import os
import socket
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from types import ModuleType
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fluentclient
from fluentclient import BufferedClient, Buffering, _accel
from fluentclient import client as client_module
from fluentclient._lifecycle import CLOSED
from fluentclient.framing import EntryPacker
from fluentclient.guard import BYTES_RULES, FLOAT_RULES, KEY_RULES, RecordGuard
from fluentclient.message import EventTime, Message
from fluentclient.stats import UnsentRecord

from .subproc import child_env
from .waiting import wait_until

T0 = 1_700_000_000 * 10**9 + 123


def _speedups() -> ModuleType | None:
    try:
        return importlib.import_module("fluentclient._speedups")
    except ImportError:
        return None


SPEEDUPS = _speedups()


@pytest.fixture(scope="module")
def speedups() -> ModuleType:
    if SPEEDUPS is None:
        if os.environ.get("CI"):
            pytest.fail("the compiled packer was not built: CI must build and test it "
                        "(pip install -e . with a C compiler)")
        pytest.skip("the compiled packer is not built here (no C compiler when installed)")
    return SPEEDUPS


def pair(speedups: ModuleType, guard: RecordGuard | None, default: Any = None,
         int_time: bool = False) -> tuple[EntryPacker, EntryPacker]:
    """Two packers alike but for the compiled path: on in the first, off in the second."""
    fast = EntryPacker(guard=guard, default=default, int_time=int_time)
    pure = EntryPacker(guard=guard, default=default, int_time=int_time)
    depth = guard.max_depth if guard is not None else speedups.DEPTH_WITHOUT_GUARD
    fast._fast = speedups.Packer(depth, Message)
    pure._fast = None
    return fast, pure


def outcome(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, str(exc)


def each(packer: EntryPacker, messages: list[Message]) -> list[Any]:
    """What pack() (SyncClient's way) makes of each message: bytes, or the error."""
    out: list[Any] = []
    for msg in messages:
        try:
            out.append(packer.pack(msg))
        except Exception as exc:
            out.append(outcome(exc))
    return out


def batch(packer: EntryPacker, messages: list[Message]) -> tuple[list[Any], list[Any]]:
    """What pack_runs() (the reader's way) makes of a batch: the runs and the failures."""
    index = {id(msg): i for i, msg in enumerate(messages)}
    failed: list[Any] = []
    runs = packer.pack_runs(
        messages, lambda msg, exc: failed.append((index[id(msg)], *outcome(exc))))
    return [(r.tag, r.data, r.sizes, [index[id(m)] for m in r.messages], r.largest,
             r.waiters, r.deliveries) for r in runs], failed


def assert_same(fast: EntryPacker, pure: EntryPacker, messages: list[Message]) -> None:
    assert each(fast, messages) == each(pure, messages)
    assert batch(fast, messages) == batch(pure, messages)


# -- odd values ----------------------------------------------------------------------------


class Text(str):
    pass


class Number(int):
    pass


class Real(float):
    pass


class Map(dict):  # type: ignore[type-arg]
    pass


class Items(list):  # type: ignore[type-arg]
    pass


class Level(enum.IntEnum):
    INFO = 20


class Colour(str, enum.Enum):
    RED = "red"


class Opaque:
    """No msgpack form: default= decides (str gives its repr-free text)."""

    def __str__(self) -> str:
        return "opaque"


# Lengths where msgpack's forms change (fix/8/16/32-bit headers), and either side.
LENGTHS = [0, 1, 15, 16, 17, 31, 32, 33, 255, 256, 65535, 65536]
INT_EDGES = sorted({sign * 2**bits + step for bits in (0, 5, 7, 8, 15, 16, 31, 32, 63, 64)
                    for sign in (1, -1) for step in (-1, 0, 1)} | {0, 2**100, -2**100})
BAD_UTF8 = [b"\xff", b"\x80", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80",
            b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xe2\x82", b"\xf0\x80\x80\x80",
            b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xf8", b"ok\xfe"]
GOOD_UTF8 = [b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\xed\x9f\xbf", b"\xee\x80\x80",
             b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", "é€𝄞".encode()]


def text_of(utf8_length: int, wide: bool) -> str:
    """A str whose UTF-8 is ``utf8_length`` bytes, of 2-byte characters if ``wide``."""
    if not wide:
        return "x" * utf8_length
    return "é" * (utf8_length // 2) + "x" * (utf8_length % 2)


lengths = st.sampled_from(LENGTHS)
# Arrays and maps change form at 16 items (and at 65536, too costly here).
small_lengths = st.sampled_from([0, 1, 15, 16, 17])
texts = st.one_of(
    st.text(max_size=8),
    st.text(alphabet=st.sampled_from("aé€𝄞\ud800\udc80\udfff"), max_size=6),
    st.builds(text_of, lengths, st.booleans()),
)
blobs = st.one_of(st.binary(max_size=8), st.sampled_from(BAD_UTF8 + GOOD_UTF8),
                  lengths.map(lambda n: b"b" * n))
keys = st.one_of(
    texts, texts,
    st.sampled_from([1, 0, -1, 1.5, float("nan"), True, None, b"k", b"\xff", (1, 2),
                     Text("k"), Colour.RED, Level.INFO, "1", "null", "true", "k"]),
)
leaves = st.one_of(
    texts, blobs, st.integers(), st.sampled_from(INT_EDGES), st.booleans(), st.none(),
    st.floats(), st.sampled_from([float("nan"), float("inf"), -float("inf"), -0.0, 5e-324]),
    st.sampled_from([Text("sub"), Number(5), Real(1.5), Level.INFO, Colour.RED, Opaque(),
                     datetime.datetime(2024, 1, 2, 3, 4, 5), datetime.date(2024, 1, 2),
                     datetime.datetime(2024, 1, 2, 3, 4, 5, 6, datetime.timezone.utc),
                     datetime.time(3, 4, 5), {1, 2}, bytearray(b"ba"),
                     bytearray(b"\xff"), memoryview(b"mv")]),
)


def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(children, max_size=4).map(tuple),
        st.dictionaries(keys, children, max_size=4),
        st.dictionaries(texts, children, max_size=3).map(Map),
        st.lists(children, max_size=3).map(Items),
        # Lengths past 65535 cost a lot here: the boundary test below has them.
        small_lengths.map(lambda n: [n] * n),
        small_lengths.map(lambda n: tuple(range(n))),
        small_lengths.map(lambda n: {f"k{i}": i for i in range(n)}),
    )


values = st.recursive(leaves, containers, max_leaves=12)
# Records of the values the compiled packer takes, at msgpack's boundaries: most of these
# take the compiled path, so its every form is compared with Python's.
# Every form at once: a value that sweeps the boundaries of ints, strs and bins.
SWEEPS = [
    [v for v in INT_EDGES if -2**63 <= v < 2**64],
    tuple(text_of(n, wide) for n in LENGTHS for wide in (False, True) if n < 65536),
    [b"b" * n for n in LENGTHS if n < 65536],
]
# Now and then one odd value among them: where the compiled packer must give up.
common_leaves = st.one_of(
    st.sampled_from(SWEEPS),
    st.builds(text_of, lengths, st.booleans()), lengths.map(lambda n: b"b" * n),
    st.sampled_from(INT_EDGES), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(GOOD_UTF8 + [True, False, None, "é€𝄞", ""]),
    st.sampled_from(INT_EDGES), st.builds(text_of, lengths, st.booleans()),
    st.sampled_from(BAD_UTF8),
    st.sampled_from(BAD_UTF8 + [float("nan"), -float("inf"), "\udc80", "a\ud800", Text("t"),
                                Number(1), Level.INFO, bytearray(b"x")]),
)
common_values = st.recursive(
    common_leaves,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.lists(children, max_size=4).map(tuple),
                               st.dictionaries(st.text(max_size=4), children, max_size=4),
                               small_lengths.map(lambda n: [None] * n),
                               small_lengths.map(lambda n: tuple(range(n))),
                               small_lengths.map(lambda n: {f"k{i}": i for i in range(n)})),
    max_leaves=10)


def nested(levels: int, kinds: list[str]) -> dict[str, Any]:
    """A record ``levels`` deep (the record is level 1), containers in the order given."""
    inner: Any = "leaf"
    for level in range(levels - 1):
        kind = kinds[level % len(kinds)]
        inner = {"k": inner} if kind == "dict" else [inner] if kind == "list" else (inner,)
    return {"top": inner}


deep_records = st.builds(nested, st.integers(1, 12),
                         st.lists(st.sampled_from(["dict", "list", "tuple"]), min_size=1))
ODD = BAD_UTF8 + [float("nan"), -float("inf"), "\udc80", 2**64, -2**63 - 1, Text("t"),
                  Number(1), Map(), Items(), Level.INFO, bytearray(b"x"), Opaque()]
# A common record but for one odd value, at the top or inside a list: the compiled packer
# must give that record back whole.
one_odd = st.builds(
    lambda record, key, odd, inside: {**record, key: [odd] if inside else odd},
    st.dictionaries(st.text(alphabet="abc", max_size=3), common_values, max_size=4),
    st.text(alphabet="xyz", min_size=1, max_size=2), st.sampled_from(ODD), st.booleans())
records = st.one_of(
    st.dictionaries(texts, common_values, max_size=6),
    one_odd,
    st.dictionaries(texts, values, max_size=6),
    st.dictionaries(keys, values, max_size=5),
    deep_records,
    st.dictionaries(texts, values, max_size=4).map(OrderedDict),
    st.dictionaries(texts, values, max_size=4).map(Map),
    st.sampled_from([[("a", 1)], "not a mapping", None]),
)
times = st.one_of(st.just(T0), st.integers(0, 2**32 * 10**9 - 1),
                  st.sampled_from([-1, 2**32 * 10**9, 2**64, True]))


class Note(Message):
    """A Message subclass: the compiled pass reads its fields by name."""

    __slots__ = ()


futures = st.one_of(st.none(), st.none(), st.builds(Future))
message_fields = (st.sampled_from(["a", "b"]), records, times)
messages = st.one_of(
    st.builds(Message, *message_fields, waiter=futures, delivery=futures),
    st.builds(Note, *message_fields, waiter=futures, delivery=futures))
checking_guards = st.builds(
    RecordGuard, max_depth=st.sampled_from([1, 2, 3, 8, 8, 8, 11, 200]),
    non_str_keys=st.sampled_from(KEY_RULES), non_finite_floats=st.sampled_from(FLOAT_RULES),
    non_utf8_bytes=st.sampled_from(BYTES_RULES))
guards = st.one_of(st.none(), checking_guards, checking_guards)
defaults = st.sampled_from([None, str, repr, lambda obj: float("nan"),
                           lambda obj: [1, (2, {"d": 1.5})], lambda obj: 1 / 0])

DIFFERENTIAL = settings(max_examples=300, deadline=None,
                        suppress_health_check=[HealthCheck.too_slow,
                                               HealthCheck.data_too_large])


@DIFFERENTIAL
@given(guard=guards, default=defaults, int_time=st.booleans(),
       batch_of=st.lists(messages, max_size=8))
def test_both_paths_pack_every_batch_alike(speedups, guard, default, int_time, batch_of):
    fast, pure = pair(speedups, guard, default, int_time)
    assert_same(fast, pure, batch_of)


# -- the boundaries, one by one -------------------------------------------------------------

GUARDS = [None, RecordGuard(), RecordGuard(non_str_keys="keep", non_finite_floats="keep",
                                           non_utf8_bytes="keep"),
          RecordGuard(non_str_keys="refuse", non_finite_floats="refuse",
                      non_utf8_bytes="refuse"),
          RecordGuard(non_finite_floats="str")]


def boundary_values() -> list[Any]:
    found: list[Any] = list(INT_EDGES)
    for n in LENGTHS:
        found += [text_of(n, False), text_of(n, True), b"b" * n, [1] * n, tuple(range(n)),
                  {f"k{i}": None for i in range(n)}]
    return found + BAD_UTF8 + GOOD_UTF8 + [1.5, -0.0, 5e-324, float("nan"), float("inf"),
                                           "\udc80", True, False, None]


def guard_id(guard: RecordGuard | None) -> str:
    # Stable across processes (an object's repr holds its address): parallel workers must
    # collect the same test ids.
    if guard is None:
        return "no-guard"
    return (f"keys-{guard.non_str_keys}-floats-{guard.non_finite_floats}"
            f"-bytes-{guard.non_utf8_bytes}")


@pytest.mark.parametrize("guard", GUARDS, ids=guard_id)
def test_every_size_boundary_packs_alike_and_as_msgpack_does(speedups, guard):
    fast, pure = pair(speedups, guard)
    reference = msgpack.Packer(use_bin_type=True, strict_types=True,
                               default=lambda obj: list(obj) if type(obj) is tuple else obj)
    taken = 0
    for value in boundary_values():
        for record in ({"v": value}, {text_of(31, False): value, "w": [value]}):
            msgs = [Message("t", record, T0)]
            assert_same(fast, pure, msgs)
            entry = fast._fast.entry(record, T0)  # type: ignore[union-attr]
            if entry is not None:
                taken += 1
                head = pure.pack(Message("t", {}, T0))[:-1]
                assert entry == head + reference.pack(record), repr(value)[:80]
    assert taken > len(boundary_values())  # the compiled path really ran


@pytest.mark.parametrize("max_depth", [1, 2, 3, 8, 12])
@pytest.mark.parametrize("kind", ["dict", "list", "tuple"])
def test_depth_at_max_depth_is_packed_and_one_more_is_refused_alike(speedups, max_depth,
                                                                    kind):
    fast, pure = pair(speedups, RecordGuard(max_depth=max_depth))
    at_limit = nested(max_depth, [kind])
    assert fast._fast.body(at_limit) is not None  # type: ignore[union-attr]
    beyond = nested(max_depth + 1, [kind])
    assert fast._fast.body(beyond) is None  # type: ignore[union-attr]
    assert_same(fast, pure, [Message("t", at_limit, T0), Message("t", beyond, T0)])
    with pytest.raises(fluentclient.UnsafeRecordError, match="max_depth"):
        fast.pack(Message("t", beyond, T0))


def test_the_compiled_path_takes_common_records_and_hands_back_the_rest(speedups):
    packer = speedups.Packer(8)
    common = {"level": "info", "n": -5, "big": 2**64 - 1, "f": 0.25, "ok": True, "none": None,
              "b": "é".encode(), "nested": {"l": [1, (2, "x")]}, "ü": "€𝄞"}
    assert packer.body(common) == msgpack.packb(
        {**common, "nested": {"l": [1, [2, "x"]]}}, use_bin_type=True)
    for odd in ({"k": float("nan")}, {"k": 2**64}, {"k": -2**63 - 1}, {"k": Text("s")},
                {Text("k"): 1}, {1: "v"}, {"k": "\udc80"}, {"\udc80": 1}, {"k": b"\xff"},
                {"k": bytearray()}, {"k": Level.INFO}, {"k": Opaque()}, Map(k=1),
                OrderedDict(k=1), {"k": Map()}, {"k": Items()}, {"k": {1: 2}}):
        assert packer.body(odd) is None, odd
    assert packer.entry({"k": 1}, -1) is None
    assert packer.entry({"k": 1}, 2**32 * 10**9) is None
    assert packer.entry({"k": 1}, True) is None
    assert packer.entry({"k": 1}, 2**32 * 10**9 - 1) is not None


def test_the_packer_attribute_follows_the_guard(speedups):
    if not fluentclient.COMPILED:
        pytest.skip("the compiled path is switched off in this process")
    assert EntryPacker(guard=RecordGuard(max_depth=3))._fast.max_depth == 3  # type: ignore
    assert EntryPacker()._fast.max_depth == speedups.DEPTH_WITHOUT_GUARD  # type: ignore


def test_a_default_hook_runs_once_per_record_on_either_path(speedups):
    # The hook runs on the Python path only: the compiled packer hands the record back at
    # the first value it cannot pack, before any hook could run.
    calls: list[Any] = []

    def hook(obj: Any) -> Any:
        calls.append(obj)
        return str(obj)

    fast, pure = pair(speedups, RecordGuard(), default=hook)
    record = {"a": 1, "amount": decimal.Decimal("1.5"), "z": [1.5]}
    assert_same(fast, pure, [Message("t", record, T0)])
    assert len(calls) == 4  # twice per path (pack and pack_runs)


# -- the switch and what tells which path runs --------------------------------------------


def run_python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=child_env({**os.environ, **env}))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


PROBE = ("import fluentclient; from fluentclient.framing import EntryPacker; "
         "print(fluentclient.COMPILED, EntryPacker()._fast is None)")


def test_the_environment_variable_switches_to_pure_python():
    assert run_python(PROBE, FLUENTCLIENT_NO_EXTENSIONS="1") == "False True"


def test_the_compiled_path_runs_unless_switched_off(speedups):
    env = {k: v for k, v in os.environ.items() if k != "FLUENTCLIENT_NO_EXTENSIONS"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, env=child_env(env))
    assert done.stdout.strip() == "True False", done.stderr
    assert done.stderr == ""  # the check at start passed without a warning


def cli_version(**env: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fluentclient", "--version"],
                          capture_output=True, text=True, timeout=60,
                          env=child_env({**os.environ, **env}))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_version_says_pure_python_when_switched_off():
    assert cli_version(FLUENTCLIENT_NO_EXTENSIONS="1") == (
        f"fluentclient {fluentclient.__version__} "
        "(pure Python: FLUENTCLIENT_NO_EXTENSIONS is set)")


def test_version_says_compiled_when_it_runs(speedups):
    assert cli_version(FLUENTCLIENT_NO_EXTENSIONS="0") == (
        f"fluentclient {fluentclient.__version__} (compiled)")


def test_a_failed_check_at_start_falls_back_with_a_warning(speedups, monkeypatch, caplog):
    # A packer that disagrees with msgpack (as a build for another CPython layout might)
    # must not be used: the check at start catches it and says so.
    real = speedups.Packer

    class Wrong:
        def __init__(self, max_depth: int) -> None:
            self.packer = real(max_depth)

        def body(self, record: Any) -> Any:
            out = self.packer.body(record)
            return out and out + b"x"

        def entry(self, record: Any, time_ns: Any) -> Any:
            return self.packer.entry(record, time_ns)

    monkeypatch.setattr(speedups, "Packer", Wrong)
    monkeypatch.delenv("FLUENTCLIENT_NO_EXTENSIONS", raising=False)
    with caplog.at_level("WARNING", logger="fluentclient"):
        module, reason = _accel._load()
    assert module is None
    assert reason == "pure Python: the compiled packer failed its check at start"
    assert "failed its check at start" in caplog.text
    monkeypatch.undo()
    assert _accel._load()[1] in ("compiled", "pure Python: FLUENTCLIENT_NO_EXTENSIONS is set")


def test_an_install_that_could_not_compile_says_so_at_import(monkeypatch, caplog, tmp_path):
    # setup.py leaves this note where the module would be; pip hides the build's output.
    (tmp_path / "_speedups.build-failed").write_text("the C compiler failed: CompileError\n")
    monkeypatch.setattr(_accel, "__file__", str(tmp_path / "_accel.py"))
    monkeypatch.setitem(sys.modules, "fluentclient._speedups", None)  # import fails
    monkeypatch.delattr(fluentclient, "_speedups", raising=False)
    monkeypatch.delenv("FLUENTCLIENT_NO_EXTENSIONS", raising=False)
    with caplog.at_level("WARNING", logger="fluentclient"):
        module, reason = _accel._load()
    assert module is None
    assert reason == "pure Python: the compiled packer could not be built"
    assert "could not be built when fluentclient was installed (the C compiler failed" \
        in caplog.text
    # Without the note, a missing extension is a normal way to run: no warning.
    (tmp_path / "_speedups.build-failed").unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="fluentclient"):
        assert _accel._load() == (None, "pure Python: the compiled packer is not built")
    assert caplog.text == ""


# -- post(): the compiled usual path against the Python one ---------------------------------

@pytest.fixture
def compiled_post(speedups: ModuleType) -> None:
    """The clients made here take the compiled post() (not switched off for this run)."""
    if not fluentclient.COMPILED:
        pytest.skip(f"this run is {_accel.REASON}")


@pytest.fixture(scope="module")
def refusing_port() -> Iterator[int]:
    """A port nothing listens on (bound, so no one else takes it): every connect fails."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def pure_post_client(monkeypatch: pytest.MonkeyPatch, **options: Any) -> BufferedClient:
    """A client whose post() is the Python method, whatever the build."""
    with monkeypatch.context() as patch:
        patch.setattr(client_module, "fast_poster", lambda *args: None)
        return BufferedClient(**options)


class Unpackable:
    pass


post_tags = st.sampled_from(["app", "app", "app.web", "other", "", "bad tag", "a" * 1025,
                             "a..b", 7, None, b"app", ("app",), ["app"]])
post_records = st.sampled_from([{"n": 1}, {"n": 1}, {"n": 1, "s": "x"}, {},
                                {"bad": Unpackable()}, {"nan": float("nan")}, [1, 2], "text"])
post_times = st.sampled_from([None, None, None, 1_700_000_000, 1.5, float("nan"), -1, True,
                              "now", EventTime(1, 2), EventTime(1, -1), 2**40])
calls = st.tuples(post_tags, post_records, post_times, st.booleans(), st.booleans(),
                  st.booleans())
POST_DIFFERENTIAL = settings(max_examples=40, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.function_scoped_fixture])


def result_of(value: Any) -> Any:
    if isinstance(value, Future):
        return "future"
    return type(value).__name__, value


def drained(client: BufferedClient) -> None:
    ledger = client._ledger
    assert wait_until(lambda: ledger.left_queue() >= ledger.entered()), "the queue stayed"


@POST_DIFFERENTIAL
@given(script=st.lists(calls, max_size=12), stop_at=st.integers(0, 14),
       require_ack=st.booleans(), prefix=st.sampled_from([None, "pre"]))
def test_both_paths_post_alike(compiled_post, monkeypatch, refusing_port, script, stop_at,
                               require_ack, prefix):
    options = dict(host="127.0.0.1", port=refusing_port, at_exit=False, tag_prefix=prefix,
                   require_ack=require_ack, buffering=Buffering(flush_interval=60.0))
    seen: dict[str, list[Any]] = {"fast": [], "pure": []}
    unsent: dict[str, list[Any]] = {"fast": [], "pure": []}

    def keep(name: str) -> Any:
        def on_unsent(records: list[UnsentRecord]) -> None:
            for tag, time, record in records:
                seconds = time.seconds if isinstance(time, EventTime) else time
                # A time given to post() is before 2025; the clock's is now.
                given = seconds if seconds < 1_735_000_000 else "now"
                unsent[name].append((tag, given, repr(record)))
        return on_unsent

    clients = {"fast": BufferedClient(**options, on_unsent=keep("fast")),
               "pure": pure_post_client(monkeypatch, **options, on_unsent=keep("pure"))}
    for name, client in clients.items():
        # One warm-up post makes the tags known: the later ones take the usual path.
        client.post("app", {"warm": 1})
        for i, (tag, record, time, ack, sync_append, keyword) in enumerate(script):
            if i == stop_at:
                drained(client)
                client.shutdown(0)
            kwargs: dict[str, Any] = {"time": time} if time is not None or keyword else {}
            if ack:
                kwargs["ack"] = True
            if sync_append:
                kwargs["sync_append"] = True
            try:
                seen[name].append(result_of(client.post(tag, record, **kwargs)))
            except Exception as exc:
                seen[name].append(outcome(exc))
        if client._life.phase is not CLOSED:
            drained(client)
        report = client.shutdown(0)
        stats = client.stats()
        seen[name].append((stats.posted, dict(stats.dropped), report.unsent_records,
                           dict(report.dropped)))
    assert seen["fast"] == seen["pure"]
    assert unsent["fast"] == unsent["pure"]


def test_the_compiled_post_is_the_instances_and_the_pure_one_the_classes(
        compiled_post, monkeypatch, refusing_port):
    fast = BufferedClient("127.0.0.1", refusing_port, at_exit=False)
    pure = pure_post_client(monkeypatch, host="127.0.0.1", port=refusing_port,
                            at_exit=False)
    try:
        assert type(fast.post.__self__).__name__ == "Poster"
        assert pure.post.__func__ is BufferedClient.post
    finally:
        fast.close()
        pure.close()


def test_the_compiled_post_queues_messages_the_collector_does_not_track(speedups):
    # Tracked, every queued Message that outlived two young collections in a burst was
    # promoted to the old generation, and the promotions set off full collections: the
    # longest pauses in post(). Untracked, it must still be freed by reference counting.
    poster, queue = _accel.bound_poster(speedups, lambda: None)
    record = {"k": "v"}
    before = sys.getrefcount(record)
    assert poster.post("t", record) is True
    assert not gc.is_tracked(queue[0])
    assert gc.is_tracked(Message("t", record, 0))  # the pure path's: the collector's own
    assert sys.getrefcount(record) == before + 1
    queue.clear()
    assert sys.getrefcount(record) == before


def test_the_at_fork_counter_moves_in_every_child(speedups):
    # What the compiled post() reads instead of os.getpid(): moved by libc's at-fork
    # handler, so also in a child forked without Python's hooks (ctypes calls libc).
    before = speedups.forks()
    out = run_python(
        "import ctypes, os\n"
        "from fluentclient import _speedups\n"
        "start = _speedups.forks()\n"
        "pid = ctypes.PyDLL(None).fork()\n"
        "if pid == 0:\n"
        "    os._exit(_speedups.forks() - start)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status), _speedups.forks() - start)\n")
    assert out.split() == ["1", "0"], out
    assert speedups.forks() == before
