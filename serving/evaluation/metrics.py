"""Recall, NDCG, hit rate and coverage at K of a replay, with user-level bootstrap 95% intervals."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from serving.evaluation.replay import ReplayResult


@dataclass(frozen=True)
class Estimate:
    """A metric over all scored events and its user-level bootstrap 95% interval."""

    value: float
    lo: float
    hi: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


METRICS = ("recall_at_k", "ndcg_at_k", "hit_rate_at_k", "coverage_at_k")


def recall_curve(result: ReplayResult, name: str) -> list[float]:
    """Recall@K for K = 1..max_k (share of test events whose item is in the top K)."""
    r = result.ranks[name]
    if len(r) == 0:
        return [0.0] * result.max_k
    found = np.bincount(r[r > 0], minlength=result.max_k + 1)[1:]
    return (np.cumsum(found) / len(r)).tolist()


class _UserTotals:
    """Per-user sums of a method's hits and gains at K, and its top-K item incidence."""

    def __init__(self, result: ReplayResult, name: str, k: int, users: np.ndarray, n_users: int):
        rank = result.ranks[name]
        hit = (rank > 0) & (rank <= k)
        gain = np.where(hit, 1.0 / np.log2(np.maximum(rank, 1) + 1.0), 0.0)
        self.hits = np.bincount(users, weights=hit, minlength=n_users)
        self.gains = np.bincount(users, weights=gain, minlength=n_users)
        top = result.top[name][:, :k]
        valid = top >= 0
        incidence = np.zeros((n_users, result.n_items), dtype=np.float32)
        incidence[np.repeat(users, valid.sum(axis=1)), top[valid]] = 1.0
        self.incidence = incidence


def metrics(
    result: ReplayResult,
    k: int,
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    pairs: Sequence[tuple[str, str]] = (),
) -> tuple[dict[str, dict[str, Estimate]], dict[str, dict[str, Estimate]]]:
    """Recall@K, NDCG@K, HitRate@K and catalogue coverage@K per method, and paired differences.

    - Recall@K: share of test events whose item is in the top K (one relevant item per event).
    - NDCG@K: mean of 1 / log2(rank + 1) over test events (0 beyond K).
    - HitRate@K: share of test users with at least one test event hit in the top K.
    - Coverage@K: share of the catalogue that appears in some top-K list.

    Intervals resample *users* (their events are correlated) ``bootstrap`` times; ``pairs``
    ``(a, b)`` get the interval of ``a - b`` on the same resamples (a paired test).
    """
    if not 1 <= k <= result.max_k:
        raise ValueError(f"k must be in 1..{result.max_k}, got {k}")
    if len(result.event_ids) == 0:
        raise ValueError("no scored test events: nothing to measure")
    present, users = np.unique(result.users, return_inverse=True)
    n_users = len(present)
    n_events = np.bincount(users, minlength=n_users).astype(np.float64)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=bootstrap).astype(np.float64)
    w_events = w @ n_events
    drawn = (w > 0).astype(np.float32)

    def point_and_samples(t: _UserTotals) -> dict[str, tuple[float, np.ndarray]]:
        covered = t.incidence.max(axis=0).sum() / result.n_items
        boot_cov = ((drawn @ t.incidence) > 0).sum(axis=1) / result.n_items
        return {
            "recall_at_k": (t.hits.sum() / n_events.sum(), (w @ t.hits) / w_events),
            "ndcg_at_k": (t.gains.sum() / n_events.sum(), (w @ t.gains) / w_events),
            "hit_rate_at_k": (
                float((t.hits > 0).mean()),
                (w @ (t.hits > 0).astype(np.float64)) / n_users,
            ),
            "coverage_at_k": (float(covered), boot_cov.astype(np.float64)),
        }

    samples = {
        name: point_and_samples(_UserTotals(result, name, k, users, n_users))
        for name in result.ranks
    }

    def estimate(value: float, boot: np.ndarray, metric: str) -> Estimate:
        lo, mid, hi = np.quantile(boot, [0.025, 0.5, 0.975])
        if metric == "coverage_at_k":
            # Coverage counts distinct items, not a mean over users: a resample holds ~63% of
            # the distinct users and so covers fewer items. Its spread is placed around the
            # point value instead of its biased-low centre.
            lo, hi = value - (mid - lo), value + (hi - mid)
        return Estimate(float(value), float(lo), float(hi))

    per_method = {
        name: {m: estimate(*samples[name][m], m) for m in METRICS} for name in result.ranks
    }
    diffs: dict[str, dict[str, Estimate]] = {}
    for a, b in pairs:
        diffs[f"{a} - {b}"] = {
            m: estimate(samples[a][m][0] - samples[b][m][0], samples[a][m][1] - samples[b][m][1], m)
            for m in METRICS
        }
    return per_method, diffs
