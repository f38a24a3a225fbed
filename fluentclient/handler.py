"""Standard library logging sent to Fluentd: :class:`FluentHandler`, :class:`FluentFormatter`.

Both take plain keyword arguments, so ``logging.config.dictConfig`` can build them::

    "handlers": {"fluent": {
        "class": "fluentclient.handler.FluentHandler",
        "host": "fluentd.internal", "port": 24224, "tag_prefix": "shop",
        "formatter": "fluent",
    }},
    "formatters": {"fluent": {
        "()": "fluentclient.handler.FluentFormatter",
        "fields": {"level": "severity", "thread": None},
    }},

A LogRecord becomes one structured record: the message, level, logger, where it was
logged, the exception and stack if any, and every ``extra=`` field. Its time is the
record's own, to the nanosecond, sent as an EventTime.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

from ._convert import (
    Converter,
    check_tag,
    exception_fields,
    record_time_ns,
    safe_value,
    tag_from_name,
    text,
)
from ._lifetime import _exit, _process
from ._lifetime._fork_safe import ForkSafeLock
from ._trace import current_ids, put_ids
from .client import BufferedClient, SyncClient
from .errors import BufferFullError, ClientClosedError, FluentError
from .message import EventTime, Message
from .options import Auth, Buffering, RecordRules, Timeouts, Tls
from .stats import ShutdownReport

__all__ = ["FIELDS", "FluentFormatter", "FluentHandler"]

# Record fields taken straight from LogRecord attributes: (field, attribute).
_ATTRIBUTE_FIELDS = (
    ("level", "levelname"),
    ("logger", "name"),
    ("module", "module"),
    ("function", "funcName"),
    ("line", "lineno"),
    ("process", "process"),
    ("process_name", "processName"),
    ("thread", "thread"),
    ("thread_name", "threadName"),
)
_EXCEPTION_FIELDS = ("exc_type", "exc_message", "exc_traceback")
#: Every field FluentFormatter writes by default, before the ``fields`` map renames them.
FIELDS = ("message", *(f for f, _ in _ATTRIBUTE_FIELDS), *_EXCEPTION_FIELDS, "stack_info")

# What every LogRecord carries; anything else on a record came from ``extra=``. Taken from
# a real record so that attributes added by newer Pythons (taskName, created_ns) count.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime",
}
_STYLES: dict[str, Callable[..., logging.PercentStyle]] = {
    "%": logging.PercentStyle,
    "{": logging.StrFormatStyle,
    "$": logging.StringTemplateStyle,
}
_TAG_CACHE = 10_000
# The logger fluentclient reports its own troubles on.
_OWN = "fluentclient"
# How often flush() looks whether the servers are known to be down.
_FLUSH_SLICE = 0.05

Client = Union[BufferedClient, SyncClient]
FieldMap = Mapping[str, Optional[str]]


class FluentFormatter(logging.Formatter):
    """Turns a LogRecord into a structured record (:meth:`to_record`).

    ``fields`` renames fields (``{"level": "severity"}``) or drops them
    (``{"thread": None}``); it applies to ``extra=`` keys too. ``fmt`` may be a format
    string for the message field (as for any Formatter, with ``style``, ``datefmt`` and
    ``defaults``), or a mapping of extra fields to format strings, as fluent-logger users
    write it: ``{"where": "%(module)s.%(funcName)s", "host": "%(hostname)s"}``.
    ``extra=False`` leaves out the ``extra=`` fields. Datetimes become ISO 8601 text, as
    the clients send them; other values msgpack cannot serialize go through ``default``
    (``str``, falling back to ``repr``), so the line itself is never lost.

    A message that is a dict (``log.info({"user": 42, "action": "login"})``) with no
    arguments is merged into the record as fields, as fluent-logger does. Fields given by
    the caller (a dict message, ``extra=``) win over the built-in ones of the same name.

    :meth:`format` returns the same record as one line of JSON, for a console handler.
    """

    def __init__(
        self,
        fmt: str | Mapping[str, str] | None = None,
        datefmt: str | None = None,
        style: str = "%",
        validate: bool = True,
        *,
        defaults: Mapping[str, Any] | None = None,
        fields: FieldMap | None = None,
        extra: bool = True,
        default: Converter | None = str,
    ) -> None:
        if style not in _STYLES:
            raise ValueError(f"style must be one of {', '.join(_STYLES)}, not {style!r}")
        values = {"hostname": socket.gethostname(), **(defaults or {})}
        message_fmt = fmt if isinstance(fmt, str) else None
        if sys.version_info >= (3, 10):
            super().__init__(message_fmt, datefmt, style, validate, defaults=values)  # type: ignore[arg-type]
        else:  # pragma: no cover
            super().__init__(message_fmt, datefmt, style, validate)  # type: ignore[arg-type]
        self._format_message = message_fmt is not None
        self._fmt_fields: list[tuple[str, logging.PercentStyle]] = []
        if isinstance(fmt, Mapping):
            for key, spec in fmt.items():
                if not isinstance(spec, str):
                    raise TypeError(f"fmt[{key!r}] must be a format string, not {spec!r}")
                field_style = (
                    _STYLES[style](spec, defaults=values) if sys.version_info >= (3, 10)
                    else _STYLES[style](spec)
                )
                if validate:
                    field_style.validate()
                self._fmt_fields.append((str(key), field_style))
        elif fmt is not None and not isinstance(fmt, str):
            raise TypeError(f"fmt must be a str, a mapping or None, not {type(fmt).__name__}")
        self._uses_time = self.usesTime() or any(s.usesTime() for _, s in self._fmt_fields)
        self.fields: dict[str, str | None] = dict(fields or {})
        for key, name in self.fields.items():
            if name is not None and not isinstance(name, str):
                raise TypeError(f"fields[{key!r}] must be a str or None, not {name!r}")
        self.extra = extra
        self.default = default
        self._message_key = self.fields.get("message", "message")
        self._attrs = [
            (name, attr) for field, attr in _ATTRIBUTE_FIELDS
            if (name := self.fields.get(field, field)) is not None
        ]
        self._fmt_fields = [
            (name, s) for field, s in self._fmt_fields
            if (name := self.fields.get(field, field)) is not None
        ]
        self._exc_keys = [self.fields.get(f, f) for f in _EXCEPTION_FIELDS]
        self._stack_key = self.fields.get("stack_info", "stack_info")

    def to_record(self, record: logging.LogRecord, message: str | None = None) -> dict[str, Any]:
        """The fields to send for ``record``; ``message`` replaces the message field."""
        record.message = record.getMessage()
        if self._uses_time:
            record.asctime = self.formatTime(record, self.datefmt)
        out: dict[str, Any] = {}
        merged = record.msg if isinstance(record.msg, Mapping) and not record.args else None
        key = self._message_key
        if key is not None and (message is not None or merged is None):
            if message is None:
                message = self.formatMessage(record) if self._format_message else record.message
            out[key] = message
        for name, attr in self._attrs:
            out[name] = getattr(record, attr, None)
        for name, field_style in self._fmt_fields:
            try:
                out[name] = field_style.format(record)
            except Exception:
                out[name] = None  # a field the record lacks must not cost the line
        exc = record.exc_info
        if exc and exc[0] is not None and any(k is not None for k in self._exc_keys):
            if not record.exc_text:
                # Cached on the record, as logging.Formatter does, for the other handlers.
                record.exc_text = self.formatException(exc)
            for exc_key, value in zip(self._exc_keys, exception_fields(exc, record.exc_text)):
                if exc_key is not None:
                    out[exc_key] = value
        if record.stack_info and self._stack_key is not None:
            out[self._stack_key] = self.formatStack(record.stack_info)
        if merged is not None:
            self._merge(out, merged.items(), record)
        if self.extra:
            self._merge(
                out, ((k, v) for k, v in vars(record).items() if k not in _STANDARD), record)
        return out

    def _merge(self, out: dict[str, Any], items: Any, record: logging.LogRecord) -> None:
        fields, default = self.fields, self.default
        for key, value in items:
            if not isinstance(key, str):
                key = text(key)
            if key == "level" and _names_level(value, record):
                # structlog on top of logging (add_log_level, then render_to_log_kwargs or
                # ProcessorFormatter) hands over the level it already wrote, lowercase:
                # the record keeps the name logging gives it, as every other record has.
                continue
            name = fields.get(key, key) if fields else key
            if name is not None:
                out[name] = safe_value(value, default)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        return json.dumps(self.to_record(record), default=text, ensure_ascii=False)


def _names_level(value: object, record: logging.LogRecord) -> bool:
    """Whether ``value`` is another spelling of the record's own level (``"info"``)."""
    return isinstance(value, str) and (
        value.upper() == record.levelname
        or logging.getLevelName(value.upper()) == record.levelno
    )


