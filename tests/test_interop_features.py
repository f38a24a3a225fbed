"""Interop of the issue-3 features with FluentServer from @fluent-org/logger 1.0.10 (Node).

Acks, the HELO/PING/PONG handshake (shared key, users), TLS (server and mutual), gzip, and all
of them together, for both clients. FluentServer is an independent implementation: it checks
the PING digests with Node's crypto, terminates TLS with Node's OpenSSL build and inflates with
Node's zlib, so a mistake that our own embedded server would share cannot hide here.

Every delivery is checked record by record: exact records, EventTime nanoseconds included,
per-tag order, exact count (no loss, no duplicate). Refusals are checked from both sides: the
client reports the right error, and the peer received nothing.

FluentServer facts these tests rely on (read from its source, build/src/server.js and
protocol.js, and confirmed by the harness tests below):

* It acks any frame whose option map has a non-empty str ``chunk``, writing the ack before it
  emits the frame's events, so an ack may reach us before peer.js has printed the events.
  Waits for events therefore always go through a deadline.
* With a shared key it writes HELO first (``nonce`` bin, ``auth`` bin with users and ``""``
  without, ``keepalive`` true). A bad PING gets ``["PONG", false, reason, server_hostname,
  ""]``, then a FIN. Reasons: ``shared key mismatch``, ``username/password mismatch``,
  ``missing authentication information``, ``Same hostname between input and output: invalid
  configuration``.
* TLS options make the port TLS-only; ``requestCert`` with a ``ca`` makes it mutual TLS.

Test certificates (a CA, a server certificate for 127.0.0.1 and localhost, a client
certificate, and a client certificate from an unrelated CA) are made at test time with
``trustme``; tests that need them skip when it is not installed (fail with CI set).
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

import msgpack
import pytest

from fluentclient import (
    Auth,
    AuthenticationError,
    Backoff,
    BufferedClient,
    Buffering,
    EventTime,
    FluentConnectionError,
    FluentError,
    RecordRules,
    SyncClient,
    Timeouts,
    Tls,
)
from tests.certs import Pki
from tests.peer_server import NodePeer, PeerEvent, assert_peer_equal, require_peer

pytestmark = pytest.mark.peer

WAIT = 15.0  # seconds: the longest any single wait in this module may take
SENTINEL_TAG = "features.sentinel"
KINDS = ["buffered", "sync"]

SHARED_KEY = "interop shared key · ключ"
SERVER_HOSTNAME = "node-peer.test"
CLIENT_HOSTNAME = "fluentclient.test"
USERS = {"alice": "wonder land", "bob": "b0b-pässword"}

# A fast, bounded reconnect schedule for the failure tests.
QUICK_BACKOFF = Backoff(initial=0.02, maximum=0.2)

Post = tuple[str, EventTime, dict[str, Any]]


# -- certificates --------------------------------------------------------------------------------


# -- peers (one per configuration, shared by the module; each test clears the one it uses) ----


def _peer(**kwargs: Any) -> Iterator[NodePeer]:
    require_peer()
    with NodePeer(**kwargs) as peer:
        yield peer


@pytest.fixture(scope="module")
def plain_peer() -> Iterator[NodePeer]:
    yield from _peer()


@pytest.fixture(scope="module")
def key_peer() -> Iterator[NodePeer]:
    """Handshake with a shared key, no user authentication."""
    yield from _peer(shared_key=SHARED_KEY, server_hostname=SERVER_HOSTNAME)


@pytest.fixture(scope="module")
def user_peer() -> Iterator[NodePeer]:
    """Handshake with a shared key and user authentication."""
    yield from _peer(shared_key=SHARED_KEY, server_hostname=SERVER_HOSTNAME, users=USERS)


@pytest.fixture(scope="module")
def tls_peer(pki: Pki) -> Iterator[NodePeer]:
    """TLS-only, server certificate only."""
    yield from _peer(tls_cert=pki.server_cert, tls_key=pki.server_key)


@pytest.fixture(scope="module")
def mtls_peer(pki: Pki) -> Iterator[NodePeer]:
    """TLS-only, and the client must show a certificate signed by the test CA (TLS 1.3)."""
    yield from _peer(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca_file,
        tls_request_cert=True,
    )


@pytest.fixture(scope="module")
def mtls12_peer(pki: Pki) -> Iterator[NodePeer]:
    """As mtls_peer but capped at TLS 1.2, where a missing client certificate fails the
    handshake itself (with TLS 1.3 the server's refusal comes after the client's handshake
    has completed)."""
    yield from _peer(
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_ca=pki.ca_file,
        tls_request_cert=True, config={"tls": {"maxVersion": "TLSv1.2"}},
    )


@pytest.fixture(scope="module")
def secure_peer(pki: Pki) -> Iterator[NodePeer]:
    """TLS-only with the handshake inside: shared key and users."""
    yield from _peer(
        tls_cert=pki.server_cert, tls_key=pki.server_key, shared_key=SHARED_KEY,
        server_hostname=SERVER_HOSTNAME, users=USERS,
    )


# -- helpers -------------------------------------------------------------------------------------


# FluentServer keeps whatever msgpack carries: these tests check the wire itself, so the
# rules that make odd records safe for fluentd and Fluent Bit are off (tests/test_odd_records.py).
AS_IS = RecordRules(max_depth=200, non_str_keys="keep", non_finite_floats="keep",
                    non_utf8_bytes="keep")


def make_client(kind: str, peer: NodePeer, **kwargs: Any) -> Any:
    kwargs.setdefault("records", AS_IS)
    if kind == "buffered":
        kwargs.setdefault("backoff", QUICK_BACKOFF)
        return BufferedClient(peer.host, peer.port, at_exit=False, **kwargs)
    return SyncClient(peer.host, peer.port, **kwargs)


def auth_options(password: str | None = None, **fields: Any) -> dict[str, Any]:
    """Handshake options for a client; ``password`` selects user ``alice``."""
    chosen: dict[str, Any] = {"shared_key": SHARED_KEY, "self_hostname": CLIENT_HOSTNAME}
    if password is not None:
        chosen.update(username="alice", password=password)
    chosen.update(fields)
    return {"auth": Auth(**chosen)}


def tls_options(pki: Pki, *, client_cert: bool = False, **fields: Any) -> dict[str, Any]:
    if client_cert:
        fields.update(cert_file=str(pki.client_cert), key_file=str(pki.client_key))
    return {"tls": Tls(ca_file=str(pki.ca_file), **fields)}


def make_posts(n: int, *, pad: int = 0, seed: int = 0) -> list[Post]:
    """``n`` records over three interleaved tags, each with its own nanosecond timestamp.

    Values stay within what JavaScript represents exactly (integers below 2**53, floats that
    are not integral), so what the peer decoded must equal what was posted.
    """
    tags = ("feat.alpha", "feat.beta.x", "feat.gamma")
    posts: list[Post] = []
    for i in range(n):
        k = i + seed
        record: dict[str, Any] = {
            "seq": i,
            "text": f"record {k} · héllo wörld ✓ 日本 😀",
            "blob": bytes([k % 256, 255 - k % 256, 0, 10]),
            "ratio": k + 0.375,
            "neg": -(k * 1_000_003) - 1,
            "nested": {"list": [k, None, True, False, "x" * (k % 7)], "empty": {}},
        }
        if pad:
            record["pad"] = ("fluent forward " * pad)[: pad * 10]
        when = EventTime(1_712_000_000 + k // 5, (k * 104_729_071 + 999) % 1_000_000_000)
        posts.append((tags[(k * 5) % 3], when, record))
    return posts


def wait_for(predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


@dataclass
class Delivery:
    events: list[PeerEvent]  # what the peer decoded, without the sentinel
    stats: Any  # client.stats() once everything posted was flushed (and acked)
    report: Any  # the ShutdownReport


def deliver(
    peer: NodePeer, client: Any, posts: Sequence[Post], *, ack: bool = False
) -> Delivery:
    """Post everything (with ``post(ack=True)`` if ``ack``), flush, then a sentinel; return
    what the peer got before the sentinel.

    FluentServer handles a connection's frames in order and the sentinel is posted after a
    flush, so once it has been seen everything earlier that was going to arrive has arrived,
    and nothing may follow it.
    """
    assert peer.alive, peer.describe()
    peer.clear()
    futures: list[Future[None]] = []
    try:
        for tag, when, record in posts:
            if ack:
                future = client.post(tag, record, time=when, ack=True)
                assert isinstance(future, Future), future
                futures.append(future)
            else:
                assert client.post(tag, record, time=when) is True
        assert client.flush(timeout=WAIT), f"flush timed out: {client.stats()}"
        for i, future in enumerate(futures):
            # result() raises the client's error if the record was given up.
            assert future.result(timeout=WAIT) is None, f"post #{i}"
        stats = client.stats()
        assert client.post(SENTINEL_TAG, {"end": True}) is True
        assert client.flush(timeout=WAIT), f"flush timed out: {client.stats()}"
        report = client.shutdown(timeout=WAIT)
    finally:
        client.close()
    seen = peer.wait_until(lambda evs: any(e.tag == SENTINEL_TAG for e in evs), WAIT)
    assert seen, f"the sentinel never arrived; {peer.describe()}"
    events = peer.events
    assert not peer.bad_lines, peer.bad_lines
    assert [e.tag for e in events].count(SENTINEL_TAG) == 1, events[-3:]
    assert events[-1].tag == SENTINEL_TAG, f"events after the sentinel: {events[-3:]!r}"
    return Delivery(events[:-1], stats, report)


def assert_exact(posts: Sequence[Post], events: Sequence[PeerEvent]) -> None:
    """Each post arrived exactly once, unchanged, in posting order within its tag."""
    assert len(events) == len(posts), f"posted {len(posts)} records, the peer got {len(events)}"
    sent_by_tag: dict[str, list[Post]] = {}
    for post in posts:
        sent_by_tag.setdefault(post[0], []).append(post)
    got_by_tag: dict[str, list[PeerEvent]] = {}
    for event in events:
        got_by_tag.setdefault(event.tag, []).append(event)
    assert sorted(got_by_tag) == sorted(sent_by_tag)
    for tag, sent in sent_by_tag.items():
        got = got_by_tag[tag]
        assert [e.record.get("seq") for e in got] == [p[2]["seq"] for p in sent], (
            f"tag {tag}: order, loss or duplicates"
        )
        for (_, when, record), event in zip(sent, got):
            where = f"{tag} seq {record['seq']}"
            assert type(event.time) is EventTime, f"{where}: time {event.time!r}"
            assert event.time == when, f"{where}: time {event.time!r}, posted {when!r}"
            assert_peer_equal(record, event.record, where)
            assert event.record == record, where


def assert_clean_report(report: Any, records: int) -> None:
    assert report.sent == records, report
    assert report.unsent_records == 0 and report.possibly_lost == 0, report
    assert not report.dropped, report


def assert_nothing_arrived(peer: NodePeer, **good_options: Any) -> None:
    """After a refused client is closed: a good client's sentinel must be the only event."""
    good = SyncClient(peer.host, peer.port, require_ack=True, timeouts=Timeouts(ack=WAIT),
                      **good_options)
    try:
        good.post(SENTINEL_TAG, {"barrier": True})
    finally:
        good.close()
    seen = peer.wait_until(lambda evs: any(e.tag == SENTINEL_TAG for e in evs), WAIT)
    assert seen, peer.describe()
    events = peer.events
    assert [e.tag for e in events] == [SENTINEL_TAG], f"a refused client got through: {events}"


