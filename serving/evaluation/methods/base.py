"""What a replayed method learns from (``Action``), what it answers with (a ``Query``), and the
``ReplayMethod`` protocol that ``evaluate`` drives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class VectorQuery:
    """Search around each row of ``vectors``; several rows are blended by ``importances``.

    ``catalogue`` is the item space searched (one row per catalogue item; a zero row is an item
    without a vector, never retrieved); None: the replay's own ``ReplayData.vectors``. A method
    whose item vectors change during the replay names the space its query was made in.
    """

    vectors: np.ndarray
    importances: np.ndarray
    blended: bool = False
    catalogue: np.ndarray | None = None


@dataclass(frozen=True)
class ScoreQuery:
    """A score for every catalogue item (higher is better)."""

    scores: np.ndarray


Query = VectorQuery | ScoreQuery


@dataclass(frozen=True)
class Action:
    """One positive engagement as the methods see it (``item`` indexes the catalogue)."""

    event_id: str
    user_id: str
    item_id: str
    item: int
    weight: float
    ts: int
    action: str = "rate"


class ReplayMethod(Protocol):
    """A recommender replayed by ``evaluate``: one or more named rankings from one state."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def learn_one(self, action: Action) -> None: ...

    def query(self, user_id: str, now_ms: int) -> list[Query | None]:
        """One query per name (``None``: no state for this user)."""
        ...
