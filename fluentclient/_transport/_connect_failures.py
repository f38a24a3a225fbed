"""What a failed connect says: TLS and name lookup failures, worded as cause and cure.

A mismatch that retrying cannot fix (no TLS on one side, a refused certificate, a name
that does not exist) is worded as a setting to change, so the writer can say it once,
loudly, rather than retry quietly.
"""

from __future__ import annotations

import socket
import ssl

from ..errors import FluentConnectionError, FluentError, FluentTimeoutError, TlsError

# TLS failures that say the connection broke, not that the two sides disagree: they may
# pass by themselves (a server restarting mid-handshake).
_TLS_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def tls_failure(where: str, exc: ssl.SSLError) -> FluentConnectionError:
    """The error a failed TLS handshake raises: TlsError when retrying cannot fix it."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsError(
            f"TLS with {where} failed: certificate verify failed: "
            f"{exc.verify_message} ({exc.reason})"
        )
    if isinstance(exc, _TLS_TRANSIENT):
        return FluentConnectionError(f"TLS with {where} failed: {exc.reason or exc}")
    # An alert from the server (it refused our certificate, or none was given), or no
    # common protocol version or cipher: configuration, like a refused key.
    reason = str(exc.reason or exc)
    _, alert, name = reason.partition("ALERT_")
    if alert:
        # OpenSSL names alerts like TLSV13_ALERT_CERTIFICATE_REQUIRED: say it in words.
        return TlsError(f"TLS with {where} failed: the server sent the alert "
                        f"'{name.replace('_', ' ').lower()}' ({reason})")
    return TlsError(f"TLS with {where} failed: {reason}")


# What OpenSSL says when the bytes it got back are not TLS at all: the port speaks
# something else (the plain forward protocol answering with msgpack, HTTP, ...).
_NOT_TLS_REASONS = frozenset({
    "WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL", "UNEXPECTED_RECORD",
})
# Where to change TLS, said once for every message that points at it.
SET_TLS_OFF = "set tls=False (FLUENT_TLS=false), or point at the server's TLS port"


def handshake_cut(where: str, exc: OSError) -> TlsError:
    """The server ended the connection while our TLS handshake was under way.

    A plain forward server does so every time: it reads our ClientHello as a broken frame
    and closes (fluentd resets, Fluent Bit and ForwardServer close). A server restarting
    at that very moment would look the same, but that is rare, while the mismatch repeats
    on every attempt: so it is reported as configuration, loudly and once, and retried
    only at the backoff's slowest pace.
    """
    how = "reset" if isinstance(exc, ConnectionResetError) else "closed"
    cause = getattr(exc, "reason", None) or exc.strerror or type(exc).__name__
    return TlsError(f"TLS with {where} failed: the server {how} the connection during the "
                    f"TLS handshake ({cause}): it probably does not speak TLS; {SET_TLS_OFF}")


def not_tls_answer(where: str, exc: ssl.SSLError) -> TlsError | None:
    """The server answered our handshake with bytes that are not TLS, or None."""
    if str(exc.reason) not in _NOT_TLS_REASONS:
        return None
    return TlsError(f"TLS with {where} failed: the server answered the TLS handshake with "
                    f"something that is not TLS ({exc.reason}): it does not speak TLS on "
                    f"this port; {SET_TLS_OFF}")


def unresolved(where: str, host: str, exc: socket.gaierror) -> FluentConnectionError:
    # Raised "from exc": the writer finds the resolver's answer in the cause (see
    # _sender.is_unresolvable) and says it once, at error level, as a wrong setting.
    if exc.errno in _NO_SUCH_NAME:
        return FluentConnectionError(
            f"cannot connect to {where}: the host name {host!r} does not resolve "
            f"({exc.strerror}); check the host setting (host=, servers= or FLUENT_HOST)")
    return FluentConnectionError(
        f"cannot connect to {where}: looking up the host name {host!r} failed "
        f"({exc.strerror})")


# The resolver's answers for a name that does not exist, as against one it could not
# look up just now (EAI_AGAIN) or another failure.
_NO_SUCH_NAME = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)


def connect_failure(where: str, host: str, exc: OSError) -> FluentError:
    """The error a connect raises when a socket call failed with ``exc``."""
    if isinstance(exc, socket.timeout):
        return FluentTimeoutError(f"connecting to {where} timed out")
    if isinstance(exc, socket.gaierror):
        return unresolved(where, host, exc)
    if isinstance(exc, ssl.SSLError):
        return tls_failure(where, exc)
    return FluentConnectionError(f"cannot connect to {where}: {exc.strerror or exc}")


def tls_start_failure(where: str, exc: OSError) -> FluentError | None:
    """The error a failed TLS handshake raises, or None when ``exc`` is not about TLS."""
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError,
                        ConnectionAbortedError, BrokenPipeError)):
        return handshake_cut(where, exc)
    if isinstance(exc, socket.timeout):
        return FluentTimeoutError(
            f"TLS with {where} failed: no answer to the TLS handshake in time; "
            "if the server does not speak TLS, " + SET_TLS_OFF)
    if isinstance(exc, ssl.SSLError):
        return not_tls_answer(where, exc) or tls_failure(where, exc)
    return None
