"""Handshake, TLS and keepalive against the embedded server, for both clients."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from typing import Any

import msgpack
import pytest

from fluentclient import (
    Auth,
    AuthenticationError,
    Backoff,
    BufferedClient,
    Buffering,
    FluentConnectionError,
    FluentTimeoutError,
    Server,
    SyncClient,
    Timeouts,
    Tls,
    TlsError,
)
from fluentclient._transport._opening import NO_SECURITY
from fluentclient._transport._pool import Link
from fluentclient.framing import new_unpacker
from fluentclient.server import ForwardServer

from .certs import Pki, server_context
from .conftest import FAST_BACKOFF
from .waiting import wait_until

KEY = "a shared secret"


def post_all(client, n: int, tag: str = "sec.a") -> None:
    for i in range(n):
        client.post(tag, {"i": i})


@pytest.mark.parametrize("helo_as_str", [False, True], ids=["fluentd-helo", "fluent-bit-helo"])
@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_shared_key_handshake(kind, helo_as_str):
    with ForwardServer(shared_key=KEY, helo_as_str=helo_as_str) as server:
        cls = BufferedClient if kind == "buffered" else SyncClient
        options = {"at_exit": False} if kind == "buffered" else {}
        with cls(server.host, server.port, auth=Auth(shared_key=KEY, self_hostname="app.test"),
                 **options) as client:
            post_all(client, 20)
        assert server.wait_for_events(20, timeout=5)
        assert server.handshakes >= 1 and server.auth_failures == 0


def test_users_and_passwords():
    users = {"alice": "wonder", "bob": "builder"}
    with ForwardServer(shared_key=KEY, users=users) as server:
        with SyncClient(server.host, server.port,
                        auth=Auth(shared_key=KEY, username="bob", password="builder")) as client:
            client.post("sec.u", {"ok": 1})
        with pytest.raises(AuthenticationError, match="username/password"):
            SyncClient(server.host, server.port,
                       auth=Auth(shared_key=KEY, username="bob", password="nope")).post("sec.u",
                                                                                          {"ok": 0})
        assert server.wait_for_events(1, timeout=5)
        assert [e.record for e in server.events] == [{"ok": 1}]
        assert server.auth_failures == 1


def test_a_wrong_key_sends_nothing_and_is_reported():
    errors = []
    with ForwardServer(shared_key=KEY) as server:
        with pytest.raises(AuthenticationError, match="shared_key mismatch"):
            SyncClient(server.host, server.port, auth=Auth(shared_key="wrong")).post("sec.w",
                                                                                     {"x": 1})
        client = BufferedClient(server.host, server.port, auth=Auth(shared_key="wrong"),
                                at_exit=False,
                                backoff=FAST_BACKOFF,
                                on_error=lambda err, msg: errors.append(err))
        post_all(client, 10)
        assert server.wait_for(lambda: server.auth_failures >= 2, timeout=5)
        report = client.shutdown(0.5)
        assert report.unsent_records == 10
        assert server.event_count == 0
        assert any(isinstance(e, AuthenticationError) for e in errors)
        assert "shared_key mismatch" in (client.stats().servers[0].last_error or "")


def test_server_speaks_first_and_refuses_records_before_ping():
    with ForwardServer(shared_key=KEY) as server:
        with socket.create_connection((server.host, server.port), timeout=5) as sock:
            unpacker = new_unpacker()
            unpacker.feed(sock.recv(4096))
            helo = next(unpacker)
            assert helo[0] == "HELO" and len(helo[1]["nonce"]) == 16
            sock.sendall(msgpack.packb(["sec.early", 1700000000, {"x": 1}]))
            unpacker.feed(sock.recv(4096))
            pong = next(unpacker)
            assert pong[:3] == ["PONG", False, "invalid ping message"]
            assert sock.recv(4096) == b""  # closed after the refusal
        assert server.event_count == 0


def client_tls(pki: Pki, *, cert: bool = False, **fields: Any) -> dict:
    if cert:
        fields.update(cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    return {"tls": Tls(ca_file=str(pki.ca_file), **fields)}


@pytest.mark.parametrize("kind", ["buffered", "sync"])
def test_tls_with_handshake_and_acks(pki, kind):
    with ForwardServer(ssl_context=server_context(pki), shared_key=KEY) as server:
        cls = BufferedClient if kind == "buffered" else SyncClient
        options = {"at_exit": False} if kind == "buffered" else {}
        with cls(server.host, server.port, auth=Auth(shared_key=KEY), require_ack=True,
                 **client_tls(pki), **options) as client:
            post_all(client, 300)
        assert server.wait_for_events(300, timeout=5)
        assert [e.record["i"] for e in server.events] == list(range(300))
        assert server.acks_sent >= 1


def test_tls_verifies_the_server_by_default(pki):
    with ForwardServer(ssl_context=server_context(pki)) as server:
        with pytest.raises(FluentConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            SyncClient(server.host, server.port, tls=True).post("sec.v", {"x": 1})
        with pytest.raises(FluentConnectionError):
            SyncClient(server.host, server.port,
                       **client_tls(pki, server_name="other.test")).post("sec.v", {"x": 1})
        assert server.event_count == 0


def test_mutual_tls(pki):
    with ForwardServer(ssl_context=server_context(pki, require_client_cert=True)) as server:
        with SyncClient(server.host, server.port, require_ack=True,
                        **client_tls(pki, cert=True)) as client:
            client.post("sec.m", {"x": 1})
        # Without a client certificate the server refuses; acks make that visible.
        with pytest.raises(FluentConnectionError):
            SyncClient(server.host, server.port, require_ack=True, timeouts=Timeouts(ack=2),
                       **client_tls(pki)).post("sec.m", {"x": 2})
        assert server.wait_for_events(1, timeout=5)
        assert [e.record for e in server.events] == [{"x": 1}]


def test_a_client_stuck_in_tls_does_not_hold_up_others(pki):
    with ForwardServer(ssl_context=server_context(pki)) as server:
        with socket.create_connection((server.host, server.port), timeout=5):
            # Connected but never starts TLS: the server must still serve other clients.
            with SyncClient(server.host, server.port, **client_tls(pki)) as client:
                client.post("sec.s", {"x": 1})
            assert server.wait_for_events(1, timeout=5)


def test_one_frame_per_connection_when_keepalive_is_off():
    with ForwardServer(shared_key=KEY, keepalive=False) as server:
        with BufferedClient(server.host, server.port, auth=Auth(shared_key=KEY),
                            buffering=Buffering(max_frame_size=2048), require_ack=True,
                            at_exit=False) as client:
            post_all(client, 400)
        assert server.wait_for_events(400, timeout=10)
        assert [e.record["i"] for e in server.events] == list(range(400))
        assert server.connections_accepted == len(server.frames) > 1


def test_server_context_is_tls_only(pki):
    with ForwardServer(ssl_context=server_context(pki)) as server:
        with pytest.raises(FluentConnectionError):
            SyncClient(server.host, server.port, require_ack=True,
                       timeouts=Timeouts(ack=1)).post("sec.plain", {"x": 1})
        assert server.event_count == 0
        assert any("TLS" in e for e in server.errors)
    assert ssl.HAS_TLSv1_3


def test_a_close_without_pong_is_an_authentication_error(caplog):
    """Fluent Bit's answer to a wrong key: the connection closes right after our PING."""
    caplog.set_level(logging.DEBUG, logger="fluentclient")
    errors = []
    with ForwardServer(shared_key=KEY, helo_as_str=True, silent_key_refusal=True) as server:
        sync = SyncClient(server.host, server.port, auth=Auth(shared_key="wrong"))
        with pytest.raises(AuthenticationError, match="without a PONG: the shared key"):
            sync.post("sec.silent", {"x": 1})
        assert isinstance(sync.stats().servers[0].error, AuthenticationError)
        client = BufferedClient(server.host, server.port, auth=Auth(shared_key="wrong"),
                                at_exit=False,
                                backoff=FAST_BACKOFF,
                                on_error=lambda err, msg: errors.append(err))
        post_all(client, 10, tag="sec.silent")
        assert server.wait_for(lambda: server.auth_failures >= 4, timeout=10)
        (state,) = client.stats().servers
        assert isinstance(state.error, AuthenticationError), state
        assert "without a PONG" in (state.last_error or ""), state
        report = client.shutdown(0.5)
        assert report.unsent_records == 10 and report.sent == 0, report
        assert server.event_count == 0
    # One error for the outage, to on_error and to the log, however many retries.
    assert len(errors) == 1 and isinstance(errors[0], AuthenticationError), errors
    loud = [r for r in caplog.records
            if r.levelno >= logging.WARNING and "without a PONG" in r.getMessage()]
    assert len(loud) == 1, [r.getMessage() for r in loud]


