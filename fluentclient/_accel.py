"""Which packer runs: the compiled one (``_speedups``) or pure Python, decided once.

The compiled packer is used only if all of these hold when the package is imported:

* ``FLUENTCLIENT_NO_EXTENSIONS`` is not set to a non-empty value other than ``0``;
* the extension imports (``pip install`` builds it where a C compiler is found);
* it was compiled for this interpreter's version;
* it packs a set of known records to the very bytes msgpack makes of them, and hands back
  the records it must leave to Python.

A failed check logs a warning and leaves the pure-Python path, which behaves identically
(tests/test_compiled.py compares the two byte for byte): the check guards against a build
that does not fit this interpreter, not against a choice the user made. An install that
could not compile the extension leaves a note beside the package (setup.py), and importing
the package then warns once, since pip shows the build's own message only with ``-v``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import deque
from types import ModuleType
from typing import Any, Callable, Protocol

import msgpack

from .message import Message

__all__ = ["COMPILED", "ENV_SWITCH", "REASON", "FastPacker", "FastPoster", "Take",
           "fast_packer", "fast_poster", "fast_take"]

log = logging.getLogger("fluentclient")

ENV_SWITCH = "FLUENTCLIENT_NO_EXTENSIONS"


class FastPacker(Protocol):
    """What ``_speedups.Packer`` offers: None means the record is the Python path's."""

    def entry(self, record: Any, time_ns: Any) -> bytes | None: ...

    def body(self, record: Any) -> bytes | None: ...

    def runs(self, messages: Any, slow: Callable[[Any], bytes | None],
             run_type: Callable[[str], Any]) -> list[Any]: ...


class FastPoster(Protocol):
    """What ``_speedups.Poster`` offers: BufferedClient.post()'s usual path."""

    def bind(self, queue: Any, life: Any, admission: Any, reporting: Any, reader: Any,
             count: Callable[[], object], pid: int) -> None: ...

    def post(self, tag: Any, record: Any, *, time: Any = None, sync_append: Any = False,
             timeout: Any = None, ack: Any = False) -> Any: ...


# The reader's batch from its queue: (queue, size, marker) -> (items, marker seen).
Take = Callable[[Any, int, object], "tuple[list[Any], bool]"]


def _as_list(obj: Any) -> Any:
    if type(obj) is tuple:
        return list(obj)
    raise TypeError(f"cannot serialize {type(obj).__qualname__} object")


_reference = msgpack.Packer(use_bin_type=True, strict_types=True, default=_as_list)


def _known_records() -> list[dict[str, Any]]:
    """Records touching every type and every size boundary of msgpack's forms."""
    ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
            2**64 - 1, -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63]
    texts = ["", "a" * 31, "b" * 32, "c" * 255, "d" * 256, "é" * 40000, "ü€𝄞 mixed"]
    return [
        {"ints": ints, "floats": [0.0, -0.0, 1.5, -2.25e300, 5e-324], "none": None,
         "yes": True, "no": False},
        {t: t for t in texts},
        {"bytes": [b"", b"x" * 255, b"y" * 256, "é€".encode(), b"z" * 65536]},
        {"nested": {"a": [1, (2, 3), {"b": ()}], "c": {}}, "list": list(range(16)),
         "map": {str(i): i for i in range(16)}, "tuple": tuple(range(15))},
        {},
    ]


def _not_mine() -> list[dict[Any, Any]]:
    """Records the compiled packer must hand back to Python."""

    class Text(str):
        pass

    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(8):  # nine levels with the record: one more than max_depth=8
        inner["d"] = {}
        inner = inner["d"]
    return [
        {"nan": float("nan")}, {"inf": [float("inf")]}, {1: "int key"},
        {"s": Text("subclass")}, {"surrogate": "\udc80"}, {"\ud800": 1},
        {"bad": b"\xff"}, {"big": 2**64}, {"small": -2**63 - 1}, {"set": {1}}, deep,
        {"bytearray": bytearray(b"x")},
    ]


def _self_check(module: ModuleType) -> None:
    """Raise unless ``module``'s packer agrees with msgpack on the known records."""
    packer = module.Packer(8)
    head = b"\x92\xd7\x00" + (1_700_000_000).to_bytes(4, "big") + (7).to_bytes(4, "big")
    for record in _known_records():
        expected = _reference.pack(record)
        body = packer.body(record)
        if body != expected:
            raise AssertionError(f"the compiled packer made other bytes of {record!r:.80}")
        if packer.entry(record, 1_700_000_000 * 10**9 + 7) != head + expected:
            raise AssertionError(f"the compiled packer made another entry of {record!r:.80}")
    for record in _not_mine():
        if packer.body(record) is not None:
            raise AssertionError(f"the compiled packer took {record!r:.80}")
    if packer.entry({}, -1) is not None or packer.entry({}, 2**32 * 10**9) is not None:
        raise AssertionError("the compiled packer took a time EventTime cannot hold")
    _check_runs(module)
    _check_poster(module)


