"""Export a client's ``stats()`` to Prometheus (needs prometheus_client).

Install it with ``pip install prometheus_client``, or ``pip install '.[prometheus]'`` from a
checkout of fluentclient.

::

    from fluentclient.metrics import register
    register(client, labels={"app": "shop"})   # into prometheus_client's default registry

The collector reads ``client.stats()`` once per scrape, so what Prometheus sees is one
consistent snapshot and nothing is counted twice. Nothing else in fluentclient imports this
module: prometheus_client is needed only by those who use it.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from ._lifetime._fork_safe import ForkSafeLock
from .errors import ConfigurationError
from .stats import (
    DROP_BUFFER_FULL,
    DROP_CLOSED,
    DROP_EVICTED,
    DROP_NOT_ACKED,
    DROP_REENTRANT,
    DROP_SEND_FAILED,
    DROP_SPOOL_FULL,
    DROP_TOO_LARGE,
    DROP_UNSAFE,
    DROP_UNSERIALIZABLE,
    Stats,
)

__all__ = [
    "StatsCollector",
    "register",
    "unregister",
    "HasStats",
    "DROP_REASONS",
    "SERVER_STATES",
]

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Sample
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "fluentclient.metrics needs prometheus_client: pip install prometheus_client "
        "(or, from a checkout of fluentclient, pip install '.[prometheus]')"
    ) from exc

# Every reason is exported from the start, at 0, so rate() has a series before the first drop.
DROP_REASONS = (DROP_BUFFER_FULL, DROP_UNSERIALIZABLE, DROP_UNSAFE, DROP_TOO_LARGE,
                DROP_CLOSED, DROP_NOT_ACKED, DROP_EVICTED, DROP_SPOOL_FULL, DROP_SEND_FAILED,
                DROP_REENTRANT)
SERVER_STATES = ("connecting", "connected", "backing_off", "idle")

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_OWN_LABELS = frozenset({"reason", "server", "state"})

# Stats field -> (metric name after the prefix, help). Counters get "_total" on exposition.
_COUNTERS = (
    ("posted", "records_posted", "Records passed to post()."),
    ("sent", "records_sent", "Records the server took (or acknowledged, with acks)."),
    ("unsent", "records_unsent", "Records still held when the client stopped."),
    ("possibly_lost", "records_possibly_lost",
     "Records written to a connection that failed before the server was seen to take them."),
    ("retried", "records_retried", "Records put back to be sent again on a new connection."),
    ("replayed", "records_replayed",
     "Records taken over from a spool that an earlier process left."),
    ("frames_sent", "frames_sent", "Frames written to a connection (a resent frame again)."),
    ("bytes_sent", "bytes_sent", "Bytes of the frames written."),
    ("connects", "connects", "Connections made."),
    ("connect_failures", "connect_failures", "Connection attempts that failed."),
    ("connection_failures", "connection_failures", "Established connections that failed."),
)
_SERVER_COUNTERS = (
    ("connects", "connects", "Connections made to each server."),
    ("failures", "failures", "Failures (to connect, or of a connection) per server."),
    ("frames_sent", "frames_sent", "Frames written to each server."),
    ("acked_frames", "acked_frames", "Frames each server acknowledged."),
)
_GAUGES = (
    ("buffered", "records_buffered", "Records on their way: queued, buffered or in flight."),
    ("buffered_bytes", "buffered_bytes", "Bytes held against Buffering.limit."),
)


class HasStats(Protocol):
    """Either client: anything with a ``stats()`` returning :class:`Stats`."""

    def stats(self) -> Stats: ...


class StatsCollector:
    """A prometheus_client collector that reads ``stats()`` of its clients on each scrape.

    One collector serves every client registered under the same prefix in a registry: a
    registry accepts each metric name only once. Each client's samples carry that client's
    own labels, so the clients are told apart by them; they need not share label names (a
    metric's series may differ in their label names, as Prometheus allows).
    """

    def __init__(self, *, prefix: str = "fluentclient", label_names: Sequence[str] = ()) -> None:
        if not _NAME.match(prefix):
            raise ConfigurationError(f"{prefix!r} is not a valid metric name prefix",
                                     variable="prefix")
        _check_label_names(label_names)
        self.prefix = prefix
        self._lock = ForkSafeLock()
        self._clients: list[tuple[HasStats, dict[str, str]]] = []

    @property
    def label_names(self) -> tuple[str, ...]:
        """Every label name of the clients registered, sorted."""
        with self._lock:
            return tuple(sorted({name for _, labels in self._clients for name in labels}))

    def add(self, client: HasStats, labels: Mapping[str, str] | None = None) -> None:
        _check_label_names(list(labels or {}))
        values = {name: str(value) for name, value in (labels or {}).items()}
        with self._lock:
            for other, other_values in self._clients:
                if other is client:
                    raise ConfigurationError(
                        f"this client is already registered under {self.prefix!r}",
                        variable="labels")
                if other_values == values:
                    # Two clients' samples would be the same series: their counts would
                    # seem to jump back and forth between scrapes.
                    raise ConfigurationError(
                        f"a client with labels {values} is already registered under "
                        f"{self.prefix!r}: give each client different label values, e.g. "
                        "labels={'client': 'audit'}",
                        variable="labels",
                    )
            self._clients.append((client, values))

    def remove(self, client: HasStats) -> bool:
        """Stop exporting ``client``; True when no client is left."""
        with self._lock:
            self._clients = [(c, v) for c, v in self._clients if c is not client]
            return not self._clients

    def describe(self) -> Iterator[Metric]:
        # The families without samples: the registry checks names without a scrape.
        return self._families([])

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            clients = list(self._clients)
        return self._families([(labels, client.stats()) for client, labels in clients])

    def _families(self, snapshots: list[tuple[dict[str, str], Stats]]) -> Iterator[Metric]:
        for field, name, text in _COUNTERS:
            counter = CounterMetricFamily(self._name(name), text)
            for labels, stats in snapshots:
                _add(counter, labels, getattr(stats, field))
            yield counter
        for field, name, text in _GAUGES:
            gauge = GaugeMetricFamily(self._name(name), text)
            for labels, stats in snapshots:
                _add(gauge, labels, getattr(stats, field))
            yield gauge
        yield self._dropped(snapshots)
        yield from self._servers(snapshots)

    def _dropped(self, snapshots: list[tuple[dict[str, str], Stats]]) -> Metric:
        family = CounterMetricFamily(self._name("records_dropped"), "Records dropped, by reason.")
        for labels, stats in snapshots:
            counts = dict.fromkeys(DROP_REASONS, 0)
            counts.update(stats.dropped)
            for reason, count in counts.items():
                _add(family, {**labels, "reason": reason}, count)
        return family

    def _servers(self, snapshots: list[tuple[dict[str, str], Stats]]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            self._name("server_state"),
            "1 for the state each server is in (connecting, connected, backing_off, idle), else 0.",
        )
        standby = GaugeMetricFamily(self._name("server_standby"), "1 for a standby server.")
        counters = [
            (field, CounterMetricFamily(self._name(f"server_{name}"), text))
            for field, name, text in _SERVER_COUNTERS
        ]
        for labels, stats in snapshots:
            for server in stats.servers:
                where = {**labels, "server": server.address}
                for name in SERVER_STATES:
                    _add(state, {**where, "state": name}, 1.0 if server.state == name else 0.0)
                _add(standby, where, 1.0 if server.standby else 0.0)
                for field, family in counters:
                    _add(family, where, getattr(server, field))
        yield state
        yield standby
        for _, family in counters:
            yield family

    def _name(self, name: str) -> str:
        return f"{self.prefix}_{name}"


def _check_label_names(names: Sequence[str]) -> None:
    for name in names:
        if not _LABEL.match(name) or name.startswith("__") or name in _OWN_LABELS:
            raise ConfigurationError(
                f"{name!r} cannot be a label here (reserved or not a label name)",
                variable="labels",
            )


def _add(family: Metric, labels: dict[str, str], value: float) -> None:
    """One sample with exactly these labels: ``add_metric`` would give every sample of a
    family the same label names, and clients registered with different ones (one without
    labels, one with ``client``) would not fit."""
    suffix = "_total" if family.type == "counter" else ""
    family.samples.append(Sample(family.name + suffix, labels, value))


# Collectors by registry and prefix, so that several clients share one set of families.
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, StatsCollector]] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = ForkSafeLock()


def register(
    client: HasStats,
    registry: CollectorRegistry | None = None,
    *,
    prefix: str = "fluentclient",
    labels: Mapping[str, str] | None = None,
) -> StatsCollector:
    """Export ``client.stats()`` through ``registry`` (default: prometheus_client's).

    ``labels`` are added to every sample of this client. Several clients can be registered
    under one prefix when their labels differ, e.g. one without labels and one with
    ``labels={"client": "audit"}``. Raises :class:`ConfigurationError` (a ValueError) for
    a bad name, a reserved label, a client registered twice, or two clients with the same
    labels.
    """
    registry = REGISTRY if registry is None else registry
    with _collectors_lock:
        by_prefix = _collectors.setdefault(registry, {})
        collector = by_prefix.get(prefix)
        if collector is None:
            collector = StatsCollector(prefix=prefix)
            collector.add(client, labels)
            registry.register(collector)
            by_prefix[prefix] = collector
        else:
            collector.add(client, labels)
        return collector


def unregister(
    client: HasStats, registry: CollectorRegistry | None = None, *, prefix: str = "fluentclient"
) -> None:
    """Stop exporting ``client``; the metrics go once no client is left under ``prefix``."""
    registry = REGISTRY if registry is None else registry
    with _collectors_lock:
        by_prefix = _collectors.get(registry, {})
        collector = by_prefix.get(prefix)
        if collector is not None and collector.remove(client):
            registry.unregister(collector)
            del by_prefix[prefix]
