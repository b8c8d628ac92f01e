"""Serving read models: the compacted topics materialized into local stores and an HNSW index
(see ``replica`` for how a replica consumes, snapshots and restores)."""

from serving.readmodels.replica import ReadModelConfig, ReadModels, ServingMetrics

__all__ = ["ReadModelConfig", "ReadModels", "ServingMetrics"]
