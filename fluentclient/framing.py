"""The forward protocol's byte layouts: packing entries and frames, and decoding them.

Encoding is split in two steps so that the buffer can grow one frame's entries in place:
:class:`EntryPacker` turns a :class:`Message` into the bytes of one ``[time, record]``
entry, and :func:`packed_forward_frame` wraps a run of entries of one tag into a
PackedForward frame ``[tag, bin(entries), {"size": n, ...}]``. Decoding (all four event
modes, gzip, both time forms) serves the embedded server and the tests; it is written in
a module of its own, and its names are importable from here.
"""

from __future__ import annotations

import base64
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any, Callable, Optional

import msgpack

from ._accel import FastPacker, fast_packer
from ._decoding import (
    DecodedFrame,
    FrameError,
    ack_for,
    decode_frame,
    decoded_time_ns,
    new_unpacker,
)
from ._plain_values import plain_value
from ._recheck import check_distinct, second_look
from ._threads import swallow
from .errors import SerializationError
from .guard import RecordGuard
from .message import Message, short_repr

__all__ = [
    "EntryPacker",
    "FrameBuilder",
    "FrameError",
    "DecodedFrame",
    "decode_frame",
    "decoded_time_ns",
    "new_unpacker",
    "new_chunk_id",
    "ack_for",
    "frame_overhead",
    "packed_forward_frame",
]

_NS = 1_000_000_000
# fixarray(2), then fixext8 of type 0 holding seconds and nanoseconds as uint32 BE. The
# three constant bytes go in as one field: struct packs that faster than three.
_EVENT_TIME_ENTRY_HEAD = struct.Struct(">3sII")
_ENTRY_START = b"\x92\xd7\x00"
_BIN8 = struct.Struct(">BB")
_BIN16 = struct.Struct(">BH")
_BIN32 = struct.Struct(">BI")
_STR32 = struct.Struct(">BI")

Default = Optional[Callable[[Any], Any]]

# Public here, wherever they happen to be defined.
DecodedFrame.__module__ = FrameError.__module__ = __name__


class PackedRun:
    """Consecutive entries of one tag, packed.

    ``sizes[i]`` is the length of the entry of ``messages[i]``; ``data`` holds the entries
    one after the other in that order. ``largest`` is the longest entry; ``waiters`` and
    ``deliveries`` say whether any message may have a ``waiter`` or a ``delivery``. The
    packer notes them as it goes, so that the reader need not scan the run again.
    """

    __slots__ = ("tag", "data", "sizes", "messages", "pieces", "largest", "waiters",
                 "deliveries")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.data = b""
        self.sizes: list[int] = []
        self.messages: list[Message] = []
        # The entries while the run is packed, joined by seal().
        self.pieces: list[bytes] = []
        self.largest = 0
        self.waiters = False
        self.deliveries = False

    def seal(self) -> None:
        self.data = b"".join(self.pieces)
        self.sizes = list(map(len, self.pieces))
        self.largest = max(self.sizes, default=0)
        self.pieces = []

    def entries(self) -> list[bytes]:
        """Each entry on its own: for the paths that go record by record."""
        data, out, at = self.data, [], 0
        for size in self.sizes:
            out.append(bytes(data[at:at + size]))
            at += size
        return out


