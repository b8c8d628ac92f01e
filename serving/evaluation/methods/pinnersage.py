"""PinnerSage as the live API runs it: the interests engine per user, queried by its medoids.

Each query takes the top (or importance-sampled) medoids, searches around each, and blends the
lists with ``serving.blend.blend`` (in ``evaluate``), exactly as the live API does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from serving.evaluation.methods.base import Action, Query, VectorQuery
from serving.evaluation.settings import EVAL_ENGINE_CONFIG
from streams.interests import InterestClusters, InterestConfig, unit


@dataclass(frozen=True)
class MedoidQuery:
    """How a PinnerSage variant queries the engine: ``n`` interests, top or sampled, and
    whether it searches around the medoid (an engaged item) or the cluster centroid."""

    name: str
    n: int = 3
    sample: bool = False
    centroid: bool = False


class PinnerSage:
    """The interests engine per user; each ``MedoidQuery`` is one named ranking of it."""

    def __init__(
        self,
        vectors: np.ndarray,
        config: InterestConfig = EVAL_ENGINE_CONFIG,
        queries: Sequence[MedoidQuery] = (MedoidQuery("pinnersage"),),
        seed: int = 0,
    ):
        if not queries:
            raise ValueError("PinnerSage needs at least one MedoidQuery")
        self.names = tuple(q.name for q in queries)
        self.config = config
        self.queries = tuple(queries)
        self._vectors = vectors
        self._users: dict[str, InterestClusters] = {}
        self._rng = np.random.default_rng(seed)

    def learn_one(self, action: Action) -> None:
        state = self._users.get(action.user_id)
        if state is None:
            state = self._users[action.user_id] = InterestClusters(self.config)
        state.learn_one(action, self._vectors[action.item])

    def state(self, user_id: str) -> InterestClusters | None:
        return self._users.get(user_id)

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        state = self._users.get(user_id)
        if state is None or state.n_actions == 0:
            return [None] * len(self.queries)
        out: list[Query | None] = []
        for q in self.queries:
            if q.sample:
                chosen = state.sample_medoids(q.n, now_ms, self._rng)
            else:
                chosen = state.top_medoids(q.n, now_ms)
            if not chosen:
                out.append(None)
                continue
            rows = [unit(i.centroid) if q.centroid else i.medoid_vector for i in chosen]
            out.append(
                VectorQuery(
                    np.stack(rows).astype(np.float32),
                    np.array([i.importance for i in chosen]),
                    blended=True,
                )
            )
        return out


class CapturedPinnerSage(PinnerSage):
    """PinnerSage answered from states computed elsewhere: ``states[event_id]`` is the user's
    serialized state (``InterestClusters.to_bytes``) right after that event, as the interests
    worker published it (``recstream eval --through-kafka``). An event without a captured
    state leaves the user's state as it was; only states before scored events matter."""

    def __init__(
        self,
        vectors: np.ndarray,
        item_ids: Sequence[str],
        states: Mapping[str, bytes],
        config: InterestConfig = EVAL_ENGINE_CONFIG,
        queries: Sequence[MedoidQuery] = (MedoidQuery("pinnersage"),),
        seed: int = 0,
    ):
        super().__init__(vectors, config, queries, seed)
        self._states = states
        self._row = {item_id: i for i, item_id in enumerate(item_ids)}

    def learn_one(self, action: Action) -> None:
        blob = self._states.get(action.event_id)
        if blob is not None:
            self._users[action.user_id] = InterestClusters.from_bytes(
                blob, self._lookup, config=self.config
            )

    def _lookup(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        found = [i for i in ids if i in self._row]
        return found, self._vectors[[self._row[i] for i in found]]
