"""fluentclient: ship structured events to Fluentd and Fluent Bit over the forward protocol."""

from ._accel import COMPILED
from ._lifetime._signals import shutdown_on_signal
from ._transport._pool import Server
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
from .options import Auth, Buffering, RecordRules, Timeouts, Tls
from .server import ForwardServer
from .stats import JournalStats, ServerStats, ShutdownReport, Stats, UnsentRecord

__all__ = [
    "COMPILED",
    "Auth",
    "Buffering",
    "RecordRules",
    "Timeouts",
    "Tls",
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
    "ForwardServer",
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

# COMPILED: True when records are packed by the compiled packer (built by pip install where
# a C compiler is found), False on the pure-Python path, which behaves identically. Set
# FLUENTCLIENT_NO_EXTENSIONS=1 to run pure Python. `fluentclient --version` says which.
