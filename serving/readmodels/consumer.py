"""The read models' Kafka side (``TopicConsumer``): one consumer assigned every partition of the
three topics it materializes (no consumer group: every replica reads every partition), the
positions applied, the end offsets seen at start (readiness), lag, and dead letters."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from serving.readmodels.config import ReadModelConfig
from serving.readmodels.metrics import ServingMetrics
from streams.deadletters import DeadLetters, letter_producer
from streams.schemas import DeadLetter
from streams.settings import KafkaSettings
from streams.topics import ENGAGEMENTS, ITEM_EMBEDDINGS, USER_INTERESTS

TOPICS = (ITEM_EMBEDDINGS.name, USER_INTERESTS.name, ENGAGEMENTS.name)

Reject = Callable[[Any, Any, str], None]
"""Dead-letters a record: ``(ConsumerRecord, TopicPartition, reason)``."""


class TopicConsumer:
    """Polls the topics from the offsets restored and keeps the positions applied.

    Positions and the ends seen at start are ``"topic:partition"`` keys, as in the offset store.
    """

    def __init__(
        self, settings: KafkaSettings, config: ReadModelConfig, metrics: ServingMetrics
    ) -> None:
        self.settings = settings
        self.config = config
        self.metrics = metrics
        self.positions: dict[str, int] = {}  # "topic:partition" -> next offset applied
        self.start_ends: dict[str, int] = {}
        self._consumer: Any = None
        self._producer: Any = None
        self._tps: list[Any] = []
        self._dead_letters: DeadLetters | None = None

    @property
    def connected(self) -> bool:
        return self._consumer is not None

    def connect(self, offsets: dict[str, int]) -> None:
        """Assign every partition, seek to ``offsets`` (the beginning where none), and note the
        end offsets (ready once reached)."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            **self.settings.consumer(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.config.max_poll_records,
        )
        tps = []
        for topic in TOPICS:
            parts = consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + 30
            while not parts and time.monotonic() < deadline:
                time.sleep(0.2)
                consumer.topics()  # refreshes metadata
                parts = consumer.partitions_for_topic(topic)
            if not parts:
                consumer.close()
                raise RuntimeError(
                    f"topic {topic!r} does not exist on {self.settings.bootstrap_servers}; "
                    "create the topics first (`recstream topics`)"
                )
            tps += [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            stored = offsets.get(f"{tp.topic}:{tp.partition}")
            if stored is not None:
                consumer.seek(tp, stored)
        ends = consumer.end_offsets(tps)
        self.start_ends = {f"{tp.topic}:{tp.partition}": int(end) for tp, end in ends.items()}
        for tp in tps:
            self._set_position(tp, int(consumer.position(tp)))
        self._consumer = consumer
        self._tps = tps
        self._producer = letter_producer(self.settings)
        self._dead_letters = DeadLetters(
            self._producer, rejected_by="serving", on_lost=self._count_lost
        )

    def poll(self) -> dict[Any, list[Any]]:
        """The next records, ``{TopicPartition: [ConsumerRecord]}`` (empty after the timeout)."""
        batch: dict[Any, list[Any]] = self._consumer.poll(
            timeout_ms=self.config.poll_timeout_ms,
            max_records=self.config.max_poll_records,
        )
        return batch

    def advance(self, batch: dict[Any, list[Any]]) -> None:
        """Note ``batch`` as applied."""
        for tp, records in batch.items():
            if records:
                self._set_position(tp, records[-1].offset + 1)

    def _set_position(self, tp: Any, offset: int) -> None:
        self.positions[f"{tp.topic}:{tp.partition}"] = offset
        # What a replica has applied, exactly: the lag gauge cannot say it on a broker whose
        # reported ends trail the log (see docs/embedded-broker.md).
        self.metrics.position.labels(tp.topic, str(tp.partition)).set(offset)

    def caught_up(self) -> bool:
        """Every partition applied up to the end offset seen at start."""
        return all(self.positions.get(tp, 0) >= end for tp, end in self.start_ends.items())

    def behind_start_ends(self) -> dict[str, int]:
        """Records per topic not yet applied of those there at start."""
        behind: dict[str, int] = {}
        for tp, end in self.start_ends.items():
            pos = self.positions.get(tp, 0)
            if pos < end:
                topic = tp.rsplit(":", 1)[0]
                behind[topic] = behind.get(topic, 0) + end - pos
        return behind

    def update_lag(self) -> bool:
        """Set the lag gauges from the current end offsets; False when those could not be read."""
        try:
            ends = self._consumer.end_offsets(self._tps)
        except Exception:  # lag is telemetry: never fatal
            return False
        lag: dict[str, int] = {}
        for tp, end in ends.items():
            behind = max(int(end) - self.positions.get(f"{tp.topic}:{tp.partition}", 0), 0)
            lag[tp.topic] = lag.get(tp.topic, 0) + behind
        for topic, value in lag.items():
            self.metrics.lag.labels(topic).set(value)
        return True

    def reject(self, m: Any, tp: Any, reason: str) -> None:
        """Count ``m`` as dead-lettered and send it to the dead letters (once connected)."""
        self.metrics.records.labels(tp.topic, "dead_lettered").inc()
        if self._dead_letters is not None:
            self._dead_letters.reject(
                m.value,
                reason,
                source_topic=tp.topic,
                partition=tp.partition,
                offset=m.offset,
                key=m.key,
            )

    def _count_lost(self, letter: DeadLetter) -> None:
        self.metrics.records.labels(letter.source_topic, "dead_letter_lost").inc()

    def flush_dead_letters(self) -> None:
        """Wait until the letters sent are written (or their loss is logged and counted)."""
        if self._dead_letters is not None:
            self._dead_letters.settle()

    def close(self) -> None:
        """Close the consumer and the dead letters' producer (the positions stay)."""
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        if self._producer is not None:
            self._producer.close()
            self._producer = None
