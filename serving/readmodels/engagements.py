"""``engagements`` -> the time-decayed popularity that answers cold starts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from serving.popularity import DecayedPopularity
from serving.readmodels.metrics import ServingMetrics
from streams.schemas import Engagement, InvalidEvent, decode_for_topic
from streams.topics import is_resent


class EngagementCounter:
    """Counts each engagement once into ``popularity`` (replaced by a restored snapshot before
    the recommender is built, so both hold the same object)."""

    def __init__(self, popularity: DecayedPopularity, metrics: ServingMetrics) -> None:
        self.popularity = popularity
        self.metrics = metrics

    def apply(self, tp: Any, records: Iterable[Any]) -> None:
        """Apply one partition's records of a poll."""
        items: list[str] = []
        stamps: list[int] = []
        for m in records:
            try:
                ev = decode_for_topic(tp.topic, m.value)
            except InvalidEvent:
                # The interests worker owns dead-lettering this topic; we only count.
                self.metrics.records.labels(tp.topic, "invalid").inc()
                continue
            # A parked engagement re-sent by the interests worker was counted the first time.
            if isinstance(ev, Engagement) and not is_resent(m.headers):
                items.append(ev.item_id)
                stamps.append(ev.ts)
        if items:
            self.popularity.learn_many(items, stamps)
            self.metrics.records.labels(tp.topic, "counted").inc(len(items))
