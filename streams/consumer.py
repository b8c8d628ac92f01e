"""A kafka-python consumer that validates every message and dead-letters the bad ones.

Used by the encoder worker and tools (serving's read models have their own ``TopicConsumer``).
Valid messages come back as ``Accepted`` (with the decoded event); invalid ones go to
``dead-letters`` with the original bytes, the reason and their topic/partition/offset, and the
consumer goes on. A tombstone (null value, keyed) on a compacted topic is accepted with
``event=None``; an empty message anywhere else, a keyless tombstone included, is dead-lettered.
Each poll's letters are settled (written, or their loss logged) before it returns, so a commit
after it never passes one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streams.deadletters import DeadLetters, letter_producer
from streams.schemas import InvalidEvent, decode_for_topic, tombstone_key
from streams.settings import KafkaSettings
from streams.topics import BY_NAME


@dataclass(frozen=True)
class Accepted:
    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    event: Any  # a schemas model, or None for a tombstone on a compacted topic


class ValidatingConsumer:
    """Poll validated events from topics; reject bad messages to ``dead-letters``."""

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str],
        *,
        rejected_by: str,
        group_id: str | None = None,
        max_poll_records: int = 2000,
        **consumer_options: Any,
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.topics = list(topics)
        opts: dict[str, Any] = dict(
            **settings.consumer(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=max_poll_records,
        )
        if group_id is not None:
            opts.update(settings.group_consumer())
        opts.update(consumer_options)
        self._consumer = KafkaConsumer(**opts)
        if group_id is None:
            # No group: read every partition ourselves (read models, tools).
            tps = []
            for t in self.topics:
                parts = self._consumer.partitions_for_topic(t) or set()
                tps += [TopicPartition(t, p) for p in sorted(parts)]
            self._consumer.assign(tps)
            self._consumer.seek_to_beginning(*tps)
        else:
            self._consumer.subscribe(self.topics)
        self._producer = letter_producer(settings)
        self.dead_letters = DeadLetters(self._producer, rejected_by=rejected_by)

    @property
    def kafka(self) -> Any:
        """The underlying kafka-python consumer (seek, positions, end offsets)."""
        return self._consumer

    def poll(self, timeout_ms: int = 500, max_records: int | None = None) -> list[Accepted]:
        batch = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        out: list[Accepted] = []
        for tp, records in batch.items():
            compacted = tp.topic in BY_NAME and BY_NAME[tp.topic].compacted
            for m in records:
                try:
                    if m.value is None and compacted:
                        tombstone_key(m.key)
                        event = None  # a delete
                    else:
                        event = decode_for_topic(tp.topic, m.value)
                except InvalidEvent as exc:
                    self.dead_letters.reject(
                        m.value,
                        exc.reason,
                        source_topic=tp.topic,
                        partition=tp.partition,
                        offset=m.offset,
                        key=m.key,
                    )
                    continue
                out.append(Accepted(tp.topic, tp.partition, m.offset, m.timestamp, m.key, event))
        self.dead_letters.settle()
        return out

    def commit(self) -> None:
        self._consumer.commit()

    def close(self) -> None:
        try:
            self._consumer.close()
        finally:
            self.dead_letters.settle()
            self._producer.close()

    def __enter__(self) -> ValidatingConsumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
