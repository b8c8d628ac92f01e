"""The interests worker's Prometheus metrics (their names are what dashboards and alerts read)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram


class WorkerMetrics:
    """Prometheus metrics of the interests worker."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.events = Counter(
            "recstream_interest_events_total",
            "Engagement events processed",
            ["outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "recstream_interest_dead_letters_total",
            "Messages sent to dead-letters",
            registry=registry,
        )
        self.dead_letters_lost = Counter(
            "recstream_interest_dead_letters_lost_total",
            "Rejected messages whose letter was refused even without their bytes (logged)",
            registry=registry,
        )
        self.parked = Gauge(
            "recstream_interest_parked_events",
            "Engagements waiting for their item's embedding",
            registry=registry,
        )
        self.lag = Gauge(
            "recstream_interest_consumer_lag",
            "Engagements not yet consumed (sum over partitions)",
            registry=registry,
        )
        self.update_latency = Histogram(
            "recstream_interest_update_seconds",
            "Time from a user's events sent to the engine to their results written (per user)",
            buckets=(1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=registry,
        )
        self.batch_size = Histogram(
            "recstream_interest_batch_events",
            "Events per processed batch",
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000),
            registry=registry,
        )
        self.consuming_since = Gauge(
            "recstream_interest_consuming_since_seconds",
            "When the agent could first take engagements (unix time; feed loaded, partitions in)",
            registry=registry,
        )
        self.deferred = Counter(
            "recstream_interest_deferred_events_total",
            "Events of a batch left to the next partition owner because a rebalance began",
            registry=registry,
        )
        self.partitions = Gauge(
            "recstream_interest_partitions",
            "Engagement partitions assigned to this worker",
            registry=registry,
        )
        self.items = Gauge(
            "recstream_interest_item_vectors",
            "Item embeddings known to this worker",
            registry=registry,
        )
        self.swept = Counter(
            "recstream_interest_swept_states_total",
            "Stored states rewritten (and republished) without the deleted items they named",
            registry=registry,
        )
        self.to_purge = Gauge(
            "recstream_interest_stores_to_purge",
            "Local stores holding forgotten data until their next purge",
            registry=registry,
        )
        self.purges = Counter(
            "recstream_interest_purges_total",
            "Purges of the local stores (flush, full compaction, MANIFEST rolled)",
            registry=registry,
        )
