"""Misconfigurations that used to fail silently: a FluentHandler as the only place the
client's own warnings could go, logging.shutdown() at exit, and records that cannot be
serialized.
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import io
import json
import logging
import logging.handlers
import queue
import socket
from collections.abc import Iterator

import pytest

from fluentclient import BufferedClient, FluentConnectionError, SerializationError, SyncClient
from fluentclient.handler import FluentHandler
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF
from .subproc import Child
from .waiting import wait_until

# Never resolves (RFC 2606), so connecting fails at the name lookup.
NOWHERE = "fluentd.invalid"

# The README's dictConfig example, pointed at a host that does not resolve. The child
# waits until the client has seen the server fail, so the test does not depend on how
# soon the first attempt comes; then it ends as an application would.
DICT_CONFIG = """
import logging, logging.config, time
config = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"fluent": {
        "()": "fluentclient.handler.FluentFormatter",
        "fields": {"level": "severity", "thread": None},
    }},
    "handlers": {"fluent": {
        "class": "fluentclient.handler.FluentHandler",
        "host": P["host"], "port": 24224, "tag_prefix": "shop", "formatter": "fluent",
        "close_timeout": P["close_timeout"], "flush_timeout": P["flush_timeout"],
    }},
    "root": {"handlers": ["fluent"], "level": "INFO"},
}
if P.get("mine"):
    config["formatters"]["mine"] = {"format": "MINE %(message)s"}
    config["handlers"]["mine"] = {"class": "logging.StreamHandler",
                                  "stream": "ext://sys.stdout", "formatter": "mine"}
    config["loggers"] = {"fluentclient": {"handlers": ["mine"], "level": "INFO"}}
logging.config.dictConfig(config)
handler = logging.getLogger().handlers[0]
log = logging.getLogger("orders.api")
log.info("order %s placed", 1234, extra={"order": 1234})
deadline = time.monotonic() + 30
while not handler.client.stats().connect_failures and time.monotonic() < deadline:
    time.sleep(0.01)
stamp("FAILED_ONCE")
if P.get("shutdown"):
    logging.shutdown()
    stamp("SHUT_DOWN")
    log.info("after shutdown")
    log.info("after shutdown, again")
    stamp("DROPPED", json.dumps(handler.client.stats().dropped, separators=(",", ":")))
stamp("MAIN_DONE")
"""

_CANNOT_CONNECT = f"fluentclient: cannot connect to {NOWHERE}:24224"


def outage_lines(text: str) -> list[str]:
    """The lines that report the outage itself (the one at exit quotes it too)."""
    return [line for line in text.splitlines() if _CANNOT_CONNECT in line]


def run_dict_config(**params: object) -> tuple:
    params = {"host": NOWHERE, "close_timeout": 1.0, "flush_timeout": 30.0, **params}
    child = Child("dictconfig", "import json\n" + DICT_CONFIG, params)
    return child.finish(timeout=90), params


def test_dict_config_to_an_unresolvable_host_warns_on_stderr_once_and_exits_on_time():
    result, params = run_dict_config()
    assert result.returncode == 0, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    # The outage is said once, at once; a wait at exit is said with what bounds it (none
    # when the resolver says the name does not exist: exit does not wait for that).
    assert len(outage_lines(result.stderr)) == 1, result.describe()
    waits = [line for line in result.stderr.splitlines() if "waiting up to" in line]
    assert all("1 s (close_timeout)" in line for line in waits), result.describe()
    assert len(waits) <= 1, result.describe()
    assert "not sent" in result.stderr, result.describe()
    # close_timeout bounds the exit (the client's drain used to take its own 5 s).
    # Generous: a loaded machine can be slow to run the hooks, never by seconds.
    assert result.seconds_between("MAIN_DONE", "AT_EXIT_DONE") < params["close_timeout"] + 3.0


def test_logging_shutdown_closes_cleanly_and_later_records_are_dropped_once():
    result, params = run_dict_config(shutdown=True)
    assert result.returncode == 0, result.describe()
    assert "Logging error" not in result.stderr, result.describe()
    assert result.foreign_stderr() == [], result.describe()
    assert len(outage_lines(result.stderr)) == 1, result.describe()
    # flush() does not wait out its 30 s for a server known to be down; close() keeps to
    # its deadline.
    assert result.seconds_between("FAILED_ONCE", "SHUT_DOWN") < params["close_timeout"] + 3.0
    [[_, dropped]] = result.lines("DROPPED")
    assert json.loads(dropped) == {"closed": 2}
    assert result.stderr.count("dropping records (closed)") == 1, result.describe()


def test_a_handler_configured_for_fluentclient_gets_the_warnings_and_stderr_stays_quiet():
    result, _ = run_dict_config(mine=True, shutdown=True)
    assert result.returncode == 0, result.describe()
    assert result.stderr == "", result.describe()
    mine = [line for line in result.stdout.splitlines() if line.startswith("MINE ")]
    assert len(outage_lines("\n".join(mine))) == 1, result.describe()
    assert any("dropping records (closed)" in line for line in mine), result.describe()


def test_a_fluentclient_logger_disabled_by_dict_config_is_said_once():
    # logging.config's default, disable_existing_loggers=True, switches off the logger
    # that building the handler just made: said once, not left to vanish; and what it
    # would have said (the host, the records not sent) still reaches stderr, once each.
    child = Child("disabled", """
        import logging, logging.config
        logging.config.dictConfig({
            "version": 1,
            "handlers": {"fluent": {"class": "fluentclient.handler.FluentHandler",
                                    "host": P["host"], "close_timeout": 0.2}},
            "root": {"handlers": ["fluent"], "level": "INFO"},
        })
        logging.info("one")
        logging.info("two")
    """, {"host": NOWHERE})
    result = child.finish(timeout=60)
    assert result.returncode == 0, result.describe()
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.describe()
    assert '"disable_existing_loggers": False' in lines[0], result.describe()
    assert lines[1].startswith(f"fluentclient: cannot connect to {NOWHERE}"), result.describe()
    assert "2 records" in lines[2] and "not sent" in lines[2], result.describe()


# -- in this process: where the client's own records go --------------------------------


@pytest.fixture
def own_logger() -> Iterator[logging.Logger]:
    """The "fluentclient" logger cut off from the test run's root handlers, restored after."""
    own = logging.getLogger("fluentclient")
    saved = (own.propagate, own.level, list(own.handlers))
    own.propagate = False
    own.setLevel(logging.DEBUG)
    for handler in saved[2]:
        own.removeHandler(handler)
    yield own
    for handler in list(own.handlers):
        own.removeHandler(handler)
    own.propagate, own.level = saved[0], saved[1]
    for handler in saved[2]:
        own.addHandler(handler)


