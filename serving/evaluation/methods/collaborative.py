"""Vector methods over collaborative item vectors (``streams.embeddings``), static or refreshed.

``CollaborativeVectors`` runs a set of vector methods (last item, mean embedding, PinnerSage)
over an item space fit from co-engagement, and, when ``refit_every`` > 0, refits that space
during the test period the way the live role would: the co-engagement statistics learn every
*applied* action (``evaluate`` applies an event only after scoring it, so a refit never sees an
event before it is scored), and every ``refit_every`` applied actions from ``start_ts`` on the
vectors are refit and the methods move to the new space.

A version switch never mixes spaces: the methods are rebuilt empty over the new vectors, and a
user's state is rebuilt from their logged actions at their next event or query (what the
issue's interests workers do "at their next event"); every query names the space it was made
in (``VectorQuery.catalogue``), so the replay searches that same space.

Items without a collaborative vector (not co-engaged before the fit: items first seen after
it) are absent from the space: never retrieved, and their actions skipped by the methods until
a refit gives them a vector (the actions stay logged, so a rebuild picks them up). A user none
of whose items has a vector gets no query: the replay counts a fallback to popularity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from serving.evaluation.methods.base import Action, Query, ReplayMethod, VectorQuery
from streams.embeddings.coengagement import CoEngagement
from streams.embeddings.config import RefitConfig
from streams.embeddings.refit import ItemEmbedding

BuildMethods = Callable[[np.ndarray], list[ReplayMethod]]
"""``build(space)``: fresh, empty vector methods over ``space`` (one row per catalogue item)."""


class CollaborativeVectors:
    """Vector methods over collaborative vectors; refit every ``refit_every`` actions."""

    def __init__(
        self,
        item_ids: Sequence[str],
        initial: ItemEmbedding,
        build: BuildMethods,
        *,
        stats: CoEngagement | None = None,
        refit: RefitConfig | None = None,
        refit_every: int = 0,
        start_ts: int = 0,
    ) -> None:
        if refit_every < 0:
            raise ValueError("refit_every must be >= 0")
        if refit_every and stats is None:
            raise ValueError("refreshing needs the co-engagement statistics to refit from")
        self._item_ids = list(item_ids)
        self._build = build
        self._stats = stats
        self._refit_config = refit or initial.config
        self.refit_every = refit_every
        self.start_ts = start_ts
        self.refits = 0
        self.embedding = initial
        self._space = initial.aligned(self._item_ids)
        self._has = np.asarray(self._space.any(axis=1))
        self._methods = build(self._space)
        self.names = tuple(n for m in self._methods for n in m.names)
        self._log: dict[str, list[Action]] = {}
        self._built: dict[str, int] = {}  # user -> the version their states were built at
        self._since_refit = 0

    @property
    def version(self) -> int:
        return self.refits

    @property
    def space(self) -> np.ndarray:
        """The current item space (one row per catalogue item; zeros: no vector)."""
        return self._space

    def learn_one(self, action: Action) -> None:
        self._log.setdefault(action.user_id, []).append(action)
        if self._stats is not None:
            self._stats.learn_one(action.user_id, action.item_id, action.ts, action.weight)
        if not self._sync(action.user_id):
            self._apply(action)
        if self.refit_every and action.ts >= self.start_ts:
            self._since_refit += 1
            if self._since_refit >= self.refit_every:
                self.refit()

    def refit(self) -> None:
        """Fit new vectors to the statistics so far and move every method to them."""
        assert self._stats is not None
        self.embedding = ItemEmbedding(self._refit_config).fit(self._stats.cooccurrence())
        self._space = self.embedding.aligned(self._item_ids)
        self._has = np.asarray(self._space.any(axis=1))
        self._methods = self._build(self._space)
        self.refits += 1
        self._since_refit = 0

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        self._sync(user_id)
        out: list[Query | None] = []
        for m in self._methods:
            for q in m.query(user_id, now_ms):
                out.append(replace(q, catalogue=self._space) if isinstance(q, VectorQuery) else q)
        return out

    def _sync(self, user_id: str) -> bool:
        """Rebuild the user's states from their log if they predate the current version."""
        if self._built.get(user_id) == self.refits:
            return False
        for action in self._log.get(user_id, ()):
            self._apply(action)
        self._built[user_id] = self.refits
        return True

    def _apply(self, action: Action) -> None:
        if self._has[action.item]:
            for m in self._methods:
                m.learn_one(action)
