"""The one exception hierarchy of fluentclient.

Every error the library raises derives from :class:`FluentError` and, where a builtin
means the same thing, from that builtin too, so ``except ValueError`` keeps working for
callers who do not know about this library.
"""

from __future__ import annotations

__all__ = [
    "FluentError",
    "InvalidTagError",
    "InvalidTimeError",
    "SerializationError",
    "UnsafeRecordError",
    "RecordTooLargeError",
    "BufferFullError",
    "ClientClosedError",
    "FluentTimeoutError",
    "FluentConnectionError",
    "AuthenticationError",
    "TlsError",
    "DeliveryError",
    "ConfigurationError",
]


class FluentError(Exception):
    """Base class of every error raised by fluentclient."""


class InvalidTagError(FluentError, ValueError):
    """The tag is not a non-empty dot-separated string of ``[A-Za-z0-9_-]`` parts."""


class InvalidTimeError(FluentError, ValueError):
    """The event time cannot be sent as a forward-protocol EventTime."""


class SerializationError(FluentError, TypeError):
    """The record is not a mapping, or msgpack cannot serialize something inside it."""


class UnsafeRecordError(SerializationError, ValueError):
    """msgpack can pack the record, but real servers would lose it or more with it.

    Nested deeper than ``max_depth``, a non-str key under ``non_str_keys="refuse"`` (or
    one with no str form), a NaN or infinity under ``non_finite_floats="refuse"``.
    """


class RecordTooLargeError(FluentError, ValueError):
    """One serialized record does not fit in a frame of ``max_frame_size`` bytes."""


class BufferFullError(FluentError, BufferError):
    """The buffer (with what waits to enter it) has reached ``Buffering.limit``."""


class ClientClosedError(FluentError, RuntimeError):
    """The client is shutting down or closed and takes no new records."""


class FluentTimeoutError(FluentError, TimeoutError):
    """A wait with a deadline (``sync_append``, ``flush``, the sync client's I/O) ran out."""


class FluentConnectionError(FluentError, ConnectionError):
    """Connecting to or sending to the server failed."""


class AuthenticationError(FluentConnectionError, PermissionError):
    """The server refused our shared key or user, or could not prove it knows the key."""


class TlsError(FluentConnectionError):
    """The TLS handshake failed for a reason that trying again will not fix: the server's
    certificate did not verify (unknown CA, wrong name, expired), the server refused ours,
    or the two sides share no protocol version or cipher."""


class DeliveryError(FluentError):
    """A record was given up: the server never acknowledged it within the retry limit."""


class PossiblyLostError(DeliveryError):
    """A record was given up after its bytes had left this process: the server may hold
    it, or may not, and no ack will tell. Counted in ``stats().possibly_lost``, never as
    dropped."""


class ConfigurationError(FluentError, ValueError):
    """A setting (an environment variable, say) has a value the client cannot use.

    ``variable`` names the setting when there is one, so the message can point at it.
    """

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(f"{variable}: {message}" if variable else message)
        self.variable = variable
