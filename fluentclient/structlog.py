"""structlog sent to Fluentd: the event dict is the record.

Either as the last processor, which posts and then drops the event (``passthrough=True``
hands it on to a renderer as well)::

    structlog.configure(processors=[
        structlog.processors.add_log_level,
        FluentProcessor(client, tag="app"),
    ])

or as the logger factory, with processors that leave the event a dict::

    structlog.configure(
        processors=[structlog.processors.add_log_level],
        logger_factory=FluentLoggerFactory(client, tag_prefix="app"),
    )

structlog is an optional dependency: only importing this module needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Union

try:
    import structlog
    from structlog.typing import EventDict, WrappedLogger
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fluentclient.structlog needs structlog: pip install structlog"
    ) from exc

from ._convert import (
    Converter,
    check_tag,
    exc_info_of,
    exception_fields,
    safe_value,
    tag_from_name,
    text,
)
from ._trace import current_ids, put_ids
from .client import BufferedClient, SyncClient

__all__ = ["FluentLogger", "FluentLoggerFactory", "FluentProcessor"]

Client = Union[BufferedClient, SyncClient]

# structlog method names that are not level names.
_LEVELS = {
    "warn": "warning", "exception": "error", "err": "error", "fatal": "critical",
    "failure": "error", "msg": "info", "log": "info",
}


class _Sender:
    """Turns an event dict into a record and posts it; what both entry points share.

    The tag is, in order: the value at ``tag_key`` in the event (made a valid tag, under
    ``tag_prefix``), the fixed ``tag``, the logger's name (under ``tag_prefix``), and
    last ``tag_prefix.structlog``.
    """

    def __init__(
        self,
        client: Client,
        tag: str | None,
        tag_key: str | None,
        tag_prefix: str | None,
        default: Converter | None,
        trace_ids: bool = True,
    ) -> None:
        self.client = client
        self.trace_ids = trace_ids
        self.tag = check_tag(tag) if tag is not None else None
        self.tag_key = tag_key
        self.tag_prefix = check_tag(tag_prefix, "tag_prefix") if tag_prefix else None
        self.default = default
        self._fallback = tag_from_name("structlog", self.tag_prefix)

    def tag_for(self, event: Mapping[str, Any], name: object) -> str:
        if self.tag_key is not None:
            value = event.get(self.tag_key)
            if value is not None:
                return tag_from_name(str(value), self.tag_prefix)
        if self.tag is not None:
            return self.tag
        if isinstance(name, str) and name:
            return tag_from_name(name, self.tag_prefix)
        return self._fallback

    def record(self, event: Mapping[str, Any], method_name: str) -> dict[str, Any]:
        default = self.default
        record = {
            (k if isinstance(k, str) else text(k)): safe_value(v, default)
            for k, v in event.items() if k != "exc_info"
        }
        exc = exc_info_of(event.get("exc_info"))
        if exc is not None:
            record["exc_type"], record["exc_message"], record["exc_traceback"] = (
                exception_fields(exc)
            )
        if "level" not in record:
            record["level"] = _LEVELS.get(method_name, method_name)
        if self.trace_ids and (ids := current_ids()) is not None:
            put_ids(record, ids)
        return record

    def send(self, event: Mapping[str, Any], method_name: str, name: object) -> Any:
        return self.client.post(self.tag_for(event, name), self.record(event, method_name))


class FluentProcessor:
    """A structlog processor that posts the event dict to ``client`` as the record.

    ``exc_info`` (``log.exception(...)``, ``exc_info=True`` or an exception) becomes the
    fields ``exc_type``, ``exc_message`` and ``exc_traceback``; a ``level`` is added from
    the method name unless a processor set one; datetimes become ISO 8601 text as in
    the clients; other values msgpack cannot serialize go through ``default`` (``str``).

    The tag is, in order: the event's value at ``tag_key`` made a valid tag (under
    ``tag_prefix``; ``tag_key="logger"`` takes what ``add_logger_name`` put there), the
    fixed ``tag``, the wrapped logger's ``name`` if it has one (under ``tag_prefix``),
    and last ``structlog`` (under ``tag_prefix``).

    While an OpenTelemetry span is current, the record gets its ``trace_id`` and
    ``span_id`` (lowercase hex) unless the event has those keys; ``trace_ids=False``
    turns that off.

    Last in the chain it raises ``DropEvent`` after posting, so nothing else prints the
    event; with ``passthrough=True`` it returns the event unchanged for the processors
    after it.
    """

    def __init__(
        self,
        client: Client,
        tag: str | None = None,
        *,
        tag_key: str | None = None,
        tag_prefix: str | None = None,
        passthrough: bool = False,
        default: Converter | None = str,
        trace_ids: bool = True,
    ) -> None:
        self._sender = _Sender(client, tag, tag_key, tag_prefix, default, trace_ids)
        self.passthrough = passthrough

    @property
    def client(self) -> Client:
        return self._sender.client

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        self._sender.send(event_dict, method_name, getattr(logger, "name", None))
        if not self.passthrough:
            raise structlog.DropEvent
        return event_dict


class FluentLogger:
    """The logger :class:`FluentLoggerFactory` makes: every method posts what it is given.

    The last processor should leave the event a dict (structlog then calls
    ``logger.info(**event)``); a rendered string is sent as ``{"message": ...}``.
    """

    def __init__(self, sender: _Sender, name: str | None = None) -> None:
        self._sender = sender
        self.name = name

    def _post(self, method_name: str, args: tuple[Any, ...], event: dict[str, Any]) -> None:
        if args:
            first = args[0]
            if isinstance(first, Mapping):
                event = {**first, **event}
            else:
                if isinstance(first, (bytes, bytearray)):
                    first = bytes(first).decode("utf-8", "replace")
                event = {"message": first, **event}
        self._sender.send(event, method_name, self.name)

    def __getattr__(self, method_name: str) -> Callable[..., None]:
        # Custom levels and any method a wrapper class may call.
        if method_name.startswith("_"):
            raise AttributeError(method_name)

        def method(*args: Any, **event: Any) -> None:
            self._post(method_name, args, event)

        return method

    def __repr__(self) -> str:
        return f"<FluentLogger {self.name or ''}>"


def _method(method_name: str) -> Callable[..., None]:
    def method(self: FluentLogger, *args: Any, **event: Any) -> None:
        self._post(method_name, args, event)

    method.__name__ = method.__qualname__ = method_name
    return method


# The usual names as real methods: no __getattr__ round trip on every call.
for _name in ("debug", "info", "warning", "warn", "error", "err", "critical", "fatal",
              "exception", "failure", "msg"):
    setattr(FluentLogger, _name, _method(_name))
del _name


class FluentLoggerFactory:
    """A structlog ``logger_factory``: ``structlog.get_logger(name)`` posts to ``client``.

    The tag is found as for :class:`FluentProcessor`, with the name given to
    ``get_logger`` before the fallback.
    """

    def __init__(
        self,
        client: Client,
        tag: str | None = None,
        *,
        tag_key: str | None = None,
        tag_prefix: str | None = None,
        default: Converter | None = str,
        trace_ids: bool = True,
    ) -> None:
        self._sender = _Sender(client, tag, tag_key, tag_prefix, default, trace_ids)

    def __call__(self, *args: Any) -> FluentLogger:
        name = args[0] if args and isinstance(args[0], str) else None
        return FluentLogger(self._sender, name)
