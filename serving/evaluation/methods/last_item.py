"""The last-item baseline: what is like the item the user engaged with last."""

from __future__ import annotations

import numpy as np

from serving.evaluation.methods.base import Action, Query, VectorQuery


class LastItem:
    """Nearest items to the user's most recent positive item."""

    def __init__(self, vectors: np.ndarray, name: str = "last_item"):
        self.names = (name,)
        self._vectors = vectors
        self._last: dict[str, int] = {}

    def learn_one(self, action: Action) -> None:
        self._last[action.user_id] = action.item

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        item = self._last.get(user_id)
        if item is None:
            return [None]
        return [VectorQuery(self._vectors[item][None, :], np.ones(1))]
