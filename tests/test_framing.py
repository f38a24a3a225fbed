"""The wire format against the reference vectors, and round trips of arbitrary records."""

from __future__ import annotations

import gzip
import io

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from fluentclient.errors import SerializationError
from fluentclient.framing import (
    EntryPacker,
    FrameBuilder,
    FrameError,
    ack_for,
    decode_frame,
    frame_overhead,
    new_unpacker,
    one_entry_frame,
    packed_forward_frame,
)
from fluentclient.message import EventTime, Message

TAG = "app.access"
ID = "AAECAwQFBgcICQoLDA0ODw=="
T0 = 1700000000
ENTRIES_HEX = (
    "92d7006553f1000000000081a76d657373616765a568656c6c6f"
    "92d7006553f1011dcd650081a76d657373616765a5776f726c64"
)


def entries() -> bytes:
    packer = EntryPacker()
    return packer.pack(Message(TAG, {"message": "hello"}, EventTime(T0, 0).to_ns())) + packer.pack(
        Message(TAG, {"message": "world"}, EventTime(T0 + 1, 500_000_000).to_ns())
    )


def decode_one(data: bytes):
    unpacker = new_unpacker()
    unpacker.feed(data)
    objs = list(unpacker)
    assert len(objs) == 1
    return decode_frame(objs[0])


def test_entries_match_reference_vector():
    assert entries().hex() == ENTRIES_HEX


def test_packed_forward_matches_v3():
    frame = packed_forward_frame(TAG, entries(), 2, chunk=ID)
    assert frame.hex() == (
        "93aa6170702e616363657373c434" + ENTRIES_HEX + "82a473697a6502a56368756e6bb8"
        "41414543417751464267634943516f4c4441304f44773d3d"
    )


def test_str_entries_are_str32_like_out_forward():
    frame = packed_forward_frame(TAG, entries(), 2, str_entries=True)
    assert frame.startswith(bytes.fromhex("93aa6170702e616363657373db00000034"))
    decoded = decode_one(frame)
    assert [r for _, r in decoded.entries] == [{"message": "hello"}, {"message": "world"}]


def test_integer_time_entries():
    packer = EntryPacker(int_time=True)
    entry = packer.pack(Message(TAG, {"message": "hello"}, EventTime(T0, 999).to_ns()))
    assert msgpack.unpackb(entry) == [T0, {"message": "hello"}]


def test_decodes_message_mode_v1_and_v2():
    v1 = bytes.fromhex("93aa6170702e616363657373ce6553f10081a76d657373616765a568656c6c6f")
    v2 = bytes.fromhex("93aa6170702e616363657373d7006553f100075bcd1581a76d657373616765a568656c6c6f")
    assert decode_one(v1).entries == [(T0, {"message": "hello"})]
    d2 = decode_one(v2)
    assert d2.mode == "Message"
    assert d2.entries == [(EventTime(T0, 123456789), {"message": "hello"})]


def test_decodes_ext8_event_time_like_fixext8():
    ext8 = bytes.fromhex("c708006553f100075bcd15")
    unpacker = new_unpacker()
    unpacker.feed(ext8)
    assert next(unpacker) == EventTime(T0, 123456789)


def test_decodes_forward_mode_v4():
    v4 = bytes.fromhex(
        "93aa6170702e6163636573739292ce6553f10081a76d657373616765a568656c6c6f92d7006553f101"
        "1dcd650081a76d657373616765a5776f726c6481a473697a6502"
    )
    decoded = decode_one(v4)
    assert decoded.mode == "Forward"
    assert decoded.entries == [
        (T0, {"message": "hello"}),
        (EventTime(T0 + 1, 500_000_000), {"message": "world"}),
    ]


def test_decodes_compressed_with_two_gzip_members():
    gz2 = bytes.fromhex(
        "1f8b08000000000002ff9b749d2135f8230308342ecf4d2d2e4e4c4f5d9a919a93930f0046da792f1a000000"
        "1f8b08000000000002ff9b749d2135f823a3ecd95486c6e5b9a9c5c589e9a94bcbf38b725200781f16021a000000"
    )
    assert gzip.decompress(gz2).hex() == ENTRIES_HEX
    frame = msgpack.packb([TAG, gz2, {"size": 2, "compressed": "gzip"}], use_bin_type=True)
    decoded = decode_one(frame)
    assert decoded.mode == "CompressedPackedForward"
    assert [r["message"] for _, r in decoded.entries] == ["hello", "world"]


def test_v5_compressed_frame_decodes_to_the_entries():
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(bytes.fromhex(ENTRIES_HEX))
    frame = msgpack.packb(
        [TAG, buf.getvalue(), {"size": 2, "compressed": "gzip", "chunk": ID}], use_bin_type=True
    )
    assert len(frame) == 126
    assert decode_one(frame).options == {"size": 2, "compressed": "gzip", "chunk": ID}


def test_ack_vector():
    assert ack_for(ID).hex() == "81a361636bb841414543417751464267634943516f4c4441304f44773d3d"
    assert ack_for(ID + "\n") != ack_for(ID)


