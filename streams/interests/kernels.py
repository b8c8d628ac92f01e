"""Numeric kernels of the interests engine: unit vectors, the medoid, Ward labels, and the
shortcuts past numpy's, scipy's and BLAS's per-call overheads that they run on.

Each shortcut calls the same kernel as the public API it replaces, so the bits do not change.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController


def _find_c_einsum() -> Callable[..., np.ndarray]:
    """numpy's C einsum: what ``np.einsum`` calls (unchanged arguments) when not optimizing,
    without its dispatch (~1.5 us a call, most of a small row's cost). Same kernel, same bits."""
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            found: Callable[..., np.ndarray] = importlib.import_module(module).c_einsum
        except (ImportError, AttributeError):
            continue
        return found
    return np.einsum


c_einsum = _find_c_einsum()


def row_sq(rows: np.ndarray) -> np.ndarray:
    """Squared norms of ``rows``: one einsum kernel, so a row's bits do not depend on how many
    rows are computed together (full recomputes and single dirty rows agree)."""
    return c_einsum("ij,ij->i", rows, rows)


def unit(vector: np.ndarray) -> np.ndarray:
    """The float32 unit vector along ``vector`` (raises on zero or non-finite input)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = math.sqrt(float(v @ v))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("embedding must be finite and non-zero")
    return v / np.float32(norm)


def medoid_of(vectors: np.ndarray, ids: Sequence[str]) -> int:
    """Index of the medoid of ``vectors`` under squared Euclidean distance.

    The member nearest the centroid minimizes the sum of squared distances to all members
    (sum_j ||x - v_j||^2 = n ||x - c||^2 + const), so O(n dim) instead of O(n^2 dim). Ties go to
    the smallest item id, so the answer does not depend on member order.
    """
    # np.mean's own steps (float64 sum, divided by the count) without its wrapper: same bits.
    c = np.add.reduce(vectors, axis=0, dtype=np.float64)
    c /= len(vectors)
    diff = vectors - c.astype(np.float32)
    # The minimum and its ties in Python: exact on the float32 distances (widening is exact),
    # and cheaper than three numpy calls on a handful of members.
    d = c_einsum("ij,ij->i", diff, diff).tolist()
    if math.isnan(sum(d)):  # a NaN (not from unit vectors): numpy's rules, as before
        arr = np.asarray(d, dtype=diff.dtype)
        best = np.flatnonzero(arr == arr.min()).tolist()
    else:
        low = min(d)
        best = [i for i, v in enumerate(d) if v == low]
    if len(best) == 1:
        return best[0]
    return int(min(best, key=lambda i: ids[i]))


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread() -> AbstractContextManager[object]:
    """BLAS held to one thread while entered: a 500 x 500 product is too small to share, and a
    worker's other threads (and other workers) need the cores; threaded it is ~8x slower under
    load. Entering costs ~15 us, leaving as much: a caller with several products enters once."""
    return _blas_controller().limit(limits=1, user_api="blas")


def ward_labels(vectors: np.ndarray, threshold: float, max_clusters: int) -> np.ndarray:
    """Ward agglomerative labels of ``vectors`` cut at merge cost ``threshold``.

    Distances come from one matrix product (||a - b||^2 = |a|^2 + |b|^2 - 2 a.b), taken
    straight into scipy's condensed form: ~50x faster than pdist at dim 384.
    """
    if len(vectors) == 1:
        return np.ones(1, dtype=np.int32)
    with one_blas_thread():
        return ward_labels_no_limit(vectors, threshold, max_clusters)


def ward_labels_no_limit(vectors: np.ndarray, threshold: float, max_clusters: int) -> np.ndarray:
    """``ward_labels`` without entering ``one_blas_thread``: for a caller that holds it."""
    n = len(vectors)
    if n == 1:
        return np.ones(1, dtype=np.int32)
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    gram = v @ v.T
    rows, cols = _upper_triangle(n)
    sq = c_einsum("ij,ij->i", v, v).astype(np.float64)  # 1 for unit rows; kept for any input
    d = gram[rows, cols].astype(np.float64)
    d *= -2.0
    d += sq[rows]
    d += sq[cols]
    np.maximum(d, 0.0, out=d)
    np.sqrt(d, out=d)
    tree = _ward_tree(d, n)
    labels = _cut(tree, n, "distance", float(np.sqrt(2.0 * threshold)))
    if labels.max() > max_clusters:
        labels = _cut(tree, n, "maxclust", max_clusters)
    return labels.astype(np.int32)


# scipy's linkage and fcluster check their input on every call (array-API dispatch, validity
# scans): ~0.5 ms of a young user's 16-action recluster, against ~30 us of work. Our trees are
# valid by construction, so the C routines behind them are called directly when present.
# scipy.cluster is imported at the first recluster, not with the engine: it takes ~0.35 s, and
# the command line imports the engine's config for its help texts.
@functools.cache
def _scipy_ward() -> tuple[Any, int | None]:
    """scipy's hierarchy C module and its Ward code, or (the public module, None) for another
    scipy layout."""
    import scipy.cluster.hierarchy as hierarchy

    try:
        from scipy.cluster import _hierarchy as scipy_c

        scipy_c.nn_chain, scipy_c.cluster_dist, scipy_c.cluster_maxclust_dist  # noqa: B018
        return scipy_c, int(hierarchy._LINKAGE_METHODS["ward"])
    except (ImportError, AttributeError, KeyError):
        return hierarchy, None


def _ward_tree(distances: np.ndarray, n: int) -> np.ndarray:
    """``linkage(distances, method="ward")`` (what it runs for Ward: the nearest-neighbour
    chain), without its checks."""
    scipy_c, ward_code = _scipy_ward()
    if ward_code is None:
        return np.asarray(scipy_c.linkage(distances, method="ward"))
    return np.asarray(scipy_c.nn_chain(distances, n, ward_code))


def _cut(tree: np.ndarray, n: int, criterion: str, t: float) -> np.ndarray:
    """``fcluster(tree, t=t, criterion=criterion)`` for "distance" (cut at height ``t``) or
    "maxclust" (at most ``t`` clusters), without its checks."""
    scipy_c, ward_code = _scipy_ward()
    if ward_code is None:
        return np.asarray(scipy_c.fcluster(tree, t=t, criterion=criterion))
    labels = np.zeros(n, dtype=np.int32)
    if criterion == "distance":
        scipy_c.cluster_dist(tree, labels, float(t), n)
    else:
        scipy_c.cluster_maxclust_dist(tree, labels, n, int(t))
    return labels


@functools.lru_cache(maxsize=8)
def _upper_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the condensed distance vector of ``n`` points."""
    return np.triu_indices(n, 1)
