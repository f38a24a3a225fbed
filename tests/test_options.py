"""The clients' option objects: frozen, each rejects a bad value with a ConfigurationError
naming its field, both clients and from_env take them, and a keyword that moved into one
says where it went."""

from __future__ import annotations

import dataclasses
import inspect
import ssl
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluentclient
from fluentclient import (
    Auth,
    BufferedClient,
    Buffering,
    ConfigurationError,
    Message,
    RecordRules,
    Server,
    SyncClient,
    Timeouts,
    Tls,
)
from fluentclient._moved import MOVED
from fluentclient._options import TransportOptions, builder_for, packer_for
from fluentclient.handler import FluentHandler
from fluentclient.server import ForwardServer

from .certs import Pki, server_context

MiB = 1024 * 1024

# (the object's class, its keyword arguments, the field the error must name).
MISTAKES = [
    (Timeouts, {"connect": 0}, "connect"),
    (Timeouts, {"write": -1}, "write"),
    (Timeouts, {"ack": 0}, "ack"),
    (Timeouts, {"ack": "60"}, "ack"),
    (Timeouts, {"idle": 0}, "idle"),
    (Timeouts, {"ack_retries": -1}, "ack_retries"),
    (Timeouts, {"ack_retries": 1.5}, "ack_retries"),
    (Buffering, {"max_frame_size": 1023}, "max_frame_size"),
    (Buffering, {"max_frame_size": 6_000_001}, "max_frame_size"),
    (Buffering, {"limit": 1000}, "limit"),
    (Buffering, {"limit": 2.5 * MiB}, "limit"),
    (Buffering, {"write_threshold": 0}, "write_threshold"),
    (Buffering, {"flush_interval": 0}, "flush_interval"),
    (Buffering, {"overflow": "explode"}, "overflow"),
    (Buffering, {"overflow_timeout": -0.5}, "overflow_timeout"),
    (Buffering, {"limit": 8 * MiB, "spool_limit": 8 * MiB}, "spool_limit"),
    (Buffering, {"spool_dir": 3}, "spool_dir"),
    (RecordRules, {"max_depth": 0}, "max_depth"),
    (RecordRules, {"non_str_keys": "shout"}, "non_str_keys"),
    (RecordRules, {"non_finite_floats": "zero"}, "non_finite_floats"),
    (RecordRules, {"non_utf8_bytes": "drop"}, "non_utf8_bytes"),
    (RecordRules, {"default": "str"}, "default"),
    (RecordRules, {"int_time": 1}, "int_time"),
    (RecordRules, {"entries_as_str": None}, "entries_as_str"),
    (Tls, {"key_file": "client.key"}, "key_file"),
    (Tls, {"verify": "no"}, "verify"),
    (Tls, {"context": "ctx"}, "context"),
    (Tls, {"context": ssl.create_default_context(), "ca_file": "ca.pem"}, "ca_file"),
    (Tls, {"context": ssl.create_default_context(), "verify": False}, "verify"),
    (Tls, {"server_name": 7}, "server_name"),
    (Auth, {"password": "pw"}, "password"),
    (Auth, {"username": "app"}, "username"),
    (Auth, {"shared_key": b"key"}, "shared_key"),
]


@pytest.mark.parametrize(("cls", "kwargs", "field"), MISTAKES,
                         ids=[f"{c.__name__}-{f}" for c, _, f in MISTAKES])
def test_each_object_rejects_a_bad_value_naming_the_field(cls, kwargs, field):
    with pytest.raises(ConfigurationError) as info:
        cls(**kwargs)
    # A ValueError too, for code that does not know the library's errors.
    assert isinstance(info.value, ValueError)
    assert info.value.variable == f"{cls.__name__}.{field}"
    assert str(info.value).startswith(f"{cls.__name__}.{field}: ")


@pytest.mark.parametrize("cls", [Tls, Auth, Timeouts, Buffering, RecordRules])
def test_objects_are_frozen_and_a_changed_copy_is_checked_again(cls):
    options = cls()
    field = dataclasses.fields(options)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(options, field, getattr(options, field))
    bad = next(kwargs for c, kwargs, _ in MISTAKES if c is cls)
    with pytest.raises(ConfigurationError):
        dataclasses.replace(options, **bad)


@pytest.mark.parametrize("client_class", [BufferedClient, SyncClient])
@pytest.mark.parametrize(("keyword", "value"), [
    ("tls", "yes"), ("auth", "key"), ("timeouts", 5.0), ("records", {"max_depth": 3}),
])
def test_a_client_names_the_keyword_given_something_else(client_class, keyword, value):
    with pytest.raises(ConfigurationError, match=f"^{keyword}: "):
        client_class("127.0.0.1", 24224, **{keyword: value})


def test_the_buffered_client_checks_its_own_options():
    with pytest.raises(ConfigurationError, match="^buffering: must be a Buffering"):
        BufferedClient(buffering={"limit": 1024}, at_exit=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="^shutdown_timeout: must not be negative"):
        BufferedClient(shutdown_timeout=-1, at_exit=False)