@dataclass
class Refusal:
    errors: list[tuple[FluentError, Any]]  # what on_error was given
    stats: Any  # client.stats() once the failure was seen
    report: Any  # after close()
    futures: list[Future[None]]


def refused_buffered(
    peer: NodePeer,
    until: Callable[[Any, list[tuple[FluentError, Any]]], bool],
    *,
    n: int = 7,
    ack: bool = False,
    **options: Any,
) -> Refusal:
    """Post ``n`` records to a BufferedClient that must not get through; wait until
    ``until(stats, errors)``, then close it."""
    errors: list[tuple[FluentError, Any]] = []
    lock = threading.Lock()

    def on_error(err: FluentError, msg: Any) -> None:
        with lock:
            errors.append((err, msg))

    def seen() -> list[tuple[FluentError, Any]]:
        with lock:
            return list(errors)

    if ack:
        options["require_ack"] = True
    client = make_client("buffered", peer, on_error=on_error, **options)
    futures: list[Future[None]] = []
    try:
        for tag, when, record in make_posts(n):
            if ack:
                futures.append(client.post(tag, record, time=when, ack=True))
            else:
                assert client.post(tag, record, time=when) is True
        client.flush(timeout=0.01)  # only asks for a write now; it cannot succeed
        ok = wait_for(lambda: until(client.stats(), seen()))
        stats = client.stats()
        assert ok, f"the failure was never reported: {stats}, errors {seen()}"
    finally:
        client.close()
    report = client.shutdown()  # close() already stopped it; this returns its report
    return Refusal(seen(), stats, report, futures)