class EntryPacker:
    """Packs one message into the bytes of an entry. Not thread-safe: one per thread.

    Every record either becomes exactly one well-formed entry or raises
    :class:`SerializationError`, whatever it holds, so one bad record can never cost its
    neighbours in the frame. What happens to each kind of odd input is listed in
    docs/hostile.md; in short:

    * the record must be a Mapping; one that is not a dict, or a dict subclass, is copied
      into a plain dict first (a subclass's stored items: its overridden methods are not
      called). Key types are left to the guard: checking them here would cost more than
      packing;
    * anywhere inside, tuples become arrays, subclasses of the built-in types become the
      plain value (an IntEnum its int, a str-mixin Enum its str), other Mappings maps,
      a ``datetime``, ``date`` or ``time`` its ISO 8601 text (``isoformat()``, as every
      log integration sends it too); everything else goes to ``default`` if given;
    * a str that UTF-8 cannot encode (a lone surrogate) is sent with that code point
      written as a ``\\udc80`` escape, so the wire always carries valid UTF-8;
    * keys rewritten on the way (escaped, made by ``default=``, made str by the guard)
      must still differ from every other key of their map, or the record is refused
      with :class:`UnsafeRecordError`: a server would keep one value of the two;
    * what is checked and packed is a copy of the record: another thread changing it
      meanwhile cannot get a change past the guard, or half-way into an entry;
    * with a ``guard``, what real servers would lose (deep nesting, non-str keys, NaN
      and infinity) is refused with :class:`UnsafeRecordError` or made safe, by its rules.

    Where the compiled packer runs (see :mod:`fluentclient._accel`), the common record (an
    exact dict of exact str keys and plain values, which every guard option leaves as it
    is) is packed in one C pass by ``_fast``; it hands anything else back, and the Python
    code below then packs that record exactly as it would without the extension.
    """

    __slots__ = ("_packer", "_lenient", "_default", "_int_time", "_ran", "_guard", "_unsure",
                 "_fast")

    def __init__(
        self, *, default: Default = None, int_time: bool = False,
        guard: RecordGuard | None = None,
    ) -> None:
        self._default = default
        self._int_time = int_time
        self._guard = guard
        # Set when Python code ran in the middle of packing (see _convert), or a str was
        # escaped (see _pack_lenient): the result is then checked again (see _checked).
        self._ran = False
        # Set when that code made something other than a str, which the guard must see.
        self._unsure = False
        # strict_types: only exact built-in types are packed in C (which is also faster);
        # everything else comes through _convert.
        self._packer = msgpack.Packer(
            default=self._convert, use_bin_type=True, autoreset=True, strict_types=True
        )
        # Made on the first lone surrogate: encoding with an error handler costs every str.
        self._lenient: msgpack.Packer | None = None
        # The compiled packer, or None: chosen once, here, so both clients use the same.
        self._fast: FastPacker | None = fast_packer(
            guard.max_depth if guard is not None else None)

    def pack(self, message: Message) -> bytes:
        """The entry for ``message``; raises :class:`SerializationError` for bad records."""
        return self.entry(message.record, message.time_ns)

    def entry(self, record: Mapping[Any, Any], time_ns: int) -> bytes:
        """:meth:`pack` of a record and its time, with no Message to fill (a SyncClient
        packs on the caller's thread, one record a call)."""
        fast = self._fast
        if fast is not None:
            # The common record in one compiled pass; None leaves it to the code below.
            if not self._int_time:
                entry = fast.entry(record, time_ns)
                if entry is not None:
                    return entry
            else:
                done = fast.body(record)
                if done is not None:
                    int_head: bytes = self._packer.pack(divmod(time_ns, _NS)[0])
                    return b"\x92" + int_head + done
        try:
            body = self._guarded(record.copy() if type(record) is dict else _as_dict(record))
        except SerializationError:
            raise
        except Exception as exc:
            raise self._failure(exc) from exc
        sec, nsec = divmod(time_ns, _NS)
        if self._int_time:
            head: bytes = self._packer.pack(sec)
            return b"\x92" + head + body
        return _EVENT_TIME_ENTRY_HEAD.pack(_ENTRY_START, sec, nsec) + body

    def pack_runs(
        self, messages: Iterable[Message], failed: Callable[[Message, SerializationError], None]
    ) -> list[PackedRun]:
        """Pack messages in order into runs of one tag each.

        A record that cannot be packed goes to ``failed`` and leaves no trace in its run.
        This is the reader thread's inner loop. Whatever goes wrong with one record (its
        own code raising, another thread changing it) costs that record alone, as a
        :class:`SerializationError`: never the thread, never its neighbours.
        """
        if self._fast is not None and not self._int_time:
            # The common records in one compiled pass over the batch; each other one is
            # packed by the loop below, alone.
            return self._fast.runs(messages, partial(self._one_run, failed), PackedRun)
        return self._python_runs(messages, failed)

    def _one_run(
        self, failed: Callable[[Message, SerializationError], None], msg: Message
    ) -> bytes | None:
        """The entry of a record the compiled pass left, or None if it failed."""
        runs = self._python_runs((msg,), failed)
        return runs[0].data if runs else None

    def _python_runs(
        self, messages: Iterable[Message], failed: Callable[[Message, SerializationError], None]
    ) -> list[PackedRun]:
        """pack_runs in Python: a plain dict that the guard passes is packed here
        directly, everything else through the whole of :meth:`pack`'s path. The boundary
        around each record is a ``try``, which costs nothing until something raises."""
        runs: list[PackedRun] = []
        guard = self._guard
        flat = guard.flat_check if guard is not None else None
        packb, head, int_time = self._packer.pack, _EVENT_TIME_ENTRY_HEAD.pack, self._int_time
        start = _ENTRY_START
        run: PackedRun | None = None
        entries: list[bytes] = []
        kept: list[Message] = []
        for msg in messages:
            record = msg.record
            try:
                if type(record) is dict and not int_time:
                    # One moment's copy is checked and packed (see _guarded).
                    record = record.copy()
                    if flat is None or flat(record):
                        try:
                            body = packb(record)
                        except Exception as exc:
                            body = self._after_failure(record, exc)
                        if self._ran:
                            body = self._checked(body)
                    else:
                        body = self._guarded(record)
                    sec, nsec = divmod(msg.time_ns, _NS)
                    entry = head(start, sec, nsec) + body
                else:
                    entry = self.pack(msg)
            except SerializationError as exc:
                failed(msg, exc)
                continue
            except Exception as exc:
                failed(msg, self._failure(exc))
                continue
            if run is None or msg.tag != run.tag:
                run = PackedRun(msg.tag)
                runs.append(run)
                entries, kept = run.pieces, run.messages
            entries.append(entry)
            kept.append(msg)
            if msg.waiter is not None:
                run.waiters = True
            if msg.delivery is not None:
                run.deliveries = True
        for run in runs:
            run.seal()
        return runs

    def _guarded(self, record: dict[Any, Any]) -> bytes:
        """The packed record, checked and made safe as the class says.

        ``record`` is a copy of the caller's, taken in one C call (and so is each dict and
        list in it that the guard walks): another thread that changes the record meanwhile
        changes what the caller holds, not what is packed, so the guard's rules hold for
        what is sent, and the record goes out as it was at one moment.
        """
        guard = self._guard
        if guard is not None:
            try:
                if not guard.flat(record):
                    record = guard.clean(record, copy=True)
            except SerializationError:
                raise
            except Exception as exc:
                # The record's own code raised (a bytes subclass's __bytes__ while its
                # key was made a str, say): that record is dropped, nothing else.
                raise SerializationError(
                    f"record cannot be checked: {_describe(exc)}") from exc
        try:
            body: bytes = self._packer.pack(record)
        except Exception as exc:
            body = self._after_failure(record, exc)
        return self._checked(body) if self._ran else body

    def _checked(self, body: bytes) -> bytes:
        """``body`` once something was rewritten while it was packed (Python code ran, or
        a str was escaped): proven whole, with distinct keys in every map, and safe."""
        self._ran = False
        if self._guard is None or not self._unsure:
            # Only str came of it (default=str on a datetime, a str Enum): a str is safe
            # anywhere as a value, but as a key it may now equal another key.
            check_distinct(body)
            return body
        self._unsure = False
        return second_look(body, self._guard)

    def _failure(self, exc: Exception) -> SerializationError:
        """What to raise for a record whose packing ended in an error we did not expect:
        the record's own code raised, or another thread changed it half-way."""
        self._ran = self._unsure = False
        error = SerializationError(f"record cannot be serialized: {_describe(exc)}")
        error.__cause__ = exc  # for on_error: what actually went wrong, and where
        return error

    def _after_failure(self, record: dict[Any, Any], exc: Exception) -> bytes:
        """The packer raised ``exc``: pack ``record`` leniently, or say why it cannot be."""
        if isinstance(exc, UnicodeEncodeError):
            return self._pack_lenient(record)
        raise SerializationError(self._why(record, exc)) from exc

    def _why(self, record: dict[Any, Any], exc: Exception) -> str:
        """What to tell about a record the packer refused: where in it, what, the cure.

        Only a record already lost pays for this, on the thread that packs.
        """
        where = self._culprit(record, 0)
        self._ran = self._unsure = False
        text = "record cannot be serialized: "
        if where is not None:
            text += f"the value at {where}: "
        text += _describe(exc)
        if self._default is None and _NO_DEFAULT in str(exc):
            text += ("; give the client records=RecordRules(default=str) to send such "
                     "values as text")
        return text

    def _culprit(self, value: Any, depth: int) -> str | None:
        """Where in ``value`` the first value that cannot be packed is, as ``['a'][2]``."""
        if depth >= _CULPRIT_DEPTH:
            return None
        try:
            if isinstance(value, Mapping):
                items: list[tuple[Any, Any]] = list(value.items())
            elif isinstance(value, (list, tuple)):
                items = list(enumerate(value))
            else:
                return None
            for key, item in items:
                try:
                    self._packer.pack(item)
                except UnicodeEncodeError:
                    continue  # sent with the code point escaped: not what failed
                except Exception:
                    return f"[{short_repr(key, 40)}]" + (self._culprit(item, depth + 1) or "")
        except Exception:
            return None  # the record's own code raised: no place to name
        return None

    def _pack_lenient(self, record: dict[Any, Any]) -> bytes:
        if self._lenient is None:
            self._lenient = msgpack.Packer(
                default=self._convert, use_bin_type=True, autoreset=True, strict_types=True,
                unicode_errors="backslashreplace",
            )
        try:
            body: bytes = self._lenient.pack(record)
        except Exception as exc:
            self._ran = self._unsure = False
            raise SerializationError(f"record cannot be serialized: {_describe(exc)}") from exc
        # Escaping rewrote a str: a key may now read like another (see check_distinct).
        self._ran = True
        return body

    def _convert(self, obj: Any) -> Any:
        """msgpack's ``default``: called for everything that is not an exact built-in type."""
        if type(obj) is tuple:
            return list(obj)
        # From here on Python code may run (an overridden method, the user's hook) and let
        # another thread change a list or dict that msgpack is half-way through.
        self._ran = True
        plain = plain_value(obj)
        if plain is obj:
            if self._default is None:
                raise TypeError(f"{_NO_DEFAULT} {type(obj).__qualname__} object")
            try:
                plain = plain_value(self._default(obj))
            except BaseException as exc:
                if isinstance(exc, Exception) or not swallow(exc):
                    raise
                # On our reader (SystemExit...): that record is dropped, the reader lives.
                raise TypeError(f"default= raised {exc!r}") from exc
        if type(plain) is not str:
            self._unsure = True
        return plain