@pytest.mark.parametrize("client_class", [BufferedClient, SyncClient])
def test_both_clients_reject_shared_settings_the_same_way(client_class):
    with pytest.raises(ValueError, match="compress"):
        client_class("127.0.0.1", 24224, compress="zstd")
    with pytest.raises(ValueError, match="at least one server must not be a standby"):
        client_class(servers=[Server(standby=True)])


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_keyword_says_where_it_went(old):
    keyword, field = MOVED[old]
    cls = {"tls": "Tls", "auth": "Auth", "timeouts": "Timeouts", "buffering": "Buffering",
           "records": "RecordRules"}[keyword]
    with pytest.raises(TypeError) as info:
        BufferedClient("127.0.0.1", 24224, at_exit=False, **{old: None})
    assert str(info.value) == (f"BufferedClient() keyword {old!r} moved: use "
                               f"{keyword}={cls}({field}=...)")
    # The integrations hand their client options on, so they say the same.
    with pytest.raises(TypeError, match=f"keyword {old!r} moved: use {keyword}="):
        FluentHandler(at_exit=False, **{old: None})


def test_the_sync_client_keeps_max_frame_size_and_says_where_the_rest_went():
    SyncClient(max_frame_size=2048).close()
    with pytest.raises(TypeError, match=r"^SyncClient\(\) keyword 'flush_interval' moved: use "
                                        r"buffering=Buffering\(flush_interval=\.\.\.\)$"):
        SyncClient(flush_interval=1.0)
    # An unknown keyword is still Python's own error.
    with pytest.raises(TypeError, match="unexpected keyword argument 'at_exit'"):
        SyncClient(at_exit=False)  # type: ignore[call-arg]


@pytest.mark.parametrize("client_class", [BufferedClient, SyncClient])
def test_constructors_take_at_most_twenty_parameters_and_show_them(client_class):
    parameters = inspect.signature(client_class).parameters
    assert len(parameters) <= 20
    # No catch-all: the signature a reader sees is the whole of it.
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def test_the_objects_are_exported():
    for name in ("Tls", "Auth", "Timeouts", "Buffering", "RecordRules"):
        assert name in fluentclient.__all__
        assert getattr(fluentclient, name) is getattr(fluentclient.options, name)


# -- what the objects settle and build ----------------------------------------------------


@given(
    limit=st.integers(1024, 64 * MiB),
    max_frame_size=st.integers(1024, 6_000_000),
    spool_limit=st.none() | st.integers(0, 256 * MiB),
)
def test_buffering_settles_frame_size_and_spool_limit(limit, max_frame_size, spool_limit):
    if spool_limit is not None and spool_limit < 2 * limit:
        with pytest.raises(ConfigurationError, match="spool_limit"):
            Buffering(limit=limit, max_frame_size=max_frame_size, spool_limit=spool_limit)
        return
    options = Buffering(limit=limit, max_frame_size=max_frame_size, spool_limit=spool_limit)
    # What the user gave stays; a frame never needs more than the whole buffer.
    assert (options.max_frame_size, options.spool_limit) == (max_frame_size, spool_limit)
    assert options.frame_limit == min(max_frame_size, limit)
    expected_spool = max(4 * limit, 16 * MiB) if spool_limit is None else spool_limit
    assert options.spool_bytes == expected_spool


def test_record_rules_build_what_they_describe():
    records = RecordRules(int_time=True, entries_as_str=True)
    half_past = 1_700_000_000 * 10**9 + 500_000_000
    entry = msgpack.unpackb(packer_for(records).pack(Message("t", {"a": 1}, half_past)))
    assert entry == [1_700_000_000, {"a": 1}]  # whole seconds, not an EventTime
    builder = builder_for(records, TransportOptions(require_ack=True, compress="gzip"))
    assert builder.str_entries and builder.chunks and builder.compress == "gzip"
    # Without acks a chunk id travels only as the writer's marker.
    assert not builder_for(records, TransportOptions()).chunks
    assert builder_for(records, TransportOptions(), markers=True).chunks


