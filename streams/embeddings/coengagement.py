"""Item-item co-engagement statistics, maintained one engagement at a time (pure, no I/O).

Two items are co-engaged when one user engaged with both close together: each new positive
engagement pairs with the user's last ``window`` positives that lie within ``window_days`` of it.
A pair adds ``weight_a * weight_b`` to both ``C[a, b]`` and ``C[b, a]`` (an item never pairs with
itself), so ``C`` stays symmetric.

Every statistic decays with a half-life (``half_life_days``): a pair from ``half_life_days`` ago
counts half as much as one made now, so the vectors refit from ``C`` follow taste as it moves.
As in ``serving.popularity``, contributions are stored relative to a reference time (a pair at
``ts`` adds ``w * 2 ** ((ts - ref) / half_life)``; the reference is rebased before that could
overflow), so no event rescales the whole matrix; ``cooccurrence`` returns the values as of the
newest event.

Storage is sparse: new pairs go to a buffer of (row, col, value) arrays, summed into a
``scipy.sparse`` CSR matrix every ``consolidate_every`` buffered pairs (and before any read).
Memory stays bounded: consolidation drops entries that decayed below ``min_weight``, and the
recent-positives window of a user idle for more than ``window_days`` (who can pair with nothing
new) is forgotten.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from streams.embeddings.config import CoEngagementConfig

DAY_MS = 86_400_000
# Rebase once an event is this many half-lives past the reference time (2**40 ~ 1e12).
_REBASE_HALF_LIVES = 40.0


@dataclass(frozen=True)
class CoOccurrence:
    """A snapshot of the statistics: ``matrix[a, b]`` is the decayed co-engagement of
    ``item_ids[a]`` and ``item_ids[b]`` (symmetric CSR, float64) as of ``as_of_ts``."""

    item_ids: list[str]
    matrix: sp.csr_matrix
    as_of_ts: int
    events: int  # engagements learned so far


class CoEngagement:
    """Decayed item-item co-engagement counts within each user's recent window."""

    def __init__(self, config: CoEngagementConfig | None = None) -> None:
        self.config = config or CoEngagementConfig()
        c = self.config
        self._half_life_ms = c.half_life_days * DAY_MS
        self._window_ms = c.window_days * DAY_MS
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        # Per user: (item index, ts, weight) of their last ``window`` positives, oldest first.
        self._recent: dict[str, deque[tuple[int, int, float]]] = {}
        self._last_ts: dict[str, int] = {}
        self._matrix = sp.csr_matrix((0, 0), dtype=np.float64)
        self._rows: list[int] = []
        self._cols: list[int] = []
        self._vals: list[float] = []
        self._ref_ms: int | None = None
        self._newest_ms = 0
        self._events = 0

    @property
    def n_items(self) -> int:
        return len(self._ids)

    @property
    def n_users(self) -> int:
        """Users whose recent window is kept."""
        return len(self._recent)

    @property
    def events(self) -> int:
        return self._events

    @property
    def nnz(self) -> int:
        """Stored entries (consolidated and buffered; a buffered pair may repeat one)."""
        return int(self._matrix.nnz) + len(self._rows)

    def learn_one(self, user_id: str, item_id: str, ts: int, weight: float = 1.0) -> None:
        """Pair one positive engagement with the user's recent positives, then remember it."""
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"weight must be finite and > 0, got {weight}")
        ts = int(ts)
        item = self._index.get(item_id)
        if item is None:
            item = self._index[item_id] = len(self._ids)
            self._ids.append(item_id)
        self._events += 1
        self._newest_ms = max(self._newest_ms, ts)
        growth = self._growth(ts)
        recent = self._recent.get(user_id)
        if recent is None:
            recent = self._recent[user_id] = deque(maxlen=self.config.window)
        for other, other_ts, other_w in recent:
            if other == item or abs(ts - other_ts) > self._window_ms:
                continue
            value = weight * other_w * growth
            self._rows += (item, other)
            self._cols += (other, item)
            self._vals += (value, value)
        recent.append((item, ts, weight))
        self._last_ts[user_id] = max(ts, self._last_ts.get(user_id, ts))
        if len(self._rows) >= self.config.consolidate_every:
            self.consolidate()

    def consolidate(self) -> None:
        """Sum the buffered pairs into the matrix; drop decayed entries and idle users."""
        n = len(self._ids)
        m = self._matrix
        if m.shape[0] < n:
            m = sp.csr_matrix(
                (m.data, m.indices, np.pad(m.indptr, (0, n - m.shape[0]), "edge")), shape=(n, n)
            )
        if self._rows:
            new = sp.csr_matrix(
                (np.array(self._vals), (np.array(self._rows), np.array(self._cols))), shape=(n, n)
            )
            m = (m + new).tocsr()
            self._rows, self._cols, self._vals = [], [], []
        if self.config.min_weight > 0 and m.nnz:
            floor = self.config.min_weight / self._scale_now()
            if (m.data < floor).any():
                m.data[m.data < floor] = 0.0
                m.eliminate_zeros()
        self._matrix = m
        if math.isfinite(self._window_ms):
            idle = [u for u, t in self._last_ts.items() if self._newest_ms - t > self._window_ms]
            for u in idle:
                del self._recent[u], self._last_ts[u]

    def cooccurrence(self) -> CoOccurrence:
        """The statistics as of the newest event (a copy: later learning leaves it unchanged)."""
        self.consolidate()
        matrix = self._matrix.copy()
        matrix.data *= self._scale_now()
        return CoOccurrence(list(self._ids), matrix, self._newest_ms, self._events)

    # -- decay ----------------------------------------------------------------------------
    def _growth(self, ts: int) -> float:
        """What a unit of weight at ``ts`` is stored as (relative to the reference time)."""
        if not math.isfinite(self._half_life_ms):
            return 1.0
        if self._ref_ms is None:
            self._ref_ms = ts
        elif (ts - self._ref_ms) / self._half_life_ms > _REBASE_HALF_LIVES:
            self._rebase(ts)
        return 2.0 ** ((ts - self._ref_ms) / self._half_life_ms)

    def _scale_now(self) -> float:
        """Stored value -> value as of the newest event."""
        if self._ref_ms is None or not math.isfinite(self._half_life_ms):
            return 1.0
        return 2.0 ** ((self._ref_ms - self._newest_ms) / self._half_life_ms)

    def _rebase(self, new_ref_ms: int) -> None:
        assert self._ref_ms is not None
        factor = 2.0 ** ((self._ref_ms - new_ref_ms) / self._half_life_ms)
        self._matrix = self._matrix * factor
        self._vals = [v * factor for v in self._vals]
        self._ref_ms = new_ref_ms
