"""Time-decayed item popularity for cold start (pure numpy, no I/O).

An item's popularity at time ``now`` is ``sum(weight * 2 ** (-(now - ts) / half_life))`` over its
engagements: a count that halves every ``half_life``. Because every item decays by the same factor,
the ranking never changes as time passes, only as events arrive, so scores are kept relative to a
reference time (rebased before they could overflow) and ``top`` is one ``argpartition``.

It answers the serving replicas' cold starts (``serving.readmodels``) and is the offline
evaluation's popularity baseline (``serving.evaluation.methods.popularity``).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection, Sequence

import numpy as np

HOUR_MS = 3_600_000
# Rebase once an event is this many half-lives past the reference time: 2**40 ~ 1e12, far from
# float64 overflow, and small values lose nothing that matters for a ranking.
_REBASE_HALF_LIVES = 40.0


class DecayedPopularity:
    """Exponentially decayed engagement counts per item.

    Parameters:
        half_life_hours: time for an engagement's contribution to halve (24; ``math.inf``: no
            decay, plain counts).
        initial_capacity: item slots allocated up front (1024; doubled as needed).

    ``learn_many`` takes events in any order (late events count for what they are worth).
    """

    def __init__(self, half_life_hours: float = 24.0, *, initial_capacity: int = 1024) -> None:
        if not half_life_hours > 0:
            raise ValueError(f"half_life_hours must be > 0, got {half_life_hours}")
        self.half_life_ms = float(half_life_hours) * HOUR_MS
        self._ref_ms: int | None = None
        self._scores = np.zeros(max(1, initial_capacity), dtype=np.float64)
        self._ids: list[str] = []
        self._slot: dict[str, int] = {}
        # Ids forgotten since their owner last cleared this (in memory only): a snapshot leaves
        # them out even when engagements replayed after the delete counted them again.
        self.forgotten: set[str] = set()

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._slot

    def learn_one(self, item_id: str, ts_ms: int, weight: float = 1.0) -> None:
        # Scalar arithmetic: the offline replay learns its events one at a time.
        exponent = (ts_ms - self._advance_reference(ts_ms)) / self.half_life_ms
        self._scores[self._slot_of(item_id)] += weight * 2.0**exponent

    def learn_many(
        self,
        item_ids: Sequence[str],
        ts_ms: Sequence[int] | np.ndarray,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Add engagements (one weight each, 1.0 by default)."""
        n = len(item_ids)
        if n == 0:
            return
        ts = np.asarray(ts_ms, dtype=np.int64)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        if ts.shape != (n,) or w.shape != (n,):
            raise ValueError("item_ids, ts_ms and weights must have the same length")
        ref_ms = self._advance_reference(int(ts.max()))
        slots = np.fromiter((self._slot_of(i) for i in item_ids), dtype=np.intp, count=n)
        contrib = w * np.exp2((ts - ref_ms) / self.half_life_ms)
        np.add.at(self._scores, slots, contrib)

    def forget(self, item_id: str) -> bool:
        """Drop an item (deleted from the catalog; noted in ``forgotten``); returns whether it
        was known."""
        self.forgotten.add(item_id)
        slot = self._slot.pop(item_id, None)
        if slot is None:
            return False
        self._scores[slot] = -np.inf  # the slot stays allocated; -inf never ranks
        return True

    def score(self, item_id: str, now_ms: int) -> float:
        slot = self._slot.get(item_id)
        if slot is None or self._ref_ms is None:
            return 0.0
        return float(self._scores[slot] * np.exp2((self._ref_ms - now_ms) / self.half_life_ms))

    def slots_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """Where each item's count is kept, for ``slot_scores`` (-1: an unknown item).

        A slot stays the item's until the item is forgotten.
        """
        return np.fromiter((self._slot.get(i, -1) for i in item_ids), np.intp, len(item_ids))

    def slot_scores(self, slots: np.ndarray, now_ms: int) -> np.ndarray:
        """``score`` of every slot in ``slots`` at ``now_ms``, as one array: 0 for -1 (unknown),
        -inf for a forgotten item."""
        if self._ref_ms is None:
            return np.zeros(len(slots))
        factor = float(np.exp2((self._ref_ms - now_ms) / self.half_life_ms))
        return np.where(slots >= 0, self._scores[slots] * factor, 0.0)

    def top(
        self,
        k: int,
        now_ms: int,
        *,
        exclude: Collection[str] = (),
        keep: Callable[[str], bool] | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` most popular items at ``now_ms`` as (item id, decayed count), best first.

        Items in ``exclude`` or rejected by ``keep`` are skipped; the search widens until it has
        ``k`` items or has looked at every item.
        """
        if k <= 0 or not self._slot or self._ref_ms is None:
            return []
        scores = self._scores[: len(self._ids)]
        factor = float(np.exp2((self._ref_ms - now_ms) / self.half_life_ms))
        fetch = min(len(scores), k + len(exclude) + (k if keep else 0))
        while True:
            part = np.argpartition(-scores, fetch - 1)[:fetch] if fetch < len(scores) else None
            cand = np.arange(len(scores)) if part is None else part
            cand = cand[np.argsort(-scores[cand], kind="stable")]
            out: list[tuple[str, float]] = []
            for slot in cand.tolist():
                s = scores[slot]
                if s == -np.inf:
                    break
                item_id = self._ids[slot]
                if item_id in exclude or (keep is not None and not keep(item_id)):
                    continue
                out.append((item_id, float(s * factor)))
                if len(out) == k:
                    return out
            if part is None:
                return out
            fetch = min(len(scores), fetch * 4)

    # -- persistence -----------------------------------------------------------------------
    def to_bytes(self, keep: Callable[[str], bool] | None = None) -> bytes:
        """Compact npz bytes (ids, scores, reference time, half-life); only the items ``keep``
        accepts, when given."""
        live = [(i, s) for i, s in self._slot.items() if keep is None or keep(i)]
        buf = io.BytesIO()
        np.savez(
            buf,
            ids=np.array([i for i, _ in live], dtype=np.str_),
            scores=self._scores[[s for _, s in live]] if live else np.zeros(0),
            ref_ms=np.array([self._ref_ms if self._ref_ms is not None else -1], dtype=np.int64),
            half_life_ms=np.array([self.half_life_ms]),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> DecayedPopularity:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            pop = cls(float(z["half_life_ms"][0]) / HOUR_MS, initial_capacity=len(z["ids"]) + 1)
            ref = int(z["ref_ms"][0])
            pop._ref_ms = None if ref < 0 else ref
            ids = [str(i) for i in z["ids"].tolist()]
            pop._ids = ids
            pop._slot = {i: n for n, i in enumerate(ids)}
            pop._scores[: len(ids)] = z["scores"]
        return pop

    # -- internals -------------------------------------------------------------------------
    def _slot_of(self, item_id: str) -> int:
        slot = self._slot.get(item_id)
        if slot is None:
            slot = len(self._ids)
            if slot == len(self._scores):
                self._scores = np.concatenate([self._scores, np.zeros(len(self._scores))])
            self._ids.append(item_id)
            self._slot[item_id] = slot
            self._scores[slot] = 0.0
        return slot

    def _advance_reference(self, newest_ms: int) -> int:
        """The reference time for an event at ``newest_ms``: fixed at the first event, rebased
        before an event's weight could overflow."""
        if self._ref_ms is None:
            self._ref_ms = newest_ms
        elif (newest_ms - self._ref_ms) / self.half_life_ms > _REBASE_HALF_LIVES:
            self._rebase(newest_ms)
        return self._ref_ms

    def _rebase(self, new_ref_ms: int) -> None:
        assert self._ref_ms is not None
        with np.errstate(under="ignore"):
            self._scores *= np.exp2((self._ref_ms - new_ref_ms) / self.half_life_ms)
        self._ref_ms = new_ref_ms
