"""FluentHandler and FluentFormatter against the embedded server over real sockets."""

from __future__ import annotations

import datetime
import itertools
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluentclient import (
    BufferedClient,
    BufferFullError,
    Buffering,
    EventTime,
    InvalidTagError,
    Timeouts,
)
from fluentclient._convert import record_time_ns, safe_value, tag_from_name
from fluentclient.handler import FluentFormatter, FluentHandler
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .subproc import child_env

_names = itertools.count()


class RecordingHandler(FluentHandler):
    """Keeps what handleError was called with instead of printing it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[tuple[logging.LogRecord, BaseException | None]] = []

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802
        self.errors.append((record, sys.exc_info()[1]))


def handler_for(server: ForwardServer, cls=FluentHandler, **kwargs) -> FluentHandler:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("at_exit", False)
    return cls(host=server.host, port=server.port, **kwargs)


@pytest.fixture
def attach() -> Iterator:
    """attach(handler, name=None) -> a logger of its own that sends only to ``handler``."""
    attached: list[tuple[logging.Logger, logging.Handler]] = []

    def attach(handler: logging.Handler, name: str | None = None) -> logging.Logger:
        log = logging.getLogger(name or f"tests.handler.n{next(_names)}")
        log.propagate = False
        log.setLevel(logging.DEBUG)
        log.addHandler(handler)
        attached.append((log, handler))
        return log

    yield attach
    for log, handler in attached:
        log.removeHandler(handler)
        handler.close()


def by_message(server: ForwardServer) -> dict:
    return {e.record.get("message"): e for e in server.events}


def test_dict_config_in_a_process_sends_every_line_by_exit(fluent_server):
    # dictConfig replaces the process's logging setup, so it runs in a process of its own;
    # nothing flushes or closes explicitly: logging.shutdown() at exit must deliver.
    code = textwrap.dedent(f"""
        import logging, logging.config, time
        logging.config.dictConfig({{
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {{"fluent": {{
                "()": "fluentclient.handler.FluentFormatter",
                "fields": {{"level": "severity", "thread": None, "process_name": None}},
                "fmt": {{"where": "%(module)s.%(funcName)s"}},
            }}}},
            "handlers": {{"fluent": {{
                "class": "fluentclient.handler.FluentHandler",
                "host": "127.0.0.1", "port": {fluent_server.port},
                "tag_prefix": "svc", "formatter": "fluent", "level": "INFO",
                "buffering": {{"flush_interval": 3600, "limit": 1048576}},
            }}}},
            "loggers": {{"orders.api": {{"handlers": ["fluent"], "level": "DEBUG"}}}},
        }})
        log = logging.getLogger("orders.api")
        print(time.time_ns(), flush=True)
        log.debug("not at the handler's level")
        for i in range(300):
            log.info("order %d placed", i, extra={{"order": i}})
        print(time.time_ns(), flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, env=child_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    before, after = map(int, result.stdout.split())
    assert fluent_server.wait_for_events(300, timeout=10)
    events = fluent_server.events
    assert len(events) == 300
    assert {e.tag for e in events} == {"svc.orders.api"}
    assert [e.record["order"] for e in events] == list(range(300))
    first = events[0].record
    assert first["message"] == "order 0 placed"
    assert first["severity"] == "INFO" and "level" not in first
    assert first["logger"] == "orders.api"
    assert first["where"] == "<string>.<module>"
    assert first["function"] == "<module>" and first["module"] == "<string>"
    assert isinstance(first["line"], int) and isinstance(first["process"], int)
    assert "thread" not in first and "process_name" not in first
    assert first["thread_name"] == "MainThread"
    times = [e.time for e in events]
    assert all(isinstance(t, EventTime) for t in times)
    assert before <= times[0].to_ns() <= times[-1].to_ns() <= after
    # Nanoseconds, not whole seconds or milliseconds.
    assert any(t.nanoseconds % 1_000_000 for t in times)


def test_tags_from_logger_names_and_a_fixed_tag(fluent_server, attach):
    derived = handler_for(fluent_server, tag_prefix="py")
    attach(derived, "billing.worker").info("a")
    attach(derived, "my app/v2..db").info("b")
    fixed = handler_for(fluent_server, tag="app.fixed")
    attach(fixed).info("c")
    assert derived.flush() is None and fixed.flush() is None
    assert fluent_server.wait_for_events(3, timeout=5)
    tags = {m: e.tag for m, e in by_message(fluent_server).items()}
    assert tags == {"a": "py.billing.worker", "b": "py.my_app_v2.db", "c": "app.fixed"}


def test_bad_tags_are_refused_at_configuration():
    with pytest.raises(InvalidTagError):
        FluentHandler(tag="bad tag", at_exit=False)
    with pytest.raises(InvalidTagError):
        FluentHandler(tag_prefix="a..b", at_exit=False)
    with pytest.raises(ValueError):
        FluentHandler(tag="a", tag_prefix="b", at_exit=False)


@given(st.text(max_size=60))
def test_any_logger_name_makes_a_valid_tag(name):
    tag = tag_from_name(name, "p")
    assert tag.startswith("p.")
    BufferedClient(at_exit=False)._tags(tag)  # raises InvalidTagError if it is not valid


class PaymentDeclined(Exception):
    pass


def test_exception_and_stack_become_fields(fluent_server, attach):
    handler = handler_for(fluent_server)
    log = attach(handler)

    def charge() -> None:
        raise PaymentDeclined("card 4242 declined")

    try:
        charge()
    except PaymentDeclined:
        log.exception("charge failed", stack_info=True)
    log.info("fine")
    handler.flush()
    assert fluent_server.wait_for_events(2, timeout=5)
    records = {m: e.record for m, e in by_message(fluent_server).items()}
    failed = records["charge failed"]
    assert failed["level"] == "ERROR"
    assert failed["exc_type"] == "tests.test_handler.PaymentDeclined"
    assert failed["exc_message"] == "card 4242 declined"
    tb = failed["exc_traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "in charge" in tb and 'raise PaymentDeclined("card 4242 declined")' in tb
    assert tb.rstrip().endswith("PaymentDeclined: card 4242 declined")
    assert failed["stack_info"].startswith("Stack (most recent call last):")
    assert "test_exception_and_stack_become_fields" in failed["stack_info"]
    assert not {"exc_type", "exc_traceback", "stack_info"} & set(records["fine"])


def test_extra_fields_and_unserializable_values_keep_the_line(fluent_server, attach):
    handler = handler_for(fluent_server)
    log = attach(handler)

    class Opaque:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr either")

    cyclic: list = [1]
    cyclic.append(cyclic)
    log.info("before", extra={"n": 1})
    log.info("odd values", extra={
        "user": {"id": 7, "roles": ("admin", "ops")},
        "when": datetime.datetime(2024, 5, 1, 12, 30),
        "tags": {"b"},
        "huge": 2**80,
        "raw": bytearray(b"\x00\x01"),
        "opaque": Opaque(),
        "cyclic": cyclic,
        "obj": object(),
        "none": None,
    })
    log.info("after", extra={"n": 3})
    handler.flush()
    assert fluent_server.wait_for_events(3, timeout=5)
    assert [e.record["message"] for e in fluent_server.events] == ["before", "odd values", "after"]
    odd = by_message(fluent_server)["odd values"].record
    assert odd["user"] == {"id": 7, "roles": ["admin", "ops"]}
    assert odd["when"] == "2024-05-01T12:30:00"
    assert odd["tags"] == ["b"]
    assert odd["huge"] == str(2**80)
    assert odd["raw"] == b"\x00\x01"
    assert odd["opaque"] == "<unprintable Opaque>"
    assert odd["cyclic"][0] == 1 and isinstance(odd["cyclic"][1], list)
    assert odd["obj"].startswith("<object object at")
    assert odd["none"] is None
    assert handler.client.stats().dropped_total == 0


def test_field_map_renames_and_drops_built_in_and_extra_fields(fluent_server, attach):
    handler = handler_for(fluent_server)
    handler.setFormatter(FluentFormatter(
        fields={"message": "msg", "level": "severity", "thread": None, "process": None,
                "request_id": "rid", "secret": None},
        fmt={"where": "%(module)s:%(lineno)d"},
    ))
    log = attach(handler)
    log.warning("renamed", extra={"request_id": "r-1", "secret": "hunter2", "kept": 1})
    handler.flush()
    assert fluent_server.wait_for_events(1, timeout=5)
    record = fluent_server.events[0].record
    assert record["msg"] == "renamed" and "message" not in record
    assert record["severity"] == "WARNING" and "level" not in record
    assert record["rid"] == "r-1" and record["kept"] == 1
    assert not {"thread", "process", "secret", "request_id"} & set(record)
    assert record["where"].startswith("test_handler:")


def test_message_formats_plain_formatters_and_dict_messages(fluent_server, attach):
    with_fmt = handler_for(fluent_server, tag="fmt.str")
    with_fmt.setFormatter(FluentFormatter("{levelname}|{message}", style="{"))
    plain = handler_for(fluent_server, tag="fmt.plain")
    plain.setFormatter(logging.Formatter("%(levelname)s:%(message)s"))
    no_extra = handler_for(fluent_server, tag="fmt.noextra")
    no_extra.setFormatter(FluentFormatter(extra=False))
    attach(with_fmt).info("one %s", "arg")
    attach(plain).info("two")
    log = attach(no_extra)
    log.info({"event": "login", "user": 42, "level": "audit"})
    log.info("three", extra={"dropped": True})
    for h in (with_fmt, plain, no_extra):
        h.flush()
    assert fluent_server.wait_for_events(4, timeout=5)
    records = {(e.tag, e.record.get("message")): e.record for e in fluent_server.events}
    assert records["fmt.str", "INFO|one arg"]["level"] == "INFO"
    # A text formatter (basicConfig's, a framework's) does not touch the message.
    assert records["fmt.plain", "two"]["logger"]
    assert "INFO:two" not in records["fmt.plain", "two"].values()
    merged = records["fmt.noextra", None]
    assert merged["event"] == "login" and merged["user"] == 42
    assert merged["level"] == "audit"  # the caller's own field wins
    assert "dropped" not in records["fmt.noextra", "three"]


def test_basic_config_leaves_the_message_the_message(fluent_server):
    """logging.basicConfig(handlers=[...]) gives the handler its own text formatter; the
    record's message stays what was logged, and formatted_field keeps that line too."""
    code = textwrap.dedent(f"""
        import logging, sys
        from fluentclient.handler import FluentHandler
        opts = dict(host={fluent_server.host!r}, port={fluent_server.port})
        logging.basicConfig(level=logging.INFO, handlers=[
            FluentHandler(tag="basic.plain", **opts),
            FluentHandler(tag="basic.line", formatted_field="formatted", **opts),
        ])
        logging.getLogger("orders").info("order %d placed", 7)
        # Trace ids cost nothing, not even an import, without OpenTelemetry.
        assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    """)
    subprocess.run([sys.executable, "-c", code], env=child_env(), check=True, timeout=60)
    assert fluent_server.wait_for_events(2, timeout=10)
    records = {e.tag: e.record for e in fluent_server.events}
    assert records["basic.plain"]["message"] == "order 7 placed"
    assert records["basic.plain"]["level"] == "INFO"
    assert "formatted" not in records["basic.plain"]
    assert records["basic.line"]["message"] == "order 7 placed"
    assert records["basic.line"]["formatted"] == "INFO:orders:order 7 placed"


def test_trace_and_span_ids_of_the_current_span(fluent_server, attach):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk.TracerProvider().get_tracer("tests")
    plain = handler_for(fluent_server, tag="otel.plain")
    renamed = handler_for(fluent_server, tag="otel.renamed")
    renamed.setFormatter(FluentFormatter(fields={"trace_id": "trace.id", "span_id": None}))
    off = handler_for(fluent_server, tag="otel.off", trace_ids=False)
    logs = [attach(h) for h in (plain, renamed, off)]
    with tracer.start_as_current_span("checkout") as span:
        ids = span.get_span_context()
        for log in logs:
            log.info("in span")
        logs[0].info("own id", extra={"trace_id": "mine"})
    logs[0].info("no span")
    for h in (plain, renamed, off):
        h.flush()
    assert fluent_server.wait_for_events(5, timeout=5)
    got = {(e.tag, e.record["message"]): e.record for e in fluent_server.events}
    trace_id, span_id = f"{ids.trace_id:032x}", f"{ids.span_id:016x}"
    assert len(trace_id) == 32 and len(span_id) == 16 and trace_id != "0" * 32
    record = got["otel.plain", "in span"]
    assert (record["trace_id"], record["span_id"]) == (trace_id, span_id)
    record = got["otel.renamed", "in span"]
    assert record["trace.id"] == trace_id and not {"trace_id", "span_id"} & set(record)
    assert not {"trace_id", "span_id"} & set(got["otel.off", "in span"])
    assert got["otel.plain", "own id"]["trace_id"] == "mine"
    assert got["otel.plain", "own id"]["span_id"] == span_id
    assert not {"trace_id", "span_id"} & set(got["otel.plain", "no span"])


def test_formatted_field_must_be_a_name(fluent_server):
    for bad in ("", 3):
        with pytest.raises(TypeError, match="formatted_field"):
            handler_for(fluent_server, formatted_field=bad)


def test_json_format_for_a_console(fluent_server):
    formatter = FluentFormatter()
    record = logging.LogRecord("x.y", logging.INFO, __file__, 10, "hi %s", ("you",), None)
    record.obj = object()
    line = formatter.format(record)
    assert line.startswith('{"message": "hi you"') and '"obj": "<object object' in line


def test_emit_never_raises_and_bad_records_go_to_handle_error(fluent_server, attach):
    handler = handler_for(fluent_server, cls=RecordingHandler)
    handler.setFormatter(FluentFormatter(fmt={"missing": "%(no_such_attribute)s"}))
    log = attach(handler)
    log.info("first")
    log.info("%d items", "many")  # the message cannot be built
    edited = logging.LogRecord(log.name, logging.INFO, __file__, 1, "edited time", (), None)
    edited.created = float("nan")
    log.handle(edited)
    log.info("last")
    handler.flush()
    assert fluent_server.wait_for_events(3, timeout=5)
    assert [e.record["message"] for e in fluent_server.events] == ["first", "edited time", "last"]
    # A field the record lacks costs that field only.
    assert all(e.record["missing"] is None for e in fluent_server.events)
    [(record, error)] = handler.errors
    assert record.msg == "%d items" and isinstance(error, TypeError)


def test_emit_after_close_is_counted_as_dropped_and_said_once(fluent_server, attach, caplog,
                                                              capsys):
    # logging.shutdown() closes the handler at exit while the program may still log.
    handler = handler_for(fluent_server, cls=RecordingHandler)
    log = attach(handler)
    log.info("open")
    handler.close()
    assert fluent_server.wait_for_events(1, timeout=5)
    with caplog.at_level(logging.WARNING, logger="fluentclient"):
        log.info("closed")
        log.info("closed again")
    assert handler.errors == []
    assert "Logging error" not in capsys.readouterr().err
    assert handler.client.stats().dropped == {"closed": 2}
    said = [r.getMessage() for r in caplog.records if r.name == "fluentclient"]
    assert len(said) == 1 and "dropping records (closed)" in said[0], said
    assert fluent_server.event_count == 1


def test_emit_on_a_shared_client_shut_down_elsewhere_does_not_raise(fluent_server, attach):
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False)
    handler = RecordingHandler(client=client)
    log = attach(handler)
    client.shutdown(2)
    log.info("too late")
    assert client.stats().dropped == {"closed": 1}
    assert handler.errors == []


def test_close_shuts_its_own_client_down_and_delivers(fluent_server, attach):
    handler = handler_for(fluent_server, buffering=Buffering(flush_interval=3600), close_timeout=5)
    log = attach(handler)
    for i in range(2000):
        log.info("drain %d", i)
    handler.close()
    assert handler.report is not None and handler.report.complete
    assert handler.report.sent == 2000
    assert fluent_server.wait_for_events(2000, timeout=5)


def test_close_returns_by_its_deadline_when_the_server_is_stuck(fluent_server, attach):
    fluent_server.stall(True)
    handler = handler_for(fluent_server, close_timeout=0.5, timeouts=Timeouts(write=30))
    log = attach(handler)
    for i in range(4000):
        log.info("stuck %d", i, extra={"pad": "x" * 1000})
    t0 = time.monotonic()
    handler.close()
    elapsed = time.monotonic() - t0
    report = handler.report
    assert report is not None and not report.complete
    assert report.unsent_records + report.possibly_lost > 0
    # The deadline, plus the client's short grace for its threads to settle.
    assert elapsed < 0.5 + 1.0


def test_a_shared_client_is_flushed_not_shut_down(fluent_server, attach):
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            buffering=Buffering(flush_interval=3600))
    try:
        first = FluentHandler(client=client, tag="shared.one", close_timeout=5)
        second = FluentHandler(client=client, tag="shared.two")
        attach(first).info("from one")
        log_two = attach(second)
        first.close()
        # Only close()'s flush can have sent it: the interval is an hour.
        assert fluent_server.wait_for_events(1, timeout=5)
        log_two.info("from two")
        second.flush()
        assert fluent_server.wait_for_events(2, timeout=5)
        assert client.post("shared.direct", {"still": "open"}) is True
    finally:
        client.shutdown(2)
    assert [e.tag for e in fluent_server.events] == ["shared.one", "shared.two", "shared.direct"]
    with pytest.raises(ValueError):
        FluentHandler(client=client, buffering=Buffering(limit=1024))


