"""The popularity baseline, and the cold-start fallback of every other method (``evaluate``
ranks the events a method cannot answer by this method's list).

It is the serving replicas' cold-start model, ``serving.popularity.DecayedPopularity``, over the
catalogue's items.
"""

from __future__ import annotations

import math

import numpy as np

from serving.evaluation.methods.base import Action, Query, ScoreQuery
from serving.popularity import DecayedPopularity


class Popularity:
    """Time-decayed popularity: sum over positives of weight * exp(-lambda * age_days).

    ``decay_per_day`` (lambda) is a half-life of ln 2 / lambda days (no decay at 0).
    """

    def __init__(self, n_items: int, decay_per_day: float = 0.01, name: str = "popularity"):
        self.names = (name,)
        self.decay_per_day = decay_per_day
        half_life_hours = 24.0 * math.log(2) / decay_per_day if decay_per_day > 0 else math.inf
        self.model = DecayedPopularity(half_life_hours, initial_capacity=n_items)
        self._slots = np.full(n_items, -1, dtype=np.intp)  # catalogue index -> the model's slot

    def learn_one(self, action: Action) -> None:
        self.model.learn_one(action.item_id, action.ts, action.weight)
        if self._slots[action.item] < 0:
            self._slots[action.item] = self.model.slots_of([action.item_id])[0]

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        return [ScoreQuery(self.model.slot_scores(self._slots, now_ms))]
