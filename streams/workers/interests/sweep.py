"""Deleted items leave the stored states at once, not at each user's next event.

The item feed puts each item it sees deleted (a tombstone on ``item-embeddings``) into
``feed.gone``. The sweep finds, in the assigned partitions of the ``interests`` table, every
stored state that names one of them, and the parked engagements on them in the ``parked``
table; the worker (``InterestsWorker``) has the engine drop the items from those states, writes
them back and publishes their users' records again (a tombstone for a user left with nothing),
and drops those parked engagements.

After every recovery of the tables (a start, a rebalance) the sweep checks every assigned state
against the item store instead: an item the store lacks was deleted while these partitions
were elsewhere, or before a crash cut a sweep short.

A sweep reads every row of the assigned partitions (not an index from item to users, which
would cost memory on every write to save a scan on each rare delete).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, NamedTuple

from streams.faust_runtime.tables import assigned_stores, stored_rows
from streams.interests import InterestClusters
from streams.workers.interests.app import STATE_POSITION
from streams.workers.interests.item_feed import ItemFeed


class Affected(NamedTuple):
    """What names a deleted item, by engagement partition."""

    states: list[tuple[int, str, bytes]]  # (partition, user id, table row)
    parked: list[tuple[int, str, dict[str, str]]]  # (partition, user id, parked events kept)


class ItemSweep:
    """Which deleted items are still to be swept from the stored states, and where they are."""

    def __init__(self, states: Any, parked: Any, feed: ItemFeed) -> None:
        self.states = states  # the faust table "interests"
        self.parked = parked  # the faust table "parked"
        self.feed = feed
        self._items: set[str] = set()
        self._check_all = False

    def on_recovered(self) -> None:
        """The tables of the assigned partitions were restored: check all of them."""
        self._check_all = True

    @property
    def due(self) -> bool:
        return bool(self._check_all or self._items or self.feed.gone)

    def take(self) -> tuple[set[str], bool]:
        """The deleted items to sweep, and whether to check every state; both forgotten until
        ``retry`` gives them back."""
        items, self.feed.gone = self._items | set(self.feed.gone), []
        check_all, self._items, self._check_all = self._check_all, set(), False
        return items, check_all

    def retry(self, items: Iterable[str], check_all: bool) -> None:
        """A sweep was cut short (a rebalance): sweep those again."""
        self._items.update(items)
        self._check_all = self._check_all or check_all

    def affected(self, items: set[str], check_all: bool) -> Affected:
        """The stored states (and parked engagements) naming one of ``items`` or, with
        ``check_all``, an item the item store lacks, in the assigned partitions."""
        gone = set(items)
        store = self.feed.vectors.store
        exists: dict[str, bool] = {}  # with check_all: whether the item store has the item

        def names_gone(held: frozenset[str]) -> bool:
            if not check_all:
                return not held.isdisjoint(gone)
            for item in held:
                if item not in exists:
                    exists[item] = item not in gone and item in store
                    if not exists[item]:
                        gone.add(item)
            return not held.isdisjoint(gone)

        states = []
        for partition, db in assigned_stores(self.states):
            for user_id, row in stored_rows(self.states, db):
                if names_gone(InterestClusters.items_in(row[STATE_POSITION.size :])):
                    states.append((partition, user_id, row))
        gone |= self.feed.deleted  # parked engagements on these wait for nothing
        parked = []
        for partition, db in assigned_stores(self.parked):
            for user_id, blob in stored_rows(self.parked, db):
                events: dict[str, str] = json.loads(blob)
                kept = {
                    e: raw for e, raw in events.items() if json.loads(raw)["item_id"] not in gone
                }
                if len(kept) != len(events):
                    parked.append((partition, user_id, kept))
        return Affected(states, parked)