def last_error(stats: Any) -> str:
    (server,) = stats.servers
    return server.last_error or ""


def assert_buffered_sent_nothing(refusal: Refusal, n: int = 7) -> None:
    assert refusal.stats.sent == 0, refusal.stats
    assert refusal.report.sent == 0, refusal.report
    for future in refusal.futures:
        assert future.done(), "a delivery future was left pending after close()"
        assert future.exception() is not None, "a refused record's future succeeded"


def sha512_hex(*parts: bytes | str) -> str:
    h = hashlib.sha512()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode("utf-8"))
    return h.hexdigest()


# -- the harness: peer.js flags do what the tests assume ------------------------------------------


def _hand_handshake(
    peer: NodePeer, *, key: str, username: str = "", password: str = ""
) -> tuple[socket.socket, msgpack.Unpacker, Any, list[Any]]:
    """HELO/PING/PONG by hand (hashlib, not fluentclient); returns the socket and PONG."""
    sock = socket.create_connection((peer.host, peer.port), timeout=WAIT)
    unpacker = msgpack.Unpacker(raw=False)

    def read() -> Any:
        for obj in unpacker:
            return obj
        while True:
            data = sock.recv(4096)
            assert data, "the peer closed the connection"
            unpacker.feed(data)
            for obj in unpacker:
                return obj

    helo = read()
    assert helo[0] == "HELO", helo
    nonce, auth = helo[1]["nonce"], helo[1]["auth"]
    salt = "00112233445566778899aabbccddeeff"
    digest = sha512_hex(salt, CLIENT_HOSTNAME, nonce, key)
    password_digest = sha512_hex(auth, username, password) if auth else ""
    sock.sendall(msgpack.packb(["PING", CLIENT_HOSTNAME, salt, digest, username,
                                password_digest]))
    pong = read()
    assert pong[0] == "PONG" and len(pong) == 5, pong
    if pong[1]:
        assert pong[3] == SERVER_HOSTNAME, pong
        assert pong[4] == sha512_hex(salt, SERVER_HOSTNAME, nonce, key), "bad PONG digest"
    return sock, unpacker, helo, pong


