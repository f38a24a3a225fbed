"""The clients' grouped settings: frozen values, each checked where it is made.

``BufferedClient(tls=Tls(ca_file="ca.pem"), timeouts=Timeouts(connect=2))``: a bad value
raises :class:`ConfigurationError` (a ValueError) naming the field, before any client
exists. Every field has the default the client used to have; docs/migration.md maps the
old keyword arguments to these fields.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Union

from .errors import ConfigurationError
from .framing import Default
from .guard import DEFAULT_MAX_DEPTH, RecordGuard

__all__ = ["OVERFLOW_POLICIES", "Auth", "Buffering", "RecordRules", "Timeouts", "Tls"]

MiB = 1024 * 1024
# What a BufferedClient does with a record that finds its buffer full (docs/guarantees.md).
OVERFLOW_POLICIES = ("drop_newest", "drop_oldest", "block", "raise")

def _fail(owner: object, field: str, message: str) -> ConfigurationError:
    return ConfigurationError(message, variable=f"{type(owner).__name__}.{field}")


def _number(owner: object, field: str, value: object, *, zero_ok: bool = False) -> None:
    """``value`` must be a real number of seconds or bytes, positive (or zero if allowed)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not (value >= 0 if zero_ok else value > 0):  # type: ignore[operator]
        wanted = "not negative" if zero_ok else "positive"
        raise _fail(owner, field, f"must be a {wanted} number, got {value!r}")


