"""loguru sent to Fluentd: :class:`FluentSink`.

::

    from loguru import logger
    from fluentclient.loguru import FluentSink

    logger.add(FluentSink(tag_prefix="app", host="fluentd.internal"))

Each message becomes one structured record with the field names
:class:`~fluentclient.handler.FluentHandler` uses for :mod:`logging` (``message``,
``level``, ``logger``, ``module``, ``function``, ``line``, ``exc_type``, ...), so the
same queries and dashboards work for both, and everything bound with ``logger.bind()``
or ``logger.contextualize()`` as fields of its own.

loguru is an optional dependency: only importing this module needs it.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from typing import Any, Callable

try:
    # Only the annotations use it (loguru hands the sink plain records), but a sink
    # without loguru is of no use: better to say so here than nowhere.
    import loguru
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fluentclient.loguru needs loguru (0.7 or later): pip install loguru, or install "
        "fluentclient from its checkout with the loguru extra"
    ) from exc

from ._convert import (
    Converter,
    check_tag,
    exc_info_of,
    exception_fields,
    exception_type_name,
    safe_value,
    tag_from_name,
    text,
)
from ._lifetime import _exit, _process
from ._lifetime._fork_safe import ForkSafeLock
from ._trace import SPAN_ID, TRACE_ID, current_ids, put_ids
from .errors import FluentError
from .handler import _TAG_CACHE, Client, FieldMap, client_of
from .message import EventTime, Message
from .stats import ShutdownReport

__all__ = ["FIELDS", "FluentSink", "trace_patcher"]

log = logging.getLogger("fluentclient")

#: Every field FluentSink writes by default, before ``fields`` renames or drops them.
#: The same names as :data:`fluentclient.handler.FIELDS`, with ``file`` (the source
#: file's path) added and ``stack_info`` left out: loguru has no such thing.
FIELDS = (
    "message", "level", "logger", "module", "function", "line", "file",
    "process", "process_name", "thread", "thread_name",
    "exc_type", "exc_message", "exc_traceback",
)
_BUILT_IN = FIELDS[:-3]
_EXCEPTION = FIELDS[-3:]

_NS = 1_000_000_000
# The protocol's EventTime holds unsigned 32-bit seconds.
_MAX_NS = 2**32 * _NS
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# Tags for records with no module name (code run by exec(), say), under tag_prefix.
_FALLBACK_NAME = "loguru"


def _time_ns(when: object) -> int:
    """The moment a loguru record was made, in integer nanoseconds since the epoch.

    loguru reads the clock once per message, as an aware datetime, which holds
    microseconds; the result is that moment exactly, so it always ends in three zeros.
    Computed from the datetime's integer fields, never through a float, so no
    microsecond is lost to rounding. A time a patcher replaced with something that is
    not a datetime, or that the protocol cannot carry, is stamped now rather than lost.
    """
    if isinstance(when, datetime.datetime):
        try:
            # A naive datetime is local time, as datetime.timestamp() reads it.
            delta = (when if when.tzinfo is not None else when.astimezone()) - _EPOCH
        except (ValueError, OverflowError, TypeError):
            pass
        else:
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            ns = micros * 1_000
            if 0 <= ns < _MAX_NS:
                return ns
    return time.time_ns()


def trace_patcher(record: loguru.Record) -> None:
    """A loguru patcher that binds the current OpenTelemetry ids to each message, on the
    thread that logs it: ``logger.configure(patcher=trace_patcher)``.

    Only needed with ``enqueue=True``, whose sinks run on loguru's worker thread, where
    the application's span is not current; without it the sink adds the ids itself.
    """
    ids = current_ids()
    if ids is not None:
        extra = record["extra"]
        extra.setdefault(TRACE_ID, ids[0])
        extra.setdefault(SPAN_ID, ids[1])


_TRACEBACK_HEAD = "Traceback (most recent call last):"
# What loguru's diagnose=True writes under a source line: the values of its variables
# (``    │   └ 0``, or ``    -> 0`` for one; ``|`` and ``->`` where loguru writes ASCII,
# as it does when the sink's encoding is not UTF-8). Never sent: the traceback formatted here,
# without enqueue, never holds them, and they may hold secrets.
_DIAGNOSIS = re.compile(r"^[ \t]*(?:[│└]|(?:\|[ \t|]*)?-> |\|[ \t|]*$)")
# Between the tracebacks of chained exceptions, with a blank line on each side as
# traceback.format_exception writes them.
_CHAIN_LINES = (
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _exception_fields(
    exception: tuple[Any, ...], text: str | None, message: object,
) -> tuple[str, str, str] | None:
    """``exc_type``, ``exc_message`` and ``exc_traceback`` of a loguru record's exception.

    With its traceback at hand, formatted here as :mod:`traceback` does, as
    FluentHandler does. With ``enqueue=True`` loguru pickles the record for its worker
    thread and the traceback object is gone (and the exception itself too if it does
    not pickle); the traceback then survives only as text in the line loguru formatted
    before pickling (its string formats end with ``{exception}``), which is taken from
    there, in the same shape: loguru's markers and blank lines and the values its
    ``diagnose`` adds are left out.
    """
    exc = exc_info_of(exception)
    if exc is not None and exc[2] is not None:
        return exception_fields(exc)
    kind = exception[0] if exception else None
    if not isinstance(kind, type) or not issubclass(kind, BaseException):
        return None
    traceback_text = _traceback_in(text, message) if text else None
    if exc is not None:
        return exception_fields(exc, traceback_text)
    # The exception did not pickle: its type came, its words only in loguru's line.
    last = traceback_text.rsplit("\n", 1)[-1] if traceback_text else ""
    name = exception_type_name(kind)
    words = last.split(": ", 1)[1] if ": " in last else ""
    return name, words, traceback_text or name


def _traceback_in(text: str, message: object) -> str | None:
    """The traceback loguru wrote into ``text`` after the message, in traceback's shape."""
    text = _ANSI.sub("", text)
    start = 0
    if isinstance(message, str) and message:
        found = text.rfind(message)
        start = found + len(message) if found >= 0 else 0
    at = text.find(_TRACEBACK_HEAD, start)
    if at < 0 or (at > 0 and text[at - 1] != "\n"):
        return None
    lines: list[str] = []
    section = 0  # where the frames of the traceback being read begin
    for line in text[at:].splitlines():
        line = line.rstrip()
        if not line or _DIAGNOSIS.match(line):
            continue
        if line.startswith(_TRACEBACK_HEAD):
            lines.append(line)
            section = len(lines)
            continue
        if line.startswith("> File "):
            # loguru's mark of the frame that caught the exception; with backtrace=True
            # the frames above it (the caller's whole stack) come first, which a Python
            # traceback does not show.
            del lines[section:]
            line = "  " + line[2:]
        if line in _CHAIN_LINES:
            lines += ["", line, ""]
            continue
        lines.append(line)
    return "\n".join(lines)


