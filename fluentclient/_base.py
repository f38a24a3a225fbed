"""What both clients share: the tag check, the (tag, time) prelude of post(), and the
base class with the common settings, configuration from the environment and ``with``
blocks."""

from __future__ import annotations

import time as _time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from ._moved import refuse_moved
from ._options import TransportOptions, checked_rules, security_from, servers_from
from ._transport._pool import ServerSpec
from .backoff import Backoff
from .config import options_from_env
from .errors import InvalidTagError, SerializationError
from .message import MAX_TAG_LENGTH, TAG_PATTERN, TimeLike, short_repr, time_to_ns
from .options import Auth, RecordRules, Timeouts, TlsSetting
from .stats import ShutdownReport

_C = TypeVar("_C", bound="Client")

# Tags remembered at most: a client fed endless distinct tags must not grow without end.
_TAG_CACHE = 10_000
_time_ns = _time.time_ns

ADDRESS_OPTIONS = ("host", "port", "unix_path", "servers")


def not_a_mapping(record: object) -> SerializationError:
    """The error post() raises for a record that is not a Mapping (a str, a list, None).

    post() looks with ``type(record) is not dict and not isinstance(record, Mapping)``:
    the exact-dict test costs one pointer comparison, and only other types pay for the
    isinstance. Refused at the call, like a bad tag: queued, such a record could only be
    dropped later, on the reader thread, far from the mistake.
    """
    return SerializationError(
        f"a record must be a mapping of field names to values, not "
        f"{type(record).__name__} ({short_repr(record, 40)}); to send text, post a dict "
        f'such as {{"message": ...}}'
    )


class TagChecker:
    """Validates tags once and remembers the good ones, so post() pays a dict lookup."""

    __slots__ = ("_prefix", "known")

    def __init__(self, prefix: str | None) -> None:
        if prefix is not None:
            prefix = self._check(prefix, "tag_prefix")
        self._prefix = prefix
        self.known: dict[str, str] = {}

    @staticmethod
    def _check(tag: object, what: str = "tag") -> str:
        if not isinstance(tag, str):
            raise InvalidTagError(f"{what} must be a str, not {type(tag).__name__}")
        if not tag or len(tag) > MAX_TAG_LENGTH or not TAG_PATTERN.match(tag):
            raise InvalidTagError(
                f"{what} {tag!r} is not dot-separated parts of letters, digits, '_' and '-'"
            )
        return tag

    def __call__(self, tag: str) -> str:
        full = self.known.get(tag)
        if full is None:
            full = self._check(tag)
            if self._prefix:
                full = f"{self._prefix}.{full}"
            if len(self.known) < _TAG_CACHE:
                self.known[tag] = full
        return full

    def stamp(self, tag: str, time: TimeLike | None) -> tuple[str, int]:
        """The full tag and the time in nanoseconds of a post(); raises for a bad one."""
        try:
            full_tag = self.known.get(tag) or self(tag)
        except TypeError:  # an unhashable tag (a list...) fails the cache lookup
            raise InvalidTagError(f"tag must be a str, not {type(tag).__name__}") from None
        return full_tag, _time_ns() if time is None else time_to_ns(time)


class Client:
    """What both clients share: the common settings, configuration from the environment,
    ``with`` blocks (leaving one shuts the client down), and awaitable flush and shutdown."""

    def __new__(cls: type[_C], *args: Any, **kwargs: Any) -> _C:
        # Before __init__, so that a keyword that moved into an option object is named
        # with its new place rather than refused as unknown.
        refuse_moved(cls.__name__, cls.__init__, kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        host: str,
        port: int,
        *,
        unix_path: str | None,
        servers: Sequence[ServerSpec] | None,
        tag_prefix: str | None,
        require_ack: bool,
        tls: TlsSetting,
        auth: Auth,
        timeouts: Timeouts,
        records: RecordRules,
        backoff: Backoff,
        compress: str | None,
        compress_level: int,
        dns_refresh: bool,
    ) -> None:
        """The one construction path of both clients: the settings they share, checked."""
        self._transport = TransportOptions(
            servers=servers_from(host, port, unix_path, servers),
            security=security_from(tls, auth), timeouts=timeouts, backoff=backoff,
            require_ack=require_ack, compress=compress, compress_level=compress_level,
            dns_refresh=dns_refresh,
        )
        self._records = checked_rules(records)
        self._tags = TagChecker(tag_prefix)

    @classmethod
    def from_env(
        cls: type[_C], *, environ: Mapping[str, str] | None = None, prefix: str = "FLUENT_",
        **overrides: Any,
    ) -> _C:
        """A client configured by ``FLUENT_*`` variables, then by ``overrides``.

        An address given in ``overrides`` (host, port, unix_path or servers) replaces the
        environment's whole destination rather than mixing with it; an option object
        (``tls=Tls(...)``, ``auth=Auth(...)``) replaces the one the environment made.
        """
        options = options_from_env(environ, prefix=prefix)
        if any(key in overrides for key in ADDRESS_OPTIONS):
            for key in ADDRESS_OPTIONS:
                options.pop(key, None)
        options.update(overrides)
        return cls(**options)

    def flush(self, timeout: float | None = None) -> bool:
        raise NotImplementedError

    def shutdown(self, timeout: float | None = None) -> ShutdownReport:
        raise NotImplementedError

    async def aflush(self, timeout: float | None = None) -> bool:
        """``flush`` for asyncio code: waits in a helper thread, never in the event loop."""
        from . import aio

        return await aio.flush(self, timeout)

    async def ashutdown(self, timeout: float | None = None) -> ShutdownReport:
        """``shutdown`` for asyncio code: waits in a helper thread, never in the event loop."""
        from . import aio

        return await aio.shutdown(self, timeout)

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
