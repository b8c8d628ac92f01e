"""Offline quality of recommendations (``recstream eval``): PinnerSage against baselines.

- ``data``: the catalogue, its embeddings and the engagement log a replay runs on.
- ``methods``: the recommenders compared, one per module (popularity, last item, mean
  embedding, PinnerSage, and those over collaborative vectors, static or refreshed).
- ``replay``: the chronological replay; every test event ranked before it is applied.
- ``metrics``: Recall/NDCG/HitRate/Coverage@K with user-level bootstrap intervals.
- ``run``: the I/O side: datasets, the encoder, the method suite, the whole protocol.
- ``report``: ``quality.md``, ``quality.json`` and ``recall_at_k.png``.
- ``through_kafka``: the same replay with the states of a real interests worker.
"""

from serving.evaluation.data import ReplayData, replay_data
from serving.evaluation.methods import (
    EVAL_ENGINE_CONFIG,
    Action,
    CapturedPinnerSage,
    CollaborativeVectors,
    LastItem,
    MeanEmbedding,
    MedoidQuery,
    PinnerSage,
    Popularity,
    Query,
    ReplayMethod,
    ScoreQuery,
    VectorQuery,
)
from serving.evaluation.metrics import METRICS, Estimate, metrics, recall_curve
from serving.evaluation.replay import Protocol_, ReplayResult, evaluate
from serving.evaluation.report import write_reports
from serving.evaluation.run import (
    BASELINES,
    DATASETS,
    PRIMARY,
    EvalSettings,
    method_suite,
    run_eval,
)

__all__ = [
    "BASELINES",
    "DATASETS",
    "EVAL_ENGINE_CONFIG",
    "METRICS",
    "PRIMARY",
    "Action",
    "CapturedPinnerSage",
    "CollaborativeVectors",
    "Estimate",
    "EvalSettings",
    "LastItem",
    "MeanEmbedding",
    "MedoidQuery",
    "PinnerSage",
    "Popularity",
    "Protocol_",
    "Query",
    "ReplayData",
    "ReplayMethod",
    "ReplayResult",
    "ScoreQuery",
    "VectorQuery",
    "evaluate",
    "method_suite",
    "metrics",
    "recall_curve",
    "replay_data",
    "run_eval",
    "write_reports",
]
