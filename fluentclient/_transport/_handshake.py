"""The forward protocol's handshake (HELO, PING, PONG) as pure functions, for both sides.

No I/O here: the connection reads and writes, these functions build and check messages.
Servers differ in how they pack HELO (fluentd: ``bin`` nonce and auth; fluent-bit: ``str``
holding raw bytes), so every digest is computed over exactly the bytes received.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgpack

from ..errors import AuthenticationError
from ..message import peer_text, short_repr


@dataclass(frozen=True)
class Helo:
    """What the server's HELO offered: the raw nonce and auth salt, and keepalive."""

    nonce: bytes
    auth: bytes  # empty: the server asks for no user authentication
    keepalive: bool


def _raw(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # Decoded with surrogateescape: this gives back exactly the bytes on the wire.
        return value.encode("utf-8", "surrogateescape")
    raise AuthenticationError(f"HELO {what} must be bin or str, not {type(value).__name__}")


def _wire(text: str) -> bytes:
    """The bytes a str stands for: decoded with surrogateescape, so raw bytes come back."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # A lone surrogate that no decoder made: hash it as-is rather than fail.
        return text.encode("utf-8", "surrogatepass")


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha512()
    for part in parts:
        h.update(part if isinstance(part, bytes) else _wire(part))
    return h.hexdigest()


def _same(received: str, expected: str) -> bool:
    """Digest comparison in constant time (the expected value is lowercase hex)."""
    return hmac.compare_digest(_wire(received), expected.encode("ascii"))


def parse_helo(obj: Any) -> Helo:
    """Check a decoded HELO and keep the exact bytes of its nonce and auth salt.

    Both ``bin`` (fluentd) and ``str`` (fluent-bit, raw bytes decoded with
    surrogateescape) are accepted; a missing ``keepalive`` means true.
    """
    if (
        not isinstance(obj, list) or len(obj) != 2 or obj[0] != "HELO"
        or not isinstance(obj[1], dict)
    ):
        raise AuthenticationError(f"expected HELO from the server, got {short_repr(obj, 80)}")
    options = obj[1]
    if "nonce" not in options:
        raise AuthenticationError("the server's HELO has no nonce")
    keepalive = options.get("keepalive", True)
    return Helo(
        nonce=_raw(options["nonce"], "nonce"),
        auth=_raw(options.get("auth", b""), "auth"),
        keepalive=keepalive is not False,
    )


def new_salt() -> str:
    """A fresh salt for one PING: 32 lowercase hex characters."""
    return os.urandom(16).hex()


def build_ping(
    helo: Helo, *, self_hostname: str, shared_key: str, salt: str,
    username: str = "", password: str = "",
) -> bytes:
    """The packed PING: six ``str`` elements, the user fields empty when HELO auth is."""
    digest = _digest(salt, self_hostname, helo.nonce, shared_key)
    if helo.auth:
        user, password_digest = username, _digest(helo.auth, username, password)
    else:
        user, password_digest = "", ""
    packed: bytes = msgpack.packb(
        ["PING", self_hostname, salt, digest, user, password_digest], use_bin_type=True
    )
    return packed


def check_pong(obj: Any, *, helo: Helo, salt: str, shared_key: str, self_hostname: str) -> str:
    """The server's hostname, once its PONG proves it knows the shared key."""
    if not isinstance(obj, list) or len(obj) != 5 or obj[0] != "PONG":
        raise AuthenticationError(f"expected PONG from the server, got {short_repr(obj, 80)}")
    _, ok, reason, server_hostname, digest = obj
    if ok is not True:
        if not reason:
            reason = "no reason given"
        why = peer_text(reason) if isinstance(reason, str) else short_repr(reason, 80)
        raise AuthenticationError(f"the server refused us: {why}")
    if not isinstance(server_hostname, str) or not isinstance(digest, str):
        raise AuthenticationError("malformed PONG")
    if server_hostname == self_hostname:
        raise AuthenticationError(
            f"the server has our own hostname {self_hostname!r}: set self_hostname"
        )
    if not _same(digest, _digest(salt, server_hostname, helo.nonce, shared_key)):
        raise AuthenticationError("the server's PONG digest is wrong: it does not know the key")
    return server_hostname


# -- the server's side ------------------------------------------------------------------

def build_helo(nonce: bytes, auth: bytes, keepalive: bool = True, *, as_str: bool = False) -> bytes:
    """The packed HELO, fluentd style (``bin``, keepalive always given) or, with ``as_str``,
    fluent-bit style (``str`` holding the raw bytes, no keepalive key unless it is false).
    """
    options: dict[str, Any] = {
        "nonce": nonce.decode("utf-8", "surrogateescape") if as_str else nonce,
        "auth": auth.decode("utf-8", "surrogateescape") if as_str else auth,
    }
    if not as_str or not keepalive:
        options["keepalive"] = keepalive
    packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape")
    packed: bytes = packer.pack(["HELO", options])
    return packed


def check_ping(
    obj: Any, *, nonce: bytes, auth: bytes, shared_key: str,
    users: Mapping[str, str] | None, server_hostname: str,
) -> tuple[bool, str, bytes]:
    """(accepted, reason, the PONG to send); never raises, whatever ``obj`` is.

    The checks follow fluentd: the PING's shape, the hostname, the shared key digest,
    then, when ``users`` is given, the user and its password digest over ``auth``.
    """
    def pong(ok: bool, reason: str, digest: str = "") -> tuple[bool, str, bytes]:
        packed: bytes = msgpack.packb(
            ["PONG", ok, reason, server_hostname if ok else "", digest], use_bin_type=True
        )
        return ok, reason, packed

    if not isinstance(obj, list) or len(obj) != 6 or obj[0] != "PING" or not all(
        isinstance(x, str) for x in obj
    ):
        return pong(False, "invalid ping message")
    _, client_hostname, salt, digest, username, password_digest = obj
    if client_hostname == server_hostname:
        return pong(False, "same hostname between input and output: invalid configuration")
    if not _same(digest, _digest(salt, client_hostname, nonce, shared_key)):
        return pong(False, "shared_key mismatch")
    if users:
        password = users.get(username)
        if password is None or not _same(password_digest, _digest(auth, username, password)):
            return pong(False, "username/password mismatch")
    return pong(True, "", _digest(salt, server_hostname, nonce, shared_key))
