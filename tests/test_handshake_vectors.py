"""The handshake's pure functions against the reference vectors, and fuzzed server replies."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluentclient import AuthenticationError
from fluentclient.framing import new_unpacker
from fluentclient.handshake import (
    Helo,
    build_helo,
    build_ping,
    check_ping,
    check_pong,
    parse_helo,
)

NONCE = bytes(range(0x10, 0x20))
AUTH = bytes(range(0x20, 0x30))
SALT = "0123456789abcdef0123456789abcdef"
PING_DIGEST = ("cecf382bb7d48ec57af8472a7c5f33671043381721561540c43bd5a4e24c58f4"
               "60670c5943acfa8dc3e2e26d230c37a1b8662c9ff9371aaeac809497bf281ca8")
PONG_DIGEST = ("6fbd9d72385c07911e2531b7c60f85d7be72b944246b668a19e9d92cedfa7123"
               "0035fbfbf4ca2f309013df907f4e1f29f1c423eacf8cd5b4879bc802db786acf")
PASSWORD_DIGEST = ("469d9dcb6c471a08a1c5010937577a0ebf798fec96ef8afa3cec4c8be92c6547"
                   "5f8e489dac183a3ea667b705c8fc0687b46992ba8a0c428fee2a3569f34f6e7a")
NO_USER_DIGEST = ("d48c7c5b054a26455413fb5947b8bc0c1d4f69a5a76147646659f6874d8a5135"
                  "0a356b88e77214481d71694fa0a25c42a21db6283c305235acda946390d18db2")


def decode(data: bytes):
    unpacker = new_unpacker()
    unpacker.feed(data)
    return next(unpacker)


def test_helo_bytes_in_both_server_styles():
    assert build_helo(NONCE, AUTH).hex() == (
        "92a448454c4f83a56e6f6e6365c410101112131415161718191a1b1c1d1e1fa461757468c410202122"
        "232425262728292a2b2c2d2e2fa96b656570616c697665c3")
    assert build_helo(NONCE, AUTH, as_str=True).hex() == (
        "92a448454c4f82a56e6f6e6365b0101112131415161718191a1b1c1d1e1fa461757468b020212223"
        "2425262728292a2b2c2d2e2f")


@pytest.mark.parametrize("as_str", [False, True])
def test_helo_parses_to_the_exact_bytes(as_str):
    helo = parse_helo(decode(build_helo(NONCE, AUTH, as_str=as_str)))
    assert helo == Helo(NONCE, AUTH, keepalive=True)


def test_ping_matches_the_worked_example():
    helo = Helo(NONCE, AUTH, True)
    ping = build_ping(helo, self_hostname="client.example.com", shared_key="secret", salt=SALT,
                      username="alice", password="s3cr3t")
    assert len(ping) == 325
    assert msgpack.unpackb(ping) == ["PING", "client.example.com", SALT, PING_DIGEST, "alice",
                                     PASSWORD_DIGEST]
    # Without user auth (empty HELO auth) the user fields are empty strings.
    bare = msgpack.unpackb(build_ping(Helo(NONCE, b"", True), self_hostname="c",
                                      shared_key="k", salt=SALT))
    assert bare[4:] == ["", ""]


def test_no_user_digest_when_auth_is_offered_without_a_user():
    helo = Helo(NONCE, AUTH, True)
    ping = msgpack.unpackb(build_ping(helo, self_hostname="client.example.com",
                                      shared_key="secret", salt=SALT))
    assert ping[4:] == ["", NO_USER_DIGEST]


def test_pong_success_and_failure_bytes():
    ping = decode(build_ping(Helo(NONCE, AUTH, True), self_hostname="client.example.com",
                             shared_key="secret", salt=SALT, username="alice",
                             password="s3cr3t"))
    ok, _, pong = check_ping(ping, nonce=NONCE, auth=AUTH, shared_key="secret",
                             users={"alice": "s3cr3t"}, server_hostname="server.example.com")
    assert ok and len(pong) == 157
    assert msgpack.unpackb(pong)[4] == PONG_DIGEST
    bad, reason, refusal = check_ping(ping, nonce=NONCE, auth=AUTH, shared_key="other",
                                      users=None, server_hostname="server.example.com")
    assert not bad and reason == "shared_key mismatch"
    assert refusal.hex() == "95a4504f4e47c2b37368617265645f6b6579206d69736d61746368a0a0"


def round_trip(*, key="secret", server_key="secret", users=None, user="", password="",
               client="client.example.com", server="server.example.com", forge=False):
    helo = parse_helo(decode(build_helo(NONCE, AUTH)))
    ping = decode(build_ping(helo, self_hostname=client, shared_key=key, salt=SALT,
                             username=user, password=password))
    _, _, pong = check_ping(ping, nonce=NONCE, auth=AUTH, shared_key=server_key, users=users,
                            server_hostname=server)
    reply = decode(pong)
    if forge:
        reply[4] = "0" * 128
    return check_pong(reply, helo=helo, salt=SALT, shared_key=key, self_hostname=client)


def test_round_trips():
    assert round_trip() == "server.example.com"
    assert round_trip(users={"alice": "pw"}, user="alice", password="pw") == "server.example.com"


@pytest.mark.parametrize("kwargs, words", [
    ({"server_key": "other"}, "shared_key mismatch"),
    ({"users": {"alice": "pw"}, "user": "alice", "password": "no"}, "username/password"),
    ({"users": {"alice": "pw"}, "user": "bob", "password": "pw"}, "username/password"),
    ({"client": "same", "server": "same"}, "same hostname"),
    ({"forge": True}, "does not know the key"),
])
def test_refusals_are_authentication_errors(kwargs, words):
    with pytest.raises(AuthenticationError, match=words):
        round_trip(**kwargs)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=15,
)


@given(anything)
def test_any_server_reply_gives_a_clear_error_or_a_helo(obj):
    try:
        parse_helo(obj)
    except AuthenticationError:
        pass


@given(anything)
def test_any_pong_gives_a_clear_error(obj):
    helo = Helo(NONCE, AUTH, True)
    with pytest.raises(AuthenticationError):
        check_pong(obj, helo=helo, salt=SALT, shared_key="secret", self_hostname="c")
