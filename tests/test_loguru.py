"""loguru messages as records through FluentSink, over real sockets to the embedded server."""

from __future__ import annotations

import calendar
import datetime
import decimal
import inspect
import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from fluentclient import BufferedClient, Buffering, EventTime, InvalidTagError, SyncClient
from fluentclient.handler import FIELDS as HANDLER_FIELDS
from fluentclient.loguru import FIELDS, FluentSink
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .subproc import ROOT, child_env
from .test_handler import odd_values


@pytest.fixture
def log() -> Iterator:
    """loguru's one logger with no sink but the test's own: the default one writes every
    line to stderr, and a sink left by one test would get the next test's lines."""
    logger.remove()
    yield logger
    logger.remove()  # stops every sink the test added, as an application's exit would


@pytest.fixture
def client(fluent_server: ForwardServer) -> Iterator[BufferedClient]:
    c = BufferedClient(fluent_server.host, fluent_server.port, backoff=FAST_BACKOFF,
                       at_exit=False)
    yield c
    c.shutdown(2)


def sink_for(server: ForwardServer, **kwargs) -> FluentSink:
    kwargs.setdefault("backoff", FAST_BACKOFF)
    kwargs.setdefault("at_exit", False)
    return FluentSink(host=server.host, port=server.port, **kwargs)


def exact_ns(when: datetime.datetime) -> int:
    """A datetime's moment in nanoseconds, worked out apart from the sink's own code."""
    return calendar.timegm(when.utctimetuple()) * 1_000_000_000 + when.microsecond * 1_000


def by_message(server: ForwardServer) -> dict:
    return {e.record.get("message"): e for e in server.events}


def here() -> int:
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno


def test_records_carry_the_handlers_fields_and_the_exact_time(fluent_server, log):
    seen: list = []
    log.add(lambda message: seen.append(message.record), level="TRACE")
    log.add(sink_for(fluent_server, tag_prefix="py"), level="TRACE")
    line = here() + 1
    log.info("order {} placed", 7)
    log.success("paid")
    log.trace("fine detail")
    log.log("WARNING", "a warning")
    assert fluent_server.wait_for_events(4, timeout=5)
    events = fluent_server.events
    assert {e.tag for e in events} == {"py.tests.test_loguru"}
    first = events[0].record
    assert first == {
        "message": "order 7 placed", "level": "INFO", "logger": "tests.test_loguru",
        "module": "test_loguru", "function": "test_records_carry_the_handlers_fields_and_the_"
        "exact_time", "line": line, "file": __file__, "process": seen[0]["process"].id,
        "process_name": "MainProcess", "thread": threading.get_ident(),
        "thread_name": threading.current_thread().name,
    }
    assert set(first) <= set(FIELDS)
    # Every field the logging handler writes and loguru has is named as the handler
    # names it, so one dashboard serves both.
    assert set(FIELDS) - {"file"} <= set(HANDLER_FIELDS)
    assert [e.record["level"] for e in events] == ["INFO", "SUCCESS", "TRACE", "WARNING"]
    # The moment loguru took, to the nanosecond: loguru's microseconds, times 1000.
    assert all(isinstance(e.time, EventTime) for e in events)
    assert [e.time.to_ns() for e in events] == [exact_ns(r["time"]) for r in seen]
    assert all(e.time.nanoseconds % 1_000 == 0 for e in events)


def test_time_of_a_naive_or_replaced_datetime(fluent_server, log):
    naive = datetime.datetime(2024, 5, 1, 12, 30, 0, 123456)
    patched = log.patch(lambda r: r.update(time=naive))
    broken = log.patch(lambda r: r.update(time="yesterday"))
    # loguru's default format prints the time, and would fail on the string first.
    log.add(sink_for(fluent_server, tag="t"), format="{message}")
    patched.info("naive")
    broken.info("not a time")
    assert fluent_server.wait_for_events(2, timeout=5)
    events = by_message(fluent_server)
    assert events["naive"].time.to_ns() == exact_ns(naive.astimezone())
    # Stamped when the sink saw it, rather than lost.
    assert abs(events["not a time"].time.to_ns() - EventTime.now().to_ns()) < 60 * 10**9


