"""The Prometheus exporter: a real prometheus_client registry shows what stats() says."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from fluentclient import Backoff, BufferedClient, Buffering, Stats, SyncClient
from fluentclient.errors import ConfigurationError
from fluentclient.metrics import DROP_REASONS, SERVER_STATES, register, unregister
from fluentclient.server import ForwardServer

from .subproc import child_env
from .waiting import wait_until

COUNTERS = {
    "posted": "records_posted_total",
    "sent": "records_sent_total",
    "unsent": "records_unsent_total",
    "possibly_lost": "records_possibly_lost_total",
    "retried": "records_retried_total",
    "replayed": "records_replayed_total",
    "frames_sent": "frames_sent_total",
    "bytes_sent": "bytes_sent_total",
    "connects": "connects_total",
    "connect_failures": "connect_failures_total",
    "connection_failures": "connection_failures_total",
}
GAUGES = {"buffered": "records_buffered", "buffered_bytes": "buffered_bytes"}
SERVER_COUNTERS = {
    "connects": "server_connects_total",
    "failures": "server_failures_total",
    "frames_sent": "server_frames_sent_total",
    "acked_frames": "server_acked_frames_total",
}


def assert_exported(registry: CollectorRegistry, stats: Stats, labels: dict[str, str],
                    prefix: str = "fluentclient") -> None:
    """Every counter of ``stats`` is in ``registry`` with the same value."""
    def value(name: str, **extra: str) -> float | None:
        return registry.get_sample_value(f"{prefix}_{name}", {**labels, **extra})

    for field, name in {**COUNTERS, **GAUGES}.items():
        assert value(name) == getattr(stats, field), name
    for reason in set(DROP_REASONS) | set(stats.dropped):
        assert value("records_dropped_total", reason=reason) == stats.dropped.get(reason, 0)
    for server in stats.servers:
        for field, name in SERVER_COUNTERS.items():
            assert value(name, server=server.address) == getattr(server, field), name
        for state in SERVER_STATES:
            expected = 1.0 if state == server.state else 0.0
            assert value("server_state", server=server.address, state=state) == expected
        assert value("server_standby", server=server.address) == float(server.standby)




def test_values_equal_stats_after_a_run_with_drops(fluent_server):
    registry = CollectorRegistry()
    errors = []
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            on_error=lambda err, msg: errors.append(err))
    register(client, registry)
    for i in range(500):
        client.post("metrics.ok", {"i": i})
    client.post("metrics.bad", {"not msgpack": object()})  # dropped: unserializable
    assert client.flush(timeout=5)
    report = client.shutdown(5)
    client.post("metrics.late", {"i": -1})  # dropped: closed
    stats = client.stats()  # the client is stopped, so this no longer changes
    assert stats.sent == report.sent == 500
    assert stats.dropped == {"unserializable": 1, "closed": 1}
    assert stats.posted == 502 and stats.frames_sent >= 1 and stats.connects == 1
    assert_exported(registry, stats, {})
    assert len(errors) == 2


def test_unacknowledged_frames_show_in_buffered_bytes_and_buffer_full_drops(fluent_server):
    fluent_server.withhold_acks(True)
    registry = CollectorRegistry()
    client = BufferedClient(fluent_server.host, fluent_server.port, at_exit=False,
                            buffering=Buffering(limit=64 * 1024), require_ack=True)
    register(client, registry, labels={"app": "shop"})
    for i in range(5000):
        client.post("metrics.stuck", {"i": i, "pad": "x" * 100})
    held = {"app": "shop"}
    assert wait_until(lambda: registry.get_sample_value("fluentclient_buffered_bytes", held)
                      > 0)
    client.shutdown(0.2)
    stats = client.stats()
    assert stats.dropped.get("buffer_full", 0) > 0
    assert stats.unsent > 0 and stats.sent == 0
    assert_exported(registry, stats, {"app": "shop"})
    exposition = generate_latest(registry).decode()
    assert 'fluentclient_records_dropped_total{app="shop",reason="buffer_full"}' in exposition
    assert "# TYPE fluentclient_records_sent_total counter" in exposition


def test_every_scrape_reads_a_fresh_snapshot(fluent_server):
    registry = CollectorRegistry()
    with SyncClient(fluent_server.host, fluent_server.port) as client:
        register(client, registry)
        assert registry.get_sample_value("fluentclient_records_sent_total") == 0
        for n in (1, 2, 3):
            client.post("metrics.live", {"n": n})
            assert registry.get_sample_value("fluentclient_records_sent_total") == n
            assert_exported(registry, client.stats(), {})


def test_per_server_state_and_counters():
    with ForwardServer() as up:
        down = ForwardServer()
        down.start()
        down_address = f"{down.host}:{down.port}"
        down.close()  # nothing listens there any more
        registry = CollectorRegistry()
        # A server's state follows the clock (backing off until its retry time, then
        # idle), and stats() and the scrape read it at different moments: a backoff far
        # longer than the test keeps the refused server backing off for both reads.
        client = BufferedClient(servers=[down_address, f"{up.host}:{up.port}"],
                                backoff=Backoff(initial=600, maximum=600, jitter=0),
                                at_exit=False, buffering=Buffering(write_threshold=64))
        register(client, registry, prefix="app_fluent")
        for i in range(200):
            client.post("metrics.pool", {"i": i})
        assert client.flush(timeout=10)
        client.shutdown(5)
        stats = client.stats()
        assert {s.address for s in stats.servers} == {f"{up.host}:{up.port}", down_address}
        assert [s.failures > 0 for s in stats.servers] == [True, False]
        assert [s.state for s in stats.servers] == ["backing_off", "idle"]
        assert_exported(registry, stats, {}, prefix="app_fluent")


def test_several_clients_share_a_prefix_by_their_labels(fluent_server):
    registry = CollectorRegistry()
    audit = SyncClient(fluent_server.host, fluent_server.port)
    access = SyncClient(fluent_server.host, fluent_server.port)
    register(audit, registry, labels={"client": "audit"})
    register(access, registry, labels={"client": "access"})
    audit.post("metrics.audit", {"x": 1})
    for _ in range(3):
        access.post("metrics.access", {"x": 1})
    assert_exported(registry, audit.stats(), {"client": "audit"})
    assert_exported(registry, access.stats(), {"client": "access"})
    assert registry.get_sample_value("fluentclient_records_sent_total",
                                     {"client": "access"}) == 3

    with pytest.raises(ConfigurationError, match="already registered"):
        register(SyncClient(), registry, labels={"client": "audit"})
    with pytest.raises(ConfigurationError, match="already registered"):
        register(audit, registry, labels={"client": "audit2"})

    unregister(audit, registry)
    assert registry.get_sample_value("fluentclient_records_sent_total",
                                     {"client": "audit"}) is None
    assert registry.get_sample_value("fluentclient_records_sent_total",
                                     {"client": "access"}) == 3
    unregister(access, registry)
    assert registry.get_sample_value("fluentclient_records_sent_total",
                                     {"client": "access"}) is None
    # Once every client is gone the names are free again.
    register(audit, registry)
    assert registry.get_sample_value("fluentclient_records_sent_total") == 1
    audit.shutdown()
    access.shutdown()


def test_clients_with_and_without_labels_share_a_prefix(fluent_server):
    """The operating guide's example: a client without labels, then one with a label."""
    registry = CollectorRegistry()
    main = SyncClient(fluent_server.host, fluent_server.port)
    audit = SyncClient(fluent_server.host, fluent_server.port, tag_prefix="audit")
    team = SyncClient(fluent_server.host, fluent_server.port)
    register(main, registry)
    register(audit, registry, labels={"client": "audit"})
    register(team, registry, labels={"team": "x", "client": "audit"})
    main.post("metrics.main", {"x": 1})
    for _ in range(2):
        audit.post("metrics.audit", {"x": 1})
    assert_exported(registry, main.stats(), {})
    assert_exported(registry, audit.stats(), {"client": "audit"})
    assert_exported(registry, team.stats(), {"team": "x", "client": "audit"})
    text = generate_latest(registry).decode()
    assert "fluentclient_records_sent_total 1.0" in text
    assert 'fluentclient_records_sent_total{client="audit"} 2.0' in text
    with pytest.raises(ConfigurationError, match="already registered"):
        register(SyncClient(), registry)
    for client in (main, audit, team):
        unregister(client, registry)
        client.shutdown()
    assert registry.get_sample_value("fluentclient_records_sent_total") is None


