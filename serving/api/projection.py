"""The dashboard's picture of a user: a 2-D PCA of the items of the most recent actions, drawn
from the actions a ``user-interests`` record carries and the replica's item vectors."""

from __future__ import annotations

from typing import Any

import numpy as np

from serving.readmodels import ReadModels
from streams.schemas import UserInterests


def projection(record: UserInterests, rm: ReadModels, max_points: int) -> list[dict[str, Any]]:
    """The newest ``max_points`` distinct items the user engaged with (among those the replica
    holds vectors for), projected on their first two principal components, each with its
    action's time and interest (its position in the record's ``interests``, -1 when not
    published). Empty for a record without actions (an older worker's)."""
    actions = record.actions
    if actions is None or not actions.items:
        return []
    items, ts = actions.items, np.asarray(actions.ts, dtype=np.int64)
    latest: dict[str, int] = {}  # item -> its newest action (ts ties: the earlier arrival)
    for pos in np.argsort(-ts, kind="stable").tolist():
        latest.setdefault(items[pos], pos)
    found, vectors = rm.item_vectors(list(latest))
    row_of = {item_id: row for row, item_id in enumerate(found)}
    shown = [item_id for item_id in latest if item_id in row_of][:max_points]
    xy = pca2(vectors[[row_of[i] for i in shown]])  # the replica stores unit vectors
    medoids = {i.medoid for i in record.interests}
    points = []
    for item_id, (x, y) in zip(shown, xy.tolist(), strict=True):
        pos = latest[item_id]
        info = rm.catalog.get(item_id)
        points.append(
            {
                "item_id": item_id,
                "title": info.title if info else "",
                "x": round(x, 5),
                "y": round(y, 5),
                "interest": actions.interest[pos],
                "medoid": item_id in medoids,
                "ts": actions.ts[pos],
            }
        )
    return points


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
