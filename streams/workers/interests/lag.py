"""How far behind the partitions' ends: the consumer lag gauge, and whether a consumer has
caught up with the ends it saw."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from prometheus_client import Gauge

from streams.topics import ENGAGEMENTS

log = logging.getLogger(__name__)


async def caught_up(consumer: Any, tps: Sequence[Any], end: dict[Any, int]) -> bool:
    for tp in tps:
        if await consumer.position(tp) < end[tp]:
            return False
    return True


class ConsumerLag:
    """The lag gauge of the worker's engagement partitions."""

    def __init__(self, app: Any, gauge: Gauge) -> None:
        self.app = app
        self.gauge = gauge
        # Next engagement offset to process, per partition (cleared in place, never replaced:
        # the batch loop holds it).
        self.next_offset: dict[int, int] = {}

    async def update(self) -> None:
        """Engagements behind the partitions' ends: processed here, or else fetched so far."""
        consumer: Any = self.app.consumer
        lag = 0
        try:
            for tp in consumer.assignment():
                if tp.topic != ENGAGEMENTS.name:
                    continue
                high = consumer.highwater(tp)
                pos = self.next_offset.get(tp.partition)
                if pos is None:
                    pos = await consumer.position(tp)
                if high is not None and pos is not None:
                    lag += max(high - pos, 0)
        except Exception as exc:  # lag is best-effort telemetry, never fatal
            log.debug("consumer lag unavailable: %s", exc)
            return
        self.gauge.set(lag)
