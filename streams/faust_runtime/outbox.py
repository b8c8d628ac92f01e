"""Records of one processing round, sent to Kafka as one record batch per partition.

faust sends each record on its own (a future, a queue hop and an await per record, and a
conductor that stalls consumption while more than 100 wait), which cost the interests worker
more than its own work. ``Outbox.add`` appends a record to the partition's batch builder (C
code, no await); ``flush`` hands every batch to the producer at once and waits until the broker
has them all. Partitions are chosen by the key's murmur2 hash, as every Kafka client does, so a
key lands where faust or the Java client would put it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from streams.settings import KafkaSettings

# Below the broker's default largest record batch (message.max.bytes, 1 MiB).
MAX_BATCH_BYTES = 1_000_000
# Keys whose partition an outbox remembers, per topic (forgotten all at once beyond).
KEY_PARTITIONS_CACHED = 1_000_000


class Outbox:
    """Batches records per (topic, partition) until ``flush`` sends them all."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        client_id: str = "recstream-outbox",
    ) -> None:
        self.settings = settings
        self.max_batch_bytes = max_batch_bytes
        self.client_id = client_id
        self._producer: Any = None
        self._partitioner: Any = None
        self._partitions: dict[str, list[int]] = {}
        self._key_partitions: dict[str, dict[bytes, int]] = {}
        self._open: dict[tuple[str, int], Any] = {}  # (topic, partition) -> BatchBuilder
        self._full: list[tuple[tuple[str, int], Any]] = []
        # Handed to the producer by send_full, not yet confirmed: (tp, records, delivery).
        self._sent: list[tuple[tuple[str, int], int, Any]] = []
        self._pending = 0

    async def start(self, topics: Iterable[str] = ()) -> None:
        """Connect, and learn the partitions of ``topics`` (records to them may omit one)."""
        from aiokafka import AIOKafkaProducer
        from aiokafka.partitioner import DefaultPartitioner

        kw = {**self.settings.aiokafka(), "client_id": self.client_id}
        self._producer = AIOKafkaProducer(
            **kw,
            acks="all",
            linger_ms=0,  # batches are complete when handed over
            max_batch_size=self.max_batch_bytes,
            max_request_size=self.max_batch_bytes + 64 * 1024,
        )
        self._partitioner = DefaultPartitioner()
        await self._producer.start()
        self._key_partitions = {}
        for topic in topics:
            self._partitions[topic] = sorted(await self._producer.partitions_for(topic))

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    @property
    def pending(self) -> int:
        """Records added since the last ``flush``."""
        return self._pending

    def partition_for(self, topic: str, key: bytes) -> int:
        """Kafka's default partition of ``key`` (murmur2), as faust and the Java client pick it."""
        known = self._key_partitions.get(topic)
        if known is not None:
            partition = known.get(key)
            if partition is not None:
                return partition
        parts = self._partitions.get(topic)
        if not parts:
            raise RuntimeError(f"Outbox.start() was not told about topic {topic!r}")
        partition = int(self._partitioner(key, parts, parts))
        # murmur2 is pure Python in aiokafka (~10 us): remember keys, which recur (user ids).
        if known is None or len(known) >= KEY_PARTITIONS_CACHED:
            known = self._key_partitions[topic] = {}
        known[key] = partition
        return partition

    def add(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> int:
        """Queue one record (``value`` None = tombstone); returns its partition."""
        if self._producer is None:
            raise RuntimeError("the outbox is not started")
        if partition is None:
            if key is None:
                raise ValueError("a record without a partition needs a key")
            partition = self.partition_for(topic, key)
        tp = (topic, partition)
        hdrs = list(headers)
        builder = self._open.get(tp)
        if builder is None:
            builder = self._open[tp] = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=hdrs) is None:
            # Full: keep it for flush and start the partition's next batch.
            self._full.append((tp, builder))
            builder = self._open[tp] = self._producer.create_batch()
            if builder.append(key=key, value=value, timestamp=None, headers=hdrs) is None:
                raise ValueError(f"a record of {len(value or b'')} bytes fits no record batch")
        self._pending += 1
        return partition

    def seal(self) -> None:
        """Close the open batches: records added from now on go into new batches, sent after
        these by the same ``flush``."""
        self._full.extend(self._open.items())
        self._open = {}

    async def send_full(self) -> None:
        """Hand the batches that are full to the producer now, so that they travel while the
        caller goes on; ``flush`` still confirms them (and keeps each partition's order)."""
        full, self._full = self._full, []
        await self._send(full)

    async def _send(self, batches: list[tuple[tuple[str, int], Any]]) -> None:
        if batches and self._producer is None:
            raise RuntimeError("the outbox is not started")
        for (topic, partition), builder in batches:
            count = builder.record_count()
            fut = await self._producer.send_batch(builder, topic, partition=partition)
            self._sent.append(((topic, partition), count, fut))

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send every queued record; return, once the broker has them all, the offset of the
        last record written per (topic, partition)."""
        batches = [*self._full, *self._open.items()]
        self._full, self._open, self._pending = [], {}, 0
        await self._send(batches)
        sent, self._sent = self._sent, []
        if not sent:
            return {}
        metadata = await asyncio.gather(*(fut for _, _, fut in sent))
        last: dict[tuple[str, int], int] = {}
        for (tp, count, _), md in zip(sent, metadata, strict=True):
            last[tp] = max(last.get(tp, -1), md.offset + count - 1)
        return last
