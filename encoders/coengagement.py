"""Co-engagement pairs, a time split, and next-item retrieval recall (numpy, no torch).

Positives for the head are pairs of items one user engaged with close in time: each engagement
with each of the user's next ``window`` engagements within ``max_gap_ms``. Evaluation asks, for
every engagement after the split time, whether the user's *previous* item retrieves this one
among the top ``k`` of the whole catalogue by cosine (the previous item itself excluded).
"""

from __future__ import annotations

import numpy as np

from encoders.records import Engagements

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_CHUNK = 1024  # queries scored per matrix product in recall_at_k (bounds its memory)


def coengagement_pairs(
    eng: Engagements,
    *,
    window: int = 3,
    max_gap_ms: int = HOUR_MS,
    before_ts: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) item rows of positive pairs; with ``before_ts``, only pairs wholly before it."""
    firsts, seconds = [], []
    for k in range(1, window + 1):
        if len(eng) <= k:
            break
        keep = (
            (eng.users[k:] == eng.users[:-k])
            & (eng.ts[k:] - eng.ts[:-k] <= max_gap_ms)
            & (eng.items[k:] != eng.items[:-k])
        )
        if before_ts is not None:
            keep &= eng.ts[k:] < before_ts
        firsts.append(eng.items[:-k][keep])
        seconds.append(eng.items[k:][keep])
    if not firsts:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    return np.concatenate(firsts), np.concatenate(seconds)


def split_time(eng: Engagements, test_fraction: float = 0.2) -> int:
    """The timestamp after which the last ``test_fraction`` of engagements lie."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError("test_fraction must be in (0, 1)")
    if len(eng) == 0:
        raise ValueError("no engagements")
    return int(np.quantile(eng.ts, 1.0 - test_fraction, method="higher"))


def next_item_queries(
    eng: Engagements, split_ts: int, *, max_queries: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(previous item, next item) rows for each engagement at or after ``split_ts``."""
    keep = (
        (eng.users[1:] == eng.users[:-1])
        & (eng.ts[1:] >= split_ts)
        & (eng.items[1:] != eng.items[:-1])
    )
    queries, targets = eng.items[:-1][keep], eng.items[1:][keep]
    if max_queries is not None and queries.shape[0] > max_queries:
        pick = np.sort(np.random.default_rng(0).choice(queries.shape[0], max_queries, False))
        queries, targets = queries[pick], targets[pick]
    return queries, targets


def recall_at_k(
    embeddings: np.ndarray,
    queries: np.ndarray,
    targets: np.ndarray,
    k: int = 10,
) -> float:
    """Fraction of queries whose target is among the top ``k`` items by cosine (exact search)."""
    if queries.shape[0] == 0:
        return float("nan")
    emb = np.asarray(embeddings, dtype=np.float32)
    k = min(k, emb.shape[0] - 1)
    hits = 0
    for start in range(0, queries.shape[0], _CHUNK):
        q = queries[start : start + _CHUNK]
        scores = emb[q] @ emb.T
        scores[np.arange(q.shape[0]), q] = -np.inf  # the query item itself does not count
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        hits += int((top == targets[start : start + _CHUNK, None]).any(axis=1).sum())
    return hits / queries.shape[0]
