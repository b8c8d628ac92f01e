"""The item feed: all of ``item-embeddings`` in a local item store, so any worker can look up
any item.

Every worker reads *all* partitions of ``item-embeddings`` into its own RocksDB item store (with
an LRU in front); the agent starts only once the feed has caught up with the topic ends seen at
start. The records are written by the shared materializer (``streams.item_embeddings``); here
a rejected record is logged and skipped, a tombstone (``item_deleted``) also puts the item into
``deleted`` and ``gone`` (for the sweep of the stored states), and an arrived item is noted in
``arrived``, for the parked events that wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from stores.kv import CachedItemVectors, StateDB
from streams.item_embeddings import materialize
from streams.settings import KafkaSettings
from streams.topics import ITEM_EMBEDDINGS
from streams.workers.interests.lag import caught_up

log = logging.getLogger(__name__)


class ItemFeed:
    """Materializes all of ``item-embeddings`` into a local item store (every worker has all)."""

    def __init__(self, settings: KafkaSettings, db: StateDB, cache_size: int) -> None:
        self.settings = settings
        self.db = db
        self.vectors = CachedItemVectors(db.items, capacity=cache_size)
        # Deleted since this process started; states restored later drop deleted items anyway,
        # because their vectors are gone from the store.
        self.deleted: set[str] = set()
        self.ready = asyncio.Event()
        self.arrived: list[str] = []  # item ids that got an embedding since last drained
        self.gone: list[str] = []  # item ids deleted since last drained (the sweep's)

    def lookup(self, ids: Sequence[str]) -> tuple[list[str], np.ndarray]:
        return self.vectors.vectors(ids)

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            **self.settings.aiokafka(),
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(ITEM_EMBEDDINGS.name)
            while not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(ITEM_EMBEDDINGS.name)
            tps = [TopicPartition(ITEM_EMBEDDINGS.name, p) for p in sorted(parts)]
            consumer.assign(tps)
            stored = self.db.offsets.load()
            for tp in tps:
                offset = stored.get(f"{tp.topic}:{tp.partition}")
                if offset is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, offset)
            end = await consumer.end_offsets(tps)
            if await caught_up(consumer, tps, end):
                self.ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=5000)
                for tp, records in batch.items():
                    self._apply(tp.topic, tp.partition, records)
                if not self.ready.is_set() and await caught_up(consumer, tps, end):
                    log.info("item feed caught up: %d item vectors", len(self.db.items))
                    self.ready.set()
        finally:
            await consumer.stop()

    def _apply(self, topic: str, partition: int, records: Iterable[Any]) -> None:
        # One dimension per item store (the first item's): another encoder's vectors need a
        # new store. Skipped, not fatal: the feed must go on.
        with self.db.batch() as batch:
            changes = materialize(
                topic,
                partition,
                records,
                self.db.items,
                self.db.offsets,
                batch,
                dim=self.db.items.dim,
            )
        for rejection in changes.rejected:
            record = rejection.record
            log.warning(
                "skipping item embedding %s: %s (%s[%d]@%d)",
                record.key.decode(errors="replace") if record.key else "without a key",
                rejection.reason,
                topic,
                partition,
                record.offset,
            )
        arrived = changes.upserted_ids
        self.vectors.invalidate(arrived + changes.deleted)
        self.deleted.difference_update(arrived)
        self.deleted.update(changes.deleted)
        self.arrived.extend(arrived)
        self.gone.extend(changes.deleted)
