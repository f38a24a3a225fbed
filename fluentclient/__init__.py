"""fluentclient: ship structured events to Fluentd and Fluent Bit over the forward protocol."""

from ._pool import Server
from ._signals import shutdown_on_signal
from .backoff import Backoff
from .client import BufferedClient, SyncClient
from .errors import (
    AuthenticationError,
    BufferFullError,
    ClientClosedError,
    ConfigurationError,
    DeliveryError,
    FluentConnectionError,
    FluentError,
    FluentTimeoutError,
    InvalidTagError,
    InvalidTimeError,
    PossiblyLostError,
    RecordTooLargeError,
    SerializationError,
    TlsError,
    UnsafeRecordError,
)
from .message import EventTime, Message
from .stats import JournalStats, ServerStats, ShutdownReport, Stats, UnsentRecord

__all__ = [
    "AuthenticationError",
    "DeliveryError",
    "PossiblyLostError",
    "Server",
    "TlsError",
    "ServerStats",
    "Backoff",
    "BufferFullError",
    "BufferedClient",
    "ClientClosedError",
    "ConfigurationError",
    "EventTime",
    "FluentConnectionError",
    "FluentError",
    "FluentTimeoutError",
    "InvalidTagError",
    "InvalidTimeError",
    "JournalStats",
    "Message",
    "RecordTooLargeError",
    "SerializationError",
    "UnsafeRecordError",
    "ShutdownReport",
    "shutdown_on_signal",
    "Stats",
    "SyncClient",
    "UnsentRecord",
]

__version__ = "0.1.0"