def _flag(owner: object, field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _fail(owner, field, f"must be True or False, got {value!r}")


def _text(owner: object, field: str, value: object, *, optional: bool = True) -> None:
    if not (isinstance(value, str) or (optional and value is None)):
        raise _fail(owner, field, f"must be a str{' or None' if optional else ''}, "
                                  f"got {type(value).__name__}")


def _path(owner: object, field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _fail(owner, field, f"must be a path or None, got {type(value).__name__}")
    return os.fspath(value)


@dataclass(frozen=True)
class Tls:
    """TLS to the server: your own ``context``, or one made from the files (verifying the
    server against ``ca_file``, else the system's CAs, unless ``verify=False``).
    ``tls=True`` on a client means ``Tls()``."""

    context: ssl.SSLContext | None = None
    ca_file: str | os.PathLike[str] | None = None
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    verify: bool = True
    server_name: str | None = None

    def __post_init__(self) -> None:
        if self.context is not None and not isinstance(self.context, ssl.SSLContext):
            raise _fail(self, "context", f"must be an ssl.SSLContext or None, "
                                         f"got {type(self.context).__name__}")
        for field in ("ca_file", "cert_file", "key_file"):
            # Settled to str: the ssl module wants a str, and a frozen object keeps it.
            object.__setattr__(self, field, _path(self, field, getattr(self, field)))
        _flag(self, "verify", self.verify)
        _text(self, "server_name", self.server_name)
        if self.key_file is not None and self.cert_file is None:
            raise _fail(self, "key_file", "a key file needs its cert_file")
        if self.context is not None:
            # The context carries its own CAs, certificate and verification: a file or
            # verify=False next to it would be silently ignored.
            for field in ("ca_file", "cert_file"):
                if getattr(self, field) is not None:
                    raise _fail(self, field, "give either context or the files, not both")
            if not self.verify:
                raise _fail(self, "verify", "set verification on the context itself")

    def ssl_context(self) -> ssl.SSLContext:
        """The given context, or a new one made from the files."""
        if self.context is not None:
            return self.context
        context = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


@dataclass(frozen=True)
class Auth:
    """The forward protocol's handshake: the ``shared_key`` both sides know, and a user
    when the server asks for one. ``self_hostname`` defaults to this host's name."""

    shared_key: str | None = None
    self_hostname: str | None = None
    username: str = ""
    password: str = ""

    def __post_init__(self) -> None:
        _text(self, "shared_key", self.shared_key)
        _text(self, "self_hostname", self.self_hostname)
        _text(self, "username", self.username, optional=False)
        _text(self, "password", self.password, optional=False)
        if self.password and not self.username:
            raise _fail(self, "password", "a password needs a username")
        if self.username and self.shared_key is None:
            # The handshake carries both: without a key there is no handshake at all.
            raise _fail(self, "username", "user authentication needs the shared_key")


@dataclass(frozen=True)
class Timeouts:
    """Seconds to wait: to connect, for a write, for an ack (resent at most
    ``ack_retries`` times, BufferedClient only); ``idle``: reconnect rather than reuse a
    connection unused that long (None: reuse it whatever its age)."""

    connect: float = 5.0
    write: float = 5.0
    ack: float = 60.0
    idle: float | None = None
    ack_retries: int = 8

    def __post_init__(self) -> None:
        for field in ("connect", "write", "ack"):
            _number(self, field, getattr(self, field))
        if self.idle is not None:
            _number(self, "idle", self.idle)
        if type(self.ack_retries) is not int or self.ack_retries < 0:
            raise _fail(self, "ack_retries", f"must be an int not negative, "
                                             f"got {self.ack_retries!r}")


@dataclass(frozen=True)
class Buffering:
    """What a BufferedClient holds and when it writes: at most ``limit`` bytes, written
    once ``write_threshold`` bytes wait or ``flush_interval`` seconds passed, in frames of
    at most ``max_frame_size``; ``overflow`` says what a full buffer does (one of
    :data:`OVERFLOW_POLICIES`). ``spool_dir`` keeps unsent records on disk, at most
    ``spool_limit`` bytes (None: four times ``limit``, at least 16 MiB)."""

    limit: int = 8 * MiB
    write_threshold: int = 8 * 1024
    flush_interval: float = 0.1
    max_frame_size: int = MiB
    overflow: str = "drop_newest"
    overflow_timeout: float = 1.0
    spool_dir: str | os.PathLike[str] | None = None
    spool_limit: int | None = None

    def __post_init__(self) -> None:
        for field in ("limit", "write_threshold", "max_frame_size"):
            value = getattr(self, field)
            if type(value) is not int:
                raise _fail(self, field, f"must be an int number of bytes, got {value!r}")
        if not 1024 <= self.max_frame_size <= 6_000_000:
            # fluent-bit drops connections carrying frames over 6,144,000 bytes.
            raise _fail(self, "max_frame_size", "must be between 1 KiB and 6,000,000 bytes")
        if self.limit < 1024:
            raise _fail(self, "limit", "must be at least 1 KiB")
        _number(self, "write_threshold", self.write_threshold)
        _number(self, "flush_interval", self.flush_interval)
        if self.overflow not in OVERFLOW_POLICIES:
            raise _fail(self, "overflow", f"must be one of {', '.join(OVERFLOW_POLICIES)}, "
                                          f"got {self.overflow!r}")
        _number(self, "overflow_timeout", self.overflow_timeout, zero_ok=True)
        object.__setattr__(self, "spool_dir", _path(self, "spool_dir", self.spool_dir))
        if self.spool_limit is not None and (
            type(self.spool_limit) is not int or self.spool_limit < 2 * self.limit
        ):
            raise _fail(self, "spool_limit", "must be an int at least twice limit")

    @property
    def frame_limit(self) -> int:
        """The largest frame: ``max_frame_size``, never more than the whole buffer."""
        return min(self.max_frame_size, self.limit)

    @property
    def spool_bytes(self) -> int:
        """``spool_limit``, or what None stands for."""
        if self.spool_limit is not None:
            return self.spool_limit
        return max(4 * self.limit, 16 * MiB)


@dataclass(frozen=True)
class RecordRules:
    """How a record becomes bytes: ``default`` converts values msgpack cannot pack; the
    guard's rules (see fluentclient.guard) say what happens to deep nesting, keys that are
    not str, NaN and infinities, bytes that are not UTF-8; ``int_time`` sends whole
    seconds; ``entries_as_str`` sends entries for servers that want them as str."""

    default: Default = None
    max_depth: int = DEFAULT_MAX_DEPTH
    non_str_keys: str = "str"
    non_finite_floats: str = "null"
    non_utf8_bytes: str = "str"
    int_time: bool = False
    entries_as_str: bool = False

    def __post_init__(self) -> None:
        if self.default is not None and not callable(self.default):
            raise _fail(self, "default", "must be a callable or None")
        _flag(self, "int_time", self.int_time)
        _flag(self, "entries_as_str", self.entries_as_str)
        # The guard owns the rules: each is tried alone, so the error names its field.
        rules: dict[str, object] = {
            "max_depth": self.max_depth, "non_str_keys": self.non_str_keys,
            "non_finite_floats": self.non_finite_floats, "non_utf8_bytes": self.non_utf8_bytes,
        }
        for field, value in rules.items():
            try:
                RecordGuard(**{field: value})  # type: ignore[arg-type]
            except (ValueError, TypeError) as err:
                # The guard's words begin with the field's name, which the error now leads with.
                words = str(err).removeprefix(f"{field} ")
                raise _fail(self, field, f"{words}, got {value!r}") from None


# What the clients accept for ``tls``: True for ``Tls()``, or the object.
TlsSetting = Union[bool, Tls, None]
