"""ForwardServer.blackhole(): connects get no answer at all, over real sockets."""

from __future__ import annotations

import socket
import time

import pytest

from fluentclient import BufferedClient, Timeouts
from fluentclient.server import ForwardServer

from .conftest import FAST_BACKOFF


def connect_outcome(server: ForwardServer, timeout: float = 0.5) -> str:
    """'connected', 'refused' or 'hung' (no answer within ``timeout``)."""
    try:
        sock = socket.create_connection((server.host, server.port), timeout=timeout)
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "hung"
    sock.close()
    return "connected"


def test_a_connect_to_a_black_hole_hangs_until_its_own_timeout(fluent_server):
    fluent_server.blackhole()
    start = time.monotonic()
    assert connect_outcome(fluent_server, timeout=0.5) == "hung"
    assert time.monotonic() - start >= 0.45
    assert not fluent_server.listening
    # Every later attempt too, not only the first.
    assert connect_outcome(fluent_server, timeout=0.2) == "hung"


def test_turning_the_black_hole_off_listens_again_on_the_same_port(fluent_server):
    port = fluent_server.port
    fluent_server.blackhole()
    assert connect_outcome(fluent_server, timeout=0.2) == "hung"
    fluent_server.blackhole(False)
    assert fluent_server.port == port and fluent_server.listening
    assert connect_outcome(fluent_server) == "connected"


def test_connections_made_before_the_black_hole_are_still_served(fluent_server):
    with BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                        backoff=FAST_BACKOFF) as client:
        client.post("hole.before", {"n": 0})
        assert client.flush(timeout=5)
        fluent_server.blackhole()
        client.post("hole.before", {"n": 1})
        assert client.flush(timeout=5)
    assert fluent_server.wait_for_events(2, timeout=5)
    assert client.stats().connects == 1


def test_refuse_and_restart_keep_the_black_hole(fluent_server):
    fluent_server.blackhole()
    fluent_server.refuse()
    assert connect_outcome(fluent_server) == "refused"
    fluent_server.refuse(False)
    assert connect_outcome(fluent_server, timeout=0.2) == "hung"
    fluent_server.stop()
    assert connect_outcome(fluent_server) == "refused"
    fluent_server.restart()
    assert connect_outcome(fluent_server, timeout=0.2) == "hung"
    fluent_server.blackhole(False)
    assert connect_outcome(fluent_server) == "connected"


def test_a_black_hole_set_while_stopped_opens_on_restart(fluent_server):
    fluent_server.stop()
    fluent_server.blackhole()
    assert connect_outcome(fluent_server) == "refused"
    fluent_server.restart()
    assert connect_outcome(fluent_server, timeout=0.2) == "hung"


def test_a_server_started_black_holed_never_answers():
    with ForwardServer() as server:
        server.blackhole()
        assert connect_outcome(server, timeout=0.2) == "hung"
    server = ForwardServer()
    server.blackhole()  # before start: takes effect when it binds
    with server:
        assert server.port != 0
        assert connect_outcome(server, timeout=0.2) == "hung"


def test_a_buffered_client_counts_timed_out_connects_and_delivers_after(fluent_server):
    fluent_server.blackhole()
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            backoff=FAST_BACKOFF, timeouts=Timeouts(connect=0.2))
    try:
        client.post("hole.later", {"n": 1})
        deadline = time.monotonic() + 5
        while client.stats().connect_failures < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.stats().connect_failures >= 2
        assert fluent_server.event_count == 0
        fluent_server.blackhole(False)
        assert client.flush(timeout=5)
    finally:
        client.shutdown(2)
    assert fluent_server.wait_for_events(1, timeout=5)


def test_a_unix_socket_server_cannot_be_black_holed(tmp_path):
    with ForwardServer(unix_path=str(tmp_path / "s.sock")) as server:
        with pytest.raises(ValueError, match="TCP"):
            server.blackhole()