def test_the_transport_reads_its_timeouts_from_the_one_object():
    timeouts = Timeouts(connect=1.5, write=2.5, ack=3.5, idle=4.5, ack_retries=2)
    transport = TransportOptions(timeouts=timeouts)
    assert (transport.connect_timeout, transport.write_timeout, transport.ack_timeout,
            transport.keepalive_timeout, transport.ack_retry_limit) == (1.5, 2.5, 3.5, 4.5, 2)
    with pytest.raises(ConfigurationError, match="^timeouts: must be a Timeouts"):
        TransportOptions(timeouts=5.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one server"):
        TransportOptions(servers=())


# -- the objects drive real clients ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_each_object_reaches_a_real_client(pki: Pki, kind):
    users = {"app": "pw"}
    with ForwardServer(shared_key="k", users=users, ssl_context=server_context(pki)) as server:
        options = dict(
            tls=Tls(ca_file=pki.ca_file, server_name="localhost"),
            auth=Auth(shared_key="k", username="app", password="pw"),
            timeouts=Timeouts(connect=30, write=30, ack=30),
            records=RecordRules(non_finite_floats="str"),
            require_ack=True,
        )
        client: BufferedClient | SyncClient
        if kind == "buffered":
            client = BufferedClient(server.host, server.port, at_exit=False,
                                    buffering=Buffering(flush_interval=0.01), **options)
        else:
            client = SyncClient(server.host, server.port, **options)
        with client:
            client.post("obj.t", {"v": float("nan")})
            assert client.flush(30)
        assert server.wait_for_events(1, timeout=30)
        assert server.events[0].record == {"v": "NaN"}
        assert server.handshakes >= 1 and server.auth_failures == 0


def test_tls_true_is_the_default_tls(pki: Pki):
    with ForwardServer(ssl_context=server_context(pki)) as server:
        for tls in (True, Tls()):
            # Verified against the system's CAs, which do not know the test CA.
            client = SyncClient(server.host, server.port, tls=tls)
            with pytest.raises(fluentclient.FluentConnectionError,
                               match="CERTIFICATE_VERIFY_FAILED"):
                client.post("obj.tls", {"x": 1})
            client.close()
        assert server.event_count == 0


@pytest.mark.parametrize("client_class", [BufferedClient, SyncClient])
def test_from_env_builds_the_objects_and_takes_them_as_overrides(pki: Pki, client_class):
    env = {"FLUENT_SHARED_KEY": "k", "FLUENT_TLS_CA_FILE": str(pki.ca_file),
           "FLUENT_TLS_VERIFY": "false"}
    extra = {"at_exit": False} if client_class is BufferedClient else {}
    with client_class.from_env(environ=env, **extra) as client:
        assert client._transport.security.shared_key == "k"
        assert client._transport.security.ssl_context is not None
        assert client._transport.security.ssl_context.verify_mode == ssl.CERT_NONE
    # An object given as an override replaces the one the environment made, whole.
    with client_class.from_env(environ=env, tls=False, auth=Auth(shared_key="other"),
                               timeouts=Timeouts(connect=1.5), **extra) as client:
        assert client._transport.security.shared_key == "other"
        assert client._transport.security.ssl_context is None
        assert client._transport.connect_timeout == 1.5
    if client_class is BufferedClient:
        with BufferedClient.from_env(environ={}, at_exit=False,
                                     buffering=Buffering(limit=4096)) as client:
            assert client._buffer.limit == 4096


def test_a_logging_integration_builds_an_object_from_a_mapping_of_its_fields():
    # What logging.config.dictConfig can give: plain values only.
    handler = FluentHandler(at_exit=False, buffering={"limit": 4096, "flush_interval": 5},
                            timeouts={"connect": 2})
    try:
        assert handler.client._buffer_options == Buffering(limit=4096, flush_interval=5)
        assert handler.client._transport.timeouts == Timeouts(connect=2)
    finally:
        handler.close()
    with pytest.raises(ConfigurationError, match="^Buffering.limit: "):
        FluentHandler(at_exit=False, buffering={"limit": 10})


def test_the_migration_page_has_a_row_for_every_moved_keyword():
    page = (Path(__file__).resolve().parent.parent / "docs" / "migration.md").read_text(
        encoding="utf-8")
    for old, (keyword, field) in MOVED.items():
        cls = {"tls": "Tls", "auth": "Auth", "timeouts": "Timeouts", "buffering": "Buffering",
               "records": "RecordRules"}[keyword]
        assert f"| `{old}` | `{keyword}={cls}({field}=...)` |" in page, old


def test_cat_flags_change_one_field_of_the_objects_the_environment_made(pki: Pki):
    from fluentclient.cli._cat import client_options
    from fluentclient.cli._parser import build_parser
    from fluentclient.config import options_from_env

    def options(env: dict[str, str], *flags: str) -> dict[str, object]:
        return client_options(build_parser().parse_args(["cat", "t", *flags]),
                              options_from_env(env))

    env = {"FLUENT_SHARED_KEY": "k", "FLUENT_USERNAME": "u",
           "FLUENT_TLS_CA_FILE": str(pki.ca_file)}
    got = options(env, "--password", "pw", "--no-tls-verify")
    assert got["auth"] == Auth(shared_key="k", username="u", password="pw")
    assert got["tls"] == Tls(ca_file=str(pki.ca_file), verify=False)
    # As for a client: a CA file turns TLS on, whatever --no-tls says.
    assert options(env, "--no-tls")["tls"] == Tls(ca_file=str(pki.ca_file))
    assert options({"FLUENT_TLS": "true"}, "--no-tls")["tls"] is False
    assert options({}, "--tls", "--tls-server-name", "n")["tls"] == Tls(server_name="n")
    assert "tls" not in options({}) and "auth" not in options({})