def test_harness_user_handshake_by_hand(user_peer: NodePeer) -> None:
    """--shared-key, --server-hostname and --user reach FluentServer as configured."""
    user_peer.clear()
    sock, unpacker, helo, pong = _hand_handshake(
        user_peer, key=SHARED_KEY, username="bob", password=USERS["bob"]
    )
    with sock:
        assert isinstance(helo[1]["nonce"], bytes) and len(helo[1]["nonce"]) == 16
        assert isinstance(helo[1]["auth"], bytes) and len(helo[1]["auth"]) == 16
        assert pong[1] is True, pong
        sock.sendall(msgpack.packb(["hand.made", 7, {"k": "v"}, {"chunk": "c-1"}]))
        reply = sock.recv(64)
        assert msgpack.unpackb(reply) == {"ack": "c-1"}
    assert user_peer.wait_for_events(1, WAIT), user_peer.describe()
    assert user_peer.events == [("hand.made", 7, {"k": "v"})]

    for kwargs, reason in (
        ({"key": "not the key", "username": "bob", "password": USERS["bob"]},
         "shared key mismatch"),
        ({"key": SHARED_KEY, "username": "bob", "password": "wrong"},
         "username/password mismatch"),
    ):
        sock, _, _, pong = _hand_handshake(user_peer, **kwargs)
        with sock:
            assert pong[1] is False and pong[2] == reason, pong
            assert sock.recv(64) == b"", "FluentServer should close after a failed PONG"


def test_harness_shared_key_without_users_sends_empty_auth(key_peer: NodePeer) -> None:
    sock, _, helo, pong = _hand_handshake(key_peer, key=SHARED_KEY)
    with sock:
        # Unlike fluentd and fluent-bit, FluentServer sends an empty auth salt here.
        assert helo[1]["auth"] == "", helo
        assert helo[1]["keepalive"] is True, helo
        assert pong[1] is True, pong


def test_harness_tls_peer_is_tls_only(tls_peer: NodePeer, pki: Pki) -> None:
    """A plaintext frame asking for an ack gets no ack: the TLS tests cannot pass in clear."""
    tls_peer.clear()
    with socket.create_connection((tls_peer.host, tls_peer.port), timeout=WAIT) as sock:
        sock.sendall(msgpack.packb(["plain.text", 1, {"a": 1}, {"chunk": "p-1"}]))
        try:
            reply = sock.recv(64)
        except ConnectionResetError:
            reply = b""
        assert b"ack" not in reply, reply
    assert_nothing_arrived(tls_peer, **tls_options(pki))


