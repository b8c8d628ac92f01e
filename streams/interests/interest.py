"""What the engine answers about one interest (one cluster of a user's actions)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Interest:
    """One cluster of a user's actions, with its vectors: what offline evaluation searches
    around (medoid or centroid)."""

    medoid: str
    importance: float
    size: int
    members: tuple[str, ...]
    last_ts: int
    centroid: np.ndarray = field(repr=False, compare=False)
    medoid_vector: np.ndarray = field(repr=False, compare=False)


Summary = tuple[str, float, int, tuple[str, ...]]
"""An interest without vectors, ``(medoid, importance, size, members)``: what a
``user-interests`` record publishes (``streams.schemas.user_interests_json`` takes these)."""
