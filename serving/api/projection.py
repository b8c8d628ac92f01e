"""The dashboard's picture of a user: every interest cluster and a 2-D PCA of the most recent
actions, rebuilt from the engine state a ``user-interests`` record carries."""

from __future__ import annotations

import binascii
from typing import Any

import numpy as np
import pybase64

from serving.api.responses import interest_out
from serving.readmodels import ReadModels
from serving.recommend import InterestView


def projection(
    state_b64: str | None, rm: ReadModels, max_points: int
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]]]:
    """All clusters and a 2-D PCA of the user's most recent actions (distinct items)."""
    if not state_b64:
        return None, []
    from streams.interests import InterestClusters, InterestConfig, StateFormatError

    try:
        state = InterestClusters.from_bytes(
            pybase64.b64decode(state_b64, validate=True),
            rm.item_vectors,
            config=InterestConfig(max_actions=1_000_000),
        )
    except (StateFormatError, binascii.Error, ValueError):
        return None, []
    if state.n_actions == 0:
        return [], []
    now = state.last_ts
    clusters = state.interests(now)
    # Cluster j (creation order) is at position rank[j] of `interests()` (importance order).
    order = np.argsort(-state.importances(now), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    ids, cl = state.assignments()
    vectors, times = state.action_vectors(), state.action_times()
    latest: dict[str, int] = {}
    for pos in np.argsort(-times, kind="stable").tolist():  # newest action of each item
        latest.setdefault(ids[pos], pos)
        if len(latest) >= max_points:
            break
    rows = np.fromiter(latest.values(), dtype=np.intp, count=len(latest))
    xy = pca2(vectors[rows])
    medoids = {c.medoid for c in clusters}
    points = []
    for (item_id, pos), (x, y) in zip(latest.items(), xy.tolist(), strict=True):
        info = rm.catalog.get(item_id)
        points.append(
            {
                "item_id": item_id,
                "title": info.title if info else "",
                "x": round(x, 5),
                "y": round(y, 5),
                "interest": int(rank[cl[pos]]),
                "medoid": item_id in medoids,
                "ts": int(times[pos]),
            }
        )
    out = [
        interest_out(InterestView(c.medoid, c.importance, c.size, c.members[:5]), rm)
        for c in clusters
    ]
    return out, points


def pca2(x: np.ndarray) -> np.ndarray:
    """Rows projected on their first two principal components (zeros when degenerate)."""
    if len(x) == 0:
        return np.zeros((0, 2))
    centered = x.astype(np.float64) - x.mean(axis=0)
    if len(x) < 2 or not np.any(centered):
        return np.zeros((len(x), 2))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ vt[:2].T
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(x), 2 - xy.shape[1]))])
    return xy
