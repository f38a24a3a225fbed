"""fluentclient._transport._handshake against forward-protocol.md §5, byte for byte, plus fuzzing.

tests/test_handshake_vectors.py checks the same vectors through decoded objects and lengths;
this module pins the exact wire bytes, the str/bin corner cases of fluent-bit, both HELO
styles in every round trip, and that nothing but AuthenticationError ever comes out of the
client-side checks (and nothing at all out of the server-side one).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fluentclient._transport._handshake import (
    Helo,
    build_helo,
    build_ping,
    check_ping,
    check_pong,
    new_salt,
    parse_helo,
)
from fluentclient.errors import AuthenticationError, FluentConnectionError
from fluentclient.framing import new_unpacker

# Packs no record through the client (raw frames, the server, plain values): the
# pure-Python pass of CI leaves it out (see tests/conftest.py).
pytestmark = pytest.mark.no_packing

# -- the worked example of §5 --------------------------------------------------------------

NONCE = bytes(range(0x10, 0x20))
AUTH = bytes(range(0x20, 0x30))
SALT = "0123456789abcdef0123456789abcdef"
CLIENT = "client.example.com"
SERVER = "server.example.com"
KEY = "secret"

PING_DIGEST = (
    "cecf382bb7d48ec57af8472a7c5f33671043381721561540c43bd5a4e24c58f4"
    "60670c5943acfa8dc3e2e26d230c37a1b8662c9ff9371aaeac809497bf281ca8"
)
PONG_DIGEST = (
    "6fbd9d72385c07911e2531b7c60f85d7be72b944246b668a19e9d92cedfa7123"
    "0035fbfbf4ca2f309013df907f4e1f29f1c423eacf8cd5b4879bc802db786acf"
)
PASSWORD_DIGEST = (
    "469d9dcb6c471a08a1c5010937577a0ebf798fec96ef8afa3cec4c8be92c6547"
    "5f8e489dac183a3ea667b705c8fc0687b46992ba8a0c428fee2a3569f34f6e7a"
)
NO_USER_DIGEST = (
    "d48c7c5b054a26455413fb5947b8bc0c1d4f69a5a76147646659f6874d8a5135"
    "0a356b88e77214481d71694fa0a25c42a21db6283c305235acda946390d18db2"
)

HELO_FLUENTD = bytes.fromhex(
    "92a448454c4f83a56e6f6e6365c410101112131415161718191a1b1c1d1e1fa461757468c410202122"
    "232425262728292a2b2c2d2e2fa96b656570616c697665c3"
)
HELO_FLUENT_BIT = bytes.fromhex(
    "92a448454c4f82a56e6f6e6365b0101112131415161718191a1b1c1d1e1fa461757468b020212223"
    "2425262728292a2b2c2d2e2f"
)
PONG_FAILURE = bytes.fromhex("95a4504f4e47c2b37368617265645f6b6579206d69736d61746368a0a0")


def str8(text: str) -> bytes:
    return b"\xd9" + bytes([len(text)]) + text.encode()


def fixstr(text: str) -> bytes:
    assert len(text) < 32
    return bytes([0xA0 | len(text)]) + text.encode()


# The PING and the successful PONG, laid out as §5 describes them, piece by piece.
PING_WIRE = (
    b"\x96" + fixstr("PING") + fixstr(CLIENT) + str8(SALT) + str8(PING_DIGEST)
    + fixstr("alice") + str8(PASSWORD_DIGEST)
)
PONG_SUCCESS_WIRE = b"\x95" + fixstr("PONG") + b"\xc3\xa0" + fixstr(SERVER) + str8(PONG_DIGEST)


def decode(data: bytes) -> Any:
    """One object, decoded the way the client and the server decode the stream."""
    unpacker = new_unpacker()
    unpacker.feed(data)
    objs = list(unpacker)
    assert len(objs) == 1, objs
    return objs[0]


def sha512_hex(*parts: bytes | str) -> str:
    """An independent reference: plain hashlib over raw bytes (str as strict UTF-8)."""
    h = hashlib.sha512()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()


# -- wire vectors ----------------------------------------------------------------------------


def test_reference_digests_are_what_the_document_says() -> None:
    # Guards the constants above: if one were mistyped, the tests below would prove little.
    assert sha512_hex(SALT, CLIENT, NONCE, KEY) == PING_DIGEST
    assert sha512_hex(SALT, SERVER, NONCE, KEY) == PONG_DIGEST
    assert sha512_hex(AUTH, "alice", "s3cr3t") == PASSWORD_DIGEST
    assert sha512_hex(AUTH, "", "") == NO_USER_DIGEST


def test_helo_bytes_fluentd_style() -> None:
    assert len(HELO_FLUENTD) == 65
    assert build_helo(NONCE, AUTH) == HELO_FLUENTD
    assert parse_helo(decode(HELO_FLUENTD)) == Helo(NONCE, AUTH, keepalive=True)


def test_helo_bytes_fluent_bit_style() -> None:
    assert len(HELO_FLUENT_BIT) == 52
    assert build_helo(NONCE, AUTH, as_str=True) == HELO_FLUENT_BIT
    assert parse_helo(decode(HELO_FLUENT_BIT)) == Helo(NONCE, AUTH, keepalive=True)


def test_ping_bytes_with_a_user() -> None:
    assert len(PING_WIRE) == 325
    ping = build_ping(
        Helo(NONCE, AUTH, True), self_hostname=CLIENT, shared_key=KEY, salt=SALT,
        username="alice", password="s3cr3t",
    )
    assert ping == PING_WIRE


def test_ping_without_user_still_answers_the_auth_salt() -> None:
    # out_forward sends the digest of ("", "") whenever HELO offers an auth salt.
    ping = build_ping(Helo(NONCE, AUTH, True), self_hostname=CLIENT, shared_key=KEY, salt=SALT)
    assert ping == (
        b"\x96" + fixstr("PING") + fixstr(CLIENT) + str8(SALT) + str8(PING_DIGEST)
        + fixstr("") + str8(NO_USER_DIGEST)
    )


def test_ping_with_empty_auth_sends_empty_user_fields() -> None:
    ping = build_ping(
        Helo(NONCE, b"", True), self_hostname=CLIENT, shared_key=KEY, salt=SALT,
        username="alice", password="s3cr3t",
    )
    assert ping == (
        b"\x96" + fixstr("PING") + fixstr(CLIENT) + str8(SALT) + str8(PING_DIGEST)
        + fixstr("") + fixstr("")
    )


def test_pong_success_bytes() -> None:
    assert len(PONG_SUCCESS_WIRE) == 157
    ok, reason, pong = check_ping(
        decode(PING_WIRE), nonce=NONCE, auth=AUTH, shared_key=KEY,
        users={"alice": "s3cr3t"}, server_hostname=SERVER,
    )
    assert (ok, reason, pong) == (True, "", PONG_SUCCESS_WIRE)


def test_pong_failure_bytes() -> None:
    assert len(PONG_FAILURE) == 29
    ok, reason, pong = check_ping(
        decode(PING_WIRE), nonce=NONCE, auth=AUTH, shared_key="not the key",
        users=None, server_hostname=SERVER,
    )
    assert (ok, reason, pong) == (False, "shared_key mismatch", PONG_FAILURE)


def test_client_accepts_the_reference_pong() -> None:
    helo = parse_helo(decode(HELO_FLUENTD))
    got = check_pong(decode(PONG_SUCCESS_WIRE), helo=helo, salt=SALT, shared_key=KEY,
                     self_hostname=CLIENT)
    assert got == SERVER


def test_pong_failure_carries_the_servers_reason() -> None:
    helo = parse_helo(decode(HELO_FLUENTD))
    with pytest.raises(AuthenticationError, match="shared_key mismatch") as info:
        check_pong(decode(PONG_FAILURE), helo=helo, salt=SALT, shared_key=KEY,
                   self_hostname=CLIENT)
    # Callers who know nothing of this library can still catch it.
    assert isinstance(info.value, PermissionError)
    assert isinstance(info.value, FluentConnectionError)


@given(reason=st.text(max_size=300) | st.binary(max_size=300).map(
    lambda b: b.decode("utf-8", "surrogateescape")))
@example(reason="bad key \udcff\udcfe")
@example(reason="bad key\n2026-01-01 ERROR forged line")
def test_a_refusals_reason_is_fit_for_a_log_line(reason: str) -> None:
    # A server's words, bytes that were not UTF-8 or a line break among them, must neither
    # break a handler that encodes to UTF-8 nor forge a log line of their own.
    helo = Helo(NONCE, AUTH, True)
    with pytest.raises(AuthenticationError) as info:
        check_pong(["PONG", False, reason, "", ""], helo=helo, salt=SALT, shared_key=KEY,
                   self_hostname=CLIENT)
    text = str(info.value)
    text.encode("utf-8")
    assert text.isprintable(), text
    assert len(text) < 1000


# -- fluent-bit's str fields holding raw bytes ----------------------------------------------

NOT_UTF8_NONCE = bytes([0xFF, 0x80, 0xC3, 0x28, 0xED, 0xA0, 0x80, 0x00] * 2)
NOT_UTF8_AUTH = bytes([0xC0, 0xAF, 0xF8, 0x88, 0x80, 0x80, 0x80, 0xFE] * 2)


@pytest.mark.parametrize("as_str", [False, True], ids=["bin", "str"])
def test_non_utf8_nonce_and_auth_are_hashed_as_received(as_str: bool) -> None:
    wire = build_helo(NOT_UTF8_NONCE, NOT_UTF8_AUTH, as_str=as_str)
    # The str form really is a str on the wire (b0 = fixstr of 16 bytes), and not UTF-8.
    assert (b"\xb0" + NOT_UTF8_NONCE in wire) == as_str
    assert (b"\xc4\x10" + NOT_UTF8_NONCE in wire) == (not as_str)
    helo = parse_helo(decode(wire))
    assert helo.nonce == NOT_UTF8_NONCE and helo.auth == NOT_UTF8_AUTH
    ping = msgpack.unpackb(build_ping(helo, self_hostname=CLIENT, shared_key=KEY, salt=SALT,
                                      username="bob", password="pw"))
    assert ping[3] == sha512_hex(SALT, CLIENT, NOT_UTF8_NONCE, KEY)
    assert ping[5] == sha512_hex(NOT_UTF8_AUTH, "bob", "pw")


def test_a_fluent_bit_style_raw_salt_is_checked_over_its_bytes() -> None:
    # fluent-bit's out_forward sends 16 raw bytes packed as str for the salt.
    raw_salt = bytes([0x9F, 0xFF, 0x01, 0x80] * 4)
    digest = sha512_hex(raw_salt, CLIENT, NONCE, KEY)
    wire = (
        b"\x96" + fixstr("PING") + fixstr(CLIENT) + b"\xb0" + raw_salt + str8(digest)
        + fixstr("") + str8(NO_USER_DIGEST)
    )
    ok, reason, pong = check_ping(decode(wire), nonce=NONCE, auth=AUTH, shared_key=KEY,
                                  users=None, server_hostname=SERVER)
    assert ok, reason
    assert msgpack.unpackb(pong)[4] == sha512_hex(raw_salt, SERVER, NONCE, KEY)


def test_every_ping_element_is_str() -> None:
    ping = build_ping(Helo(NOT_UTF8_NONCE, NOT_UTF8_AUTH, True), self_hostname=CLIENT,
                      shared_key=KEY, salt=new_salt(), username="u", password="p")
    # Strict decoding: a bin element would come back as bytes, a non-UTF-8 str would raise.
    elements = msgpack.unpackb(ping, raw=False)
    assert len(elements) == 6 and all(type(e) is str for e in elements)


def test_salts_are_fresh_lowercase_hex() -> None:
    salts = {new_salt() for _ in range(50)}
    assert len(salts) == 50
    assert all(re.fullmatch(r"[0-9a-f]{32}", salt) for salt in salts)


@pytest.mark.parametrize("as_str", [False, True], ids=["bin", "str"])
@pytest.mark.parametrize("keepalive", [True, False])
def test_keepalive_is_carried_in_both_styles(as_str: bool, keepalive: bool) -> None:
    helo = parse_helo(decode(build_helo(NONCE, AUTH, keepalive, as_str=as_str)))
    assert helo.keepalive is keepalive


def test_a_helo_without_keepalive_or_auth() -> None:
    assert parse_helo(["HELO", {"nonce": NONCE}]) == Helo(NONCE, b"", True)
    assert parse_helo(["HELO", {"nonce": NONCE, "auth": "", "keepalive": False}]) == Helo(
        NONCE, b"", False
    )


# -- both sides together -------------------------------------------------------------------


def handshake(
    *, as_str: bool = False, key: str = KEY, server_key: str = KEY,
    users: dict[str, str] | None = None, user: str = "", password: str = "",
    client: str = CLIENT, server: str = SERVER, auth: bytes = AUTH,
    tamper: Any = None,
) -> str:
    """HELO, PING and PONG through the pure functions and the real decoder."""
    helo = parse_helo(decode(build_helo(NONCE, auth, as_str=as_str)))
    salt = new_salt()
    ping = decode(build_ping(helo, self_hostname=client, shared_key=key, salt=salt,
                             username=user, password=password))
    _, _, pong_wire = check_ping(ping, nonce=NONCE, auth=auth, shared_key=server_key,
                                 users=users, server_hostname=server)
    pong = decode(pong_wire)
    if tamper is not None:
        pong = tamper(pong)
    return check_pong(pong, helo=helo, salt=salt, shared_key=key, self_hostname=client)


STYLES = pytest.mark.parametrize("as_str", [False, True], ids=["fluentd", "fluent-bit"])
USERS = {"alice": "s3cr3t", "bob": "builder"}


@STYLES
def test_shared_key_only(as_str: bool) -> None:
    assert handshake(as_str=as_str) == SERVER


@STYLES
def test_users_accepted(as_str: bool) -> None:
    assert handshake(as_str=as_str, users=USERS, user="bob", password="builder") == SERVER


def forge_digest(pong: list[Any]) -> list[Any]:
    digest = pong[4]
    return [*pong[:4], ("0" if digest[0] != "0" else "1") + digest[1:]]


def replay_with_other_salt(pong: list[Any]) -> list[Any]:
    # A PONG that once was right, for another PING (another salt).
    return [*pong[:4], sha512_hex(new_salt(), SERVER, NONCE, KEY)]


def change_hostname(pong: list[Any]) -> list[Any]:
    # The digest covers the hostname: a rewritten hostname no longer matches.
    return [pong[0], pong[1], pong[2], "elsewhere.example.com", pong[4]]


@STYLES
@pytest.mark.parametrize("case, reason", [
    ({"key": "wrong"}, "shared_key mismatch"),
    ({"server_key": "wrong"}, "shared_key mismatch"),
    ({"users": USERS, "user": "bob", "password": "wrong"}, "username/password mismatch"),
    ({"users": USERS, "user": "carol", "password": "builder"}, "username/password mismatch"),
    ({"users": USERS, "user": "", "password": ""}, "username/password mismatch"),
    # No auth salt offered, so the client sends no user; a server with users refuses.
    ({"users": USERS, "user": "bob", "password": "builder", "auth": b""},
     "username/password mismatch"),
    ({"client": SERVER}, "same hostname"),
    ({"tamper": forge_digest}, "PONG digest is wrong"),
    ({"tamper": replay_with_other_salt}, "PONG digest is wrong"),
    ({"tamper": change_hostname}, "PONG digest is wrong"),
], ids=["client-key", "server-key", "password", "user", "no-user", "no-auth-salt",
        "same-hostname", "forged-digest", "replayed-digest", "changed-hostname"])
def test_refusals(as_str: bool, case: dict[str, Any], reason: str) -> None:
    with pytest.raises(AuthenticationError, match=reason):
        handshake(as_str=as_str, **case)


def test_a_server_with_our_hostname_is_refused_even_with_the_right_digest() -> None:
    # fluent-bit's in_forward lets a PING with its own hostname through; out_forward (and
    # this client) still refuse a PONG that names the client's own host.
    pong = ["PONG", True, "", CLIENT, sha512_hex(SALT, CLIENT, NONCE, KEY)]
    with pytest.raises(AuthenticationError, match="our own hostname"):
        check_pong(pong, helo=Helo(NONCE, AUTH, True), salt=SALT, shared_key=KEY,
                   self_hostname=CLIENT)


# -- fuzzing -------------------------------------------------------------------------------

# What a msgpack decoder with surrogateescape can hand over, including escaped raw bytes.
escaped = st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00)])
texts = st.text(st.characters() | escaped, max_size=20)
plain = st.text(max_size=20)  # what a caller passes: no lone surrogates
scalars = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | texts
    | st.binary(max_size=20)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=9))
)
anything = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(texts | st.integers(), inner, max_size=4),
    max_leaves=20,
)
# Near misses reach the deeper checks: the right verb, wrong or odd fields.
helo_like = st.builds(
    lambda opts: ["HELO", opts],
    st.dictionaries(st.sampled_from(["nonce", "auth", "keepalive", "other"]), anything,
                    max_size=4),
)
pong_like = st.builds(lambda rest: ["PONG", *rest], st.lists(anything, min_size=0, max_size=5))
VALID_PING = ["PING", CLIENT, SALT, PING_DIGEST, "alice", PASSWORD_DIGEST]
ping_like = st.builds(
    lambda rest: ["PING", *rest],
    st.lists(texts | st.sampled_from(VALID_PING[1:]) | anything,
             min_size=4, max_size=6),
)


@given(anything | helo_like)
@example(["HELO", {"nonce": []}])
@example(["HELO", {"nonce": NONCE, "auth": 7}])
@example(["HELO", {}])
@example(["HELO"])
def test_fuzz_parse_helo(obj: Any) -> None:
    try:
        helo = parse_helo(obj)
    except AuthenticationError:
        return
    assert isinstance(helo.nonce, bytes) and isinstance(helo.auth, bytes)
    assert isinstance(helo.keepalive, bool)


@given(anything | pong_like)
@example(["PONG", True, "", SERVER, 12])
@example(["PONG", True, "", None, PONG_DIGEST])
@example(["PONG", True, "", SERVER, "\udcff" * 128])
@example(["PONG", False, None, "", ""])
@example(["PONG", 1, "", SERVER, PONG_DIGEST])
def test_fuzz_check_pong(obj: Any) -> None:
    helo = Helo(NONCE, AUTH, True)
    # Nothing random can carry the right digest: every input must be refused, cleanly.
    with pytest.raises(AuthenticationError):
        check_pong(obj, helo=helo, salt=SALT, shared_key=KEY, self_hostname=CLIENT)


@given(st.binary(max_size=200))
def test_fuzz_server_replies_from_raw_bytes(data: bytes) -> None:
    # Whatever the decoder makes of arbitrary bytes, the checks raise nothing unexpected.
    unpacker = new_unpacker()
    unpacker.feed(data)
    try:
        objs = list(unpacker)
    except Exception:
        return  # not msgpack at all: the connection's business, not the handshake's
    helo = Helo(NONCE, AUTH, True)
    for obj in objs:
        try:
            parse_helo(obj)
        except AuthenticationError:
            pass
        with pytest.raises(AuthenticationError):
            check_pong(obj, helo=helo, salt=SALT, shared_key=KEY, self_hostname=CLIENT)


@given(anything | ping_like)
@example(["PING", CLIENT, SALT, PING_DIGEST, "alice", 5])
@example(["PING", CLIENT, SALT, "\udc80" * 128, "alice", PASSWORD_DIGEST])
@example(["PING", CLIENT, SALT, PING_DIGEST, "alice", "\udc80\ud800"])
def test_fuzz_check_ping_never_raises(obj: Any) -> None:
    ok, reason, pong = check_ping(obj, nonce=NONCE, auth=AUTH, shared_key=KEY,
                                  users=USERS, server_hostname=SERVER)
    if obj == VALID_PING:  # the pieces on offer can be put together right
        assert (ok, reason, pong) == (True, "", PONG_SUCCESS_WIRE)
        return
    assert ok is False and reason
    assert msgpack.unpackb(pong) == ["PONG", False, reason, "", ""]


@given(
    nonce=st.binary(min_size=16, max_size=16),
    auth=st.binary(min_size=0, max_size=16),
    as_str=st.booleans(),
    key=plain,
    user=plain,
    password=plain,
)
def test_any_bytes_and_credentials_round_trip(
    nonce: bytes, auth: bytes, as_str: bool, key: str, user: str, password: str
) -> None:
    helo = parse_helo(decode(build_helo(nonce, auth, as_str=as_str)))
    assert (helo.nonce, helo.auth) == (nonce, auth)
    salt = new_salt()
    ping = decode(build_ping(helo, self_hostname=CLIENT, shared_key=key, salt=salt,
                             username=user, password=password))
    users = {user: password} if auth else None
    ok, reason, pong = check_ping(ping, nonce=nonce, auth=auth, shared_key=key, users=users,
                                  server_hostname=SERVER)
    assert ok, reason
    assert check_pong(decode(pong), helo=helo, salt=salt, shared_key=key,
                      self_hostname=CLIENT) == SERVER
