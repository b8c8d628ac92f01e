"""Prometheus metrics of a serving replica (``ServingMetrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServingMetrics:
    """Prometheus metrics of a serving replica (own registry: several apps may share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "recstream_http_request_seconds",
            "HTTP request latency",
            ["route", "status"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.recommendations = Counter(
            "recstream_recommendations_total", "Recommendation answers", ["kind"], registry=r
        )
        self.records = Counter(
            "recstream_serving_records_total",
            "Records applied by the read models",
            ["topic", "outcome"],
            registry=r,
        )
        self.index_items = Gauge(
            "recstream_serving_index_items", "Items in the ANN index", registry=r
        )
        self.lag = Gauge(
            "recstream_serving_consumer_lag", "Records not yet consumed", ["topic"], registry=r
        )
        self.position = Gauge(
            "recstream_serving_position",
            "Next offset to apply, per partition (the replica holds every record before it)",
            ["topic", "partition"],
            registry=r,
        )
        self.ready = Gauge(
            "recstream_serving_ready", "1 once caught up with the topics", registry=r
        )
        self.freshness = Histogram(
            "recstream_serving_freshness_seconds",
            "User event time -> this replica applied the interests reflecting it",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.cache_hits = Gauge(
            "recstream_serving_ann_cache_hits", "Per-medoid ANN cache hits", registry=r
        )
        self.cache_misses = Gauge(
            "recstream_serving_ann_cache_misses", "Per-medoid ANN cache misses", registry=r
        )
        self.snapshots = Counter(
            "recstream_serving_snapshots_total", "Snapshots written", registry=r
        )
