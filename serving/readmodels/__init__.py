"""Serving read models: the compacted topics materialized into local stores and an HNSW index
(see ``replica`` for how a replica consumes, snapshots and restores)."""

from serving.readmodels.config import ReadModelConfig
from serving.readmodels.metrics import ServingMetrics
from serving.readmodels.replica import ReadModels

__all__ = ["ReadModelConfig", "ReadModels", "ServingMetrics"]