# How the packer says a value has no msgpack form and no default= to give it one.
_NO_DEFAULT = "cannot serialize"
# How deep the search for the value that failed goes (records are rarely deeper).
_CULPRIT_DEPTH = 8


def _as_dict(record: Any) -> dict[Any, Any]:
    if not isinstance(record, Mapping):
        raise SerializationError(f"a record must be a mapping, not {type(record).__name__}")
    try:
        return dict(record)
    except Exception as exc:
        raise SerializationError(f"the record could not be read: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """``Type: message`` for an error raised by user code, whose ``__str__`` may raise too."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    name = type(exc).__name__
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{name}: {text}" if text else name


def _packb(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def bin_header(length: int) -> bytes:
    if length < 0x100:
        return _BIN8.pack(0xC4, length)
    if length < 0x10000:
        return _BIN16.pack(0xC5, length)
    return _BIN32.pack(0xC6, length)


# A frame's bytes besides its tag and entries, at most: the array header, a bin32 header
# and an option map with size and a chunk id.
_FRAME_SLACK = 1 + 5 + 64


def frame_overhead(tag: str) -> int:
    """An upper bound on a PackedForward frame's bytes besides its entries."""
    return len(_packb(tag)) + _FRAME_SLACK


def packed_forward_frame(
    tag: str,
    entries: bytes | bytearray | memoryview,
    count: int,
    *,
    chunk: str | None = None,
    str_entries: bool = False,
) -> bytes:
    """``[tag, bin(entries), {"size": count[, "chunk": id]}]`` as one bytes object.

    ``str_entries`` writes the entries as str32, as fluentd's own out_forward does for
    msgpack implementations that predate ``bin``.
    """
    options: dict[str, Any] = {"size": count}
    if chunk is not None:
        options["chunk"] = chunk
    n = len(entries)
    head = _STR32.pack(0xDB, n) if str_entries else bin_header(n)
    return b"".join((b"\x93", _packb(tag), head, entries, _packb(options)))


class FrameBuilder:
    """Turns a tag's entries into the bytes of one frame, as the client is configured.

    ``compress="gzip"`` makes CompressedPackedForward frames (``bin`` entries, as the spec
    requires); ``chunks=True`` gives each frame a fresh ack id; ``str_entries`` writes
    uncompressed entries as str32 for servers whose msgpack predates ``bin``.
    """

    def __init__(
        self,
        *,
        compress: str | None = None,
        level: int = 6,
        chunks: bool = False,
        str_entries: bool = False,
    ) -> None:
        if compress not in (None, "gzip"):
            raise ValueError(f"compress must be None or 'gzip', not {compress!r}")
        if not 0 <= level <= 9:
            raise ValueError("compress_level must be between 0 and 9")
        self.compress = compress
        self.level = level
        self.chunks = chunks
        self.str_entries = str_entries
        # The array header and the packed tag of each tag seen (up to _HEADS of them):
        # a SyncClient builds a frame per record, and packing the tag every time cost
        # about as much as the rest of the frame.
        self._heads: dict[str, bytes] = {}

    def head(self, tag: str) -> bytes:
        """The bytes a frame of ``tag`` starts with: the array header and the tag."""
        head = self._heads.get(tag)
        if head is None:
            head = b"\x93" + _packb(tag)
            if len(self._heads) < _HEADS:
                self._heads[tag] = head
        return head

    def overhead(self, tag: str) -> int:
        """:func:`frame_overhead` of ``tag``, from the cached head."""
        return len(self.head(tag)) - 1 + _FRAME_SLACK

    def build(
        self, tag: str, entries: bytes | bytearray, count: int
    ) -> tuple[bytes, str | None]:
        """The frame's bytes and its chunk id (None without acks)."""
        chunk = new_chunk_id() if self.chunks else None
        options: dict[str, Any]
        if self.compress is None:
            n = len(entries)
            if chunk is not None:
                tail = _packb({"size": count, "chunk": chunk})
            else:
                tail = _SIZE_ONE if count == 1 else _size_option(count)
            length = _STR32.pack(0xDB, n) if self.str_entries else bin_header(n)
            head = self._heads.get(tag) or self.head(tag)
            return b"".join((head, length, entries, tail)), chunk
        # wbits 31: a gzip member (header and trailer), what both servers inflate.
        deflate = zlib.compressobj(self.level, zlib.DEFLATED, 31)
        payload = deflate.compress(entries) + deflate.flush()
        options = {"size": count, "compressed": "gzip"}
        if chunk is not None:
            options["chunk"] = chunk
        data = b"".join((self.head(tag), bin_header(len(payload)), payload, _packb(options)))
        return data, chunk


# Tags whose frame head a FrameBuilder remembers: endless distinct tags must not grow it
# without end.
_HEADS = 10_000
_SIZE_KEY = b"\x81\xa4size"  # a map of one item, and the key "size"
_SIZE_ONE = _SIZE_KEY + b"\x01"


def _size_option(count: int) -> bytes:
    """``{"size": count}`` packed, as msgpack packs it (the smallest integer form)."""
    if count == 1:
        return _SIZE_ONE
    if count < 0x80:
        return _SIZE_KEY + bytes((count,))
    return _SIZE_KEY + _packb(count)


def one_entry_frame(head: bytes, entry: bytes) -> bytes:
    """:meth:`FrameBuilder.build` of one entry, uncompressed and without a chunk id, after
    the frame's ``head`` (:meth:`FrameBuilder.head`): a SyncClient's usual frame."""
    n = len(entry)
    return b"".join((head, _BIN8_HEADS[n] if n < 0x100 else bin_header(n), entry, _SIZE_ONE))


# Every bin8 header: one look-up, where a struct call cost a SyncClient's frame a tenth.
_BIN8_HEADS = [_BIN8.pack(0xC4, n) for n in range(0x100)]


def new_chunk_id() -> str:
    """A fresh ack token: Base64 of 16 random bytes, 24 ASCII characters."""
    return base64.b64encode(os.urandom(16)).decode("ascii")