def test_bound_and_contextualized_extras_arrive_as_fields(fluent_server, log):
    log.add(sink_for(fluent_server, tag="app.ctx"))
    request = log.bind(user=42, roles=("admin", "ops"))
    with log.contextualize(request_id="r-1"):
        request.info("inside", attempt=2)
        worker = threading.Thread(target=lambda: request.info("other thread"))
        worker.start()
        worker.join()
    request.info("outside")
    log.bind(level="audit", logger="billing").info("caller's fields win")
    assert fluent_server.wait_for_events(4, timeout=5)
    records = {m: e.record for m, e in by_message(fluent_server).items()}
    inside = records["inside"]
    assert (inside["user"], inside["roles"], inside["request_id"], inside["attempt"]) == (
        42, ["admin", "ops"], "r-1", 2)
    # contextualize() is the block's context: another thread does not share it.
    assert "request_id" not in records["other thread"] and records["other thread"]["user"] == 42
    assert "request_id" not in records["outside"]
    own = records["caller's fields win"]
    assert own["level"] == "audit" and own["logger"] == "billing"


def test_fields_renames_and_drops_built_in_and_extra_fields(fluent_server, log):
    log.add(sink_for(fluent_server, tag="app.map", fields={
        "level": "severity", "message": "msg", "thread": None, "file": None,
        "secret": None, "request_id": "rid",
    }))
    log.bind(secret="hunter2", request_id="r-9", kept=1).warning("renamed")
    log.add(sink_for(fluent_server, tag="app.noextra", extra=False))
    log.bind(dropped=True).info("no extras")
    assert fluent_server.wait_for_events(3, timeout=5)
    records = {(e.tag, e.record.get("msg", e.record.get("message"))): e.record
               for e in fluent_server.events}
    renamed = records["app.map", "renamed"]
    assert renamed["severity"] == "WARNING" and renamed["rid"] == "r-9" and renamed["kept"] == 1
    assert not {"level", "message", "thread", "file", "secret", "request_id"} & set(renamed)
    assert "dropped" not in records["app.noextra", "no extras"]
    with pytest.raises(TypeError):
        FluentSink(fields={"level": 3}, at_exit=False)


class PaymentDeclined(Exception):
    pass


def test_exceptions_arrive_as_the_handlers_fields(fluent_server, log):
    log.add(sink_for(fluent_server, tag="app.err"))

    def charge() -> None:
        raise PaymentDeclined("card 4242 declined")

    try:
        charge()
    except PaymentDeclined:
        log.exception("charge failed")
    log.opt(exception=ValueError("bad input")).warning("given")
    log.info("fine")
    assert fluent_server.wait_for_events(3, timeout=5)
    records = {m: e.record for m, e in by_message(fluent_server).items()}
    failed = records["charge failed"]
    assert failed["level"] == "ERROR"
    assert failed["exc_type"] == "tests.test_loguru.PaymentDeclined"
    assert failed["exc_message"] == "card 4242 declined"
    tb = failed["exc_traceback"]
    assert tb.startswith("Traceback (most recent call last):")
    assert "in charge" in tb and 'raise PaymentDeclined("card 4242 declined")' in tb
    assert tb.endswith("PaymentDeclined: card 4242 declined")
    given = records["given"]
    assert (given["exc_type"], given["exc_message"]) == ("ValueError", "bad input")
    assert given["exc_traceback"] == "ValueError: bad input"
    assert not {"exc_type", "exc_message", "exc_traceback"} & set(records["fine"])


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not this one")