def test_a_bad_user_still_gets_a_pong_from_a_silent_server():
    with ForwardServer(shared_key=KEY, users={"bob": "builder"},
                       silent_key_refusal=True) as server:
        with pytest.raises(AuthenticationError, match="username/password mismatch"):
            SyncClient(server.host, server.port,
                       auth=Auth(shared_key=KEY, username="bob", password="nope")).post("sec.u",
                                                                                          {"ok": 0})


def test_a_refusal_waits_the_longest_delay_once_and_a_good_write_resets_it():
    link = Link(Server(), Backoff(initial=0.01, maximum=10.0, jitter=0.0), NO_SECURITY,
                dns_refresh=True)
    link.failed("refused", backoff_to_max=True, error=AuthenticationError("refused"))
    assert link.retry_at - time.monotonic() > 9.0
    assert isinstance(link.stats().error, AuthenticationError)
    link.backoff = link.backoff.reset()  # what the writer does after a good write
    link.failed("the server closed the connection")
    assert link.retry_at - time.monotonic() <= 0.011
    assert type(link.stats().error) is FluentConnectionError


# -- TLS on one side only: the cause in words, the setting to change --------------------------

TLS_OFF_HINT = ("it probably does not speak TLS; set tls=False (FLUENT_TLS=false), or point "
                "at the server's TLS port")