# -- 1. acks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_acks_every_record_arrives_once_and_futures_resolve(
    plain_peer: NodePeer, kind: str
) -> None:
    posts = make_posts(240)
    # A small frame limit makes the buffered client pipeline many acked frames.
    extra = {"buffering": Buffering(max_frame_size=4096)} if kind == "buffered" else {}
    client = make_client(kind, plain_peer, require_ack=True, timeouts=Timeouts(ack=WAIT), **extra)
    got = deliver(plain_peer, client, posts, ack=True)
    assert_exact(posts, got.events)
    assert got.stats.sent == len(posts), got.stats
    assert got.stats.dropped_total == 0 and got.stats.possibly_lost == 0, got.stats
    (server,) = got.stats.servers
    assert server.acked_frames == server.frames_sent == got.stats.frames_sent, got.stats
    if kind == "buffered":
        assert got.stats.frames_sent > 5, got.stats
    else:
        assert got.stats.frames_sent == len(posts), got.stats
    assert_clean_report(got.report, len(posts) + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_acks_plain_posts_are_acked_too(plain_peer: NodePeer, kind: str) -> None:
    """require_ack without post(ack=True): flush() waits for the acks; sent counts them."""
    posts = make_posts(40, seed=3)
    client = make_client(kind, plain_peer, require_ack=True, timeouts=Timeouts(ack=WAIT))
    got = deliver(plain_peer, client, posts)
    assert_exact(posts, got.events)
    assert got.stats.sent == len(posts), got.stats
    assert got.stats.servers[0].acked_frames == got.stats.frames_sent > 0, got.stats
    assert_clean_report(got.report, len(posts) + 1)


# -- 2. shared key ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ack", [False, True], ids=["no_ack", "ack"])
@pytest.mark.parametrize("kind", KINDS)
def test_shared_key_records_arrive(key_peer: NodePeer, kind: str, ack: bool) -> None:
    posts = make_posts(60, seed=11)
    client = make_client(kind, key_peer, require_ack=ack, **auth_options())
    got = deliver(key_peer, client, posts, ack=ack)
    assert_exact(posts, got.events)
    assert got.stats.servers[0].connects == 1, got.stats
    assert_clean_report(got.report, len(posts) + 1)


@pytest.mark.parametrize("ack", [False, True], ids=["no_ack", "ack"])
def test_sync_wrong_shared_key_raises_authentication_error(key_peer: NodePeer, ack: bool) -> None:
    key_peer.clear()
    client = make_client(
        "sync", key_peer, require_ack=ack, **auth_options(shared_key="not the shared key")
    )
    try:
        with pytest.raises(AuthenticationError) as info:
            client.post("auth.refused", {"n": 1}, ack=ack)
        stats = client.stats()
    finally:
        client.close()
    assert "shared key mismatch" in str(info.value), f"unclear error: {info.value!r}"
    assert stats.sent == 0, stats
    assert "shared key mismatch" in last_error(stats), stats
    assert_nothing_arrived(key_peer, **auth_options())


@pytest.mark.parametrize("ack", [False, True], ids=["no_ack", "ack"])
def test_buffered_wrong_shared_key_reports_and_sends_nothing(
    key_peer: NodePeer, ack: bool
) -> None:
    key_peer.clear()
    refusal = refused_buffered(
        key_peer,
        lambda stats, errors: bool(errors) and stats.servers[0].last_error is not None,
        ack=ack,
        **auth_options(shared_key="not the shared key"),
    )
    auth_errors = [e for e, _ in refusal.errors if isinstance(e, AuthenticationError)]
    assert auth_errors, f"on_error never got an AuthenticationError: {refusal.errors}"
    assert "shared key mismatch" in str(auth_errors[0]), repr(auth_errors[0])
    assert "shared key mismatch" in last_error(refusal.stats), refusal.stats
    assert refusal.stats.connects == 0 and refusal.stats.frames_sent == 0, refusal.stats
    assert_buffered_sent_nothing(refusal)
    assert refusal.report.unsent_records == 7, refusal.report
    assert_nothing_arrived(key_peer, **auth_options())


def test_sync_own_hostname_equal_to_servers_is_refused(key_peer: NodePeer) -> None:
    """FluentServer refuses a PING from a client claiming the server's own hostname."""
    key_peer.clear()
    client = make_client("sync", key_peer, **auth_options(self_hostname=SERVER_HOSTNAME))
    try:
        with pytest.raises(AuthenticationError) as info:
            client.post("auth.refused", {"n": 1})
    finally:
        client.close()
    assert "hostname" in str(info.value).lower(), repr(info.value)
    assert_nothing_arrived(key_peer, **auth_options())


# -- 3. users --------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "bob"])
@pytest.mark.parametrize("kind", KINDS)
def test_user_records_arrive(user_peer: NodePeer, kind: str, user: str) -> None:
    posts = make_posts(50, seed=21)
    client = make_client(
        kind, user_peer, require_ack=True,
        **auth_options(username=user, password=USERS[user]),
    )
    got = deliver(user_peer, client, posts, ack=True)
    assert_exact(posts, got.events)
    assert got.stats.sent == len(posts), got.stats
    assert_clean_report(got.report, len(posts) + 1)


BAD_USERS = [
    pytest.param({"username": "alice", "password": "wonderland"}, "username/password mismatch",
                 id="wrong_password"),
    pytest.param({"username": "mallory", "password": "wonder land"},
                 "username/password mismatch", id="unknown_user"),
    pytest.param({}, "missing authentication information", id="no_user"),
]


@pytest.mark.parametrize(("credentials", "reason"), BAD_USERS)
def test_sync_bad_user_raises_authentication_error(
    user_peer: NodePeer, credentials: dict[str, str], reason: str
) -> None:
    user_peer.clear()
    client = make_client("sync", user_peer, **auth_options(**credentials))
    try:
        with pytest.raises(AuthenticationError) as info:
            client.post("auth.refused", {"n": 1})
        stats = client.stats()
    finally:
        client.close()
    assert reason in str(info.value), f"unclear error: {info.value!r}"
    assert stats.sent == 0 and reason in last_error(stats), stats
    assert_nothing_arrived(user_peer, **auth_options(password=USERS["alice"]))


@pytest.mark.parametrize("ack", [False, True], ids=["no_ack", "ack"])
def test_buffered_wrong_password_reports_and_sends_nothing(
    user_peer: NodePeer, ack: bool
) -> None:
    user_peer.clear()
    refusal = refused_buffered(
        user_peer,
        lambda stats, errors: bool(errors) and stats.servers[0].last_error is not None,
        ack=ack,
        **auth_options(password="wonderland"),
    )
    auth_errors = [e for e, _ in refusal.errors if isinstance(e, AuthenticationError)]
    assert auth_errors, f"on_error never got an AuthenticationError: {refusal.errors}"
    assert "username/password mismatch" in str(auth_errors[0]), repr(auth_errors[0])
    assert "username/password mismatch" in last_error(refusal.stats), refusal.stats
    assert_buffered_sent_nothing(refusal)
    assert refusal.report.unsent_records == 7, refusal.report
    assert_nothing_arrived(user_peer, **auth_options(password=USERS["alice"]))


# -- 4. TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["tls_ca_file", "ssl_context"])
@pytest.mark.parametrize("kind", KINDS)
def test_tls_records_arrive(tls_peer: NodePeer, pki: Pki, kind: str, how: str) -> None:
    if how == "ssl_context":
        options: dict[str, Any] = {
            "tls": Tls(context=ssl.create_default_context(cafile=str(pki.ca_file)))
        }
    else:
        options = tls_options(pki)
    posts = make_posts(80, seed=31)
    client = make_client(kind, tls_peer, **options)
    got = deliver(tls_peer, client, posts)
    assert_exact(posts, got.events)
    assert_clean_report(got.report, len(posts) + 1)


def _sync_refused(peer: NodePeer, **options: Any) -> FluentError:
    peer.clear()
    options["timeouts"] = replace(options.get("timeouts", Timeouts()), connect=WAIT)
    client = make_client("sync", peer, **options)
    try:
        with pytest.raises(FluentConnectionError) as info:
            client.post("tls.refused", {"n": 1})
        assert client.stats().sent == 0
    finally:
        client.close()
    return info.value


def _buffered_refused(peer: NodePeer, needle: str | None, **options: Any) -> Refusal:
    """A BufferedClient that cannot get through; waits until ``last_error`` contains
    ``needle`` (lower case), or with ``needle=None`` until any failure was recorded."""
    peer.clear()

    def failed(stats: Any, errors: Any) -> bool:
        error = (stats.servers[0].last_error or "").lower()
        if needle is None:
            return bool(error) and stats.connect_failures + stats.connection_failures > 0
        return needle in error

    refusal = refused_buffered(peer, failed, **options)
    assert_buffered_sent_nothing(refusal)
    return refusal


VERIFY_FAILED = "certificate verify failed"


def _is_verify_failure(text: str) -> bool:
    text = text.lower()
    return VERIFY_FAILED in text or "certificate_verify_failed" in text


@pytest.mark.parametrize("kind", KINDS)
def test_tls_without_the_ca_fails_to_connect(tls_peer: NodePeer, pki: Pki, kind: str) -> None:
    """Verification is on by default: the system CAs do not know the test CA."""
    if kind == "sync":
        err = _sync_refused(tls_peer, tls=True)
        assert _is_verify_failure(str(err)), f"unclear error: {err!r}"
    else:
        refusal = _buffered_refused(tls_peer, "certificate_verify_failed", tls=True)
        assert refusal.stats.connects == 0, refusal.stats
    assert_nothing_arrived(tls_peer, **tls_options(pki))


@pytest.mark.parametrize("kind", KINDS)
def test_tls_wrong_server_name_fails_to_connect(tls_peer: NodePeer, pki: Pki, kind: str) -> None:
    options = tls_options(pki, server_name="elsewhere.fluentclient.test")
    if kind == "sync":
        err = _sync_refused(tls_peer, **options)
        assert _is_verify_failure(str(err)) or "hostname" in str(err).lower(), repr(err)
    else:
        _buffered_refused(tls_peer, "certificate_verify_failed", **options)
    assert_nothing_arrived(tls_peer, **tls_options(pki))


def test_tls_verify_off_connects_without_the_ca(tls_peer: NodePeer) -> None:
    posts = make_posts(5, seed=41)
    client = make_client("sync", tls_peer, tls=Tls(verify=False))
    got = deliver(tls_peer, client, posts)
    assert_exact(posts, got.events)


@pytest.mark.parametrize("ack", [False, True], ids=["no_ack", "ack"])
@pytest.mark.parametrize("kind", KINDS)
def test_mutual_tls_records_arrive(mtls_peer: NodePeer, pki: Pki, kind: str, ack: bool) -> None:
    posts = make_posts(70, seed=51)
    client = make_client(kind, mtls_peer, require_ack=ack, **tls_options(pki, client_cert=True))
    got = deliver(mtls_peer, client, posts, ack=ack)
    assert_exact(posts, got.events)
    assert_clean_report(got.report, len(posts) + 1)


@pytest.mark.parametrize("cert", ["none", "untrusted"])
@pytest.mark.parametrize("kind", KINDS)
def test_mutual_tls_without_a_trusted_client_cert_fails_with_acks(
    mtls_peer: NodePeer, pki: Pki, kind: str, cert: str
) -> None:
    """TLS 1.3: the server's refusal comes after the client's side of the handshake is done,
    so the client learns it when reading; with acks it does, before counting anything sent.

    Without a certificate OpenSSL (in Node) sends a ``certificate required`` alert, which the
    error must show. A certificate from an unknown CA passes OpenSSL (Node checks it after the
    handshake) and Node just closes the socket without an alert, so all the client can see
    then is the connection closing.
    """
    stranger = (dict(cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key))
                if cert == "untrusted" else {})
    options = {**tls_options(pki, **stranger), "require_ack": True,
               "timeouts": Timeouts(ack=WAIT)}
    alert = "certificate required" if cert == "none" else None
    if kind == "sync":
        err = _sync_refused(mtls_peer, **options)
        if alert is not None:
            assert alert in str(err).lower(), f"unclear error: {err!r}"
    else:
        _buffered_refused(mtls_peer, alert, ack=True, **options)
    assert_nothing_arrived(mtls_peer, **tls_options(pki, client_cert=True))