@pytest.mark.parametrize("fmt", [None, "{time} {level} {message}"], ids=["default", "own"])
def test_exceptions_arrive_the_same_with_and_without_enqueue(fluent_server, log, fmt):
    """loguru pickles a record for its worker thread with enqueue=True, and the traceback
    object with it is lost: the sink still sends the whole traceback, in the same shape,
    and never the values of local variables that loguru's diagnose prints."""
    options = {} if fmt is None else {"format": fmt}
    log.add(sink_for(fluent_server, tag="app.direct"), **options)
    log.add(sink_for(fluent_server, tag="app.queued"), enqueue=True, **options)

    def charge(card: str) -> None:
        pin = "PIN-8086"  # noqa: F841 - a local that loguru's diagnose would show
        raise PaymentDeclined(f"card {card} declined")

    try:
        charge("4242")
    except PaymentDeclined:
        log.exception("charge failed")
    try:
        raise Unpicklable("only loguru's text keeps these words")
    except Unpicklable:
        log.exception("odd exception")
    try:
        try:
            charge("1111")
        except PaymentDeclined as exc:
            raise RuntimeError("retry failed") from exc
    except RuntimeError:
        log.exception("chained")
    log.opt(exception=ValueError("bad input")).warning("given")
    log.complete()
    assert fluent_server.wait_for_events(8, timeout=10)
    keys = ("exc_type", "exc_message", "exc_traceback")
    got = {(e.tag, e.record["message"]): {k: e.record.get(k) for k in keys}
           for e in fluent_server.events}
    for message in ("charge failed", "odd exception", "chained", "given"):
        direct, queued = got["app.direct", message], got["app.queued", message]
        assert queued["exc_type"] == direct["exc_type"], message
        assert queued["exc_message"] == direct["exc_message"], message
        # The same frames and lines; Python's own carets (^^^), which loguru does not
        # print, are all that may differ.
        assert [line for line in queued["exc_traceback"].split("\n")
                if line.strip(" ^~")] == [
            line for line in direct["exc_traceback"].split("\n") if line.strip(" ^~")]
    tb = got["app.queued", "charge failed"]["exc_traceback"]
    assert tb.startswith("Traceback (most recent call last):\n  File ")
    assert "in charge" in tb and 'raise PaymentDeclined(f"card {card} declined")' in tb
    assert tb.endswith("PaymentDeclined: card 4242 declined")
    assert "PIN-8086" not in tb and "└" not in tb
    odd = got["app.queued", "odd exception"]
    assert odd["exc_type"] == "tests.test_loguru.Unpicklable"
    assert odd["exc_message"] == "only loguru's text keeps these words"
    assert got["app.queued", "given"]["exc_traceback"] == "ValueError: bad input"
    assert "\n\nThe above exception was the direct cause" in (
        got["app.queued", "chained"]["exc_traceback"])


def test_trace_and_span_ids_of_the_current_span(fluent_server, log):
    """In the sink itself, and with enqueue=True (whose sink runs on loguru's worker
    thread) through trace_patcher, which takes them where the message is logged."""
    from fluentclient.loguru import trace_patcher

    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    tracer = sdk.TracerProvider().get_tracer("tests")
    log.add(sink_for(fluent_server, tag="lg.direct"))
    log.add(sink_for(fluent_server, tag="lg.renamed", fields={"span_id": "span"}))
    log.add(sink_for(fluent_server, tag="lg.off", trace_ids=False))
    log.add(sink_for(fluent_server, tag="lg.queued"), enqueue=True)
    patched = log.patch(trace_patcher)
    with tracer.start_as_current_span("ship") as span:
        ids = span.get_span_context()
        patched.info("in span")
    patched.info("no span")
    log.complete()
    assert fluent_server.wait_for_events(8, timeout=10)
    got = {(e.tag, e.record["message"]): e.record for e in fluent_server.events}
    trace_id, span_id = f"{ids.trace_id:032x}", f"{ids.span_id:016x}"
    for tag in ("lg.direct", "lg.queued"):
        record = got[tag, "in span"]
        assert (record["trace_id"], record["span_id"]) == (trace_id, span_id), tag
        assert not {"trace_id", "span_id"} & set(got[tag, "no span"])
    assert got["lg.renamed", "in span"]["span"] == span_id
    assert "span_id" not in got["lg.renamed", "in span"]
    # trace_patcher bound them as extras, which trace_ids=False does not filter.
    assert got["lg.off", "in span"]["trace_id"] == trace_id
    assert not {"trace_id", "span_id"} & set(got["lg.off", "no span"])


