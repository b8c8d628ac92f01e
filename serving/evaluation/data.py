"""What a replay runs on: a catalogue with unit embeddings and an engagement log in time order."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from streams.schemas import Engagement, Item


@dataclass(frozen=True)
class ReplayData:
    """A catalogue with unit embeddings and an engagement log in timestamp order.

    ``positive[i]`` says whether event ``i`` is a positive engagement; ``weight[i]`` is what it
    weighs when it is (1.0 unless weighting by rating/action).
    """

    name: str
    item_ids: list[str]
    vectors: np.ndarray
    events: list[Engagement]
    positive: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.events)
        if self.vectors.shape[0] != len(self.item_ids):
            raise ValueError(f"{self.vectors.shape[0]} vectors for {len(self.item_ids)} items")
        if len(self.positive) != n or len(self.weight) != n:
            raise ValueError("positive and weight need one entry per event")
        ts = [e.ts for e in self.events]
        if any(b < a for a, b in itertools.pairwise(ts)):
            raise ValueError("events must be in timestamp order")

    def with_vectors(self, vectors: np.ndarray) -> ReplayData:
        """The same log over other embeddings of the same items (normalized here)."""
        v = np.asarray(vectors, dtype=np.float32)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return ReplayData(self.name, self.item_ids, v, self.events, self.positive, self.weight)

    def before(self, ts: int) -> ReplayData:
        """The same catalogue with only the events strictly before ``ts``."""
        n = sum(1 for e in self.events if e.ts < ts)  # events are in timestamp order
        return ReplayData(
            self.name,
            self.item_ids,
            self.vectors,
            self.events[:n],
            self.positive[:n],
            self.weight[:n],
        )

    def only_users(self, users: set[str]) -> ReplayData:
        keep = [i for i, e in enumerate(self.events) if e.user_id in users]
        return ReplayData(
            self.name,
            self.item_ids,
            self.vectors,
            [self.events[i] for i in keep],
            self.positive[keep],
            self.weight[keep],
        )


def replay_data(
    name: str,
    items: Sequence[Item],
    vectors: np.ndarray,
    events: Sequence[Engagement],
    *,
    positive_min_weight: float | None = 4.0,
    weight_by_rating: bool = False,
    action_weights: Callable[[Engagement], float] | None = None,
) -> ReplayData:
    """Build ``ReplayData``: events on unknown items are dropped; vectors are normalized.

    ``positive_min_weight``: an event is positive when its ``weight`` (the rating) is at least
    this; ``None`` makes every event positive (implicit feedback). ``weight_by_rating``: a
    positive weighs its rating (or ``action_weights(event)`` when given) instead of 1.
    """
    ids = [it.item_id for it in items]
    known = set(ids)
    kept = sorted((e for e in events if e.item_id in known), key=lambda e: e.ts)
    raw = np.array(
        [action_weights(e) if action_weights else (e.weight or 1.0) for e in kept], dtype=np.float64
    )
    if positive_min_weight is None:
        positive = np.ones(len(kept), dtype=bool)
    else:
        positive = np.array([(e.weight or 0.0) >= positive_min_weight for e in kept], dtype=bool)
    weight = raw if weight_by_rating else np.ones(len(kept))
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return ReplayData(name, ids, v, kept, positive, weight)
