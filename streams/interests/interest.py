"""What the engine answers about one interest (one cluster of a user's actions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np


@dataclass(frozen=True)
class Interest:
    """One cluster of a user's actions, as the queries see it."""

    medoid: str
    importance: float
    size: int
    members: tuple[str, ...]
    last_ts: int
    centroid: np.ndarray = field(repr=False, compare=False)
    medoid_vector: np.ndarray = field(repr=False, compare=False)


class InterestSummary(NamedTuple):
    """An interest without its vectors: what the interests worker publishes."""

    medoid: str
    importance: float
    size: int
    members: tuple[str, ...]