class FluentSink:
    """A loguru sink that posts each message to Fluentd without ever blocking.

    ``logger.add(FluentSink(...))``. The sink makes its own :class:`BufferedClient` from
    ``host``, ``port``, ``unix_path`` and any other client option given (``require_ack``,
    ``tls``, ``buffering=Buffering(...)``, ``on_error``, ...), or shares the ``client`` given, as
    :class:`~fluentclient.handler.FluentHandler` does.
    ``buffer_overflow_handler`` is called with each record dropped because the buffer was
    full.

    The tag is, in order: the value bound under ``tag_key`` (``logger.bind(tag="audit")``
    with ``tag_key="tag"``), made a valid tag under ``tag_prefix``; the fixed ``tag``;
    the name of the module that logged (loguru's ``record["name"]``), made a valid tag
    under ``tag_prefix`` as FluentHandler does with a logger's name; and for code with
    no module name, ``loguru`` under ``tag_prefix``. ``tag`` and ``tag_prefix`` together
    need ``tag_key``: without it the prefix could never be used.

    The record holds :data:`FIELDS`: ``message`` (loguru's message, not the line its
    ``format`` makes), ``level`` (the level's name, ``"SUCCESS"`` and custom levels
    included), ``logger`` (the module's name), ``module``, ``function``, ``line``,
    ``file`` (the source file's path), ``process``, ``process_name``, ``thread``,
    ``thread_name``, and for a message with an exception ``exc_type``, ``exc_message`` and
    ``exc_traceback`` (formatted as :mod:`traceback` does: loguru's ``diagnose`` output,
    with the values of local variables, is never sent; with ``enqueue=True``, which
    loses the traceback object, taken from the line loguru formatted, in the same
    shape). Then, unless ``extra=False``,
    every ``extra`` value (``bind()``, ``contextualize()``, ``patch()``) as a field of
    its own, winning over a built-in field of the same name. ``fields``
    renames fields (``{"level": "severity"}``) or drops them (``{"thread": None}``),
    extra ones too. Datetimes become ISO 8601 text, as the clients send them; other
    values msgpack cannot serialize go through ``default`` (``str``, falling back to
    ``repr``), so the message itself is never lost.

    While an OpenTelemetry span is current on the thread that logs, the record gets its
    ``trace_id`` and ``span_id`` (lowercase hex; ``fields`` renames or drops them; a
    bound value of the same name wins); ``trace_ids=False`` turns that off. With
    ``enqueue=True`` the sink runs on loguru's worker thread, where no span is current:
    :func:`trace_patcher` then takes the ids where the message is logged.

    The event time is loguru's ``record["time"]``, the moment the message was logged,
    sent as an EventTime. loguru keeps that moment in a datetime, which holds only
    microseconds, so the nanoseconds sent always end in ``000``. A clock read in the
    sink would have more digits but a later moment (much later with ``enqueue=True``),
    and would disagree with the time loguru's other sinks print.

    :meth:`write` only builds the record and calls ``post()``, which returns at once
    whatever the server does. Nothing is raised into the application: a record that
    cannot be sent is counted by the client's ``stats()``, and any other failure is
    counted in :attr:`failures` and logged (the first of each kind) on the
    ``fluentclient`` logger.

    ``logger.remove(handler_id)``, and loguru itself at process exit, call :meth:`stop`:
    it shuts the sink's own client down within ``close_timeout`` seconds (the
    :class:`ShutdownReport` is kept in :attr:`report`) and only flushes a shared client,
    within the same deadline. The own client also drains at process exit by itself, as
    every client made with the default ``at_exit=True`` does, within ``close_timeout``
    too unless a ``shutdown_timeout`` is given.

    With standard logging routed into loguru, add the sink with
    ``filter={"fluentclient": False}``: the client logs some of its warnings while the
    sink is posting, and loguru refuses to enter a sink from inside itself.

    The sink has no ``flush()`` method on purpose: loguru would call it after every
    message, and it would wait for the network. ``sink.client.flush(timeout)`` waits for
    what was logged so far to be sent.
    """

    def __init__(
        self,
        tag: str | None = None,
        host: str = "127.0.0.1",
        port: int = 24224,
        *,
        unix_path: str | None = None,
        tag_prefix: str | None = None,
        tag_key: str | None = None,
        client: Client | None = None,
        fields: FieldMap | None = None,
        extra: bool = True,
        default: Converter | None = str,
        close_timeout: float = 5.0,
        buffer_overflow_handler: Callable[[Message], None] | None = None,
        trace_ids: bool = True,
        **client_options: Any,
    ) -> None:
        if close_timeout < 0:
            raise ValueError("close_timeout must not be negative")
        if tag is not None and tag_prefix is not None and tag_key is None:
            raise ValueError(
                "give tag (one tag for every record) or tag_prefix, not both, unless "
                "tag_key is given too"
            )
        self.tag = check_tag(tag, "tag") if tag is not None else None
        self.tag_prefix = check_tag(tag_prefix, "tag_prefix") if tag_prefix else None
        self.tag_key = tag_key
        self.fields: dict[str, str | None] = dict(fields or {})
        for key, name in self.fields.items():
            if name is not None and not isinstance(name, str):
                raise TypeError(f"fields[{key!r}] must be a str or None, not {name!r}")
        self.extra = extra
        self.default = default
        self.trace_ids = trace_ids
        self.close_timeout = close_timeout
        self.report: ShutdownReport | None = None
        #: Messages lost to anything other than the client refusing them (see the class
        #: docstring): a bug, or a patcher that left the record unreadable.
        self.failures = 0
        self._failed_kinds: set[type[BaseException]] = set()
        self._names = [self.fields.get(f, f) for f in _BUILT_IN]
        self._exc_names = [self.fields.get(f, f) for f in _EXCEPTION]
        self._wants_exception = any(n is not None for n in self._exc_names)
        self._tags: dict[str, str] = {}
        self._fallback_tag = tag_from_name(_FALLBACK_NAME, self.tag_prefix)
        self._stopped = False
        self._stop_lock = ForkSafeLock()
        self.client, self._owns_client = client_of(
            "sink", client, host=host, port=port, unix_path=unix_path,
            buffer_overflow_handler=buffer_overflow_handler, close_timeout=close_timeout,
            options=client_options,
        )

    # -- what loguru calls ---------------------------------------------------------------

    def write(self, message: loguru.Message) -> None:
        """Post the record of one message; never raises."""
        try:
            record = message.record
            self.client.post(
                self.tag_for(record),
                self.record_for(record, message),
                time=EventTime.from_ns(_time_ns(record["time"])),
            )
        except Exception as exc:
            self._failed(exc)

    def stop(self) -> None:
        """Shut the own client down (or flush a shared one) within ``close_timeout``.

        loguru calls it when the sink is removed; later calls do nothing.
        """
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            if self._owns_client:
                if _process.main_thread_finished():
                    # loguru's own hook at exit: every client of the process drains now,
                    # at once, within one deadline (if not done already).
                    _exit.drain_all()
                self.report = self.client.shutdown(self.close_timeout)
            else:
                self.client.flush(self.close_timeout)
        except FluentError:
            pass  # logger.remove() has no one to tell; the client's stats() count it

    # -- the pieces of a record ----------------------------------------------------------

    def tag_for(self, record: loguru.Record) -> str:
        """The tag a message is sent with."""
        if self.tag_key is not None:
            value = record["extra"].get(self.tag_key)
            if value is not None:
                return self._tag(value if isinstance(value, str) else text(value))
        if self.tag is not None:
            return self.tag
        name = record["name"]
        if not name:
            return self._fallback_tag
        return self._tag(name if isinstance(name, str) else text(name))

    def _tag(self, name: str) -> str:
        tag = self._tags.get(name)
        if tag is None:
            tag = tag_from_name(name, self.tag_prefix)
            if len(self._tags) < _TAG_CACHE:
                self._tags[name] = tag
        return tag

    def record_for(self, record: loguru.Record, line: str | None = None) -> dict[str, Any]:
        """The fields sent for a loguru record; ``line`` is the one loguru formatted for
        it, which holds the only copy of the traceback once ``enqueue=True`` pickled it."""
        process, thread = record["process"], record["thread"]
        values = (
            record["message"], record["level"].name, record["name"], record["module"],
            record["function"], record["line"], record["file"].path,
            process.id, process.name, thread.id, thread.name,
        )
        default = self.default
        out: dict[str, Any] = {}
        for name, value in zip(self._names, values):
            if name is not None:
                # A patcher may have put anything there.
                out[name] = safe_value(value, default)
        exception = record["exception"]
        if exception is not None and self._wants_exception:
            found = _exception_fields(tuple(exception), line, record["message"])
            if found is not None:
                for name, value in zip(self._exc_names, found):
                    if name is not None:
                        out[name] = value
        if self.extra:
            fields = self.fields
            for key, value in record["extra"].items():
                if not isinstance(key, str):
                    key = text(key)
                name = fields.get(key, key) if fields else key
                if name is not None:
                    out[name] = safe_value(value, default)
        if self.trace_ids and (ids := current_ids()) is not None:
            put_ids(out, ids, self.fields)
        return out

    # -- failures ------------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        kind = type(exc)
        if kind in self._failed_kinds:
            return  # one line per kind: a broken record repeated must not flood the log
        self._failed_kinds.add(kind)
        if isinstance(exc, FluentError):
            # A SyncClient that cannot send, or a client closed under a shared sink: the
            # reason is the whole story, a traceback would only alarm.
            log.warning("fluentclient: FluentSink could not send a message: %s", exc)
        else:
            log.error("fluentclient: FluentSink lost a message", exc_info=exc)

    def __repr__(self) -> str:
        where = self.tag or (f"{self.tag_prefix}.<module>" if self.tag_prefix else "<module>")
        return f"<{type(self).__name__} {where}>"
