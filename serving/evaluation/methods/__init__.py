"""The methods a replay compares (same catalogue, same embeddings, same exclusions).

- ``popularity``: time-decayed count of positive engagements (lambda = ``decay_per_day``), the
  serving replicas' cold-start model (``serving.popularity``);
- ``last_item``: nearest items to the user's last positively engaged item;
- ``mean_embedding``: nearest items to the time-decayed weighted mean of the user's history;
- ``pinnersage*``: the interests engine (``streams.interests``); each query takes the top (or
  importance-sampled) medoids, searches around each, and blends the lists with
  ``serving.blend.blend``, exactly as the live API does;
- ``collaborative``: those vector methods over collaborative item vectors (co-engagement
  PPMI-SVD, ``streams.embeddings``), fit once or refit during the replay.

``base`` holds what they share: the ``ReplayMethod`` protocol, its ``Action`` and its queries.
"""

from serving.evaluation.methods.base import Action, Query, ReplayMethod, ScoreQuery, VectorQuery
from serving.evaluation.methods.collaborative import CollaborativeVectors
from serving.evaluation.methods.last_item import LastItem
from serving.evaluation.methods.mean_embedding import MeanEmbedding
from serving.evaluation.methods.pinnersage import (
    CapturedPinnerSage,
    MedoidQuery,
    PinnerSage,
)
from serving.evaluation.methods.popularity import Popularity

__all__ = [
    "Action",
    "CapturedPinnerSage",
    "CollaborativeVectors",
    "LastItem",
    "MeanEmbedding",
    "MedoidQuery",
    "PinnerSage",
    "Popularity",
    "Query",
    "ReplayMethod",
    "ScoreQuery",
    "VectorQuery",
]
