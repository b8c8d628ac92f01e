"""What the engine answers about a user's interests: each interest (one cluster of the user's
actions), and the kept actions behind them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

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


class KeptActions(NamedTuple):
    """Every action a state keeps, in arrival order: its item, its time (ms) and ``interest``,
    the position of its cluster among the summaries published with it (-1: not among them)."""

    items: tuple[str, ...]
    ts: np.ndarray
    interest: np.ndarray
