"""The item feed: all of ``item-embeddings`` in a local item store, so any worker can look up
any item.

Every worker reads *all* partitions of ``item-embeddings`` into its own RocksDB item store (with
an LRU in front); the agent starts only once the feed has caught up with the topic ends seen at
start. A tombstone (``item_deleted``) takes the item out of the store and into ``deleted``; an
arrived item is noted in ``arrived``, for the parked events that wait for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from stores.kv import CachedItemVectors, StateDB
from streams.schemas import InvalidEvent, ItemEmbedding, decode_for_topic
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
        latest: dict[str, ItemEmbedding | None] = {}  # None = deleted; later records win
        last = -1
        for m in records:
            last = m.offset
            if not m.key:
                continue
            if m.value is None:
                latest[m.key.decode()] = None
                continue
            try:
                rec = decode_for_topic(topic, m.value)
                rec.array()  # checks the vector against its dim
            except InvalidEvent as exc:
                log.warning(
                    "skipping bad item embedding at %s[%d]@%d: %s",
                    topic,
                    partition,
                    m.offset,
                    exc.reason,
                )
                continue
            latest[rec.item_id] = rec
        if last < 0:
            return
        puts = [r for r in latest.values() if r is not None]
        gone = [i for i, r in latest.items() if r is None]
        # One dimension per item store (the first item's): another encoder's vectors need a
        # new store. Skipped, not fatal: the feed must go on.
        # (``dim`` is checked against the vector when the record is decoded.)
        dim = self.db.items.dim or (puts[0].dim if puts else None)
        for r in puts:
            if r.dim != dim:
                log.warning(
                    "skipping item embedding %s: %d-d, the item store holds %s-d vectors",
                    r.item_id,
                    r.dim,
                    dim,
                )
        puts = [r for r in puts if r.dim == dim]
        with self.db.batch() as batch:
            if puts:
                self.db.items.put_many(
                    [r.item_id for r in puts],
                    np.stack([r.array() for r in puts]),
                    encoder_version=[r.encoder_version for r in puts],
                    ts=[r.source_ts for r in puts],
                    batch=batch,
                )
            if gone:
                self.db.items.delete(gone, batch=batch)
            self.db.offsets.commit({f"{topic}:{partition}": last + 1}, batch=batch)
        self.vectors.invalidate(latest)
        self.deleted.difference_update(r.item_id for r in puts)
        self.deleted.update(gone)
        self.arrived.extend(r.item_id for r in puts)