class FluentHandler(logging.Handler):
    """A logging handler that posts each record to Fluentd without ever blocking.

    ``tag`` is used for every record; with ``tag=None`` the tag is made from the logger's
    name (``tag_prefix.`` + the name with anything a tag may not hold replaced by ``_``).
    The handler makes its own :class:`BufferedClient` from ``host``, ``port``,
    ``unix_path`` and any other client option given (``require_ack``, ``tls``,
    ``buffering=Buffering(...)``, ``on_error``, ...; from a logging config file an option
    object can be a dict of its fields), or shares the ``client`` given.

    The ``message`` field is always the message as logged (``record.getMessage()``),
    whatever formatter the handler has: ``logging.basicConfig``, ``dictConfig`` and
    frameworks give every handler a text formatter (``"INFO:orders:order 7 placed"``),
    whose line would bury the message under a level and logger the record already holds
    as fields. A :class:`FluentFormatter` set on the handler is the one formatter that
    shapes the record (its ``fmt`` string may format the message field). Any other
    formatter is used only if ``formatted_field`` names a field: its line is then sent
    there too (``formatted_field="formatted"``).

    While an OpenTelemetry span is current on the thread that logs, the record gets its
    ``trace_id`` and ``span_id`` (lowercase hex, as OpenTelemetry's log records name
    them; a FluentFormatter's ``fields`` renames or drops them like any field; a value
    of the caller's own under that name wins). ``trace_ids=False`` turns that off.
    Without OpenTelemetry in the process it costs one dictionary lookup per record.

    ``emit`` only formats and calls ``post()``, so it returns at once whatever the server
    does; anything that goes wrong goes to :meth:`~logging.Handler.handleError`, never to
    the application. ``buffer_overflow_handler`` (its name as in fluent-logger) is called
    with each record dropped because the buffer was full. ``close()`` shuts its own
    client down within ``close_timeout`` seconds (the :class:`ShutdownReport` is kept in
    :attr:`report`), and so does the client's own drain at the end of the process
    unless ``shutdown_timeout`` is given; a shared client is only flushed, within the
    same deadline, and stays open. A record emitted after ``close()`` (by code running
    after ``logging.shutdown()``) goes to the client, which counts it as dropped
    (``closed``) and says so once. ``flush()`` waits at most ``flush_timeout``, and not
    at all while no server can be reached.

    fluentclient's own log records (logger ``"fluentclient"``: a server down, records
    dropped) are never sent through a FluentHandler: they are about the very path that
    failed. They go to the other handlers; when FluentHandlers are the only ones they
    would reach, they go to stderr through ``logging.lastResort``, as if no handler were
    configured.
    """

    def __init__(
        self,
        tag: str | None = None,
        host: str = "127.0.0.1",
        port: int = 24224,
        *,
        unix_path: str | None = None,
        tag_prefix: str | None = None,
        client: Client | None = None,
        level: int | str = logging.NOTSET,
        close_timeout: float = 5.0,
        flush_timeout: float = 2.0,
        buffer_overflow_handler: Callable[[Message], None] | None = None,
        formatted_field: str | None = None,
        trace_ids: bool = True,
        **client_options: Any,
    ) -> None:
        super().__init__(level)
        if formatted_field is not None and (
            not isinstance(formatted_field, str) or not formatted_field
        ):
            raise TypeError(f"formatted_field must be a field name, not {formatted_field!r}")
        self.formatted_field = formatted_field
        self.trace_ids = trace_ids
        if close_timeout < 0 or flush_timeout < 0:
            raise ValueError("close_timeout and flush_timeout must not be negative")
        if tag is not None and tag_prefix is not None:
            raise ValueError("give tag (one tag for every record) or tag_prefix, not both")
        self.tag = check_tag(tag, "tag") if tag is not None else None
        self.tag_prefix = check_tag(tag_prefix, "tag_prefix") if tag_prefix else None
        self.close_timeout = close_timeout
        self.flush_timeout = flush_timeout
        self.report: ShutdownReport | None = None
        self._tags: dict[str, str] = {}
        self._closed = False
        self._close_lock = ForkSafeLock()
        self._plain = FluentFormatter()
        self.client, self._owns_client = client_of(
            "handler", client, host=host, port=port, unix_path=unix_path,
            buffer_overflow_handler=buffer_overflow_handler, close_timeout=close_timeout,
            options=client_options,
        )
        _watch_own_logger()

    def tag_for(self, record: logging.LogRecord) -> str:
        """The tag a record is sent with."""
        if self.tag is not None:
            return self.tag
        name = record.name
        tag = self._tags.get(name)
        if tag is None:
            tag = tag_from_name(str(name), self.tag_prefix)
            if len(self._tags) < _TAG_CACHE:
                self._tags[name] = tag
        return tag

    def record_for(self, record: logging.LogRecord) -> dict[str, Any]:
        """The fields sent for a record: a FluentFormatter's, else the default ones, with
        another formatter's line under ``formatted_field`` if one is named."""
        formatter = self.formatter
        if isinstance(formatter, FluentFormatter):
            out = formatter.to_record(record)
            if self.trace_ids and (ids := current_ids()) is not None:
                put_ids(out, ids, formatter.fields)
            return out
        out = self._plain.to_record(record)
        if formatter is not None and self.formatted_field is not None:
            out[self.formatted_field] = formatter.format(record)
        if self.trace_ids and (ids := current_ids()) is not None:
            put_ids(out, ids)
        return out

    def emit(self, record: logging.LogRecord) -> None:
        if not _own_checked:
            _check_own_logger()
        if record.name == _OWN:
            # fluentclient's own reports (a server down, records dropped) would be posted
            # to the client they are about, where they are lost when they matter most.
            # They go to the other handlers, or to stderr if there are none (see
            # _LastResort).
            return
        try:
            self.client.post(
                self.tag_for(record),
                self.record_for(record),
                time=EventTime.from_ns(record_time_ns(record)),
            )
        except ClientClosedError:
            # Only a SyncClient raises it (a BufferedClient counts the record as dropped,
            # "closed", and says so once). After this handler's own close() that is
            # expected, not an error to print: logging.shutdown() closes handlers at
            # exit, before the last records of other exit hooks.
            if not self._closed:
                self.handleError(record)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Wait at most ``flush_timeout`` for what was logged to reach the server.

        While no server can be reached it returns at once: what waits would only wait
        for the next reconnect attempt, and logging.shutdown() flushes before it closes.
        """
        if self._closed:
            return
        client = self.client
        try:
            if not isinstance(client, BufferedClient):
                client.flush(self.flush_timeout)
                return
            # In slices, to stop as soon as the writer finds every server down.
            deadline = time.monotonic() + self.flush_timeout
            while client._unreachable() is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or client.flush(min(remaining, _FLUSH_SLICE)):
                    return
        except FluentError:
            pass  # flush() of a logging handler has no one to tell; stats() counts it

    def close(self) -> None:
        """Shut the own client down (or flush a shared one) within ``close_timeout``."""
        with self._close_lock:
            first = not self._closed
            self._closed = True
        try:
            if first:
                if self._owns_client:
                    assert isinstance(self.client, BufferedClient)
                    if _process.main_thread_finished():
                        # logging.shutdown() at exit: every client of the process drains
                        # now, at once, within one deadline (if not done already).
                        _exit.drain_all()
                    self.client._explain_wait(self.close_timeout, "close_timeout")
                    self.report = self.client.shutdown(self.close_timeout)
                else:
                    self.client.flush(self.close_timeout)
        except FluentError:
            pass
        finally:
            super().close()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        where = self.tag or (f"{self.tag_prefix}.<logger>" if self.tag_prefix else "<logger>")
        return f"<{type(self).__name__} {where} ({level})>"


# The client keywords that take an option object, which an integration also builds from a
# mapping of its fields.
_OPTION_OBJECTS: dict[str, Callable[..., object]] = {
    "tls": Tls, "auth": Auth, "timeouts": Timeouts, "buffering": Buffering,
    "records": RecordRules,
}


def client_of(
    owner: str,
    client: Client | None,
    *,
    host: str,
    port: int,
    unix_path: str | None,
    buffer_overflow_handler: Callable[[Message], None] | None,
    close_timeout: float,
    options: dict[str, Any],
) -> tuple[Client, bool]:
    """The client a logging integration posts through, and whether it made it (and so
    closes it): the one given, or a BufferedClient made from the options."""
    if client is not None:
        if options or unix_path is not None or buffer_overflow_handler is not None:
            raise ValueError(
                f"client options and buffer_overflow_handler configure a client the "
                f"{owner} makes; they cannot change the shared client given"
            )
        return client, False
    for keyword, cls in _OPTION_OBJECTS.items():
        given = options.get(keyword)
        # logging.config.dictConfig (and a loguru config file) can only give plain
        # values: a mapping stands for the object made of its fields.
        if isinstance(given, Mapping):
            options[keyword] = cls(**given)
    if buffer_overflow_handler is not None:
        options["on_error"] = _overflow_reporter(buffer_overflow_handler, options.get("on_error"))
    # At the end of the process the client's own drain runs before the integration is
    # closed: both must keep to the one deadline the user gave.
    own_deadline = "shutdown_timeout" not in options
    options.setdefault("shutdown_timeout", close_timeout)
    made = BufferedClient(host, port, unix_path=unix_path, **options)
    made._owner = f"{'FluentHandler' if owner == 'handler' else 'FluentSink'}'s client"
    if own_deadline:
        made._exit_setting = "close_timeout"
    return made, True


def _overflow_reporter(
    handler: Callable[[Message], None],
    on_error: Callable[[FluentError, Message | None], None] | None,
) -> Callable[[FluentError, Message | None], None]:
    def report(err: FluentError, msg: Message | None) -> None:
        if on_error is not None:
            on_error(err, msg)
        if isinstance(err, BufferFullError) and msg is not None:
            handler(msg)

    return report


class _LastResort(logging.Filter):
    """On the "fluentclient" logger: shows on stderr, as ``logging.lastResort`` would,
    each of fluentclient's records that only FluentHandlers would otherwise get.

    Python's last resort only steps in when a record finds no handler at all; a
    FluentHandler counts as one, yet it leaves fluentclient's own records alone (see
    ``FluentHandler.emit``), so without this they would reach nobody. A handler of any
    other kind on the way, whatever its level, is the user's choice of where they go,
    and then this does nothing. The warnings themselves come once per outage or per
    reason, so this adds no flood.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level and _only_fluent(self._logger):
            last.handle(record)
        return True