def test_the_default_registry_is_prometheus_clients():
    from prometheus_client import REGISTRY

    client = SyncClient()
    register(client, prefix="fluentclient_default_test")
    try:
        assert REGISTRY.get_sample_value("fluentclient_default_test_records_posted_total") == 0
    finally:
        unregister(client, prefix="fluentclient_default_test")
    assert REGISTRY.get_sample_value("fluentclient_default_test_records_posted_total") is None


def test_a_name_clash_with_other_metrics_is_refused():
    from prometheus_client import Counter

    registry = CollectorRegistry()
    Counter("fluentclient_records_sent", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        register(SyncClient(), registry)


@pytest.mark.parametrize(
    "options",
    [{"prefix": "9lives"}, {"prefix": "my-app"}, {"labels": {"server": "x"}},
     {"labels": {"reason": "x"}}, {"labels": {"__name__": "x"}}, {"labels": {"a-b": "x"}}],
)
def test_bad_prefix_or_labels(options):
    with pytest.raises(ConfigurationError):
        register(SyncClient(), CollectorRegistry(), **options)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, env=child_env())


def test_prometheus_client_is_imported_only_when_metrics_are_used():
    result = run_python("""
        import sys
        import fluentclient, fluentclient.cli, fluentclient.config
        fluentclient.BufferedClient(at_exit=False).stats()
        assert "prometheus_client" not in sys.modules, "imported too early"
        sys.modules["prometheus_client"] = None  # as if it were not installed
        try:
            import fluentclient.metrics
        except ImportError as exc:
            print(exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "pip install prometheus_client" in result.stdout
    assert "pip install '.[prometheus]'" in result.stdout
    assert "fluentclient[" not in result.stdout  # not on PyPI: no extra to install from an index
