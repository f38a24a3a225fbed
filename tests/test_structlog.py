"""structlog's event dicts as records, over real sockets to the embedded server."""

from __future__ import annotations

import decimal
import io
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import structlog

from fluentclient import BufferedClient
from fluentclient.server import ForwardServer
from fluentclient.structlog import FluentLoggerFactory, FluentProcessor

from .conftest import FAST_BACKOFF
from .subproc import child_env


@pytest.fixture
def client(fluent_server: ForwardServer) -> Iterator[BufferedClient]:
    c = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                       at_exit=False)
    yield c
    c.shutdown(2)


def wrapped(processors, logger=None):
    """A structlog logger of our own: configure() would change every other test's."""
    return structlog.wrap_logger(
        logger if logger is not None else structlog.PrintLogger(io.StringIO()),
        processors=processors,
    )


def test_processor_sends_the_event_dict_and_drops_it(fluent_server, client):
    out = io.StringIO()
    log = wrapped(
        [structlog.processors.add_log_level, FluentProcessor(client, tag="app.sl")],
        structlog.PrintLogger(out),
    ).bind(user=42)
    log.info("login", ok=True, ms=1.5)
    log.warning("slow", ms=900)
    assert client.flush(5)
    assert fluent_server.wait_for_events(2, timeout=5)
    assert [(e.tag, e.record) for e in fluent_server.events] == [
        ("app.sl", {"user": 42, "ok": True, "ms": 1.5, "event": "login", "level": "info"}),
        ("app.sl", {"user": 42, "ms": 900, "event": "slow", "level": "warning"}),
    ]
    assert out.getvalue() == ""  # posted, then dropped: nothing else printed it


def test_passthrough_hands_the_event_on_to_a_renderer(fluent_server, client):
    out = io.StringIO()
    log = wrapped(
        [FluentProcessor(client, tag="app.both", passthrough=True),
         structlog.processors.JSONRenderer()],
        structlog.PrintLogger(out),
    )
    log.error("disk full", free=0)
    assert fluent_server.wait_for_events(1, timeout=5)
    assert fluent_server.events[0].record == {"free": 0, "event": "disk full", "level": "error"}
    assert json.loads(out.getvalue()) == {"free": 0, "event": "disk full"}


def test_tag_from_a_key_under_a_prefix_with_a_fixed_fallback(fluent_server, client):
    log = wrapped([FluentProcessor(client, tag="app.other", tag_key="component",
                                   tag_prefix="svc")])
    log.info("a", component="billing api")
    log.info("b")
    assert client.flush(5)
    assert fluent_server.wait_for_events(2, timeout=5)
    tags = {e.record["event"]: e.tag for e in fluent_server.events}
    assert tags == {"a": "svc.billing_api", "b": "app.other"}
    assert fluent_server.events[0].record["component"] == "billing api"


def test_exceptions_and_values_msgpack_cannot_take(fluent_server, client):
    log = wrapped([FluentProcessor(client, tag="app.err")])
    try:
        {}["missing"]
    except KeyError:
        log.exception("lookup failed", amount=decimal.Decimal("1.50"), seen={3})
    log.info("given", exc_info=ValueError("bad input"), obj=object())
    assert client.flush(5)
    assert fluent_server.wait_for_events(2, timeout=5)
    failed, given = (e.record for e in fluent_server.events)
    assert failed["level"] == "error"
    assert failed["exc_type"] == "KeyError" and failed["exc_message"] == "'missing'"
    assert failed["exc_traceback"].startswith("Traceback (most recent call last):")
    assert 'in test_exceptions_and_values_msgpack_cannot_take' in failed["exc_traceback"]
    assert failed["amount"] == "1.50" and failed["seen"] == [3]
    assert "exc_info" not in failed
    assert given["exc_type"] == "ValueError" and given["exc_message"] == "bad input"
    assert given["obj"].startswith("<object object at")
    assert client.stats().dropped_total == 0