def test_tags_fixed_from_the_module_or_from_a_bound_value(fluent_server, log):
    log.add(sink_for(fluent_server, tag="app.fixed"), filter=lambda r: r["extra"].get("s") == 1)
    log.add(sink_for(fluent_server, tag_prefix="svc"), filter=lambda r: r["extra"].get("s") == 2)
    log.add(sink_for(fluent_server, tag="app.rest", tag_prefix="svc", tag_key="component"),
            filter=lambda r: r["extra"].get("s") == 3)
    log.bind(s=1).info("fixed")
    log.bind(s=2).info("module")
    log.patch(lambda r: r.update(name=None)).bind(s=2).info("no module")
    log.bind(s=3, component="billing api").info("bound")
    log.bind(s=3).info("unbound")
    assert fluent_server.wait_for_events(5, timeout=5)
    tags = {m: e.tag for m, e in by_message(fluent_server).items()}
    assert tags == {
        "fixed": "app.fixed", "module": "svc.tests.test_loguru", "no module": "svc.loguru",
        "bound": "svc.billing_api", "unbound": "app.rest",
    }


def test_bad_tags_and_options_are_refused_at_configuration(client):
    with pytest.raises(InvalidTagError):
        FluentSink(tag="bad tag", at_exit=False)
    with pytest.raises(InvalidTagError):
        FluentSink(tag_prefix="a..b", at_exit=False)
    with pytest.raises(ValueError):
        FluentSink(tag="a", tag_prefix="b", at_exit=False)
    with pytest.raises(ValueError):
        FluentSink(client=client, buffering=Buffering(limit=1024))
    with pytest.raises(ValueError):
        FluentSink(close_timeout=-1, at_exit=False)


def test_a_shared_client_is_flushed_not_closed(fluent_server, client, log):
    client_flushes_only_when_asked = BufferedClient(
        fluent_server.host, fluent_server.port, at_exit=False,
        buffering=Buffering(flush_interval=3600))
    try:
        sink = FluentSink(client=client_flushes_only_when_asked, tag="shared.loguru")
        handler_id = log.add(sink)
        log.info("through the sink")
        log.remove(handler_id)
        # Only stop()'s flush can have sent it: the interval is an hour.
        assert fluent_server.wait_for_events(1, timeout=5)
        assert sink.report is None
        assert client_flushes_only_when_asked.post("shared.direct", {"still": "open"}) is True
        assert client_flushes_only_when_asked.flush(5)
    finally:
        client_flushes_only_when_asked.shutdown(2)
    assert [e.tag for e in fluent_server.events] == ["shared.loguru", "shared.direct"]


def test_remove_shuts_the_own_client_down_and_delivers(fluent_server, log):
    sink = sink_for(fluent_server, tag="app.drain", buffering=Buffering(flush_interval=3600),
                    close_timeout=5)
    handler_id = log.add(sink)
    for i in range(2000):
        log.info("drain {}", i)
    log.remove(handler_id)
    assert sink.report is not None and sink.report.complete
    assert sink.report.sent == 2000
    assert fluent_server.wait_for_events(2000, timeout=5)
    assert [e.record["message"] for e in fluent_server.events] == [
        f"drain {i}" for i in range(2000)]
    assert sink.client.post("app.after", {"n": 1}) is False  # it is shut down
    sink.stop()  # again: nothing more happens
    assert sink.report.sent == 2000


