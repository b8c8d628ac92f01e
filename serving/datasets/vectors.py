"""Synthetic clustered embeddings for tests and benchmarks of the item index."""

from __future__ import annotations

import numpy as np


def clustered_unit_vectors(
    n: int,
    dim: int,
    *,
    clusters: int = 1000,
    spread: float = 1.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit vectors in Gaussian clusters around random directions on the sphere.

    Returns (vectors float32 (n, dim), cluster of each row). Cluster sizes are
    uneven (lognormal weights, like topics in a catalog) and each cluster has its
    own width, drawn from [0.5, 1.5] x `spread`; at spread 1 a point's cosine to
    its centre is about 0.7 and to a random point of its cluster about 0.5,
    roughly what sentence encoders give for items on one topic.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(sigma=1.0, size=clusters)
    cluster_of = rng.choice(clusters, size=n, p=weights / weights.sum())
    widths = (spread * rng.uniform(0.5, 1.5, size=clusters)).astype(np.float32)
    noise = rng.standard_normal((n, dim)).astype(np.float32) / np.float32(np.sqrt(dim))
    vectors = centres[cluster_of] + widths[cluster_of, None] * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, cluster_of
