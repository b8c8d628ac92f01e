"""Parking: engagements whose item has no embedding yet wait in the ``parked`` table.

An engagement whose item has no embedding yet is parked in the ``parked`` table (bounded per
user, persisted through its changelog). When the embedding arrives, the worker re-publishes
the parked events to ``engagements`` (same key, same event id, a header saying they are
re-sent), and the agent applies them like any other event. Idempotence by event id makes every
redelivery harmless.
"""

from __future__ import annotations

import json
from typing import Any

from streams.schemas import Engagement
from streams.topics import RESENT_HEADER
from streams.workers.interests.delivery import Delivery
from streams.workers.interests.item_feed import ItemFeed
from streams.workers.interests.metrics import WorkerMetrics

PARKED_TOO_LONG = (
    "parked too long: the item never got an embedding within the per-user parking bound"
)


class Parking:
    """The ``parked`` table (user id -> JSON {event id: engagement JSON}), indexed by item."""

    def __init__(
        self,
        table: Any,
        engagements: Any,
        feed: ItemFeed,
        delivery: Delivery,
        metrics: WorkerMetrics,
        max_per_user: int,
    ) -> None:
        self.table = table
        self.engagements = engagements  # the faust topic parked events are re-sent to
        self.feed = feed
        self.delivery = delivery
        self.metrics = metrics
        self.max_per_user = max_per_user
        # Parked events by item, and the users that have any: built once the tables are
        # recovered (None until then, and again from a revocation to the next recovery).
        self._index: dict[str, set[str]] | None = None
        self._users: set[str] | None = None
        self._count = 0

    def of(self, user_id: str) -> dict[str, str]:
        """The user's parked events: {event id: engagement JSON}."""
        if self._users is not None and user_id not in self._users:
            return {}  # nearly every user: no table lookup
        blob = self.table.get(user_id)
        return json.loads(blob) if blob else {}

    async def park(self, user_id: str, parked: dict[str, str], event: Engagement) -> None:
        """Add ``event`` to ``parked`` (the user's, from ``of``); beyond the per-user bound the
        oldest parked event goes to dead letters."""
        # Park and index with no await in between (the feed task runs at awaits).
        parked[event.event_id] = event.to_json().decode()
        if self._index is not None:
            self._index.setdefault(event.item_id, set()).add(user_id)
        if len(parked) > self.max_per_user:
            raw = parked.pop(next(iter(parked))).encode()
            await self.delivery.dead_letter(raw, PARKED_TOO_LONG, None, None, user_id.encode())

    def store(self, user_id: str, parked: dict[str, str], before: int) -> None:
        """Write the user's ``parked`` events back to the table (they were ``before`` many)."""
        self._count += len(parked) - before
        self.metrics.parked.set(max(self._count, 0))
        if parked:
            self.table[user_id] = json.dumps(parked).encode()
            if self._users is not None:
                self._users.add(user_id)
        elif user_id in self.table:
            del self.table[user_id]
            if self._users is not None:
                self._users.discard(user_id)

    def forget(self) -> None:
        """Partitions are revoked: the index waits for the next recovery."""
        self._index = None
        self._users = None

    async def on_recovered(self) -> None:
        """faust restored the ``parked`` table of the assigned partitions (it calls this before
        their engagements flow again): index what is parked there."""
        index: dict[str, set[str]] = {}
        count = 0
        for user_id, blob in self.table.items():
            for raw in json.loads(blob).values():
                index.setdefault(json.loads(raw)["item_id"], set()).add(user_id)
                count += 1
        self._count = count
        self.metrics.parked.set(count)
        self._index = index
        self._users = {u for users in index.values() for u in users}
        # Embeddings may have arrived while these partitions were elsewhere (or we were down).
        self.feed.arrived.extend(i for i in index if i in self.feed.vectors.store)

    async def republish_arrived(self) -> None:
        """Send parked events whose item now has an embedding back to ``engagements``."""
        if not self.feed.ready.is_set() or self._index is None:
            return  # arrivals wait in feed.arrived until the table is recovered
        arrived, self.feed.arrived = self.feed.arrived, []
        for item_id in dict.fromkeys(arrived):
            for user_id in sorted(self._index.pop(item_id, ())):
                for raw in self.of(user_id).values():
                    if json.loads(raw)["item_id"] == item_id:
                        await self.engagements.send(
                            key=user_id.encode(), value=raw.encode(), headers=[RESENT_HEADER]
                        )