def test_buffer_overflow_handler_gets_each_record_dropped_for_space(fluent_server, attach):
    fluent_server.refuse(True)
    overflowed = []
    errors = []
    handler = handler_for(
        fluent_server, tag="over.flow", buffering=Buffering(limit=1024), close_timeout=0.2,
        buffer_overflow_handler=overflowed.append,
        on_error=lambda err, msg: errors.append(err),
    )
    log = attach(handler)
    for i in range(50):
        log.info("fill %d", i, extra={"pad": "p" * 100})
    assert overflowed, "a 1 KiB buffer with no server must overflow"
    assert all(m.tag == "over.flow" and m.record["pad"] == "p" * 100 for m in overflowed)
    full = [e for e in errors if isinstance(e, BufferFullError)]
    assert len(overflowed) == handler.client.stats().dropped["buffer_full"] == len(full)


def test_close_is_idempotent_and_flush_after_close_is_a_no_op(fluent_server):
    handler = handler_for(fluent_server)
    handler.close()
    report = handler.report
    assert report is not None
    handler.flush()
    handler.close()
    assert handler.report is report


# -- the record's time ----------------------------------------------------------------------

_SECONDS = st.integers(min_value=0, max_value=2**32 - 3)


@given(_SECONDS, st.integers(min_value=0, max_value=999_999_999))
def test_time_from_created_stays_in_the_millisecond_logging_printed(sec, nsec):
    ns = sec * 1_000_000_000 + nsec
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    record.__dict__.pop("created_ns", None)  # as on Python < 3.13
    record.created = ns / 1e9
    record.msecs = int((record.created - int(record.created)) * 1000) + 0.0
    got = record_time_ns(record)
    assert got // 1_000_000 % 1000 == int(record.msecs)
    assert got // 1_000_000_000 == int(record.created)
    # A float of seconds since 1970 holds the nanoseconds to within a few hundred ns.
    assert abs(got - ns) <= 1_000


