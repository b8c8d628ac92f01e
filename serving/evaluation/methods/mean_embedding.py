"""The mean-embedding baseline: one vector per user, the decayed mean of their history."""

from __future__ import annotations

import math

import numpy as np

from serving.evaluation.methods.base import Action, Query, VectorQuery
from streams.interests import DAY_MS, unit


class MeanEmbedding:
    """One vector per user: the time-decayed, weighted mean of their positive items.

    The decay multiplies every past action by the same factor at query time, so only the
    relative decay between actions matters: the running sum is decayed at each new action.
    """

    def __init__(
        self, vectors: np.ndarray, decay_per_day: float = 0.01, name: str = "mean_embedding"
    ):
        self.names = (name,)
        self.decay_per_day = decay_per_day
        self._vectors = vectors
        self._sum: dict[str, np.ndarray] = {}
        self._ts: dict[str, int] = {}

    def learn_one(self, action: Action) -> None:
        x = action.weight * self._vectors[action.item].astype(np.float64)
        prev = self._sum.get(action.user_id)
        if prev is None:
            self._sum[action.user_id] = x
        else:
            age = max(action.ts - self._ts[action.user_id], 0) / DAY_MS
            self._sum[action.user_id] = prev * math.exp(-self.decay_per_day * age) + x
        self._ts[action.user_id] = action.ts

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        s = self._sum.get(user_id)
        if s is None or not np.any(s):
            return [None]
        return [VectorQuery(unit(s)[None, :], np.ones(1))]
