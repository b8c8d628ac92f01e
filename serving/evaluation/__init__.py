"""Offline quality of recommendations (``recstream eval``): PinnerSage against baselines.

- ``replay``: the chronological replay (the protocol, the methods, the metrics); pure.
- ``run``: its I/O side: datasets, the encoder, the method suite, the reports.
- ``through_kafka``: the same replay with the states of a real interests worker.
"""

from serving.evaluation.replay import (
    EVAL_ENGINE_CONFIG,
    METRICS,
    Action,
    CapturedPinnerSage,
    Estimate,
    LastItem,
    MeanEmbedding,
    MedoidQuery,
    PinnerSage,
    Popularity,
    Protocol_,
    Query,
    ReplayData,
    ReplayMethod,
    ReplayResult,
    ScoreQuery,
    VectorQuery,
    evaluate,
    metrics,
    recall_curve,
    replay_data,
)
from serving.evaluation.run import (
    BASELINES,
    DATASETS,
    PRIMARY,
    EvalSettings,
    method_suite,
    run_eval,
    write_reports,
)

__all__ = [
    "BASELINES",
    "DATASETS",
    "EVAL_ENGINE_CONFIG",
    "METRICS",
    "PRIMARY",
    "Action",
    "CapturedPinnerSage",
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
