"""Client options from environment variables, for twelve-factor style deployments.

``options_from_env()`` reads ``FLUENT_HOST``, ``FLUENT_PORT`` and the rest (the names after
the prefix are the keys of :data:`VARIABLES`) and returns keyword arguments for
:class:`BufferedClient` or :class:`SyncClient`, the TLS and handshake settings as ``tls``
(a :class:`Tls`, or a flag) and ``auth`` (an :class:`Auth`). Only variables that are set
appear in the result, so the clients' own defaults still apply to the rest. A variable
set to the empty string counts as unset, because container tooling often cannot unset a
variable, only blank it. A value the client could not use raises
:class:`ConfigurationError` naming the variable, here, rather than an error about a
keyword argument later.

This module imports nothing from the clients, so they can call it without an import cycle.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Callable

from ._transport._pool import Server
from .errors import ConfigurationError
from .message import MAX_TAG_LENGTH, TAG_PATTERN
from .options import Auth, Tls

__all__ = ["options_from_env", "VARIABLES"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# The client's tag rule, checked here too so that the error names the variable.
_PORT = re.compile(r"[0-9]{1,10}")
# Secrets are taken exactly as given; other values lose surrounding whitespace.
_SECRETS = frozenset({"SHARED_KEY", "USERNAME", "PASSWORD"})


def parse_bool(value: str, variable: str) -> bool:
    word = value.lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigurationError(
        f"expected true/false, yes/no, on/off or 1/0, got {value!r}", variable=variable
    )


def _is_port(text: str) -> bool:
    return _PORT.fullmatch(text) is not None and 1 <= int(text) <= 65535


def parse_port(value: str, variable: str) -> int:
    if not _is_port(value):
        raise ConfigurationError(
            f"expected a port number from 1 to 65535, got {value!r}", variable=variable
        )
    return int(value)


def parse_servers(value: str, variable: str) -> list[Server]:
    """A comma-separated list of the forms :meth:`Server.parse` takes from a string."""
    servers = []
    for item in value.split(","):
        spec = item.strip()
        if spec:
            servers.append(_server(spec, variable))
    if not servers:
        raise ConfigurationError("names no server", variable=variable)
    return servers


def _server(spec: str, variable: str) -> Server:
    """The string forms of :meth:`Server.parse`, checked more strictly than it does."""
    if spec.startswith("unix://"):
        if len(spec) > len("unix://"):
            return Server(unix_path=spec[len("unix://"):])
    else:
        host, port = _split_port(spec)
        # A bare IPv6 address would split at its last colon: it must be bracketed.
        bracketed = len(host) > 2 and host[0] == "[" and host[-1] == "]"
        host_ok = bracketed or (host != "" and not any(c in host for c in ":[]"))
        if host_ok and (port is None or _is_port(port)):
            name = host[1:-1] if bracketed else host
            return Server(name) if port is None else Server(name, int(port))
    raise ConfigurationError(
        f"{spec!r} is not host, host:port, [v6addr]:port or unix:///path", variable=variable
    )


def _split_port(spec: str) -> tuple[str, str | None]:
    if spec.endswith("]"):
        return spec, None
    host, sep, port = spec.rpartition(":")
    return (host, port) if sep else (spec, None)


def check_tag(value: str, variable: str) -> str:
    """``value`` if it is a valid tag (or tag prefix), else a ConfigurationError."""
    if len(value) > MAX_TAG_LENGTH or not TAG_PATTERN.match(value):
        raise ConfigurationError(
            f"{value!r} is not dot-separated parts of letters, digits, '_' and '-'",
            variable=variable,
        )
    return value


def _compress(value: str, variable: str) -> str | None:
    word = value.lower()
    if word == "gzip":
        return "gzip"
    if word == "none":
        return None
    raise ConfigurationError(f"expected gzip or none, got {value!r}", variable=variable)


def _pem_file(value: str, variable: str) -> str:
    # Checked now: the ssl module's own error would name neither the variable nor the file.
    if not os.path.isfile(value):
        raise ConfigurationError(f"no such file: {value!r}", variable=variable)
    return value


def _text(value: str, variable: str) -> str:
    return value


# Each variable, by its name after the prefix: where its value goes (a client keyword,
# or ``keyword.field`` of the option object that keyword takes) and its parser.
_PARSERS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "HOST": ("host", _text),
    "PORT": ("port", parse_port),
    "UNIX_PATH": ("unix_path", _text),
    "SERVERS": ("servers", parse_servers),
    "TAG_PREFIX": ("tag_prefix", check_tag),
    "SHARED_KEY": ("auth.shared_key", _text),
    "USERNAME": ("auth.username", _text),
    "PASSWORD": ("auth.password", _text),
    "TLS": ("tls", parse_bool),
    "TLS_CA_FILE": ("tls.ca_file", _pem_file),
    "TLS_CERT_FILE": ("tls.cert_file", _pem_file),
    "TLS_KEY_FILE": ("tls.key_file", _pem_file),
    "TLS_VERIFY": ("tls.verify", parse_bool),
    "TLS_SERVER_NAME": ("tls.server_name", _text),
    "REQUIRE_ACK": ("require_ack", parse_bool),
    "COMPRESS": ("compress", _compress),
}
# Variable name after the prefix -> where its value goes.
VARIABLES: Mapping[str, str] = {suffix: place for suffix, (place, _) in _PARSERS.items()}


def options_from_env(
    environ: Mapping[str, str] | None = None, *, prefix: str = "FLUENT_"
) -> dict[str, Any]:
    """Keyword arguments for BufferedClient/SyncClient from ``environ`` (default: os.environ).

    Raises :class:`ConfigurationError` (a ``ValueError``) naming the variable whose value
    cannot be used, or the variables that contradict each other.
    """
    env = os.environ if environ is None else environ
    options: dict[str, Any] = {}
    fields: dict[str, dict[str, Any]] = {"tls": {}, "auth": {}}
    given: list[str] = []
    for suffix, (place, parse) in _PARSERS.items():
        variable = prefix + suffix
        value = env.get(variable, "")
        if suffix not in _SECRETS:
            value = value.strip()
        if value == "":
            continue
        keyword, _, field = place.partition(".")
        if field:
            fields[keyword][field] = parse(value, variable)
        else:
            options[keyword] = parse(value, variable)
        given.append(suffix)
    _check_together(given, prefix)
    if fields["auth"]:
        options["auth"] = Auth(**fields["auth"])
    # As with the files given to a client: a CA or a certificate turns TLS on.
    tls = fields["tls"]
    if options.get("tls") or "ca_file" in tls or "cert_file" in tls:
        options["tls"] = Tls(**tls)
    return options


# Pairs that cannot both be set: the client would silently use one and ignore the other.
_EXCLUSIVE = (
    ("SERVERS", "HOST"), ("SERVERS", "PORT"), ("SERVERS", "UNIX_PATH"),
    ("UNIX_PATH", "HOST"), ("UNIX_PATH", "PORT"),
)
# A variable that means nothing without another one.
_NEEDS = (
    ("PASSWORD", "USERNAME", "a password needs a user name"),
    ("USERNAME", "SHARED_KEY", "user authentication needs the shared key: the handshake "
     "carries both"),
    ("TLS_KEY_FILE", "TLS_CERT_FILE", "a key file needs its client certificate"),
)


def _check_together(given: list[str], prefix: str) -> None:
    for first, second in _EXCLUSIVE:
        if first in given and second in given:
            raise ConfigurationError(
                f"set either {prefix}{first} or {prefix}{second}, not both",
                variable=prefix + second,
            )
    for suffix, needed, why in _NEEDS:
        if suffix in given and needed not in given:
            raise ConfigurationError(f"{why} ({prefix}{needed})", variable=prefix + suffix)