@contextlib.contextmanager
def alone(logger: logging.Logger) -> Iterator[None]:
    """No handler on ``logger`` but what the test adds, for the block.

    Newer pytests attach their log-capturing handler to every non-propagating logger when
    a test's call begins, after fixtures ran: that would be "another handler" here.
    """
    saved = list(logger.handlers)
    for handler in saved:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in saved:
            logger.addHandler(handler)


@pytest.fixture
def last_resort(monkeypatch) -> io.StringIO:
    """logging.lastResort writing where the test can read it."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setLevel(logging.WARNING)
    monkeypatch.setattr(logging, "lastResort", handler)
    return out


def idle_handler(**kwargs: object) -> FluentHandler:
    """A handler whose client never starts: nothing is posted in these tests."""
    return FluentHandler(host=NOWHERE, at_exit=False, backoff=FAST_BACKOFF, **kwargs)


def test_own_records_reaching_only_fluent_handlers_go_to_the_last_resort(
    own_logger, last_resort,
):
    with alone(own_logger):
        # At ERROR, the FluentHandler would not even see a warning: it still must not vanish.
        handler = idle_handler(level=logging.ERROR)
        own_logger.addHandler(handler)
        try:
            own_logger.warning("fluentclient: the server is down")
            own_logger.info("fluentclient: connected")  # below the last resort's level
            assert last_resort.getvalue() == "fluentclient: the server is down\n"
            # Never fed back into the handler (its client would have been started to post).
            assert handler.client.stats().posted == 0
        finally:
            handler.close()


def test_a_handler_of_any_other_kind_on_the_way_keeps_the_last_resort_out(
    own_logger, last_resort,
):
    handler = idle_handler()
    mine = logging.StreamHandler(io.StringIO())
    mine.setLevel(logging.CRITICAL)  # the user's choice to hear only the worst: kept
    own_logger.addHandler(handler)
    own_logger.addHandler(mine)
    try:
        own_logger.warning("fluentclient: the server is down")
        assert last_resort.getvalue() == ""
        own_logger.removeHandler(mine)
        own_logger.propagate = True  # through the root logger's handlers (pytest's own)
        own_logger.warning("fluentclient: again")
        assert last_resort.getvalue() == ""
    finally:
        handler.close()


def test_no_handler_at_all_is_left_to_python_and_a_disabled_last_resort_is_respected(
    own_logger, last_resort, monkeypatch,
):
    with alone(own_logger):
        handler = idle_handler()  # made, but attached nowhere
        try:
            own_logger.warning("fluentclient: nobody listens")
            assert last_resort.getvalue() == "fluentclient: nobody listens\n"  # once: Python's
            own_logger.addHandler(handler)
            monkeypatch.setattr(logging, "lastResort", None)
            own_logger.warning("fluentclient: silenced on purpose")
            assert last_resort.getvalue() == "fluentclient: nobody listens\n"
        finally:
            handler.close()


def test_a_queue_handler_that_feeds_only_fluent_handlers_counts_as_one(
    own_logger, last_resort,
):
    with alone(own_logger):
        handler = idle_handler()
        feed = logging.handlers.QueueHandler(queue.SimpleQueue())
        feed.listener = logging.handlers.QueueListener(feed.queue, handler)  # as dictConfig does
        own_logger.addHandler(feed)
        try:
            own_logger.warning("fluentclient: queued")
            assert last_resort.getvalue() == "fluentclient: queued\n"
        finally:
            handler.close()


# -- records that cannot be serialized -----------------------------------------------------


def test_an_unserializable_record_is_named_by_tag_field_and_type(fluent_server, caplog):
    errors: list = []
    client = BufferedClient(
        fluent_server.host, fluent_server.port, at_exit=False, backoff=FAST_BACKOFF,
        on_error=lambda err, msg: errors.append((err, msg)),
    )
    try:
        with caplog.at_level(logging.WARNING, logger="fluentclient"):
            when = decimal.Decimal("1.50")
            # True: queued. The packing, and the drop, come later on the reader.
            assert client.post("shop.orders", {"order": 1, "when": when}) is True
            assert client.post("shop.orders", {"order": 2, "nested": {"x": [1, object()]}})
            assert client.flush(10)
        assert client.stats().dropped == {"unserializable": 2}
        [warning] = [r.getMessage() for r in caplog.records if r.name == "fluentclient"]
        assert "'shop.orders'" in warning and "['when']" in warning
        assert "Decimal" in warning and "default=str" in warning
        assert [msg.tag for _, msg in errors] == ["shop.orders", "shop.orders"]
        assert all(isinstance(err, SerializationError) for err, _ in errors)
        assert "['nested']['x'][1]" in str(errors[1][0]) and "object" in str(errors[1][0])
        with pytest.raises(SerializationError, match=r"\['when'\].*Decimal"):
            client.post("shop.orders", {"when": when}, sync_append=True)
        assert client.stats().dropped == {"unserializable": 3}
    finally:
        client.shutdown(5)
    assert fluent_server.event_count == 0


# -- errors that say what to do ---------------------------------------------------------------

UNRESOLVED = (f"cannot connect to {NOWHERE}:24224: the host name '{NOWHERE}' does not resolve "
              "(Name or service not known); check the host setting (host=, servers= or "
              "FLUENT_HOST)")


def _name_does_not_exist() -> None:
    try:
        socket.getaddrinfo(NOWHERE, 24224)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_NONAME:
            return
    pytest.skip(f"this machine's resolver does not say that {NOWHERE} does not exist")


def test_a_sync_client_to_a_host_that_does_not_resolve_raises_what_to_change():
    _name_does_not_exist()
    client = SyncClient(NOWHERE, 24224)
    with pytest.raises(FluentConnectionError) as raised:
        client.post("app.x", {"i": 1})
    assert str(raised.value) == UNRESOLVED
    client.shutdown()


def test_a_buffered_client_to_a_host_that_does_not_resolve_says_so_once_and_retries(caplog):
    # A name may appear later (a service still starting), so the client keeps trying;
    # but this is most likely a wrong setting, said once at error level, not as an outage.
    _name_does_not_exist()
    caplog.set_level(logging.DEBUG, logger="fluentclient")
    client = BufferedClient(NOWHERE, 24224, backoff=FAST_BACKOFF, at_exit=False)
    client.post("app.x", {"i": 1})
    assert wait_until(lambda: client.stats().connect_failures >= 3, timeout=20)
    client.shutdown(timeout=0.2)
    loud = [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "fluentclient" and r.levelno >= logging.WARNING
            and "does not resolve" in r.getMessage()]
    assert loud == [("ERROR", f"fluentclient: {UNRESOLVED}; retrying with backoff, in case "
                              "the name appears later")]


def test_a_forward_server_on_a_port_in_use_names_the_address():
    with ForwardServer() as first:
        second = ForwardServer(first.host, first.port)
        with pytest.raises(OSError) as raised:
            second.start()
        second.close()
    assert raised.value.errno == errno.EADDRINUSE
    assert str(raised.value) == (
        f"cannot listen on {first.host}:{first.port}: Address already in use (another "
        "process listens there: stop it, or choose another port (0 picks a free one))")