def test_time_of_a_real_record_and_created_ns():
    before = time.time_ns()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "m", (), None)
    after = time.time_ns()
    assert before - 1_000 <= record_time_ns(record) <= after + 1_000
    record.created_ns = before + 123  # Python 3.13 records carry it: taken exactly
    record.created = (before + 123) / 1e9
    assert record_time_ns(record) == before + 123
    record.created = 1_700_000_000.5  # created edited after the fact: it wins
    assert record_time_ns(record) == 1_700_000_000_500_000_000
    # Even when the edited time falls right by the stale msecs, which must not pull it
    # into its own millisecond (this once depended on the time of day the test ran).
    near = 1_700_000_000_000_000_000 + int(record.msecs) * 1_000_000 + 1_500_000
    record.created = near / 1e9
    assert abs(record_time_ns(record) - near) <= 1_000


# -- values the packer accepts ----------------------------------------------------------------

_odd_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
    st.builds(object), st.datetimes(), st.decimals(), st.complex_numbers(),
)
odd_values = st.recursive(
    _odd_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.tuples(inner, inner), st.frozensets(st.integers()),
        st.dictionaries(st.one_of(st.text(), st.integers()), inner, max_size=4),
    ),
    max_leaves=20,
)


@given(odd_values)
def test_safe_values_always_pack(value):
    safe = safe_value(value)
    msgpack.packb(safe, use_bin_type=True)
    if value is None or isinstance(value, (str, bytes, bool, float)):
        assert safe is value
    elif isinstance(value, int) and -(2**63) <= value < 2**64:
        assert safe == value