def test_logger_factory_with_configure(fluent_server, client):
    structlog.configure(
        processors=[structlog.processors.add_log_level],
        logger_factory=FluentLoggerFactory(client, tag_prefix="sl"),
        cache_logger_on_first_use=False,
    )
    try:
        structlog.get_logger("payments").warning("refund", order=7)
        structlog.get_logger().info("nameless")
    finally:
        structlog.reset_defaults()
    assert client.flush(5)
    assert fluent_server.wait_for_events(2, timeout=5)
    assert [(e.tag, e.record) for e in fluent_server.events] == [
        ("sl.payments", {"order": 7, "event": "refund", "level": "warning"}),
        ("sl.structlog", {"event": "nameless", "level": "info"}),
    ]


def test_factory_logger_takes_a_rendered_string_too(fluent_server, client):
    logger = FluentLoggerFactory(client, tag="app.text")("ignored.name")
    log = wrapped([structlog.processors.JSONRenderer()], logger)
    log.info("rendered", n=1)
    assert fluent_server.wait_for_events(1, timeout=5)
    event = fluent_server.events[0]
    assert event.tag == "app.text"
    assert json.loads(event.record["message"]) == {"n": 1, "event": "rendered"}
    assert event.record["level"] == "info"


@pytest.mark.parametrize("path", ["render_to_log_kwargs", "ProcessorFormatter"])
def test_through_the_standard_library_message_and_level_are_logging_s(fluent_server, path):
    """structlog on top of logging, to a FluentHandler that has a text formatter (as
    basicConfig gives it): the message is the event, the level logging's name of it."""
    import logging

    from fluentclient.handler import FluentHandler

    handler = FluentHandler(tag="sl.stdlib", host=fluent_server.host, port=fluent_server.port,
                            backoff=FAST_BACKOFF, at_exit=False)
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    std = logging.getLogger(f"billing.{path}")
    std.propagate = False
    std.setLevel(logging.DEBUG)
    std.addHandler(handler)
    last = (structlog.stdlib.render_to_log_kwargs if path == "render_to_log_kwargs"
            else structlog.stdlib.ProcessorFormatter.wrap_for_formatter)
    log = structlog.wrap_logger(
        std, processors=[structlog.processors.add_log_level, last],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        log.info("charged", amount=3)
        log.warning("late", days=2)
        handler.flush()
        assert fluent_server.wait_for_events(2, timeout=5)
    finally:
        std.removeHandler(handler)
        handler.close()
    got = [{k: e.record.get(k) for k in ("message", "event", "level", "amount", "days")}
           for e in fluent_server.events]
    if path == "render_to_log_kwargs":
        assert got == [
            {"message": "charged", "event": None, "level": "INFO", "amount": 3, "days": None},
            {"message": "late", "event": None, "level": "WARNING", "amount": None, "days": 2},
        ]
    else:  # the event dict is the message: merged as fields, as a dict message is
        assert got == [
            {"message": None, "event": "charged", "level": "INFO", "amount": 3, "days": None},
            {"message": None, "event": "late", "level": "WARNING", "amount": None, "days": 2},
        ]


def test_trace_and_span_ids_of_the_current_span(fluent_server, client):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk.TracerProvider().get_tracer("tests")
    on = wrapped([FluentProcessor(client, tag="sl.otel")])
    off = wrapped([FluentProcessor(client, tag="sl.otel.off", trace_ids=False)])
    with tracer.start_as_current_span("charge") as span:
        ids = span.get_span_context()
        on.info("in span")
        off.info("in span")
    on.info("no span")
    assert client.flush(5)
    assert fluent_server.wait_for_events(3, timeout=5)
    got = {(e.tag, e.record["event"]): e.record for e in fluent_server.events}
    record = got["sl.otel", "in span"]
    assert record["trace_id"] == f"{ids.trace_id:032x}"
    assert record["span_id"] == f"{ids.span_id:016x}"
    assert not {"trace_id", "span_id"} & set(got["sl.otel.off", "in span"])
    assert not {"trace_id", "span_id"} & set(got["sl.otel", "no span"])


def test_fluentclient_never_imports_structlog():
    code = (
        "import sys, fluentclient, fluentclient.handler, fluentclient.aio\n"
        "assert 'structlog' not in sys.modules, 'structlog was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30, env=child_env())
    assert result.returncode == 0, result.stderr
