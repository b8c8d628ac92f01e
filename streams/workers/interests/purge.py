"""Purging the worker's local stores of what it forgot.

A deleted user's table rows, the rows a sweep rewrote without a deleted item, and a deleted
item's vector leave RocksDB tombstones and superseded versions behind in the files.
``StorePurges`` notes which stores hold such leftovers (a partition of a table, the item store)
and purges them (`stores.forgetting.purge`: flush, full compaction, MANIFEST rolled) in a
thread, at most every ``every_s`` seconds, so the event loop goes on meanwhile.

That a purge is owed is also kept in the item store (``StateDB.mark_purge_due``, no id in it):
a worker stopped or killed before its purge, or whose tables were rebuilt from the changelogs
(which replay superseded rows), purges every store once its tables are recovered.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from stores.forgetting import purge
from stores.kv import StateDB
from streams.faust_runtime.tables import assigned_stores, store_of
from streams.workers.interests.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class StorePurges:
    """Stores holding forgotten data, and their purge."""

    def __init__(self, items_db: StateDB, metrics: WorkerMetrics, every_s: float) -> None:
        self.items_db = items_db
        self.metrics = metrics
        self.every_s = every_s
        self._partitions: set[tuple[Any, int]] = set()  # (faust table, partition)
        self._items = False
        self._last = -float("inf")
        self._running = threading.Lock()  # held while a purge runs (close waits for it)
        self._closed = False
        self.owed_at_start = items_db.purge_due

    def note_all(self, tables: list[Any]) -> None:
        """Every assigned partition of ``tables`` and the item store (a purge owed from before
        the start)."""
        for table in tables:
            for partition, _ in assigned_stores(table):
                self._partitions.add((table, partition))
        self.note_items()

    def note_partition(self, table: Any, partition: int) -> None:
        """A row of ``table``'s ``partition`` was deleted, or rewritten to forget something."""
        self._partitions.add((table, partition))
        self._noted()

    def note_items(self) -> None:
        """An item left the item store."""
        self._items = True
        self._noted()

    @property
    def pending(self) -> int:
        """Stores waiting for a purge."""
        return len(self._partitions) + self._items

    async def run_due(self) -> None:
        """Purge what is noted, unless the last purge is less than ``every_s`` ago."""
        if not self.pending or time.monotonic() - self._last < self.every_s:
            return
        partitions, self._partitions = self._partitions, set()
        items, self._items = self._items, False
        # Resolved now, on the event loop: faust drops a revoked partition's database.
        dbs = [db for t, p in partitions if (db := store_of(t, p)) is not None]
        started = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, self._purge, dbs, items)
        self._last = time.monotonic()
        self.metrics.purges.inc()
        if not self.pending:
            self.items_db.mark_purge_due(False)
        self._gauge()
        log.info(
            "purged %d table stores%s in %.2f s",
            len(dbs),
            " and the item store" if items else "",
            self._last - started,
        )

    def close(self) -> None:
        """Wait for a purge in flight and refuse later ones (before the item store closes)."""
        with self._running:
            self._closed = True

    def _purge(self, dbs: list[Any], items: bool) -> None:
        with self._running:
            if self._closed:
                return
            for db in dbs:
                purge(db)
            if items:
                self.items_db.purge(items=True)

    def _noted(self) -> None:
        if not self.items_db.purge_due:
            self.items_db.mark_purge_due()
        self._gauge()

    def _gauge(self) -> None:
        self.metrics.to_purge.set(self.pending)
