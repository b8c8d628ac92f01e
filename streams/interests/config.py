"""Engine parameters (``InterestConfig``) and what the engine reads from an event."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol

DAY_MS = 86_400_000

DEFAULT_ACTION_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"view": 1.0, "click": 2.0, "like": 3.0, "rate": 3.0, "save": 4.0, "purchase": 5.0}
)


class EngagementLike(Protocol):
    """What ``learn_one`` reads from an event (``streams.schemas.Engagement`` fits)."""

    @property
    def event_id(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def weight(self) -> float | None: ...
    @property
    def ts(self) -> int: ...


@dataclass(frozen=True)
class InterestConfig:
    """Engine parameters. Defaults suit 384-d sentence embeddings and a few months of history.

    - ``decay_per_day``: lambda of the importance decay (0 = plain frequency).
    - ``merge_threshold``: largest Ward merge cost (squared-Euclidean units on unit vectors, so
      a new singleton joins another singleton when their cosine exceeds ``1 - threshold``).
    - ``max_clusters``: cluster cap; the cheapest pair is merged beyond it.
    - ``window_days`` / ``max_actions``: actions kept (by event time / count).
    - ``action_weights``: weight per action name; an event's explicit ``weight`` wins; an
      unknown action weighs ``default_weight``.
    - ``recluster_every``: full Ward recluster every N applied events, and at 16, 32, 64, ...
      events before the first N (0 = only on demand). The default, ``max_actions``, reclusters
      once per turnover of a full window: a recluster at 500 actions costs ~8 ms, ~16 us a
      event spread over 500 events.
    - ``remembered_event_ids``: how many recent event ids are kept to drop duplicates.
    """

    decay_per_day: float = 0.01
    merge_threshold: float = 0.75
    max_clusters: int = 12
    window_days: float = 90.0
    max_actions: int = 500
    action_weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_ACTION_WEIGHTS)
    default_weight: float = 1.0
    recluster_every: int = 500
    remembered_event_ids: int = 256

    def __post_init__(self) -> None:
        if self.decay_per_day < 0:
            raise ValueError("decay_per_day must be >= 0")
        if self.merge_threshold <= 0:
            raise ValueError("merge_threshold must be > 0")
        if self.max_clusters < 1 or self.max_actions < 1:
            raise ValueError("max_clusters and max_actions must be >= 1")
        if self.window_days <= 0:
            raise ValueError("window_days must be > 0")
        if self.recluster_every < 0 or self.remembered_event_ids < 0:
            raise ValueError("recluster_every and remembered_event_ids must be >= 0")

    def with_(self, **changes: Any) -> InterestConfig:
        return replace(self, **changes)

    def weight_of(self, action: str, explicit: float | None) -> float:
        if explicit is not None:
            return float(explicit)
        return float(self.action_weights.get(action, self.default_weight))
