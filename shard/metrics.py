"""Prometheus metrics of one shard, in a registry of its own (several shards may share a
process in tests). Served over HTTP by :meth:`Metrics.serve` when ``metrics_port`` is set."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self, pair: str) -> None:
        self.registry = r = CollectorRegistry()
        labels = {"pair": pair}
        self.inputs = Counter(
            "shard_inputs", "Input entries applied and committed.", ["pair"], registry=r
        ).labels(**labels)
        self.trades = Counter("shard_trades", "Trades published.", ["pair"], registry=r).labels(
            **labels
        )
        self._rejects = Counter(
            "shard_rejects", "Rejected inputs by reason.", ["pair", "reason"], registry=r
        )
        self.batch_size = Histogram(
            "shard_batch_size",
            "Input entries per committed batch.",
            ["pair"],
            registry=r,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        ).labels(**labels)
        self.commit_seconds = Histogram(
            "shard_commit_seconds",
            "Time of one atomic commit (the Lua script call).",
            ["pair"],
            registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        ).labels(**labels)
        self.lag = Gauge(
            "shard_consumer_lag", "Input entries not yet read by the group.", ["pair"], registry=r
        ).labels(**labels)
        self.resting_orders = Gauge(
            "shard_resting_orders", "Live orders in the book.", ["pair"], registry=r
        ).labels(**labels)
        self.price_levels = Gauge(
            "shard_price_levels", "Price levels in the book (both sides).", ["pair"], registry=r
        ).labels(**labels)
        self.recoveries = Counter(
            "shard_recoveries", "Full recoveries (start, fence, rollback).", ["pair"], registry=r
        ).labels(**labels)
        self.reconnects = Counter(
            "shard_reconnects", "Resynchronisations after a Redis error.", ["pair"], registry=r
        ).labels(**labels)
        self.snapshots = Counter(
            "shard_snapshots", "Snapshots stored.", ["pair"], registry=r
        ).labels(**labels)
        self.last_snapshot = time.monotonic()
        snapshot_age = Gauge(
            "shard_last_snapshot_age_seconds",
            "Seconds since the last snapshot was stored (or since start).",
            ["pair"],
            registry=r,
        )
        snapshot_age.labels(**labels).set_function(lambda: time.monotonic() - self.last_snapshot)
        self._labels = labels

    def reject(self, reason: str) -> None:
        self._rejects.labels(reason=reason, **self._labels).inc()

    def serve(self, port: int, host: str) -> None:
        """Serve ``/metrics`` from a daemon thread (prometheus_client's own server)."""
        start_http_server(port, addr=host, registry=self.registry)
