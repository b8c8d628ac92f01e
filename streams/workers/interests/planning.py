"""What of a batch goes to the engine: each user's job, planned from the worker's tables.

The worker decides everything that needs its tables and the item store: which events are
redeliveries (each stored state carries the (partition, offset) of the last engagement it
holds), which are parked (their item has no embedding yet), which vectors an event gets, and
whether the engine process may lack the user's state (the worker mirrors which users it holds).
"""

from __future__ import annotations

from collections import Counter as Tally
from typing import Any, NamedTuple

import numpy as np

from streams.interests import InterestClusters
from streams.schemas import InvalidEvent, UserDeleted, decode_for_topic
from streams.topics import ENGAGEMENTS, is_resent
from streams.workers.interests.app import STATE_POSITION
from streams.workers.interests.engine_process import FORGET, HeldUsers, Learn
from streams.workers.interests.item_feed import ItemFeed
from streams.workers.interests.parking import Parking


class Planned(NamedTuple):
    """One user's part of a chunk, as planned by the worker (see ``UserJob``)."""

    user_id: str
    pairs: list[tuple[Any, Any]]  # (faust event, decoded event)
    stored: bytes | None
    fresh: bool
    ops: list[Learn | None]
    redelivered: bool
    position: tuple[int, int] | None  # of the user's last engagement in this chunk


def engagement_or_error(raw: bytes | None) -> Any:
    """An ``engagements`` message decoded, or the ``InvalidEvent`` saying why it is not one."""
    try:
        return decode_for_topic(ENGAGEMENTS.name, raw)
    except InvalidEvent as exc:
        return exc


class BatchVectors:
    """The item vectors of a chunk: ``ids[i]`` is row ``i``; rows added as lookups come."""

    def __init__(self, ids: list[str], matrix: np.ndarray) -> None:
        self.ids = list(ids)
        self.rows = {item: i for i, item in enumerate(self.ids)}
        self._blocks = [matrix] if len(ids) else []

    def add(self, ids: list[str], matrix: np.ndarray) -> None:
        for item in ids:
            self.rows[item] = len(self.ids)
            self.ids.append(item)
        if len(ids):
            self._blocks.append(matrix)

    def matrix(self) -> np.ndarray:
        if len(self._blocks) == 1:
            return self._blocks[0]
        if not self._blocks:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(self._blocks)


class Planner:
    """Plans each user's job, and remembers what the engine process knows: which users it
    holds, how far each one's stored state goes, which items it knows are deleted."""

    def __init__(self, states: Any, feed: ItemFeed, parking: Parking, held_users: int) -> None:
        self.states = states  # the faust table "interests"
        self.feed = feed
        self.parking = parking
        # Which users the engine process holds (it keeps the same least-recently-used set).
        self.held = HeldUsers(held_users)
        # (partition, offset) of the last engagement each cached user's stored state reflects.
        self.positions: dict[str, tuple[int, int]] = {}
        self._sent_deleted: set[str] = set()  # feed.deleted as the engine process knows it

    def forget(self) -> None:
        """The engine process forgets every state: so does the mirror."""
        self.held.clear()
        self.positions.clear()

    def forget_user(self, user_id: str) -> None:
        self.held.drop(user_id)
        self.positions.pop(user_id, None)

    def deleted_since_sent(self) -> tuple[list[str], list[str]]:
        """Items deleted, and deleted items back, since the engine process last heard."""
        now, sent = self.feed.deleted, self._sent_deleted
        if now == sent:
            return [], []
        deleted, undeleted = list(now - sent), list(sent - now)
        self._sent_deleted = set(now)
        return deleted, undeleted

    def plan_sweep(self, user_id: str, row: bytes, context: Any, vectors: BatchVectors) -> Planned:
        """A job with no event for a user whose stored ``row`` names a deleted item: the engine
        drops the item (as at the user's next event) and answers with the state and record,
        written back under the row's position. ``context`` stands for the user's event (the
        partition the table writes go to). Adds the vectors the job needs to ``vectors``."""
        _, stored = self._load(user_id, vectors, row)
        position = STATE_POSITION.unpack_from(row)
        self.positions[user_id] = position
        return Planned(user_id, [(context, None)], stored, False, [], True, position)

    def _load(
        self, user_id: str, vectors: BatchVectors, row: bytes | None = None
    ) -> tuple[bool, bytes | None]:
        """Mark the user used in the mirror of the engine's cache; when the engine does not hold
        them, load their stored state (``row``, else the table's) and the vectors of its items.
        Returns (fresh: no stored state, the stored state the job carries)."""
        held, evicted = self.held.touch(user_id)
        for gone in evicted:
            self.positions.pop(gone, None)
        if held:
            return False, None
        if row is None:
            row = self.states.get(user_id)
        if row is None:
            self.positions.pop(user_id, None)
            return True, None
        self.positions[user_id] = STATE_POSITION.unpack_from(row)
        stored = row[STATE_POSITION.size :]
        # Items gone from the store (deleted) are left out: the state drops them.
        missing = [i for i in InterestClusters.items_in(stored) if i not in vectors.rows]
        vectors.add(*self.feed.lookup(missing))
        return False, stored

    async def plan_user(
        self,
        user_id: str,
        events: list[tuple[Any, Any]],
        vectors: BatchVectors,
        outcomes: Tally[str],
    ) -> Planned:
        """Decide what of one user's (faust event, decoded event) pairs of a batch goes to the
        engine (in order), counting the others in ``outcomes``: redeliveries, parked events,
        user deletions. Adds the vectors the job needs to ``vectors``."""
        fresh, stored = self._load(user_id, vectors)
        applied_at = self.positions.get(user_id)
        rows = vectors.rows
        parked = self.parking.of(user_id)
        parked_before = len(parked)
        redelivered = False
        ops: list[Learn | None] = []
        for event, ev in events:
            position = (event.message.partition, event.message.offset)
            if (
                applied_at is not None
                and position[0] == applied_at[0]
                and position[1] <= applied_at[1]
            ):
                # A redelivery after a crash: the stored state already holds this event. Event
                # ids alone would not do: the engine remembers only its latest few hundred.
                redelivered = True
                outcomes["duplicate"] += 1
                continue
            applied_at = position
            if isinstance(ev, UserDeleted):
                ops.append(FORGET)
                parked.clear()
                outcomes["user_deleted"] += 1
                continue
            if is_resent(event.message.headers) and ev.event_id not in parked:
                # A parked event re-sent on its item's arrival that is no longer parked: it was
                # applied already (re-sent twice around a crash). Event ids alone would not do.
                outcomes["duplicate"] += 1
                continue
            row = rows.get(ev.item_id)
            if row is None:
                # It may have arrived since the batch lookup; its arrival may even have been
                # handled already, so parking it now would leave it parked for good.
                vectors.add(*self.feed.lookup([ev.item_id]))
                row = rows.get(ev.item_id)
            parked.pop(ev.event_id, None)
            if row is None and ev.item_id in self.feed.deleted:
                outcomes["deleted_item"] += 1  # its item is gone: nothing to wait for
                continue
            if row is None:
                outcomes["parked"] += 1
                await self.parking.park(user_id, parked, ev)
                continue
            ops.append(Learn(ev.event_id, ev.item_id, ev.action, ev.weight, ev.ts, row))
        if len(parked) != parked_before or parked:
            self.parking.store(user_id, parked, parked_before)
        if applied_at is not None:
            self.positions[user_id] = applied_at
        return Planned(user_id, events, stored, fresh, ops, redelivered, applied_at)