class _Run:
    """What the check below gives runs() for framing.PackedRun (which imports this)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.sizes: list[int] = []
        self.messages: list[Message] = []
        self.data = b""
        self.largest = 0
        self.waiters = self.deliveries = False


def _check_runs(module: ModuleType) -> None:
    """Raise unless runs() reads a Message's slots where they are, and take() takes."""
    from concurrent.futures import Future

    t = 1_700_000_000 * 10**9 + 7
    head = b"\x92\xd7\x00" + (1_700_000_000).to_bytes(4, "big") + (7).to_bytes(4, "big")
    msgs = [Message("a", {"k": 1}, t), Message("a", {"k": "vv"}, t, waiter=Future()),
            Message("b", {}, t, delivery=Future())]
    runs = module.Packer(8, Message).runs(msgs, lambda msg: None, _Run)
    seen = [(r.tag, r.data, r.sizes, r.messages, r.largest, r.waiters, r.deliveries)
            for r in runs]
    first = [head + _reference.pack(m.record) for m in msgs[:2]]
    if seen != [("a", b"".join(first), [len(e) for e in first], msgs[:2],
                 max(map(len, first)), True, False),
                ("b", head + b"\x80", [12], msgs[2:], 12, False, True)]:
        raise AssertionError("the compiled packer read another Message")
    marker = object()
    queue: deque[object] = deque([1, marker, 2, 3])
    if module.take(queue, 3, marker) != ([1, 2], True) or list(queue) != [3]:
        raise AssertionError("the compiled take() took other items")


def bound_poster(module: ModuleType, count: Callable[[], object]) -> tuple[Any, deque[Any]]:
    """A compiled post() bound to a queue of its own and a running client's state, the
    tag "t" known as "p.t" and the clock stopped at 1,700,000,000.000000007: what the
    check below and the tests post through."""
    class State:  # what post() reads of the client's lifecycle, admission, reader...
        phase = "running"
        room = 10
        busy = 0
        idle = False

    queue: deque[Any] = deque()
    poster = module.Poster(Message, {"t": "p.t"}, None, None, "running",
                           lambda: 1_700_000_000 * 10**9 + 7, os.getpid)
    state = State()
    poster.bind(queue, state, state, state, state, count, os.getpid())
    return poster, queue


def _check_poster(module: ModuleType) -> None:
    """Raise unless the compiled post() queues a Message as the Python one makes it."""
    counted: list[int] = []
    poster, queue = bound_poster(module, lambda: counted.append(1))
    record = {"k": "v"}
    if poster.post("t", record) is not True or counted != [1] or len(queue) != 1:
        raise AssertionError("the compiled post() did not queue a record")
    msg = queue[0]
    if (type(msg) is not Message or msg.tag != "p.t" or msg.record is not record
            or msg.time_ns != 1_700_000_000 * 10**9 + 7 or msg.waiter is not None
            or msg.delivery is not None):
        raise AssertionError("the compiled post() made another Message")


def _build_failure() -> str | None:
    """Why the install could not build the extension, if it left a note saying so."""
    note = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_speedups.build-failed")
    try:
        with open(note, encoding="utf-8") as f:
            return f.read().strip() or "no reason given"
    except OSError:
        return None


def _load() -> tuple[ModuleType | None, str]:
    """The checked module, or None; and in a few words why."""
    if os.environ.get(ENV_SWITCH, "") not in ("", "0"):
        return None, f"pure Python: {ENV_SWITCH} is set"
    try:
        from . import _speedups
    except ImportError as exc:
        failed = _build_failure()
        if failed is None:
            # Not built on purpose, or a platform without a wheel: a normal way to run,
            # said by fluentclient.COMPILED and `fluentclient --version`.
            log.debug("fluentclient: no compiled packer (%s); running pure Python", exc)
            return None, "pure Python: the compiled packer is not built"
        # pip shows a build's output only with -v: this is where the user hears of it.
        log.warning("fluentclient: the compiled packer could not be built when fluentclient "
                    "was installed (%s); running pure Python, which packs records several "
                    "times slower. Reinstall where a C compiler is found, or set %s=1 to "
                    "run pure Python without this warning.", failed, ENV_SWITCH)
        return None, "pure Python: the compiled packer could not be built"
    module: ModuleType = _speedups
    try:
        built_for = int(module.BUILT_FOR)
        if built_for >> 16 != sys.hexversion >> 16:
            raise ImportError(f"it was compiled for Python {built_for >> 24}."
                              f"{(built_for >> 16) & 0xFF}")
        _self_check(module)
    except Exception as exc:
        log.warning("fluentclient: the compiled packer failed its check at start (%s); "
                    "running pure Python", exc)
        return None, "pure Python: the compiled packer failed its check at start"
    return module, "compiled"


# REASON: which path runs, as --version and the demo say it ("compiled", or "pure Python:
# " and why).
_module, REASON = _load()
# The public answer, exported as fluentclient.COMPILED.
COMPILED = _module is not None


def fast_packer(max_depth: int | None) -> FastPacker | None:
    """A compiled packer for records nested at most ``max_depth`` levels (None: no guard,
    the deepest the guard allows), or None when the pure-Python path runs."""
    module = _module
    if module is None:
        return None
    packer: FastPacker = module.Packer(
        module.DEPTH_WITHOUT_GUARD if max_depth is None else max_depth, Message)
    return packer


def fast_take() -> Take | None:
    """The reader's batch taken from its queue in one C pass, or None in pure Python."""
    module = _module
    return None if module is None else module.take


def fast_poster(
    message: type, known: dict[str, str], careful: Callable[..., Any],
    late: Callable[[Any, bool], bool], running: object, clock: Callable[[], int],
    getpid: Callable[[], int],
) -> FastPoster | None:
    """BufferedClient.post()'s usual path compiled, or None when pure Python runs.

    ``known``: tags already checked, mapped to the full tag; ``careful(tag, record, time,
    sync_append, timeout, ack)``: the Python path for anything else; ``late(msg,
    raises)``: a record queued as a shutdown began; ``running``: the phase in which the
    usual path may be taken. Then ``bind()`` it to the client's state.
    """
    module = _module
    if module is None:
        return None
    poster: FastPoster = module.Poster(message, known, careful, late, running, clock, getpid)
    return poster