def _server_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "fluentclient.server" and r.levelno >= logging.WARNING]


def test_a_tls_client_against_a_plain_server_is_told_to_turn_tls_off(pki, caplog):
    caplog.set_level(logging.DEBUG)
    with ForwardServer() as server:
        client = SyncClient(server.host, server.port, tls=Tls(ca_file=str(pki.ca_file)))
        for _ in range(3):
            with pytest.raises(TlsError) as raised:
                client.post("sec.tls", {"i": 1})
            # In parentheses, OpenSSL's name for the EOF, which depends on its version.
            assert re.fullmatch(
                rf"TLS with {server.host}:{server.port} failed: the server closed the "
                rf"connection during the TLS handshake \(.+\): {re.escape(TLS_OFF_HINT)}",
                str(raised.value)), str(raised.value)
        client.shutdown()
        assert wait_until(lambda: len(server.errors) == 3, timeout=10), server.errors
        # Three connections, each recorded, but one line in the server's log, not a
        # "broken frame" per connection.
        assert all("began a TLS handshake, but this server does not speak TLS" in e
                   for e in server.errors), server.errors
        [line] = _server_warnings(caplog)
        assert "set tls=False on the client, or give the server a certificate" in line


def test_a_buffered_tls_client_against_a_plain_server_says_it_once_as_configuration(
        pki, caplog):
    caplog.set_level(logging.DEBUG, logger="fluentclient")
    with ForwardServer() as server:
        client = BufferedClient(server.host, server.port, tls=Tls(ca_file=str(pki.ca_file)),
                                backoff=FAST_BACKOFF,
                                at_exit=False)
        client.post("sec.tls", {"i": 1})
        assert wait_until(lambda: client.stats().connect_failures >= 3, timeout=20)
        stats = client.stats()
        client.shutdown(timeout=0.5)
    [server_stats] = stats.servers
    assert isinstance(server_stats.error, TlsError)
    assert TLS_OFF_HINT in str(server_stats.error)
    said = [r for r in caplog.records if r.name == "fluentclient" and TLS_OFF_HINT in
            r.getMessage() and r.levelno >= logging.WARNING]
    # Once, as an error, however often it was tried; never as an outage to wait out.
    assert [r.levelname for r in said] == ["ERROR"], [r.getMessage() for r in said]
    assert not any("retrying until the shutdown deadline" in r.getMessage()
                   for r in caplog.records)


def test_a_plain_client_against_a_tls_server_is_told_to_turn_tls_on(pki, caplog):
    caplog.set_level(logging.DEBUG)
    with ForwardServer(ssl_context=server_context(pki)) as server:
        client = SyncClient(server.host, server.port, require_ack=True, timeouts=Timeouts(ack=10))
        for _ in range(2):
            with pytest.raises(FluentConnectionError) as raised:
                client.post("sec.plain", {"i": 1})
            # The server resets without a word, as fluentd and Fluent Bit do: the client
            # can only suggest TLS, but says which setting turns it on.
            assert "reset the connection without ever answering: if it expects TLS, set " \
                   "tls=True (FLUENT_TLS=true)" in str(raised.value)
        client.shutdown()
        assert wait_until(lambda: len(server.errors) == 2, timeout=10), server.errors
        [line] = _server_warnings(caplog)
        assert "TLS handshake failed: the client did not start one" in line
        assert "set tls=True on the client, or serve without TLS" in line


def test_a_tls_handshake_nobody_answers_times_out_with_the_same_advice(pki):
    # fluentd sometimes reads a ClientHello as the start of a msgpack object and waits for
    # the rest: the handshake ends at connect_timeout. A listener that never reads does
    # the same here.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        client = SyncClient("127.0.0.1", port, tls=Tls(ca_file=str(pki.ca_file)),
                            timeouts=Timeouts(connect=0.3))
        with pytest.raises(FluentTimeoutError) as raised:
            client.post("sec.silent", {"i": 1})
        client.close()
    assert str(raised.value) == (
        f"TLS with 127.0.0.1:{port} failed: no answer to the TLS handshake in time; if the "
        "server does not speak TLS, set tls=False (FLUENT_TLS=false), or point at the "
        "server's TLS port")
