"""Backoff as a value: grows, is capped, jitters within bounds, resets; and a server's
backoff in a client starts over after any success there."""

from __future__ import annotations

import socket
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fluentclient import (
    Auth,
    AuthenticationError,
    Backoff,
    BufferedClient,
    Buffering,
    FluentConnectionError,
    SyncClient,
    Timeouts,
)
from fluentclient.server import ForwardServer

from .waiting import wait_until


def test_grows_exponentially_and_is_capped():
    b = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)
    delays = []
    for _ in range(8):
        delays.append(b.delay())
        b = b.next()
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert delays[4:] == pytest.approx([1.0] * 4)


def test_reset_starts_over():
    b = Backoff(initial=0.1, jitter=0.0).next().next()
    assert b.reset().delay() == pytest.approx(0.1)
    assert b.reset() == Backoff(initial=0.1, jitter=0.0)


@given(st.integers(0, 200), st.floats(0, 1), st.floats(0, 1))
def test_jitter_stays_within_bounds(attempts, jitter, r):
    b = Backoff(initial=0.05, maximum=10.0, jitter=jitter, attempts=attempts)
    base = min(10.0, 0.05 * 2.0 ** min(attempts, 64))
    d = b.delay(lambda: r)
    assert base * (1 - jitter) - 1e-12 <= d <= base + 1e-12


@pytest.mark.parametrize("kwargs", [{"initial": -1}, {"maximum": 0.01}, {"multiplier": 0.5},
                                    {"jitter": 1.5}])
def test_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)


# -- a server's backoff after a success ----------------------------------------------------
#
# What a client's own servers do with that value: the backoff of a server grows with each
# failure in a row, and any success there (a connection whose handshake worked, a write)
# starts it over. Otherwise a server that failed for a while, or refused our key once,
# would be retried only at the longest delay after every later blip.

KEY = "the right key"


def _free_port() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port




def _state(client) -> str:
    return client.stats().servers[0].state


def test_a_sync_clients_server_backs_off_from_the_start_after_a_success():
    port = _free_port()
    client = SyncClient("127.0.0.1", port, auth=Auth(shared_key=KEY), timeouts=Timeouts(connect=5))
    # Nothing listens yet: twelve failures in a row take the backoff to its maximum
    # (10 s, shortened by at most half by the jitter).
    for _ in range(12):
        with pytest.raises(FluentConnectionError):
            client.post("backoff.down", {"x": 1})
    wrong = ForwardServer(port=port, shared_key="not the key").start()
    try:
        with pytest.raises(AuthenticationError):
            client.post("backoff.refused", {"x": 2})
    finally:
        wrong.close()
    right = ForwardServer(port=port, shared_key=KEY).start()
    try:
        client.post("backoff.ok", {"x": 3})
        assert right.wait_for_events(1, timeout=10)
    finally:
        right.close()
    # One failure after that success waits the first delay (0.05 s at most), not the
    # longest: the server is ready to be tried again long before 5 s have passed.
    with pytest.raises(FluentConnectionError):
        client.post("backoff.blip", {"x": 4})
    assert wait_until(lambda: _state(client) == "idle", timeout=4.0), client.stats().servers[0]
    client.close()


def test_a_refused_key_does_not_keep_the_writer_at_the_longest_delay():
    port = _free_port()
    # jitter=0: the longest delay is exactly 3 s, and the first one 0.02 s.
    backoff = Backoff(initial=0.02, maximum=3.0, jitter=0.0)
    client = BufferedClient("127.0.0.1", port, auth=Auth(shared_key=KEY),
                            buffering=Buffering(flush_interval=0.01), backoff=backoff)
    try:
        wrong = ForwardServer(port=port, shared_key="not the key").start()
        try:
            client.post("backoff.refused", {"n": 0})
            assert wait_until(lambda: isinstance(client.stats().servers[0].error,
                                             AuthenticationError), timeout=10)
        finally:
            wrong.close()
        right = ForwardServer(port=port, shared_key=KEY).start()
        try:
            # The refusal costs the longest delay once; then the record gets through.
            assert right.wait_for_events(1, timeout=15)
        finally:
            right.close()
        failures = client.stats().connect_failures
        client.post("backoff.blip", {"n": 1})
        # The server is gone again: the writer's retries start from the first delay, so
        # a second failed attempt follows the first far sooner than the longest delay.
        assert wait_until(lambda: client.stats().connect_failures >= failures + 1, timeout=10)
        first = time.monotonic()
        assert wait_until(lambda: client.stats().connect_failures >= failures + 2, timeout=10)
        assert time.monotonic() - first < 2.0
    finally:
        client.close()