def test_bad_frames_are_frame_errors():
    for bad in ([], ["tag"], [b"tag", []], "x", [TAG, [[1]]], [TAG, None]):
        try:
            decode_frame(bad)
        except FrameError:
            continue
        raise AssertionError(f"{bad!r} decoded")


json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=64),
)
records = st.dictionaries(
    st.text(max_size=20),
    st.recursive(
        json_leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=12,
    ),
    max_size=8,
)
times = st.builds(
    EventTime, st.integers(min_value=0, max_value=0xFFFFFFFD), st.integers(0, 999_999_999)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(times, records), min_size=1, max_size=20))
def test_any_records_round_trip_through_a_frame(items):
    packer = EntryPacker()
    data = b"".join(packer.pack(Message(TAG, rec, t.to_ns())) for t, rec in items)
    decoded = decode_one(packed_forward_frame(TAG, data, len(items)))
    assert decoded.tag == TAG
    assert decoded.options == {"size": len(items)}
    assert decoded.entries == [(t, rec) for t, rec in items]


def test_a_payload_cut_inside_an_entry_is_refused():
    data = entries()
    frame = packed_forward_frame(TAG, data[:-3], 2)
    unpacker = new_unpacker()
    unpacker.feed(frame)
    try:
        decode_frame(next(unpacker))
    except FrameError:
        return
    raise AssertionError("a cut payload decoded")


# -- the reader's batch packer ---------------------------------------------------------------

class _Unpackable:
    """Packs only through default=, which refuses it."""


odd_records = records | st.sampled_from([{"bad": _Unpackable()}, {"s": "\udcff lone"},
                                         {"t": (1, 2)}, {"n": float("nan")}])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a.x", "a.y"]), times, odd_records), max_size=30),
    st.booleans(),
)
def test_pack_runs_makes_what_pack_makes_record_by_record(items, guarded):
    """The reader packs batches into runs; each must equal the one-at-a-time packing,
    with the same records refused for the same reasons and the tags' order kept."""
    from fluentclient._options import packer_for
    from fluentclient.options import RecordRules

    def packer() -> EntryPacker:
        return packer_for(RecordRules()) if guarded else EntryPacker()

    msgs = [Message(tag, rec, t.to_ns()) for tag, t, rec in items]
    one, expected_fail, expected = packer(), [], []
    for msg in msgs:
        try:
            expected.append((msg.tag, one.pack(msg)))
        except SerializationError as exc:
            expected_fail.append((msg, type(exc)))
    failed: list[tuple[Message, type]] = []
    runs = packer().pack_runs(msgs, lambda m, exc: failed.append((m, type(exc))))
    assert failed == expected_fail
    got = [(run.tag, entry) for run in runs for entry in run.entries()]
    assert got == expected
    for run in runs:
        assert run.sizes == [len(e) for e in run.entries()]
        assert b"".join(run.entries()) == run.data
        assert all(m.tag == run.tag for m in run.messages)
        assert len(run.messages) == len(run.sizes)
    assert all(a.tag != b.tag for a, b in zip(runs, runs[1:]))


# Tags as the clients let through, and beyond: any str msgpack packs, of any str width.
frame_tags = st.one_of(st.from_regex(r"[a-z0-9_.-]{1,40}", fullmatch=True),
                       st.text(min_size=1, max_size=300))


@settings(max_examples=300, deadline=None)
@given(
    tag=frame_tags,
    entry_bytes=st.binary(max_size=70_000),
    count=st.one_of(st.integers(0, 300), st.integers(0, 2**32 - 1)),
    str_entries=st.booleans(),
    twice=st.booleans(),
)
def test_a_builders_frame_is_the_frame_packed_in_one_go(
    tag, entry_bytes, count, str_entries, twice
):
    """The builder's cached tag head and size option make, byte for byte, the frame that
    packing the whole of it makes; its overhead bound is frame_overhead's."""
    builder = FrameBuilder(str_entries=str_entries)
    if twice:  # the second build takes the head from the cache
        builder.build(tag, b"", 1)
    data, chunk = builder.build(tag, entry_bytes, count)
    assert chunk is None
    assert data == packed_forward_frame(tag, entry_bytes, count, str_entries=str_entries)
    assert builder.overhead(tag) == frame_overhead(tag)
    acked = FrameBuilder(chunks=True, str_entries=str_entries)
    data, chunk = acked.build(tag, entry_bytes, count)
    assert chunk is not None
    assert data == packed_forward_frame(tag, entry_bytes, count, chunk=chunk,
                                        str_entries=str_entries)


@settings(max_examples=200, deadline=None)
@given(
    tag=frame_tags,
    size=st.one_of(st.integers(0, 300), st.integers(65_530, 65_540)),
)
def test_a_one_entry_frame_is_the_frame_packed_in_one_go(tag, size):
    """SyncClient's usual frame, made in one join after the cached head, across the bin8,
    bin16 and bin32 lengths."""
    entry = bytes(range(256)) * (size // 256) + bytes(size % 256)
    head = FrameBuilder().head(tag)
    assert one_entry_frame(head, entry) == packed_forward_frame(tag, entry, 1)