def test_unserializable_extras_keep_the_record_and_its_neighbours(fluent_server, log):
    sink = sink_for(fluent_server, tag="app.odd")
    log.add(sink)

    class Opaque:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr either")

    cyclic: list = [1]
    cyclic.append(cyclic)
    log.bind(n=1).info("before")
    log.bind(
        user={"id": 7, 3: ("a", "b")}, when=datetime.datetime(2024, 5, 1, 12, 30),
        tags={"b"}, huge=2**80, raw=bytearray(b"\x00\x01"), opaque=Opaque(), cyclic=cyclic,
        amount=decimal.Decimal("1.50"), obj=object(), nan=float("nan"), none=None,
    ).info("odd values")
    log.bind(n=3).info("after")
    assert fluent_server.wait_for_events(3, timeout=5)
    assert [e.record["message"] for e in fluent_server.events] == ["before", "odd values", "after"]
    odd = by_message(fluent_server)["odd values"].record
    assert odd["user"] == {"id": 7, "3": ["a", "b"]}
    assert odd["when"] == "2024-05-01T12:30:00" and odd["tags"] == ["b"]
    assert odd["huge"] == str(2**80) and odd["raw"] == b"\x00\x01"
    assert odd["opaque"] == "<unprintable Opaque>"
    assert odd["cyclic"][0] == 1 and isinstance(odd["cyclic"][1], list)
    assert odd["amount"] == "1.50" and odd["obj"].startswith("<object object at")
    assert odd["none"] is None
    assert sink.client.stats().dropped_total == 0 and sink.failures == 0


# Names of the sink's own fields are left out: an extra of the same name wins, by design,
# and would replace the message this test looks for.
_extras = st.dictionaries(st.text().filter(lambda k: k not in FIELDS), odd_values, max_size=6)


@pytest.fixture
def hypothesis_sink(fluent_server, log) -> Iterator[FluentSink]:
    # Each example waits for its record to arrive: a short flush interval keeps the
    # hundred examples from waiting out the default 0.1 s each.
    sink = sink_for(fluent_server, tag="app.any", buffering=Buffering(flush_interval=0.005))
    log.add(sink)
    yield sink


def test_any_extras_and_message_arrive(fluent_server, log, hypothesis_sink):
    sent = []

    @given(message=st.text(), extras=_extras)
    def check(message: str, extras: dict) -> None:
        sent.append(message)
        # No arguments to the call, so loguru takes the message as it is, braces and all.
        log.bind(**extras).info(message)
        assert fluent_server.wait_for_events(len(sent), timeout=10)
        record = fluent_server.events[len(sent) - 1].record
        assert record["message"] == message
        assert set(extras) <= set(record)

    check()
    assert [e.record["message"] for e in fluent_server.events] == sent
    assert hypothesis_sink.client.stats().dropped_total == 0
    assert hypothesis_sink.failures == 0


def test_write_never_raises_into_the_application(fluent_server, log):
    # catch=False: anything the sink let out would reach this test.
    closed = SyncClient(fluent_server.host, fluent_server.port)
    closed.close()
    on_closed = FluentSink(client=closed, tag="app.closed")
    log.add(on_closed, catch=False, filter=lambda r: r["extra"].get("s") == 1)
    broken = sink_for(fluent_server, tag="app.broken")
    log.add(broken, catch=False, filter=lambda r: r["extra"].get("s") == 2)
    log.bind(s=1).info("to a closed client")
    log.bind(s=1).info("again")
    # A patcher that leaves the record unusable costs that record, nothing more.
    log.bind(s=2).patch(lambda r: r.update(process=None)).info("unreadable")
    log.bind(s=2).info("readable")
    assert fluent_server.wait_for_events(1, timeout=5)
    assert [e.record["message"] for e in fluent_server.events] == ["readable"]
    assert on_closed.failures == 2 and broken.failures == 1


def test_enqueued_messages_arrive_from_loguru_s_worker(fluent_server, log):
    seen: list = []
    log.add(lambda message: seen.append(message.record))
    handler_id = log.add(sink_for(fluent_server, tag="app.queued"), enqueue=True)
    log.bind(n=1).info("queued")
    log.remove(handler_id)  # joins loguru's worker, then stops the sink
    assert fluent_server.wait_for_events(1, timeout=5)
    [event] = fluent_server.events
    assert event.record["message"] == "queued" and event.record["n"] == 1
    assert event.time.to_ns() == exact_ns(seen[0]["time"])


def test_sink_is_named_for_its_tag():
    sink = FluentSink(tag_prefix="svc", at_exit=False)
    try:
        assert repr(sink) == "<FluentSink svc.<module>>"
        assert not hasattr(sink, "flush")  # loguru would call it after every message
    finally:
        sink.stop()


