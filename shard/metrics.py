"""Prometheus metrics of one shard, in a registry of its own (several shards may share a
process in tests). Served over HTTP by :meth:`Metrics.serve` when ``metrics_port`` is set."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    def __init__(self, pair: str) -> None:
        self.registry = r = CollectorRegistry()
        self._pair = pair

        def one(kind: Any, name: str, doc: str, **options: Any) -> Any:
            """A metric of this registry, already bound to this shard's pair label."""
            return kind(name, doc, ["pair"], registry=r, **options).labels(pair)

        self.inputs = one(Counter, "shard_inputs", "Input entries applied and committed.")
        self.trades = one(Counter, "shard_trades", "Trades published.")
        self._rejects = Counter(
            "shard_rejects", "Rejected inputs by reason.", ["pair", "reason"], registry=r
        )
        self._reject_children: dict[str, Any] = {}
        self.batch_size = one(
            Histogram, "shard_batch_size", "Input entries per committed batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
        )  # fmt: skip
        self.commit_seconds = one(
            Histogram, "shard_commit_seconds",
            "Seconds from sending one atomic commit to reading its reply.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )  # fmt: skip
        self.depth_entries = one(
            Counter, "shard_depth_entries", "Market data entries published to depth:{P}."
        )
        self.level_changes = one(
            Histogram, "shard_depth_levels", "Price levels changed per depth:{P} entry.",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 1000),
        )  # fmt: skip
        self.lag = one(Gauge, "shard_consumer_lag", "Input entries not yet read by the group.")
        self.resting_orders = one(Gauge, "shard_resting_orders", "Live orders in the book.")
        self.price_levels = one(
            Gauge, "shard_price_levels", "Price levels in the book (both sides)."
        )
        self.recoveries = one(
            Counter, "shard_recoveries", "Full recoveries (start, fence, rollback)."
        )
        self.reconnects = one(
            Counter, "shard_reconnects", "Failed attempts while Redis was unavailable."
        )
        self._waits = Counter(
            "shard_redis_waits",
            "Times the daemon began waiting out Redis, by kind (OOM, NOGROUP, connection, ...).",
            ["pair", "kind"],
            registry=r,
        )
        self.waiting = one(
            Gauge, "shard_waiting_for_redis", "1 while the daemon waits for Redis to serve it."
        )
        self.trim_failures = one(
            Counter, "shard_trim_failures", "Input trims Redis refused (each is retried)."
        )
        self.outputs_recreated = one(
            Counter,
            "shard_outputs_recreated",
            "Output streams found deleted (after entries were published) and created again.",
        )
        self.snapshots = one(Counter, "shard_snapshots", "Snapshots stored.")
        self.snapshot_failures = one(
            Counter, "shard_snapshot_failures", "Snapshots that failed (the last stays)."
        )
        self.snapshot_stall = one(
            Histogram, "shard_snapshot_stall_seconds",
            "Seconds matching stopped to start a snapshot (opening it; all of it when inline).",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )  # fmt: skip
        self.last_snapshot = time.monotonic()
        one(
            Gauge, "shard_last_snapshot_age_seconds",
            "Seconds since the last snapshot was stored (or since start).",
        ).set_function(lambda: time.monotonic() - self.last_snapshot)  # fmt: skip

    def reject(self, reason: str) -> None:
        """Count one rejected input. The labelled child is cached (``labels()`` looks it up
        under a lock)."""
        child = self._reject_children.get(reason)
        if child is None:
            child = self._reject_children[reason] = self._rejects.labels(self._pair, reason)
        child.inc()

    def committed(self, inputs: int, trades: int, read: int, resting: int, levels: int) -> None:
        """Count a committed batch: ``inputs`` applied, ``trades``, ``read`` entries in all, and
        the book's ``resting`` orders and price ``levels`` after it."""
        self.inputs.inc(inputs)
        self.trades.inc(trades)
        self.batch_size.observe(read)
        self.resting_orders.set(resting)
        self.price_levels.set(levels)

    def redis_waits(self, kind: str) -> None:
        """Count the start of one wait for Redis, of this kind."""
        self._waits.labels(self._pair, kind).inc()

    def serve(self, port: int, host: str) -> None:
        """Serve ``/metrics`` from a daemon thread (prometheus_client's own server)."""
        start_http_server(port, addr=host, registry=self.registry)
