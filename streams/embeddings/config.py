"""The settings of the collaborative item space: what counts as co-engagement
(``CoEngagementConfig``) and how vectors are fit from it (``RefitConfig``). Apart from the
models so that reading them (the command line's help texts) does not load scipy."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CoEngagementConfig:
    """What counts as co-engagement and how fast it is forgotten. The defaults were chosen on
    MovieLens 100k's warm-up period (docs/quality.md).

    - ``window``: a new positive pairs with at most this many of the user's previous ones.
    - ``window_days``: ... and only with those at most this many days older (``inf``: any age).
    - ``half_life_days``: every pair's weight halves after this many days (``inf``: no decay).
    - ``consolidate_every``: buffered pairs summed into the sparse matrix at a time.
    - ``min_weight``: a decayed entry below this is dropped at consolidation.
    """

    window: int = 100
    window_days: float = 7.0
    half_life_days: float = 120.0
    consolidate_every: int = 200_000
    min_weight: float = 1e-3

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be >= 1")
        if not self.window_days > 0 or not self.half_life_days > 0:
            raise ValueError("window_days and half_life_days must be > 0")
        if self.consolidate_every < 1 or self.min_weight < 0:
            raise ValueError("consolidate_every must be >= 1 and min_weight >= 0")


@dataclass(frozen=True)
class RefitConfig:
    """``rank``: dimensions; ``shift``: PPMI shift k (``max(pmi - log k, 0)``, 1 = plain PPMI);
    ``alpha``: context-distribution smoothing (1 = none); ``eig_power``: singular-value weight
    ``p`` of ``U S ** p``; ``seed``: ARPACK's start vector (fits are deterministic). The
    defaults were chosen on MovieLens 100k's warm-up period (docs/quality.md)."""

    rank: int = 192
    shift: float = 1.0
    alpha: float = 0.5
    eig_power: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError("rank must be >= 1")
        if not self.shift > 0 or not 0 < self.alpha <= 1:
            raise ValueError("shift must be > 0 and alpha in (0, 1]")