def test_mutual_tls_without_client_cert_buffered_never_counts_sent(
    mtls_peer: NodePeer, pki: Pki
) -> None:
    """Without acks (TLS 1.3) the client cannot tell at write time that the server refused
    it, but it must not count the records as sent."""
    mtls_peer.clear()
    client = make_client("buffered", mtls_peer, **tls_options(pki))
    n = 9
    try:
        for tag, when, record in make_posts(n, seed=61):
            assert client.post(tag, record, time=when) is True
        client.flush(timeout=WAIT)
        report = client.shutdown(timeout=2.0)
    finally:
        client.close()
    assert report.sent == 0, report
    assert report.possibly_lost + report.unsent_records == n, report
    assert_nothing_arrived(mtls_peer, **tls_options(pki, client_cert=True))


@pytest.mark.parametrize("kind", KINDS)
def test_mutual_tls12_without_client_cert_fails_to_connect(
    mtls12_peer: NodePeer, pki: Pki, kind: str
) -> None:
    """TLS 1.2: the refusal is part of the handshake, so it fails even without acks."""
    if kind == "sync":
        err = _sync_refused(mtls12_peer, **tls_options(pki))
        assert "tls" in str(err).lower() and "handshake" in str(err).lower(), repr(err)
    else:
        refusal = _buffered_refused(mtls12_peer, "handshake", **tls_options(pki))
        assert refusal.stats.connects == 0, refusal.stats
    assert_nothing_arrived(mtls12_peer, **tls_options(pki, client_cert=True))


