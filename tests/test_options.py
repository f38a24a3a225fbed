"""The clients' settings as frozen values: each rejects a bad value with one clear message,
whichever client it came through, and settles the values that depend on others."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluentclient import BufferedClient, Message, Server, SyncClient
from fluentclient._options import BufferOptions, RecordOptions, TransportOptions

MiB = 1024 * 1024

# (keyword arguments, words of the message): accepted by both clients.
SHARED_MISTAKES = [
    ({"connect_timeout": 0}, "connect_timeout and write_timeout must be positive"),
    ({"write_timeout": -1}, "connect_timeout and write_timeout must be positive"),
    ({"ack_timeout": 0}, "ack_timeout must be positive"),
    ({"compress": "zstd"}, "compress"),
    ({"non_str_keys": "shout"}, "non_str_keys"),
    ({"max_depth": 0}, "max_depth"),
    ({"servers": [Server(standby=True)]}, "at least one server must not be a standby"),
]

BUFFER_MISTAKES = [
    ({"max_frame_size": 1023}, "max_frame_size must be between 1 KiB and 6,000,000 bytes"),
    ({"max_frame_size": 6_000_001}, "max_frame_size must be between"),
    ({"buffer_limit": 1000}, "buffer_limit must be at least 1 KiB"),
    ({"write_threshold": 0}, "write_threshold and flush_interval must be positive"),
    ({"flush_interval": 0}, "write_threshold and flush_interval must be positive"),
    ({"shutdown_timeout": -1}, "shutdown_timeout must not be negative"),
    ({"overflow": "explode"}, "overflow must be one of drop_newest, drop_oldest, block, raise"),
    ({"overflow_timeout": -0.5}, "overflow_timeout must not be negative"),
    ({"buffer_limit": 8 * MiB, "spool_limit": 8 * MiB},
     "spool_limit must be at least twice buffer_limit"),
    ({"ack_retry_limit": -1}, "ack_retry_limit not negative"),
]


@pytest.mark.parametrize("client_class", [BufferedClient, SyncClient])
@pytest.mark.parametrize(("kwargs", "words"), SHARED_MISTAKES)
def test_both_clients_reject_a_bad_shared_option_the_same_way(client_class, kwargs, words):
    with pytest.raises(ValueError, match=words):
        client_class("127.0.0.1", 24224, **kwargs)


@pytest.mark.parametrize(("kwargs", "words"), BUFFER_MISTAKES)
def test_the_buffered_client_rejects_a_bad_buffer_option(kwargs, words):
    with pytest.raises(ValueError, match=words):
        BufferedClient("127.0.0.1", 24224, at_exit=False, **kwargs)


@pytest.mark.parametrize("options", [TransportOptions(), RecordOptions(), BufferOptions()])
def test_options_are_frozen(options):
    field = dataclasses.fields(options)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, field, getattr(options, field))


def test_a_changed_copy_is_checked_again():
    with pytest.raises(ValueError, match="connect_timeout"):
        dataclasses.replace(TransportOptions(), connect_timeout=0)
    with pytest.raises(ValueError, match="overflow"):
        dataclasses.replace(BufferOptions(), overflow="nope")


def test_a_transport_needs_a_server():
    with pytest.raises(ValueError, match="at least one server"):
        TransportOptions(servers=())


@given(
    buffer_limit=st.integers(1024, 64 * MiB),
    max_frame_size=st.integers(1024, 6_000_000),
    spool_limit=st.none() | st.integers(0, 256 * MiB),
)
def test_buffer_options_settle_frame_size_and_spool_limit(buffer_limit, max_frame_size,
                                                          spool_limit):
    if spool_limit is not None and spool_limit < 2 * buffer_limit:
        with pytest.raises(ValueError, match="spool_limit"):
            BufferOptions(buffer_limit=buffer_limit, max_frame_size=max_frame_size,
                          spool_limit=spool_limit)
        return
    options = BufferOptions(buffer_limit=buffer_limit, max_frame_size=max_frame_size,
                            spool_limit=spool_limit)
    # A frame never needs to be larger than everything the buffer may hold.
    assert options.max_frame_size == min(max_frame_size, buffer_limit)
    expected_spool = max(4 * buffer_limit, 16 * MiB) if spool_limit is None else spool_limit
    assert options.spool_limit == options.spool_bytes == expected_spool


def test_record_options_build_what_they_describe():
    records = RecordOptions(int_time=True, entries_as_str=True)
    half_past = 1_700_000_000 * 10**9 + 500_000_000
    entry = msgpack.unpackb(records.packer().pack(Message("t", {"a": 1}, half_past)))
    assert entry == [1_700_000_000, {"a": 1}]  # whole seconds, not an EventTime
    builder = records.builder(TransportOptions(require_ack=True, compress="gzip"))
    assert builder.str_entries and builder.chunks and builder.compress == "gzip"
    # Without acks a chunk id travels only as the writer's marker.
    assert not records.builder(TransportOptions()).chunks
    assert records.builder(TransportOptions(), markers=True).chunks
