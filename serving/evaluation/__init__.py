"""Offline quality of recommendations (``recstream eval``): PinnerSage against baselines.

- ``data``: the catalogue, its embeddings and the engagement log a replay runs on.
- ``methods``: the recommenders compared, one per module (popularity, last item, mean
  embedding, PinnerSage, and those over collaborative vectors, static or refreshed).
- ``replay``: the chronological replay; every test event ranked before it is applied.
- ``metrics``: Recall/NDCG/HitRate/Coverage@K with user-level bootstrap intervals.
- ``settings``: what a run is asked to do (``EvalSettings``, the published protocol).
- ``run``: the I/O side: datasets, the encoder, the method suite, the whole protocol.
- ``report``: ``quality.md``, ``quality.json`` and ``recall_at_k.png``.
- ``through_kafka``: the same replay with the states of a real interests worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.lazy import lazy_attributes

if TYPE_CHECKING:
    from serving.evaluation.data import ReplayData, replay_data
    from serving.evaluation.methods import (
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
    from serving.evaluation.metrics import METRICS, Estimate, recall_curve
    from serving.evaluation.replay import Protocol_, ReplayResult, evaluate
    from serving.evaluation.report import write_reports
    from serving.evaluation.run import method_suite, run_eval
    from serving.evaluation.settings import (
        BASELINES,
        DATASETS,
        EVAL_ENGINE_CONFIG,
        PRIMARY,
        EvalSettings,
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
    "recall_curve",
    "replay_data",
    "run_eval",
    "write_reports",
]

# Loaded on first use: the command line reads EvalSettings' defaults for its help texts.
# (The function ``metrics`` is imported from its module: the package attribute of that name is
# the submodule.)
__getattr__ = lazy_attributes(
    __name__,
    {
        "BASELINES": "serving.evaluation.settings",
        "DATASETS": "serving.evaluation.settings",
        "EVAL_ENGINE_CONFIG": "serving.evaluation.settings",
        "METRICS": "serving.evaluation.metrics",
        "PRIMARY": "serving.evaluation.settings",
        "Action": "serving.evaluation.methods",
        "CapturedPinnerSage": "serving.evaluation.methods",
        "CollaborativeVectors": "serving.evaluation.methods",
        "Estimate": "serving.evaluation.metrics",
        "EvalSettings": "serving.evaluation.settings",
        "LastItem": "serving.evaluation.methods",
        "MeanEmbedding": "serving.evaluation.methods",
        "MedoidQuery": "serving.evaluation.methods",
        "PinnerSage": "serving.evaluation.methods",
        "Popularity": "serving.evaluation.methods",
        "Protocol_": "serving.evaluation.replay",
        "Query": "serving.evaluation.methods",
        "ReplayData": "serving.evaluation.data",
        "ReplayMethod": "serving.evaluation.methods",
        "ReplayResult": "serving.evaluation.replay",
        "ScoreQuery": "serving.evaluation.methods",
        "VectorQuery": "serving.evaluation.methods",
        "evaluate": "serving.evaluation.replay",
        "method_suite": "serving.evaluation.run",
        "recall_curve": "serving.evaluation.metrics",
        "replay_data": "serving.evaluation.data",
        "run_eval": "serving.evaluation.run",
        "write_reports": "serving.evaluation.report",
    },
)