# -- 5. TLS + handshake + acks together -----------------------------------------------------------


@pytest.mark.parametrize("compress", [None, "gzip"])
@pytest.mark.parametrize("kind", KINDS)
def test_tls_handshake_and_acks_together(
    secure_peer: NodePeer, pki: Pki, kind: str, compress: str | None
) -> None:
    posts = make_posts(150, seed=71)
    extra = {"buffering": Buffering(max_frame_size=8192)} if kind == "buffered" else {}
    client = make_client(
        kind, secure_peer, require_ack=True, timeouts=Timeouts(ack=WAIT), compress=compress,
        **tls_options(pki), **auth_options(password=USERS["alice"]), **extra,
    )
    got = deliver(secure_peer, client, posts, ack=True)
    assert_exact(posts, got.events)
    assert got.stats.sent == len(posts), got.stats
    (server,) = got.stats.servers
    assert server.connects == 1 and server.failures == 0, got.stats
    assert server.acked_frames == server.frames_sent > 0, got.stats
    assert_clean_report(got.report, len(posts) + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_tls_with_wrong_shared_key_is_refused(secure_peer: NodePeer, pki: Pki, kind: str) -> None:
    options = {**tls_options(pki), **auth_options(password=USERS["alice"],
                                                  shared_key="not the shared key")}
    if kind == "sync":
        secure_peer.clear()
        client = make_client("sync", secure_peer, require_ack=True, **options)
        try:
            with pytest.raises(AuthenticationError) as info:
                client.post("auth.refused", {"n": 1}, ack=True)
        finally:
            client.close()
        assert "shared key mismatch" in str(info.value), repr(info.value)
    else:
        secure_peer.clear()
        refusal = refused_buffered(
            secure_peer, lambda stats, errors: bool(errors), ack=True, **options
        )
        assert any(isinstance(e, AuthenticationError) for e, _ in refusal.errors), refusal.errors
        assert_buffered_sent_nothing(refusal)
    assert_nothing_arrived(
        secure_peer, **tls_options(pki), **auth_options(password=USERS["alice"])
    )


# -- 6. gzip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ack", [False, True], ids=["no_ack", "ack"])
@pytest.mark.parametrize("kind", KINDS)
def test_gzip_records_arrive(plain_peer: NodePeer, kind: str, ack: bool) -> None:
    posts = make_posts(120, pad=60, seed=81)  # about 700 bytes each, very compressible
    raw_size = sum(len(msgpack.packb(record)) for _, _, record in posts)
    extra = {"buffering": Buffering(max_frame_size=16 * 1024)} if kind == "buffered" else {}
    client = make_client(
        kind, plain_peer, compress="gzip", require_ack=ack, timeouts=Timeouts(ack=WAIT), **extra
    )
    got = deliver(plain_peer, client, posts, ack=ack)
    assert_exact(posts, got.events)
    if kind == "buffered":
        # Proof that the frames were compressed: far fewer bytes went out than the records
        # hold (FluentServer would accept uncompressed frames just as well).
        assert got.stats.bytes_sent < raw_size / 3, (got.stats.bytes_sent, raw_size)
        assert got.stats.frames_sent > 1, got.stats
    else:
        # One record per frame compresses less, but the padding alone is ~600 bytes of
        # repetition per record.
        assert got.stats.bytes_sent < raw_size * 0.6, (got.stats.bytes_sent, raw_size)
    if ack:
        assert got.stats.sent == len(posts), got.stats
    assert_clean_report(got.report, len(posts) + 1)
