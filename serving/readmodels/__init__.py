"""Serving read models: the compacted topics materialized into local stores and an HNSW index.

One background thread (``replica.ReadModels``, over ``consumer.TopicConsumer``) consumes (no
consumer group: every replica reads every partition)

- ``item-embeddings`` -> item store (RocksDB, vectors + metadata) + ``ItemIndex`` + the in-memory
  catalog (title, category); a tombstone deletes the item everywhere (``items``);
- ``user-interests`` -> user store (the latest record per user) + decoded profiles; a tombstone
  forgets the user (``users``);
- ``engagements`` -> time-decayed popularity (cold start; ``engagements``).

Snapshots and the restore from them: ``snapshots``; settings: ``config``; Prometheus metrics:
``metrics``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.lazy import lazy_attributes

if TYPE_CHECKING:
    from serving.readmodels.config import ReadModelConfig
    from serving.readmodels.metrics import ServingMetrics
    from serving.readmodels.replica import ReadModels

__all__ = ["ReadModelConfig", "ReadModels", "ServingMetrics"]

# Loaded on first use: the command line reads ReadModelConfig's defaults for its help texts
# and should not pay for the stores, the index and the Kafka clients.
__getattr__ = lazy_attributes(
    __name__,
    {
        "ReadModelConfig": "serving.readmodels.config",
        "ReadModels": "serving.readmodels.replica",
        "ServingMetrics": "serving.readmodels.metrics",
    },
)
