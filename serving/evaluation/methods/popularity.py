"""The popularity baseline, and the cold-start fallback of every other method.

It duplicates ``serving.popularity.DecayedPopularity`` (an exponential decay per day here, a
half-life there); the two are to become one.
"""

from __future__ import annotations

import math

import numpy as np

from serving.evaluation.methods.base import Action, Query, ScoreQuery
from streams.interests import DAY_MS


class Popularity:
    """Time-decayed popularity: sum over positives of weight * exp(-lambda * age_days)."""

    def __init__(self, n_items: int, decay_per_day: float = 0.01, name: str = "popularity"):
        self.names = (name,)
        self.decay_per_day = decay_per_day
        self._scores = np.zeros(n_items, dtype=np.float64)
        self._ref_ts: int | None = None  # scores are kept scaled to exp(lambda * (t - ref))

    def learn_one(self, action: Action) -> None:
        if self._ref_ts is None:
            self._ref_ts = action.ts
        exponent = self.decay_per_day * (action.ts - self._ref_ts) / DAY_MS
        if exponent > 30.0:  # rescale before exp() overflows; the ranking is unchanged
            self._scores *= math.exp(-exponent)
            self._ref_ts, exponent = action.ts, 0.0
        self._scores[action.item] += action.weight * math.exp(exponent)

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        return [ScoreQuery(self._scores.copy())]