class ToLoguru(logging.Handler):
    """Standard logging routed into loguru, as loguru's documentation shows it."""

    def emit(self, record: logging.LogRecord) -> None:
        # loguru names the record after the module of the frame it is told to look at:
        # the first one outside logging, whose frames differ between Pythons.
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame, depth = frame.f_back, depth + 1
        logger.opt(depth=depth).log(record.levelname, record.getMessage())


def test_the_guides_filter_keeps_the_clients_own_lines_out_of_the_sink(
        fluent_server, log, capsys):
    routed = logging.getLogger("fluentclient")
    to_loguru = ToLoguru()
    routed.addHandler(to_loguru)
    try:
        seen: list = []
        log.add(lambda message: seen.append(message.record["message"]), format="{message}")
        sink = sink_for(fluent_server, tag="app.routed")
        log.add(sink, filter={"fluentclient": False})
        log.info("sent")
        sink.client.shutdown(2)
        # The client says it drops this line, through logging, into loguru, while the
        # sink is posting it: without the filter loguru refuses to re-enter the sink,
        # and prints its own error.
        log.info("dropped")
    finally:
        routed.removeHandler(to_loguru)
    assert fluent_server.wait_for_events(1, timeout=5)
    assert [e.record["message"] for e in fluent_server.events] == ["sent"]
    assert any("dropping records (closed)" in m for m in seen)
    assert "Logging error in Loguru" not in capsys.readouterr().err


def test_the_guides_record_is_what_the_sink_sends(fluent_server, log):
    guide = (ROOT / "docs" / "guides" / "loguru.md").read_text(encoding="utf-8")
    shown = json.loads(re.search(r"```json\n(.*?)```", guide, re.S).group(1))
    log.add(sink_for(fluent_server, tag_prefix="shop"))

    def place_order(order_id, user_id):
        request_log = log.bind(user=user_id)
        with log.contextualize(request_id="7f3c9a"):
            request_log.info("order {} placed", order_id)

    place_order(1042, 42)
    assert fluent_server.wait_for_events(1, timeout=5)
    sent = fluent_server.events[0].record
    assert list(sent) == list(shown)
    assert {k: type(v) for k, v in sent.items()} == {k: type(v) for k, v in shown.items()}
    same = ("message", "level", "function", "process_name", "thread_name", "request_id", "user")
    assert {k: sent[k] for k in same} == {k: shown[k] for k in same}


# -- the process around it ------------------------------------------------------------------

def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=child_env())


def test_every_line_arrives_by_exit_without_a_traceback(fluent_server):
    # Nothing removes the sink: the process's exit must deliver. A hook that logs after
    # the client drained (hooks run last-registered first) finds it closed: a line
    # dropped, counted and said, but no traceback.
    result = run_child(f"""
        import atexit
        from loguru import logger
        logger.remove()
        atexit.register(lambda: logger.info("after the drain"))
        from fluentclient.loguru import FluentSink
        logger.add(FluentSink(host="127.0.0.1", port={fluent_server.port}, tag="exit.test",
                              buffering={{"flush_interval": 3600}}))
        for i in range(300):
            logger.bind(i=i).info("line {{}}", i)
    """)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    [said] = result.stderr.splitlines()
    assert said.startswith("fluentclient: dropping records (closed)")
    assert fluent_server.wait_for_events(300, timeout=10)
    assert [e.record["i"] for e in fluent_server.events] == list(range(300))


def test_fluentclient_never_imports_loguru_and_says_what_is_missing():
    result = run_child("""
        import sys, fluentclient, fluentclient.handler, fluentclient.structlog
        assert "loguru" not in sys.modules, "loguru was imported"
        sys.modules["loguru"] = None  # as if it were not installed
        try:
            import fluentclient.loguru
        except ImportError as exc:
            print(exc)
        else:
            raise AssertionError("imported without loguru")
    """)
    assert result.returncode == 0, result.stderr
    assert "fluentclient.loguru needs loguru" in result.stdout
    assert "fluentclient[loguru]" not in result.stdout