def _only_fluent(logger: logging.Logger) -> bool:
    """Whether the handlers a record of ``logger`` reaches are FluentHandlers, and some."""
    fluent = False
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if isinstance(handler, FluentHandler) or _queues_to_fluent(handler):
                fluent = True
            else:
                return False
        if not node.propagate:
            break
        node = node.parent
    return fluent


def _queues_to_fluent(handler: logging.Handler) -> bool:
    """A QueueHandler whose listener (as dictConfig sets one up) feeds only FluentHandlers."""
    if not isinstance(handler, logging.handlers.QueueHandler):
        return False
    listener = getattr(handler, "listener", None)
    targets = getattr(listener, "handlers", None) or ()
    return bool(targets) and all(isinstance(h, FluentHandler) for h in targets)


_watch_lock = ForkSafeLock()
_own_checked = False


def _check_own_logger() -> None:
    """Once, at the first record: say if the "fluentclient" logger was switched off.

    logging.config disables every logger that exists when it runs unless told
    ``"disable_existing_loggers": False``, and building a FluentHandler from the config
    is what made ours: every warning about delivery would then vanish without a trace.
    """
    global _own_checked
    with _watch_lock:
        if _own_checked:
            return
        _own_checked = True
    own = logging.getLogger(_OWN)
    last = logging.lastResort
    if own.disabled and last is not None:
        last.handle(logging.LogRecord(
            _OWN, logging.WARNING, __file__, 0,
            'fluentclient: the "fluentclient" logger is disabled, so its warnings (a '
            "server down, records dropped) reach no one; logging.config disables the "
            'loggers that exist when it runs unless given "disable_existing_loggers": False',
            None, None,
        ))


def _watch_own_logger() -> None:
    own = logging.getLogger(_OWN)
    with _watch_lock:
        if not any(isinstance(f, _LastResort) for f in own.filters):
            own.addFilter(_LastResort(own))
